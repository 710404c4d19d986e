"""prepare() end to end on a tiny registered model: every black-box chain, the cache, errors."""
import json

import numpy as np
import pytest

from workloads.cache import Cache
from workloads.data import Dataset
from workloads.errors import WorkloadError
from workloads.prepare import prepare
from workloads.quality import measure
from workloads.runtime import ArtifactRunner
from tests.tiny import chain, register_model

torch = pytest.importorskip("torch")


def _build(ctx):
    nn = torch.nn
    torch.manual_seed(ctx.seed)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 3)

        def forward(self, image):
            x = torch.relu(self.c1(image))
            x = torch.relu(self.c2(x))
            return self.fc(x.mean(dim=(2, 3)))

    m = Tiny()
    if ctx.weights == "random":
        return m.eval()
    data = _data("train")
    from workloads.training import fit
    fit(m, data, input_names=["image"], epochs=3, batch_size=32, lr=1e-2, seed=ctx.seed)
    return m.eval()


def _data(split, ctx=None):
    n = {"train": 300, "calibration": 40, "eval": 90}[split]
    rng = np.random.default_rng({"train": 0, "calibration": 1, "eval": 2}[split])
    labels = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 1, 12, 12)).astype(np.float32)
    x += np.array([-1.0, 0.0, 1.0], dtype=np.float32)[labels][:, None, None, None]
    return Dataset("toy", "classification", {"image": x}, labels.astype(np.int64), ("a", "b", "c"))


@pytest.fixture()
def tiny(monkeypatch):
    return register_model(monkeypatch, "tiny_cnn", _build, _data, (1, 1, 12, 12))


def test_fp32_artifact_has_one_part_and_the_baseline_metric(tiny, tmp_path):
    r = prepare("tiny_cnn", (), cache=Cache(tmp_path))
    m = r.manifest
    assert r.parts == 1 and m["parts"] == 1 and len(m["segments"]) == 1
    assert r.metric == "accuracy" and r.value == r.baseline and r.value > 0.8
    # per-sample scores beside the artifact, paired with the untransformed model's (Wilcoxon)
    scores, base = np.load(r.path / "scores.npy"), np.load(r.path / "baseline_scores.npy")
    assert scores.shape == base.shape == (90,) and set(np.unique(scores)) <= {0.0, 1.0}
    assert scores.mean() == pytest.approx(r.value) and np.array_equal(scores, base)
    assert m["quality"]["scores"]["file"] == "scores.npy"
    # the same answers on every sample: the loss's 95 % interval is [0, 0], the value's the baseline's
    ci = m["quality"]["interval"]
    assert ci["statistic"] == "mean" and ci["samples"] == 90 and ci["loss"] == [0.0, 0.0]
    assert ci["value"] == ci["baseline"] and ci["value"][0] <= r.value <= ci["value"][1]
    assert not r.cached and prepare("tiny_cnn", (), cache=Cache(tmp_path)).cached


def test_quantize_runs_int8_kernels_and_reports_them(tiny, tmp_path):
    r = prepare("tiny_cnn", chain("quantize"), cache=Cache(tmp_path))
    q = r.manifest["report"]["quantize"]
    assert q["int8_ops"].get("QLinearConv", 0) >= 2
    assert q["fp32_ms"] > 0 and q["int8_ms"] > 0
    # the times are rounded to 1 us, the ratio is of the unrounded ones: allow for that rounding
    ratio = q["fp32_ms"] / q["int8_ms"]
    assert abs(q["speedup"] - ratio) <= ratio * (0.0005 / q["fp32_ms"] + 0.0005 / q["int8_ms"]) + 0.001
    assert "avx2" in q["cpu_features"]
    assert abs(r.value - r.baseline) < 0.1
    # the intervals in the manifest are those the files beside the artifact give again
    ci = r.manifest["quality"]["interval"]
    assert ci == measure(r.path, "mean") and ci["loss"][0] <= r.baseline - r.value <= ci["loss"][1]


def test_quantized_early_exit_partition_puts_the_exit_on_the_first_host(tiny, tmp_path):
    calls = chain("quantize", {"early_exit": {"points": 1, "threshold": 0.9, "epochs": 20}},
                  {"partition": {"cut": "auto"}})
    r = prepare("tiny_cnn", calls, parts=2, cache=Cache(tmp_path))
    m = r.manifest
    assert m["parts"] == 2 and {s["part"] for s in m["segments"]} == {0, 1}
    assert any(s["exit_output"] for s in m["segments"])
    table = m["report"]["early_exit"]["table"]
    assert [row["threshold"] for row in table["thresholds"]][:2] == [0.5, 0.6]
    assert table["thresholds"][0]["exit_rate"] >= table["thresholds"][-1]["exit_rate"]
    cut = m["report"]["partition"]["cuts"][0]
    assert cut["bytes"] > 0 and cut["flops_before"] > 0 and cut["flops_after"] > 0
    assert len(m["compute_ms"]) == 2
    runner = ArtifactRunner(r.path)
    res = runner.run(_data("eval").sample(0))
    assert res.done and res.tensors["logits"].shape == (1, 3)


def test_partition_at_a_named_tensor_and_an_unknown_one(tiny, tmp_path):
    from workloads import graph
    from workloads.export import export_model
    from workloads.models import BuildContext
    import onnx
    base = export_model(tiny, BuildContext(cache=Cache(tmp_path)))
    cuts = graph.analyze(onnx.load(str(base))).cuts
    r = prepare("tiny_cnn", chain({"partition": {"cut": cuts[1].tensor}}), parts=2, cache=Cache(tmp_path))
    assert r.manifest["cuts"] == [cuts[1].tensor]
    assert r.manifest["report"]["partition"]["max_abs_diff"] <= 1e-5
    with pytest.raises(WorkloadError, match="not_a_tensor"):
        prepare("tiny_cnn", chain({"partition": {"cut": "not_a_tensor"}}), parts=2, cache=Cache(tmp_path))


def test_a_failed_preparation_leaves_no_artifact(tiny, tmp_path):
    cache = Cache(tmp_path)
    with pytest.raises(WorkloadError):
        prepare("tiny_cnn", chain({"early_exit": {"kind": "skip"}}), cache=cache)   # no residual blocks
    left = list((tmp_path / "artifacts").iterdir()) if (tmp_path / "artifacts").exists() else []
    assert left == []                  # neither a half-written temporary folder nor an entry


def test_random_weights_report_the_metric_as_not_applicable(tiny, tmp_path):
    r = prepare("tiny_cnn", (), weights="random", cache=Cache(tmp_path))
    assert r.value is None and r.baseline is None
    assert "not applicable" in json.dumps(r.manifest["quality"]) and "interval" not in r.manifest["quality"]


def test_user_data_replaces_the_models_own_and_wrong_shapes_fail_first(tiny, tmp_path):
    d = _data("eval")
    good = tmp_path / "mine.npz"
    np.savez(good, x=d.inputs["image"], y=d.labels)
    r = prepare("tiny_cnn", (), data=good, cache=Cache(tmp_path / "c"))
    assert r.manifest["quality"]["samples"] == 18           # every fifth of 90 samples is eval
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 3, 12, 12), np.float32))
    with pytest.raises(WorkloadError, match=r"bad.npz: .*shape"):
        prepare("tiny_cnn", chain("quantize"), data=bad, cache=Cache(tmp_path / "c"))
    assert not list((tmp_path / "c" / "artifacts").glob(".*"))


# ------------------------------------------------------------------------ held-out evaluation

def _named(split, ctx=None, eval_repeats=0):
    """`_data` whose samples name their sources; with ``eval_repeats`` the first so many eval
    samples name the same sources as train samples (a leak)."""
    d = _data(split)
    first = {"train": 0, "calibration": 1000, "eval": 2000}[split]
    names = [f"item:{first + i}" for i in range(len(d))]
    if split == "eval":
        names[:eval_repeats] = [f"item:{i}" for i in range(eval_repeats)]
    return Dataset(d.name, d.task, d.inputs, d.labels, d.classes, sources=names)


def _leaky(monkeypatch, name="leaky_cnn", repeats=7, **fields):
    from dataclasses import replace

    from workloads import models
    entry = register_model(monkeypatch, name, _build, lambda s, ctx=None: _named(s, ctx, repeats), (1, 1, 12, 12))
    entry = replace(entry, **fields)
    monkeypatch.setitem(models._REGISTRY, name, entry)
    return entry


def test_an_evaluation_that_repeats_exit_head_training_sources_is_refused_in_one_line(monkeypatch, tmp_path):
    _leaky(monkeypatch)
    with pytest.raises(WorkloadError) as e:
        prepare("leaky_cnn", chain({"early_exit": {"points": 1, "epochs": 2}}), cache=Cache(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("leaky_cnn: the evaluation data (toy) shares 7 of its 90 source items")
    assert "(e.g. item:0) with the train data (toy) that early_exit heads learnt from" in msg
    assert "give evaluation data that no train or calibration sample comes from" in msg
    assert not list((tmp_path / "artifacts").iterdir())          # nothing was kept


def test_an_evaluation_that_repeats_calibration_sources_is_refused(monkeypatch, tmp_path):
    def data(split, ctx=None):
        d = _named(split)
        if split == "calibration":                  # calibration names eval's first two sources
            return Dataset(d.name, d.task, d.inputs, d.labels, d.classes,
                           sources=["item:2000", "item:2001"] + list(d.sources[2:]))
        return d
    register_model(monkeypatch, "calib_cnn", _build, data, (1, 1, 12, 12))
    with pytest.raises(WorkloadError, match=r"shares 2 of its 90 source items \(e.g. item:2000\) with the "
                                            r"calibration data \(toy\) that quantize learnt from"):
        prepare("calib_cnn", chain("quantize"), cache=Cache(tmp_path))
    r = prepare("calib_cnn", chain({"quantize": {"mode": "dynamic"}}), cache=Cache(tmp_path))    # reads none
    assert set(r.manifest["data"]) == {"eval"}


def test_a_model_trained_here_is_judged_on_data_it_was_not_trained_on(monkeypatch, tmp_path):
    _leaky(monkeypatch, "selftaught_cnn", repeats=3, trained_on=("train",))
    with pytest.raises(WorkloadError, match="shares 3 of its 90 source items .* that the model's own training "
                                            "learnt from"):
        prepare("selftaught_cnn", (), cache=Cache(tmp_path))
    r = prepare("selftaught_cnn", (), weights="random", cache=Cache(tmp_path))       # random: trained on nothing
    assert set(r.manifest["data"]) == {"eval"}


def test_training_operators_are_checked_before_they_train(monkeypatch, tmp_path):
    _leaky(monkeypatch, "leaky_prune", repeats=1)
    with pytest.raises(WorkloadError, match="that prune learnt from"):
        prepare("leaky_prune", chain({"prune": {"ratio": 0.3, "epochs": 1}}), cache=Cache(tmp_path))
    assert not (tmp_path / "trained").exists() or not list((tmp_path / "trained").iterdir())


def test_unnamed_samples_are_identified_by_content(monkeypatch, tmp_path):
    def data(split, ctx=None):                      # eval = the first 90 training samples, no sources
        return _data("train").take(90) if split == "eval" else _data(split)
    register_model(monkeypatch, "copy_cnn", _build, data, (1, 1, 12, 12))
    with pytest.raises(WorkloadError, match=r"shares 90 of its 90 source items \(e.g. content:[0-9a-f]{16}\) "
                                            "with the train data"):
        prepare("copy_cnn", chain({"early_exit": {"points": 1, "epochs": 2}}), cache=Cache(tmp_path))


def test_the_artifact_records_what_each_split_taught_it(tiny, tmp_path):
    r = prepare("tiny_cnn", chain("quantize", {"early_exit": {"points": 1, "epochs": 2}}), cache=Cache(tmp_path))
    data = r.manifest["data"]
    assert data["eval"] == {**_data("eval").provenance(), "used_by": ["evaluation"]}
    assert data["eval"]["samples"] == data["eval"]["sources"] == 90
    assert data["train"]["used_by"] == ["early_exit heads"] and data["train"]["samples"] == 300
    assert data["calibration"]["used_by"] == ["quantize"]
    assert data["calibration"]["digest"] == _data("calibration").provenance()["digest"]
    assert len({d["digest"] for d in data.values()}) == 3
    from testbed.output import _judged_on           # what `testbed prepare` prints of it
    assert _judged_on(data) == ("90 / 90 src; held out from calibration 40 / 40 src (quantize); "
                                "train 300 / 300 src (early_exit heads)")
    plain = prepare("tiny_cnn", (), cache=Cache(tmp_path)).manifest["data"]
    assert set(plain) == {"eval"}


def test_user_data_is_split_by_source(tiny, tmp_path):
    from workloads.prepare import user_data

    d = _data("eval")
    np.savez(tmp_path / "mine.npz", x=d.inputs["image"], y=d.labels)
    splits = user_data(tiny, tmp_path / "mine.npz")
    ev, tr, cal = (splits[s].source_set() for s in ("eval", "train", "calibration"))
    assert not ev & tr and not ev & cal and cal <= tr
    assert len(ev) == 18 and sorted(ev)[:2] == ["row:mine.npz:0", "row:mine.npz:10"]
    assert len(tr) + len(ev) == 90


def test_a_users_image_folder_is_normalised_like_the_models_own_images(tiny, tmp_path):
    from dataclasses import replace

    from PIL import Image

    from workloads.prepare import user_data

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("L", (12, 12), 200).save(tmp_path / "imgs" / cls / f"{i}.png")
    plain = user_data(tiny, tmp_path / "imgs")["eval"]
    normed = user_data(replace(tiny, image_norm=((0.5,), (0.25,))), tmp_path / "imgs")["eval"]
    np.testing.assert_allclose(plain.inputs["image"], 200 / 255, rtol=1e-6)
    np.testing.assert_allclose(normed.inputs["image"], (200 / 255 - 0.5) / 0.25, rtol=1e-5)
    assert normed.sources == (("file:a/0.png",), ("file:b/0.png",)) and normed.labels.tolist() == [0, 1]


# ------------------------------------------------------------ block skipping on segmentation

def _seg_build(ctx):
    nn = torch.nn
    torch.manual_seed(ctx.seed)

    class Block(nn.Module):              # a residual block: conv, relu, conv, + its input
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return torch.relu(x + self.b(torch.relu(self.a(x))))

    class TinySeg(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.layer = nn.Sequential(*(Block() for _ in range(4)))
            self.head = nn.Conv2d(8, 3, 1)

        def forward(self, image):
            return self.head(self.layer(torch.relu(self.stem(image))))

    m = TinySeg()
    from workloads.training import fit
    fit(m, _seg_data("train"), input_names=["image"], epochs=4, batch_size=16, lr=1e-2, seed=ctx.seed)
    return m.eval()


def _seg_data(split, ctx=None):
    """12×12 images of a bright square (class 1) and a dark one (class 2) on a background (0)."""
    n = {"train": 120, "calibration": 20, "eval": 60}[split]
    rng = np.random.default_rng({"train": 10, "calibration": 11, "eval": 12}[split])
    x = rng.normal(0, 0.2, (n, 1, 12, 12)).astype(np.float32)
    y = np.zeros((n, 12, 12), dtype=np.int64)
    for i in range(n):
        for cls, level in ((1, 1.5), (2, -1.5)):
            r, c = rng.integers(0, 8, 2)
            x[i, 0, r:r + 4, c:c + 4] += level
            y[i, r:r + 4, c:c + 4] = cls
    return Dataset(f"squares-{split}", "segmentation", {"image": x}, y, ("background", "bright", "dark"),
                   sources=tuple(f"{split}:{i}" for i in range(n)))


def test_block_skipping_applies_to_segmentation_and_is_judged_by_miou_with_its_interval(monkeypatch, tmp_path):
    from dataclasses import replace

    from workloads import models

    entry = register_model(monkeypatch, "tiny_seg", _seg_build, _seg_data, (1, 1, 12, 12))
    monkeypatch.setitem(models._REGISTRY, "tiny_seg", replace(entry, task="segmentation", metric="miou"))
    cache = Cache(tmp_path)
    r = prepare("tiny_seg", chain({"early_exit": {"kind": "skip"}}), cache=cache)
    report = r.manifest["report"]["early_exit"]
    assert report["kind"] == "skip" and report["skippable_blocks"] == 4
    assert report["skipped_blocks"] == ["layer/layer.2", "layer/layer.3"]       # the later half of the run
    assert report["flops_after"] < report["flops_before"]
    q = r.manifest["quality"]
    assert q["metric"] == "miou" and r.baseline > 0.5 and r.value < r.baseline   # two blocks fewer: it loses
    iv = q["interval"]
    assert iv["statistic"] == "miou" and iv["samples"] == 60 and not iv["exact"] and iv["note"] is None
    low, high = iv["loss"]
    assert low <= r.baseline - r.value <= high and high > 0
    assert measure(r.path, "miou") == iv                                        # from the files beside it
    # the heads still need one class decision per sample
    with pytest.raises(WorkloadError, match="task segmentation has no single class decision.*use kind: skip"):
        prepare("tiny_seg", chain({"early_exit": {"kind": "heads"}}), cache=cache)


def test_a_segmentation_model_without_residual_blocks_is_refused_in_one_line_saying_what_to_do(tmp_path):
    with pytest.raises(WorkloadError) as e:
        prepare("fmnist_segnet", chain({"early_exit": {"kind": "skip"}}), weights="random", cache=Cache(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("early_exit kind skip on fmnist_segnet: no residual blocks")
    assert "choose a model with residual blocks, or drop early_exit" in msg
