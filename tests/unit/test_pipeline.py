"""Pipelines on tiny models: block skipping, exit heads, partitions, and how a request runs."""
import io
from dataclasses import replace

import numpy as np
import onnx
import pytest

from workloads import graph
from workloads.data import Dataset
from workloads.early_exit import add_heads, exit_table, residual_blocks, skip_blocks, auto_blocks
from workloads.errors import WorkloadError
from workloads.pipeline import Pipeline
from workloads.runtime import ArtifactRunner

torch = pytest.importorskip("torch")
nn = torch.nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.layer1 = nn.Sequential(Block(8), Block(8), Block(8))
        self.fc = nn.Linear(8, 3)

    def forward(self, image):
        x = self.layer1(torch.relu(self.stem(image)))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return Net().eval()


@pytest.fixture(scope="module")
def model(net):
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.randn(1, 1, 12, 12),), buf, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"])
    return onnx.load_from_string(buf.getvalue())


def data(n=240, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 1, 12, 12)).astype(np.float32)
    # the class sets the image's brightness: learnable from pooled features, as exit heads see them
    x += np.array([-1.0, 0.0, 1.0], dtype=np.float32)[labels][:, None, None, None]
    return Dataset("toy", "classification", {"image": x}, labels.astype(np.int64), ("a", "b", "c"))


def test_residual_blocks_are_found_by_module_path_and_auto_skips_the_later_half(model):
    blocks = residual_blocks(model, graph.analyze(model))
    assert list(blocks) == ["layer1/layer1.0", "layer1/layer1.1", "layer1/layer1.2"]
    assert auto_blocks(blocks) == ["layer1/layer1.1", "layer1/layer1.2"]


def test_skipping_blocks_removes_their_work_and_keeps_the_rest_exact(net, model):
    p = Pipeline("toy", "classification", model)
    q = skip_blocks(p, ["layer1/layer1.2"])
    rep = q.report["early_exit"]
    assert rep["skipped_blocks"] == ["layer1/layer1.2"]
    assert rep["flops_after"] < rep["flops_before"]
    assert not any("layer1.2" in n.name for n in q.backbone.graph.node)
    # the same net with block 2 replaced by the identity computes the same thing
    x = data(4).inputs["image"][:1]
    out = graph.session(q.backbone).run(None, {"image": x})[0]
    skipped = Net().eval()
    skipped.load_state_dict(net.state_dict())
    skipped.layer1[2] = nn.Identity()
    with torch.no_grad():
        want = skipped(torch.from_numpy(x)).numpy()
        full = net(torch.from_numpy(x)).numpy()
    assert np.abs(out - want).max() < 1e-5
    assert np.abs(out - full).max() > 1e-3          # and it is not the unskipped model


def test_a_backbone_is_analysed_once_and_a_new_backbone_anew(model):
    p = Pipeline("toy", "classification", model)
    info = p.info()
    assert replace(p, cuts=(info.cuts[3].tensor,)).with_report("x", {}).info() is info
    q = skip_blocks(p, ["layer1/layer1.2"])
    assert q.info() is not info and q.info() is q.with_report("y", {}).info()
    assert q.info().total_flops == q.report["early_exit"]["flops_after"] < info.total_flops
    assert q.info() == graph.analyze(q.backbone) and info == graph.analyze(model)


def test_skipping_an_unknown_block_lists_the_valid_ones(model):
    with pytest.raises(WorkloadError, match=r"block 'layer9' not skippable; valid: layer1/layer1.0, layer1/layer1.1"):
        skip_blocks(Pipeline("toy", "classification", model), ["layer9"])


def test_exit_heads_partition_and_an_exit_on_the_first_part_sends_nothing_on(tmp_path, model):
    train = data(240)
    p = Pipeline("toy", "classification", model)
    p = add_heads(p, points=1, threshold=0.9, epochs=60, train=train, reference_labels=train.labels, classes=3)
    exit_tensor = p.exits[0].tensor
    p = replace(p, cuts=(exit_tensor,))     # cut exactly where the exit is
    manifest = p.save(tmp_path, {})
    assert manifest["parts"] == 2
    assert [s["part"] for s in manifest["segments"]] == [0, 1]
    assert manifest["segments"][0]["exit_output"] == "exit0_logits"
    runner = ArtifactRunner(tmp_path)
    ev = data(60, seed=1)
    exited = sent = 0
    for i in range(len(ev)):
        res = runner.run_part(0, ev.sample(i))
        if res.done:
            exited += 1
            assert res.exited_at == 0 and set(res.tensors) == {"logits"}
        else:
            sent += 1
            assert set(res.tensors) == {exit_tensor}
            assert runner.run_part(1, res.tensors).done
    assert exited > 0 and sent > 0
    # thresholds: 1.0 never exits early, a low one exits (almost) always
    table = exit_table(tmp_path, ev, grid=(0.34, 1.0))
    low, never = table["thresholds"]
    assert never["exit_rate"] == 0.0 and never["quality"] == table["final_quality"]
    assert low["exit_rate"] > 0.9


def test_exit_head_accuracy_beats_chance_on_learnable_data(model):
    train = data(300)
    p = add_heads(Pipeline("toy", "classification", model), points=1, threshold=0.5, epochs=40, train=train,
                  reference_labels=train.labels, classes=3)
    from workloads.pipeline import attach_head
    seg0 = attach_head(graph.split(model, [p.exits[0].tensor])[0], p.exits[0])
    sess = graph.session(seg0)
    ev = data(90, seed=2)
    pred = [int(sess.run(["exit0_logits"], ev.sample(i))[0].argmax()) for i in range(len(ev))]
    assert np.mean(np.array(pred) == ev.labels) > 0.8


def test_segmentation_has_no_exit_heads_but_may_skip_blocks():
    from workloads.early_exit import check_task
    with pytest.raises(WorkloadError, match="early_exit on seg: task segmentation has no single class decision"):
        check_task("segmentation", "seg")
    with pytest.raises(WorkloadError, match="use kind: skip"):
        check_task("segmentation", "seg", "heads")
    check_task("segmentation", "seg", "skip")          # no class decision needed to drop blocks
