"""White-box operators on tiny models built in the test: the training loop's checkpoint and
resume, pruning (structured: smaller and faster; unstructured: zeros, same shapes), the cached
trained model feeding the rest of the chain, and one-line errors."""
from __future__ import annotations

import numpy as np
import pytest

from workloads import models
from workloads.cache import Cache
from workloads.data import Dataset
from workloads.errors import WorkloadError
from workloads.operators import parse_chain
from workloads.prepare import prepare
from workloads.runtime import ArtifactRunner
from tests.tiny import chain, register_model

torch = pytest.importorskip("torch")


def _net():
    nn = torch.nn

    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 32, 3, padding=1)
            self.c2 = nn.Conv2d(32, 64, 3, padding=1)
            self.c3 = nn.Conv2d(64, 64, 3, padding=1)
            self.fc = nn.Linear(64, 3)

        def forward(self, image):
            x = torch.relu(self.c1(image))
            x = torch.relu(self.c2(x))
            x = torch.relu(self.c3(x))
            return self.fc(x.mean(dim=(2, 3)))

    return Wide()


def _data(split, ctx=None):
    n = {"train": 400, "calibration": 40, "eval": 120}[split]
    rng = np.random.default_rng({"train": 0, "calibration": 1, "eval": 2}[split])
    labels = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 1, 24, 24)).astype(np.float32)
    x += np.array([-1.0, 0.0, 1.0], dtype=np.float32)[labels][:, None, None, None]
    return Dataset("toy", "classification", {"image": x}, labels.astype(np.int64), ("a", "b", "c"))


def _build(ctx):
    from workloads.training import fit

    torch.manual_seed(ctx.seed)
    m = _net()
    fit(m, _data("train"), input_names=["image"], epochs=2, batch_size=32, lr=1e-2, seed=ctx.seed)
    return m.eval()


@pytest.fixture()
def wide(monkeypatch):
    return register_model(monkeypatch, "wide_cnn", _build, _data, (1, 1, 24, 24))


def test_structured_pruning_removes_channels_and_flops_and_keeps_the_classifier(wide, tmp_path):
    r = prepare("wide_cnn", chain({"prune": {"ratio": 0.5, "epochs": 2, "lr": 0.005}}), cache=Cache(tmp_path))
    rep = r.manifest["report"]["prune"]
    assert rep["params"]["kind"] == "structured"
    assert rep["params_after"] < 0.4 * rep["params_before"]
    assert rep["flops_after"] < 0.4 * rep["flops_before"]
    assert rep["size_after"] < rep["size_before"] and rep["history"]["stopped_by"] == "epochs"
    assert rep["seed"] == 0 and rep["seconds"] > 0 and rep["base_ms"] > 0 and rep["trained_ms"] > 0
    assert abs(r.value - r.baseline) < 0.1                 # fine-tuned back to near the baseline
    out = ArtifactRunner(r.path).run(_data("eval").sample(0)).tensors["logits"]
    assert out.shape == (1, 3)                              # the classifier's outputs were kept
    # cached: the trained model and the artifact
    again = prepare("wide_cnn", chain({"prune": {"ratio": 0.5, "epochs": 2, "lr": 0.005}}), cache=Cache(tmp_path))
    assert again.cached and again.path == r.path


def test_unstructured_pruning_zeroes_weights_but_keeps_every_shape(wide, tmp_path):
    import onnx
    from onnx import numpy_helper

    r = prepare("wide_cnn", chain({"prune": {"kind": "unstructured", "ratio": 0.6, "epochs": 1}}),
                cache=Cache(tmp_path))
    rep = r.manifest["report"]["prune"]
    assert rep["params_after"] == rep["params_before"] and rep["flops_after"] == rep["flops_before"]
    assert 0.55 < rep["sparsity"] < 0.65
    model = onnx.load(str(r.path / "seg0.onnx"))
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.dims and len(i.dims) > 1]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zeros > 0.5                                       # the zeros are in the deployed graph


def test_pruned_model_flows_into_quantize_and_partition(wide, tmp_path):
    calls = chain({"prune": {"ratio": 0.5, "epochs": 1, "lr": 0.005}}, "quantize", {"partition": {"cut": "auto"}})
    r = prepare("wide_cnn", calls, parts=2, cache=Cache(tmp_path))
    m = r.manifest
    assert set(m["report"]) >= {"prune", "quantize", "partition"} and m["parts"] == 2
    assert m["report"]["quantize"]["int8_ops"].get("QLinearConv", 0) >= 1
    assert ArtifactRunner(r.path).run(_data("eval").sample(0)).done


def test_training_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_run(tmp_path):
    from workloads.training import fit

    data = _data("train")

    def run(checkpoint=None, stop_at=None):
        torch.manual_seed(0)
        m = _net()

        def hook(event, state):
            if event == "step" and state["step"] == stop_at:
                raise KeyboardInterrupt

        try:
            h = fit(m, data, input_names=["image"], epochs=2, batch_size=32, lr=1e-2, seed=0,
                    checkpoint=checkpoint, checkpoint_every_s=0, hooks=[hook])
        except KeyboardInterrupt:
            return m, None
        return m, h

    whole, h_whole = run()
    ckpt = tmp_path / "run.pt"
    _, stopped = run(ckpt, stop_at=17)                        # mid-epoch 2 (13 steps per epoch)
    assert stopped is None and ckpt.exists()
    # issue 19: tensors and plain data, which load without unpickling any code; the fingerprint beside it
    saved = torch.load(ckpt, weights_only=True)
    assert (saved["epoch"], saved["batch"]) == (1, 3) and saved["order"].shape == (400,)
    assert (tmp_path / "run.pt.json").is_file()
    assert oct(ckpt.stat().st_mode & 0o777) == "0o644"
    resumed, h_resumed = run(ckpt)
    assert not ckpt.exists() and not (tmp_path / "run.pt.json").exists()   # removed once training completed
    assert h_resumed["steps"] == h_whole["steps"] == 26
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert h_resumed["loss"] == h_whole["loss"]
    # a checkpoint of another run is refused in one line
    run(ckpt, stop_at=3)
    with pytest.raises(WorkloadError, match="belongs to another run"):
        fit(_net(), data, input_names=["image"], epochs=2, batch_size=16, seed=0, checkpoint=ckpt)


class _Payload:
    """What a malicious pickle holds: unpickling it runs code (here: writes a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.mark.parametrize("fingerprint_file", [False, True])
@pytest.mark.parametrize("legacy", [False, True])
def test_a_malicious_pickle_where_a_checkpoint_is_expected_is_discarded_not_run(tmp_path, fingerprint_file, legacy):
    """Issue 19: checkpoints were loaded with torch.load(weights_only=False) before their
    fingerprint was checked, so a pickle in the cache ran as root. Without a fingerprint file
    (an old checkpoint) it is not even opened; with one that matches, weights_only refuses it."""
    import json

    from workloads.training import _fingerprint, fit

    data = _data("train")
    marker = tmp_path / "ran"
    ckpt = tmp_path / "run.pt"
    # torch.save's zip archive, or its legacy format (pickles one after the other)
    torch.save({"fingerprint": None, "module": _Payload(marker)}, ckpt, _use_new_zipfile_serialization=not legacy)
    torch.manual_seed(0)
    m = _net()
    if fingerprint_file:
        (tmp_path / "run.pt.json").write_text(json.dumps({"fingerprint": _fingerprint(m, len(data), 32, 0)}))
    notes = []
    try:
        h = fit(m, data, input_names=["image"], epochs=1, batch_size=32, seed=0, checkpoint=ckpt,
                progress=notes.append)
    finally:
        assert not marker.exists()              # whatever else happened, the pickle's code did not run
    assert h["steps"] == 13 and "resumed_at" not in h                       # trained from the start
    assert any(n.startswith(f"checkpoint {ckpt} discarded (") and n.endswith("; training starts over")
               for n in notes), notes
    assert not ckpt.exists()


def test_quantization_aware_training_resumes_from_its_checkpoint(tmp_path):
    """Per-channel observers start with empty min/max and fill them while training: the
    checkpoint of an interrupted QAT run must still be recognised as its own."""
    from workloads.training import fit
    from workloads.whitebox import _qat_linears

    data = _data("train")
    flat = Dataset("flat", "classification", {"x": data.inputs["image"].reshape(len(data), -1)}, data.labels,
                   data.classes)

    def run(checkpoint=None, stop_at=None):
        torch.manual_seed(0)
        m = _qat_linears(torch.nn.Sequential(torch.nn.Linear(576, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)),
                         per_channel=True)

        def hook(event, state):
            if event == "step" and state["step"] == stop_at:
                raise KeyboardInterrupt

        try:
            return m, fit(m, flat, input_names=["x"], epochs=2, batch_size=32, lr=1e-3, seed=0,
                          checkpoint=checkpoint, checkpoint_every_s=0, hooks=[hook])
        except KeyboardInterrupt:
            return m, None

    whole, h_whole = run()
    ckpt = tmp_path / "qat.pt"
    assert run(ckpt, stop_at=17)[1] is None and ckpt.exists()
    resumed, h_resumed = run(ckpt)
    assert h_resumed["steps"] == h_whole["steps"] and h_resumed["resumed_at"]
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("item, message", [
    ({"prune": {"ratio": 1.0}}, "test[0].prune.ratio: 1.0 is not valid; allowed: a number between 0 and 1"),
    ({"prune": {"ratio": 0}}, "test[0].prune.ratio: 0 is not valid"),
    ({"prune": {"epochs": 0}}, "test[0].prune.epochs: 0 is not valid; allowed: a whole number >= 1, or none"),
    ({"prune": {"epochs": None}}, "test[0].prune: no training budget; give epochs, steps or seconds"),
    ({"prune": {"kind": "unstructured", "round_to": 16}}, "test[0].prune.round_to: applies to structured pruning only"),
    ({"prune": {"kind": "random"}}, "test[0].prune.kind: 'random' is not valid; allowed: structured | unstructured"),
])
def test_bad_training_parameters_are_one_line(item, message):
    with pytest.raises(WorkloadError) as e:
        parse_chain([item], "test")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_training_operator_on_an_onnx_file_or_without_training_data_is_one_line(wide, tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "ident.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    np.savez(tmp_path / "d.npz", x=np.ones((10, 4), np.float32), y=np.zeros(10, np.int64))
    with pytest.raises(WorkloadError, match="training operators need the torch model, and this model is an ONNX file"):
        prepare(str(path), chain({"prune": {"epochs": 1}}), data=tmp_path / "d.npz", cache=Cache(tmp_path / "c"))

    def empty(split, ctx=None):
        d = _data(split)
        return d.take(0) if split == "train" else d

    monkeypatch.setitem(models._REGISTRY, "wide_cnn", models._REGISTRY["wide_cnn"].__class__(
        **{**models._REGISTRY["wide_cnn"].__dict__, "dataset": empty}))
    with pytest.raises(WorkloadError, match="no training data"):
        prepare("wide_cnn", chain({"prune": {"epochs": 1}}), cache=Cache(tmp_path / "c2"))


def test_distillation_into_a_narrow_student_and_then_static_int8_dsptq(wide, tmp_path):
    r = prepare("wide_cnn", chain({"distill": {"epochs": 2, "lr": 0.005}}, "quantize"), cache=Cache(tmp_path))
    rep = r.manifest["report"]["distill"]
    assert "channels removed" in rep["student"] and rep["params_after"] < 0.4 * rep["params_before"]
    assert rep["flops_after"] < 0.4 * rep["flops_before"] and rep["history"]["steps"] == 14      # 400 samples, batch 64, 2 epochs
    assert r.manifest["report"]["quantize"]["int8_ops"].get("QLinearConv", 0) >= 1
    assert abs(r.value - r.baseline) < 0.1


def _stack_entry(monkeypatch, name="tiny_stack", classes=3):
    nn = torch.nn

    def build(ctx):
        from workloads.training import fit

        class Stack(nn.Module):
            def __init__(self):
                super().__init__()
                self.inp = nn.Linear(16, 32)
                self.layers = nn.ModuleList([nn.Linear(32, 32) for _ in range(4)])
                self.out = nn.Linear(32, classes)

            def forward(self, x):
                h = torch.relu(self.inp(x))
                for layer in self.layers:
                    h = h + torch.relu(layer(h))
                return self.out(h)

        torch.manual_seed(ctx.seed)
        m = Stack()
        fit(m, data("train"), input_names=["x"], epochs=3, batch_size=32, lr=1e-2, seed=ctx.seed)
        return m.eval()

    def data(split, ctx=None):
        n = {"train": 300, "calibration": 40, "eval": 90}[split]
        rng = np.random.default_rng(len(split))
        y = rng.integers(0, classes, n)
        x = rng.normal(0, 0.5, (n, 16)).astype(np.float32) + y[:, None].astype(np.float32)
        return Dataset("stack", "classification", {"x": x}, y.astype(np.int64))

    return register_model(monkeypatch, name, build, data, (1, 16), input_name="x", classes=classes)


def test_shallow_student_keeps_every_other_repeated_layer(monkeypatch, tmp_path):
    _stack_entry(monkeypatch)
    torch.set_num_threads(1)
    r = prepare("tiny_stack", chain({"distill": {"student": "shallow", "epochs": 2}}), cache=Cache(tmp_path))
    rep = r.manifest["report"]["distill"]
    assert rep["student"] == "layers: kept 2 of 4 (0, 3)"
    assert rep["params_after"] == rep["params_before"] - 2 * (32 * 32 + 32)
    assert abs(r.value - r.baseline) < 0.15


def test_a_registry_student_must_fit_the_teacher(wide, monkeypatch, tmp_path):
    _stack_entry(monkeypatch)
    with pytest.raises(WorkloadError, match="student tiny_stack does not fit the teacher") as e:
        prepare("wide_cnn", chain({"distill": {"student": "tiny_stack", "epochs": 1}}), cache=Cache(tmp_path))
    assert "\n" not in str(e.value)
    with pytest.raises(WorkloadError, match="model 'nosuch' unknown|nosuch"):
        prepare("wide_cnn", chain({"distill": {"student": "nosuch", "epochs": 1}}), cache=Cache(tmp_path))


def test_qat_exports_int8_that_onnx_runtime_runs_and_partitions(wide, tmp_path):
    r = prepare("wide_cnn", chain({"qat": {"epochs": 1}}, {"partition": {"cut": "auto"}}), parts=2,
                cache=Cache(tmp_path))
    rep = r.manifest["report"]["qat"]
    assert rep["int8_ops"].get("QLinearConv", 0) >= 2 and rep["int8_fraction"] > 0.9
    assert rep["params"]["per_channel"] is True and rep["history"]["steps"] == 7
    assert rep["int8_weights"] == 4                 # 3 convolutions and the classifier, stored as int8
    assert abs(r.value - r.baseline) < 0.1
    assert ArtifactRunner(r.path).run(_data("eval").sample(0)).done
    with pytest.raises(WorkloadError, match="qat already made an int8 model; remove quantize"):
        prepare("wide_cnn", chain({"qat": {"epochs": 1}}, "quantize"), cache=Cache(tmp_path))


def _bn_entry(monkeypatch, name, foldable):
    nn = torch.nn

    def build(ctx):
        from workloads.training import fit

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.c1 = nn.Conv2d(1, 16, 3, padding=1)
                self.bn = nn.BatchNorm2d(16)
                self.fc = nn.Linear(16, 3)

            def forward(self, image):
                x = torch.relu(self.bn(self.c1(image))) if foldable else self.bn(torch.relu(self.c1(image)))
                return self.fc(x.mean(dim=(2, 3)))

        torch.manual_seed(ctx.seed)
        m = Net()
        fit(m, _data("train"), input_names=["image"], epochs=1, batch_size=32, lr=1e-2, seed=ctx.seed)
        return m.eval()

    register_model(monkeypatch, name, build, _data, (1, 1, 24, 24))


def test_qat_folds_batch_norm_into_convolutions_or_refuses(monkeypatch, tmp_path):
    import onnx

    torch.set_num_threads(1)
    _bn_entry(monkeypatch, "bn_ok", True)
    r = prepare("bn_ok", chain({"qat": {"epochs": 1}}), cache=Cache(tmp_path))
    ops = {n.op_type for n in onnx.load(str(r.path / "seg0.onnx")).graph.node}
    assert "BatchNormalization" not in ops and "QuantizeLinear" in ops
    assert r.manifest["report"]["qat"]["int8_fraction"] == 1.0
    _bn_entry(monkeypatch, "bn_after_relu", False)
    with pytest.raises(WorkloadError, match="qat needs batch norm folded into the convolutions, and 1 could not be"):
        prepare("bn_after_relu", chain({"qat": {"epochs": 1}}), cache=Cache(tmp_path))


def test_a_ratio_with_a_registry_student_is_refused_not_ignored():
    with pytest.raises(WorkloadError, match=r"test\[0\].distill.ratio: applies to narrow and shallow students only"):
        parse_chain([{"distill": {"student": "fmnist_cnn", "ratio": 0.3}}], "test")


def test_a_models_default_step_budget_applies_only_when_the_chain_gives_none(wide, monkeypatch, tmp_path):
    from dataclasses import replace

    from workloads.whitebox import with_model_budget

    entry = replace(wide, training_steps=3)
    monkeypatch.setitem(models._REGISTRY, "wide_cnn", entry)
    default, = chain({"prune": {"ratio": 0.3}})
    given, = chain({"prune": {"ratio": 0.3, "epochs": 1}})
    assert with_model_budget(default, entry).get("steps") == 3
    assert with_model_budget(given, entry) == given                 # the user's budget is kept whole
    r = prepare("wide_cnn", chain({"prune": {"ratio": 0.3}}), cache=Cache(tmp_path))
    rep = r.manifest["report"]["prune"]
    assert rep["params"]["steps"] == 3 and rep["history"]["steps"] == 3
    assert r.manifest["operators"][0]["prune"]["steps"] == 3
