"""The model zoo, the training loop and the exporter, fast: registry consistency, one-line
errors, `fit` on tiny synthetic problems, and ONNX export round trips of tiny models (random
weights only; every cache here is a temporary one)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from workloads.cache import Cache
from workloads.data import SPLITS, TASKS, Dataset
from workloads.errors import WorkloadError
from workloads.models import METRICS, WEIGHTS, BuildContext, InputSpec, ModelEntry, get_model, models

torch = pytest.importorskip("torch")

OFFLINE = {"fmnist_cnn", "fmnist_segnet", "efficientnet_lite0", "minilm_sentiment"}
STUDIES = {"wide_resnet101_2", "resnext101_64x4d", "fcn_resnet101", "resnet101_duc", "bert_base_mrpc",
           "roberta_base_mrpc", "wide_resnet50_2", "resnext50_32x4d", "bert_small_mrpc"}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ctx(tmp_path):
    return BuildContext(cache=Cache(tmp_path / "cache"), weights="random", seed=0)


# ---------------------------------------------------------------- registry -------------

def test_every_builtin_is_registered():
    assert {m.name for m in models()} == OFFLINE | STUDIES


@pytest.mark.parametrize("name", sorted(OFFLINE | STUDIES))
def test_entry_is_consistent(name):
    e = get_model(name)
    assert e.task in TASKS and e.metric in METRICS
    assert e.offline == (name in OFFLINE)
    assert set(e.weights) == set(WEIGHTS)
    assert e.inputs and e.output_names and e.num_classes > 0 and e.description and e.source
    for spec in e.inputs:
        assert spec.shape[0] == 1 and all(d > 0 for d in spec.shape)
        assert np.dtype(spec.dtype).name == spec.dtype
    if e.task == "text_classification":
        assert [s.name for s in e.inputs] == ["input_ids", "attention_mask"]
        assert all(s.dtype == "int64" for s in e.inputs)
    else:
        assert len(e.inputs) == 1 and e.inputs[0].dtype == "float32" and len(e.inputs[0].shape) == 4
    expected = {"fmnist_cnn": "accuracy", "fmnist_segnet": "miou", "minilm_sentiment": "f1"}
    assert e.metric == expected.get(name, "agreement")
    if e.skippable_blocks:
        assert len(set(e.skippable_blocks)) == len(e.skippable_blocks)


def test_resnet_like_study_models_skip_late_layer3_blocks():
    for name in ("wide_resnet101_2", "resnext101_64x4d", "resnet101_duc"):
        blocks = get_model(name).skippable_blocks
        assert blocks == tuple(f"layer3/layer3.{i}" for i in range(12, 23))
    assert get_model("efficientnet_lite0").skippable_blocks == ("_blocks.13", "_blocks.14")


def test_unknown_model_is_one_line_listing_the_valid_ones():
    with pytest.raises(WorkloadError) as e:
        get_model("resnet9000")
    msg = str(e.value)
    assert "\n" not in msg and "resnet9000" in msg and "fmnist_cnn" in msg and "efficientnet_lite0" in msg


def test_metric_applicable_only_with_real_weights():
    from workloads.zoo import metric_applicable

    for e in models():
        assert metric_applicable(e, "pretrained") is True
        assert metric_applicable(e, "random") is False


def test_importing_the_zoo_imports_no_torch():
    code = ("import sys, workloads.models as r, workloads.export, workloads.training; r.models(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'transformers')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _network(url: str) -> bool:
    """Whether ``url``'s server answers at all (any HTTP status counts)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()
    except urllib.error.HTTPError:
        return True
    except Exception:  # noqa: BLE001
        return False
    return True


def _cached(name: str) -> bool:
    """Whether the pretrained weights are already on this machine (then nothing is downloaded)."""
    import os
    from pathlib import Path

    if name in ("wide_resnet101_2", "fcn_resnet101"):
        import torchvision.models as tvm

        w = (tvm.Wide_ResNet101_2_Weights.IMAGENET1K_V2 if name == "wide_resnet101_2"
             else tvm.segmentation.FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1)
        return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)).is_file()
    if name == "bert_base_mrpc":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache("textattack/bert-base-uncased-MRPC", "config.json"), str)
    return False


@pytest.mark.parametrize("name,where", [
    ("wide_resnet101_2", "https://download.pytorch.org/models/wide_resnet101_2-"),
    ("fcn_resnet101", "https://download.pytorch.org/models/fcn_resnet101_coco-"),
    ("resnet101_duc", "https://github.com/onnx/models/raw/main/"),
    ("bert_base_mrpc", "https://huggingface.co/textattack/bert-base-uncased-MRPC"),
    ("wide_resnet50_2", "https://download.pytorch.org/models/wide_resnet50_2-"),
    ("bert_small_mrpc", "https://huggingface.co/google/bert_uncased_L-4_H-512_A-8"),
])
def test_pretrained_without_network_fails_fast_in_one_line(name, where, tmp_path):
    """Really tries (nothing mocked): without network the builder must give up within seconds."""
    if _network(where):
        pytest.skip("this machine has network access: the download would succeed")
    if _cached(name):
        pytest.skip("the pretrained weights are already cached on this machine")
    entry = get_model(name)
    t0 = time.monotonic()
    with pytest.raises(WorkloadError) as e:
        entry.build(BuildContext(cache=Cache(tmp_path / "cache"), weights="pretrained"))
    took = time.monotonic() - t0
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"model {name}: pretrained weights need a download from {where}"), msg
    assert "(no network: " in msg and msg.endswith("; use weights: random for latency-only studies")
    assert took < 30, f"took {took:.1f} s to fail"


@pytest.mark.parametrize("teacher,student,params", [
    ("wide_resnet101_2", "wide_resnet50_2", 68_883_240),
    ("resnext101_64x4d", "resnext50_32x4d", 25_028_904),
    ("bert_base_mrpc", "bert_small_mrpc", None),
])
def test_study_b_distillation_pairs_resolve_to_their_real_students(teacher, student, params, ctx):
    """The studies' teacher -> student pairs go through the real code path: a random-weights
    teacher (latency-only) gets a random student; pretrained needs the download (above)."""
    from workloads.operators import parse_chain
    from workloads.whitebox import _student

    call = parse_chain([{"distill": {"student": student}}], "test")[0]
    module, how = _student(get_model(teacher), call, None, None, ctx)
    assert how == f"registry model {student} (random weights)"
    n = sum(p.numel() for p in module.parameters())
    if params is not None:
        assert n == params
    else:                  # BERT-small: 4 layers of width 512 with 8 heads (Turc et al., 2019)
        cfg = module.model.config
        assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == \
            (4, 512, 8, 2048)
        assert 28e6 < n < 30e6


# ---------------------------------------------------------------- stand-in data --------

def test_study_datasets_are_unlabelled_stand_ins(ctx):
    for name, size in (("wide_resnet101_2", 224), ("resnet101_duc", 800)):
        d = get_model(name).dataset("calibration", ctx)
        assert d.labels is None and d.inputs["image"].shape[1:] == (3, size, size)
        assert d.inputs["image"].dtype == np.float32
    for name in ("bert_base_mrpc", "roberta_base_mrpc"):
        e = get_model(name)
        a, b = e.dataset("eval", ctx), e.dataset("train", ctx)
        assert a.labels is None and a.inputs["input_ids"].shape == (64, 128)
        assert a.inputs["input_ids"].dtype == np.int64 and a.inputs["attention_mask"].dtype == np.int64
        assert not np.array_equal(a.inputs["input_ids"], b.inputs["input_ids"][:64])
        ids, mask = a.inputs["input_ids"], a.inputs["attention_mask"]
        pad = 0 if name.startswith("bert") else 1
        assert ((ids == pad) == (mask == 0)).all() and mask.sum(1).min() >= 16


# ---------------------------------------------------------------- training -------------

def _blobs(n=600, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.5]], np.float32)
    x = (centres[y] + rng.normal(0, 0.6, (n, 2))).astype(np.float32)
    return Dataset("blobs", "classification", {"x": x}, y.astype(np.int64))


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def test_fit_learns_and_is_deterministic():
    from workloads.training import fit, predict, score

    data = _blobs()
    runs = []
    for _ in range(2):
        m = _mlp()
        h = fit(m, data, input_names=["x"], steps=150, batch_size=32, lr=1e-2, seed=3, validate=data)
        runs.append((h, [p.detach().clone() for p in m.parameters()]))
    h, params = runs[0]
    assert h["steps"] == 150 and h["stopped_by"] == "steps" and not m.training
    assert score(predict(m, data, ["x"]), data.labels, "classification") > 0.95
    assert h["val_metric"] == "accuracy" and h["val"][-1] > 0.95
    assert runs[1][0]["loss"] == h["loss"]
    assert all(torch.equal(a, b) for a, b in zip(params, runs[1][1]))
    other = _mlp()
    fit(other, data, input_names=["x"], steps=150, batch_size=32, lr=1e-2, seed=4)
    assert not all(torch.equal(a, b) for a, b in zip(params, other.parameters()))


def test_fit_budgets_and_errors():
    from workloads.training import fit

    data = _blobs(100)
    h = fit(_mlp(), data, input_names=["x"], epochs=2, batch_size=32)
    assert h["stopped_by"] == "epochs" and h["steps"] == 8 and h["epochs"] == 2.0 and len(h["loss"]) == 2
    h = fit(_mlp(), data, input_names=["x"], seconds=0.0, batch_size=32)
    assert h["stopped_by"] == "seconds" and h["steps"] == 1
    with pytest.raises(WorkloadError, match="give a budget"):
        fit(_mlp(), data, input_names=["x"])
    with pytest.raises(WorkloadError, match="input 'y' not in the data set"):
        fit(_mlp(), data, input_names=["y"], steps=1)
    with pytest.raises(WorkloadError, match="no labels"):
        fit(_mlp(), Dataset("u", "classification", {"x": data.inputs["x"]}, None), input_names=["x"], steps=1)
    with pytest.raises(WorkloadError, match="optimizer 'rmsprop' unknown"):
        fit(_mlp(), data, input_names=["x"], steps=1, optimizer="rmsprop")


def test_fit_hooks_see_every_step_and_epoch():
    from workloads.training import fit

    events = []
    fit(_mlp(), _blobs(64), input_names=["x"], epochs=2, batch_size=32,
        hooks=[lambda event, state: events.append((event, state["step"]))])
    assert events == [("step", 1), ("step", 2), ("epoch", 2), ("step", 3), ("step", 4), ("epoch", 4)]


def test_fit_per_pixel_segmentation_and_keyword_inputs():
    from workloads.training import fit, predict, score

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 1, 8, 8)).astype(np.float32)
    seg = Dataset("px", "segmentation", {"image": x}, (x[:, 0] > 0).astype(np.int64))
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 2, 1)
    fit(conv, seg, input_names=["image"], steps=100, batch_size=16, lr=5e-2)
    assert score(predict(conv, seg, ["image"]), seg.labels, "segmentation") > 0.9

    class Two(torch.nn.Module):                  # text-like: two inputs reach forward by name
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 2)

        def forward(self, input_ids, attention_mask):
            return self.fc((input_ids * attention_mask).float())

    ids = rng.integers(0, 3, size=(200, 2)).astype(np.int64)
    mask = np.ones_like(ids)
    text = Dataset("t", "text_classification", {"attention_mask": mask, "input_ids": ids},
                   (ids[:, 0] > ids[:, 1]).astype(np.int64))
    m = Two()
    fit(m, text, input_names=["input_ids", "attention_mask"], steps=300, batch_size=32, lr=5e-2)
    assert score(predict(m, text, ["input_ids", "attention_mask"]), text.labels, "classification") > 0.9


def test_miou_score():
    from workloads.training import score

    labels = np.array([[0, 0, 1, 1]])
    logits = np.eye(3)[np.array([[0, 1, 1, 1]])].transpose(0, 2, 1)     # (1, 3, 4): predicts 0,1,1,1
    assert score(logits, labels, "segmentation") == pytest.approx((1 / 2 + 2 / 3) / 2)


# ---------------------------------------------------------------- export ---------------

def _ort(path, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _tiny_entry(calls):
    def build(ctx):
        calls.append(ctx.weights)
        torch.manual_seed(ctx.seed)
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5))
        with torch.no_grad():
            m[1].running_mean.uniform_(-1, 1)
            m[1].running_var.uniform_(0.5, 2)
        return m.eval()

    return ModelEntry(name="tiny", task="classification", description="tiny", inputs=(InputSpec("image", "float32",
                      (1, 3, 8, 8)),), output_names=("logits",), metric="agreement", offline=True, source="test",
                      build=build, dataset=lambda split, ctx: None, num_classes=5)


def test_export_round_trips_and_is_cached(ctx):
    import onnx

    from workloads.export import OPSET, export_model, model_info

    calls = []
    entry = _tiny_entry(calls)
    path = export_model(entry, ctx)
    assert path.name == "model.onnx" and path.is_file() and calls == ["random"]
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["logits"]
    info = model_info(path)
    assert info["params"] == 3 * 4 * 9 + 4 + 4 * 5 + 5      # the exporter folds BatchNorm into the conv
    assert info["file_bytes"] == path.stat().st_size and info["inputs"][0]["shape"] == [1, 3, 8, 8]
    x = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = entry.build(ctx)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort(path, {"image": x}), want, atol=1e-4, rtol=0)
    calls.clear()
    assert export_model(entry, ctx) == path and calls == []             # cached: not built again
    other = export_model(entry, BuildContext(cache=ctx.cache, weights="random", seed=1))
    assert other != path


def test_export_rejects_mismatched_names(ctx):
    from workloads.export import export_model

    entry = _tiny_entry([])
    bad = ModelEntry(**{**entry.__dict__, "name": "tiny2", "output_names": ("logits", "extra")})
    with pytest.raises(WorkloadError, match="model tiny2: ONNX export failed") as e:
        export_model(bad, ctx)
    assert "\n" not in str(e.value)
    assert not (ctx.cache.root / "models").exists() or not any(
        p.name[0] != "." for p in (ctx.cache.root / "models").iterdir())      # nothing published


@pytest.mark.parametrize("name,shape", [("fmnist_cnn", (1, 1, 28, 28)), ("fmnist_segnet", (1, 1, 64, 64))])
def test_zoo_model_with_random_weights_exports_equal_to_torch(name, shape, ctx):
    from workloads.export import export_model

    entry = get_model(name)
    path = export_model(entry, ctx)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    with torch.no_grad():
        want = entry.build(ctx)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort(path, {"image": x}), want, atol=1e-4, rtol=0)
    assert ctx.cache.get("weights", "x") is None and not (ctx.cache.root / "weights").exists()   # no training


def test_user_onnx_file_is_checked_and_copied(tmp_path, ctx):
    import onnx
    from onnx import TensorProto, helper

    from workloads.export import export_model, source_onnx

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    src = tmp_path / "mine.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    entry = get_model(str(src))
    assert source_onnx(entry) == src.resolve() and source_onnx(get_model("fmnist_cnn")) is None
    path = export_model(entry, BuildContext(cache=ctx.cache, weights="given"))
    assert path != src and onnx.load(str(path)).graph.node[0].op_type == "Relu"
    info = json.loads((path.parent / "model.json").read_text())
    assert info["exporter"].startswith("none") and info["outputs"] == ["y"]


def test_photo_counts_shrink_with_input_size():
    from workloads.zoo.common import photo_counts

    # at 224: 4 / 3 / 5 crops of each of the 110 / 24 / 120 photographs of the split
    assert photo_counts(224) == {"train": 440, "calibration": 72, "eval": 600}
    assert photo_counts(800) == {"train": 34, "calibration": 8, "eval": 47}
    assert set(photo_counts(520)) == set(SPLITS)


def test_duc_zoo_onnx_is_adapted_to_the_entry_interface(tmp_path):
    """The model zoo's DUC (input ``data``, output (1, 19, H*W), opset 12) gets the entry's names
    and shapes; checked on a stand-in graph with that interface (the real one is a download)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from workloads.export import OPSET
    from workloads.zoo.studies import DUC_CLASSES, DUC_SIZE, _adapt_duc

    rng = np.random.default_rng(0)
    w = rng.normal(size=(DUC_CLASSES, 3, 1, 1)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["data", "w"], ["c"]), helper.make_node("Reshape", ["c", "s"], ["flat"]),
         helper.make_node("Softmax", ["flat"], ["seg_loss"], axis=1)], "duc",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("seg_loss", TensorProto.FLOAT, [1, DUC_CLASSES, "hw"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1, DUC_CLASSES, -1], np.int64), "s")])
    src = tmp_path / "ResNet101-DUC-12.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 12)]), str(src))
    _adapt_duc(src, tmp_path)
    m = onnx.load(str(tmp_path / "adapted.onnx"))
    onnx.checker.check_model(m, full_check=True)
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    x = rng.normal(size=(1, 3, DUC_SIZE, DUC_SIZE)).astype(np.float32)
    got = _ort(tmp_path / "adapted.onnx", {"image": x})
    want = _ort(src, {"data": x})
    assert got.shape == (1, DUC_CLASSES, DUC_SIZE, DUC_SIZE)
    np.testing.assert_array_equal(got.reshape(want.shape), want)
