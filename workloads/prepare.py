"""Preparing artifacts: model → operators → evaluated, content-addressed artifact folder.

`prepare` is the one entry point (the CLI's ``testbed prepare`` and the deployment call it).
An artifact folder holds ``seg<i>.onnx`` files and ``artifact.json``: segments and the part
(host) each runs on, cut tensors with their bytes and FLOPs, exit heads and thresholds, what
each operator measured (int8 kernels, skipped blocks, exit rates per threshold), the metric
with its baseline and their 95 % intervals (`workloads.quality`, from the per-sample files
saved beside the segments), and single-thread compute time per part. It is keyed by the model, its
weights, the operator chain with every parameter, the number of parts and library versions,
and is built in a temporary folder, so a failed preparation leaves nothing behind.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .cache import Cache, content_key, library_versions
from .data import check_held_out
from .errors import WorkloadError
from .models import RANDOM_NOTE, BuildContext, ModelEntry, check_weights, get_model, metric_applicable
from .operators import FASTEST, OperatorCall, static_only
from .runtime import MANIFEST, ArtifactRunner, session
from .whitebox import VERSION as WHITEBOX_VERSION
from .whitebox import trained_model, training_calls, with_model_budget

PREPARE_VERSION = "4"       # bump when what an artifact holds changes (3: quality intervals; 4: held-out data)


@dataclass(frozen=True)
class Prepared:
    model: str
    weights: str
    operators: str
    parts: int
    metric: str
    value: float | None
    baseline: float | None
    size_bytes: int
    path: Path
    cached: bool

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / MANIFEST).read_text())


def user_data(entry: ModelEntry, path: Path | str) -> dict:
    """A user's data set for ``entry``, split deterministically: ``eval`` = every fifth sample,
    ``train`` = the rest, ``calibration`` = the first 128 of train. A sample's source is its
    file (relative path) or array row, so this split by sample is a split by source: eval shares
    none with train or calibration. Checked against the model's inputs (shape and dtype), so a
    wrong-shaped calibration set fails before anything is built."""
    from . import datasets

    path = Path(path)
    spec = entry.inputs[0]
    if path.is_dir():
        mean, std = entry.image_norm or (None, None)
        data = datasets.image_folder(path, tuple(spec.shape[1:]), mean, std, input_name=spec.name,
                                     unlabelled_ok=entry.metric == "agreement")
    elif path.suffix in (".npz", ".npy", ".csv"):
        data = datasets.array_file(path, spec.name, sample_shape=tuple(spec.shape[1:]), task=entry.task,
                                   label_column=-1 if path.suffix == ".csv" else None)
    else:
        raise WorkloadError(f"{path}: data must be a folder of images (one subfolder per class) or a "
                            ".npz, .npy or .csv file")
    data = datasets.check_against(data, entry.inputs, str(path))
    if len(data) < 2:
        raise WorkloadError(f"{path}: {len(data)} sample(s); at least 2 are needed (train and eval)")
    idx = np.arange(len(data))
    ev, tr = idx[idx % 5 == 0], idx[idx % 5 != 0]
    return {"train": data.select(tr), "eval": data.select(ev), "calibration": data.select(tr[:128])}


def _data_digest(splits: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for split in sorted(splits):
        d = splits[split]
        for k in sorted(d.inputs):
            h.update(np.ascontiguousarray(d.inputs[k]).tobytes())
        if d.labels is not None:
            h.update(np.ascontiguousarray(d.labels).tobytes())
    return h.hexdigest()[:32]


def _predictions(run, data) -> np.ndarray:
    return np.stack([np.asarray(run(data.sample(i))).argmax(axis=1)[0] for i in range(len(data))])


def _baseline(entry: ModelEntry, base: Path, data, cache: Cache, key: str) -> dict:
    """The untransformed model's metric and predictions on ``data`` (cached beside the model)."""
    from .metrics import evaluate

    def build(folder: Path):
        sess = session(base)
        run = (lambda feeds: sess.run(None, feeds)[0])
        preds = _predictions(run, data)
        np.save(folder / "predictions.npy", preds)
        result = evaluate(run, data, entry.task) if data.labelled else {"metric": "agreement", "value": 1.0,
                                                                         "samples": len(data)}
        (folder / "metric.json").write_text(json.dumps(result))

    folder = cache.get_or_build("evaluations", key, build)
    return {**json.loads((folder / "metric.json").read_text()), "predictions": np.load(folder / "predictions.npy")}


def _compute_ms(folder: Path, data, repeats: int = 10) -> list[float]:
    """Median single-thread compute time of each part on the first sample (no exits taken)."""
    runner = ArtifactRunner(folder)
    feeds = data.sample(0)
    out = []
    tensors = feeds
    never = {i: 2.0 for i, s in enumerate(runner.segments) if s.exit_output}   # > 1: exits never fire
    for part in range(runner.manifest["parts"]):
        inputs = {**feeds, **tensors}
        times = []
        for r in range(repeats + 2):
            t0 = time.perf_counter_ns()
            res = runner.run_part(part, inputs, never)
            if r >= 2:
                times.append((time.perf_counter_ns() - t0) / 1e6)
        out.append(round(float(np.median(times)), 3))
        tensors = res.tensors
    return out


def apply_chain(entry: ModelEntry, pipeline, chain: tuple[OperatorCall, ...], parts: int, ctx: BuildContext,
                data: dict):
    from . import early_exit, graph
    from .quantize import QuantizeParams, cpu_features, int8_report, measure_latency, quantize_model

    p = pipeline
    for call in chain:
        prm = dict(call.params)
        ctx.progress(f"{entry.name}: {call.label()}")
        if call.name == "quantize":
            if p.exits:
                raise WorkloadError(f"{entry.name}: quantize must come before early_exit")
            if "qat" in p.report:
                raise WorkloadError(f"{entry.name}: qat already made an int8 model; remove quantize from the chain")
            if prm["mode"] == "auto":
                prm["mode"] = "dynamic" if entry.task == "text_classification" else "static"
                if prm["mode"] == "dynamic":
                    static_only(call, f"{entry.name} (a text model: mode auto is dynamic)")
            qp = QuantizeParams.from_mapping(prm, where="quantize")
            q = quantize_model(p.backbone, qp, data["calibration"]("quantize") if qp.mode == "static" else None)
            report = int8_report(q)
            report.check()
            # the speed-up on this CPU, measured side by side (single thread, one sample); never assumed
            feeds = data["eval"]().sample(0)
            fp32 = measure_latency(p.backbone, feeds, threads=1, warmup=3, repeats=15)
            int8 = measure_latency(q, feeds, threads=1, warmup=3, repeats=15)
            p = replace(p, backbone=q).with_report("quantize", {
                "params": prm, **report.as_dict(), "fp32_ms": round(fp32.median_ms, 3),
                "int8_ms": round(int8.median_ms, 3), "speedup": round(fp32.median_ms / int8.median_ms, 3),
                "cpu_features": cpu_features()})
        elif call.name == "early_exit":
            early_exit.check_task(entry.task, entry.name, prm["kind"])
            if prm["kind"] == "skip":
                blocks = prm["blocks"]
                if blocks == "auto" and entry.skippable_blocks:
                    blocks = entry.skippable_blocks
                p = early_exit.skip_blocks(p, blocks)
            else:
                train = data["train"]("early_exit heads")
                labels = train.labels if train.labelled else data["reference_train"](train)
                p = early_exit.add_heads(p, points=prm["points"], threshold=prm["threshold"], epochs=prm["epochs"],
                                         train=train, reference_labels=labels, classes=entry.num_classes,
                                         seed=ctx.seed, progress=ctx.progress)
        elif call.name == "partition":
            info = p.info()
            cut = prm["cut"]
            if cut == FASTEST:      # an experiment's candidates name their tensors (testbed.fastest)
                raise WorkloadError(f"{entry.name}: partition cut: fastest is chosen per sweep point by testbed run "
                                    "and plan, from an experiment; to build one artifact, give the cut's tensor")
            if cut == "auto":
                cuts = graph.auto_cuts(info, parts, entry.name)
            elif isinstance(cut, tuple):
                cuts = graph.resolve_cuts(info, list(cut), entry.name)
            else:
                cuts = [graph.resolve_cut(info, cut, entry.name)]
            if len(cuts) + 1 != parts:
                raise WorkloadError(f"{entry.name}: partition makes {len(cuts) + 1} parts for {parts} hosts")
            names = [c.tensor for c in cuts]
            diff = None
            if prm["verify"]:
                diff = graph.verify_split(p.backbone, graph.split(p.backbone, names, info),
                                          data["eval"]().sample(0), atol=prm["atol"])
            p = replace(p, cuts=tuple(names)).with_report("partition", {
                "cuts": [{"tensor": c.tensor, "dtype": c.dtype, "shape": list(c.shape), "bytes": c.bytes,
                          "flops_before": c.flops_before, "flops_after": c.flops_after,
                          "fraction": round(c.fraction, 4)} for c in cuts],
                "max_abs_diff": diff, "total_flops": info.total_flops})
        else:
            raise WorkloadError(f"operator {call.name} cannot be applied yet")
    if parts > 1 and not p.cuts:
        raise WorkloadError(f"{entry.name}: {parts} parts need a partition operator")
    return p


def _artifact_key(entry: ModelEntry, chain: tuple[OperatorCall, ...], parts: int, weights: str, seed: int,
                  digest: str | None, base_key: str) -> str:
    # artifacts with training operators also change when the white-box code's version does
    extra = {"whitebox": WHITEBOX_VERSION} if training_calls(chain) else {}
    return content_key("artifact", model=entry.name, version=entry.version, weights=weights, seed=seed,
                       data=digest, chain=[c.as_dict() for c in chain], parts=parts, prepare=PREPARE_VERSION,
                       libs=library_versions(), base=base_key, **extra)


def cached_artifact(model: str, chain: tuple[OperatorCall, ...] = (), *, parts: int = 1,
                    weights: str | None = None, data: Path | str | None = None, cache: Cache | None = None,
                    seed: int = 0) -> Path | None:
    """The folder of the artifact `prepare` would return, if it is in the cache; None if it
    would have to be built (nothing is built here)."""
    from .export import model_key

    cache = cache or Cache()
    entry = get_model(model)
    weights = weights or entry.weights[0]
    base = cache.get("models", model_key(entry, BuildContext(cache=cache, weights=weights, seed=seed)))
    if base is None:
        return None
    digest = None if data is None else _data_digest(user_data(entry, data))
    training = tuple(with_model_budget(c, entry) for c in training_calls(chain))
    return cache.get("artifacts", _artifact_key(entry, training + chain[len(training):], parts, weights, seed,
                                                digest, base.name))


def prepare(model: str, chain: tuple[OperatorCall, ...] = (), *, parts: int = 1, weights: str | None = None,
            data: Path | str | None = None, cache: Cache | None = None, progress=lambda message: None,
            seed: int = 0) -> Prepared:
    """Build (or find in the cache) the artifact of ``model`` under ``chain`` split into ``parts``.

    ``data``: a user data set (image folder or array file) that replaces the model's own for
    calibration, exit-head training and evaluation; its content is part of the cache key."""
    import onnx

    from .export import export_model
    from .metrics import evaluate
    from .pipeline import Pipeline

    cache = cache or Cache()
    entry = get_model(model)
    weights = weights or entry.weights[0]
    check_weights(entry, weights)
    ctx = BuildContext(cache=cache, weights=weights, seed=seed, progress=progress)
    base = export_model(entry, ctx)
    libs = library_versions()
    own = user_data(entry, data) if data is not None else None
    digest = None if own is None else _data_digest(own)
    training = tuple(with_model_budget(c, entry) for c in training_calls(chain))
    chain = training + chain[len(training):]
    key = _artifact_key(entry, chain, parts, weights, seed, digest, base.parent.name)
    cached = cache.get("artifacts", key) is not None
    applicable = metric_applicable(entry, weights)

    memo: dict = {}

    def dataset(split):
        if split not in memo:
            memo[split] = own[split] if own is not None else entry.dataset(split, ctx)
        return memo[split]

    def reference_train(train):
        sess = session(base)
        return _predictions(lambda f: sess.run(None, f)[0], train.take(10000))

    # what each split taught the artifact: {split: [who learnt from it]}, filled as operators read
    # train / calibration (evaluation reads of eval, e.g. a sample to time, teach nothing)
    learnt: dict[str, list[str]] = {}
    if own is None and weights != "random":
        for split in entry.trained_on:
            learnt.setdefault(split, []).append("the model's own training")

    def learning(split):
        def read(who: str | None = None):        # who: the operator, when it says (whitebox's loop does not)
            readers = learnt.setdefault(split, [])
            if who is not None and who not in readers:
                readers.append(who)
            return dataset(split)
        return read

    def held_out() -> dict:
        """The splits learnt from so far, {split: (data, who)}, after checking that the
        evaluation data share no source with them (one line if they do)."""
        used = {split: (dataset(split), who) for split, who in learnt.items()}
        check_held_out(entry.name, dataset("eval"), used)
        return used

    def build(folder: Path):
        t0 = time.monotonic()
        data_fns = {"eval": lambda: dataset("eval"), "train": learning("train"),
                    "calibration": learning("calibration"), "reference_train": reference_train}
        start, reports = base, {}
        if training:          # cached training reads nothing: it learnt from train all the same
            learnt.setdefault("train", []).extend(c.name for c in training)
        held_out()            # before training: a leak found now costs no training time
        if training:
            start, reports = trained_model(entry, training, ctx, data_fns, base, digest)
        pipe = Pipeline(entry.name, entry.task, onnx.load(str(start)))
        for name, report in reports.items():
            pipe = pipe.with_report(name, report)
        pipe = apply_chain(entry, pipe, chain[len(training):], parts, ctx, data_fns)
        manifest = pipe.save(folder, {"weights": weights, "operators": [c.as_dict() for c in chain],
                                      "libraries": libs})
        ctx.progress(f"{entry.name}: evaluating")
        data = dataset("eval")
        used = held_out()
        manifest["data"] = {"eval": {**data.provenance(), "used_by": ["evaluation"]},
                            **{split: {**d.provenance(), "used_by": who} for split, (d, who) in used.items()}}
        base_eval = _baseline(entry, base, data, cache, content_key("evaluation", base=base.parent.name,
                                                                     data=_data_digest({"eval": data})))
        runner = ArtifactRunner(folder)
        run = (lambda feeds: runner.run(feeds).tensors[runner.outputs[0]])
        if not applicable:
            quality = {"metric": entry.metric, "value": None, "baseline": None,
                       "note": RANDOM_NOTE}
        elif data.labelled:
            q = evaluate(run, data, entry.task, with_scores=True)
            quality = {**q, "baseline": base_eval["value"]}
        else:
            q = evaluate(run, data, entry.task, reference=base_eval["predictions"], with_scores=True)
            quality = {**q, "baseline": 1.0}
        if applicable:        # per sample, paired with the untransformed model's: Wilcoxon and 95 % intervals
            from .quality import save_samples

            # only partitions: the parts compute the untransformed graph, its loss is 0 by construction
            exact = all(c.name == "partition" for c in chain)
            quality.update(save_samples(folder, quality, base_eval["predictions"], data, exact=exact))
        if pipe.exits and applicable:
            from .early_exit import exit_table
            manifest["report"]["early_exit"]["table"] = exit_table(
                folder, data, None if data.labelled else base_eval["predictions"])
        manifest["quality"] = quality
        manifest["compute_ms"] = _compute_ms(folder, data)
        manifest["prepare_seconds"] = round(time.monotonic() - t0, 2)
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))

    path = cache.get_or_build("artifacts", key, build)
    m = json.loads((path / MANIFEST).read_text())
    size = sum(s["bytes"] for s in m["segments"])
    label = " → ".join(c.label() for c in chain) or "none"
    return Prepared(entry.name, weights, label, parts, m["quality"].get("metric", entry.metric),
                    m["quality"].get("value"), m["quality"].get("baseline"), size, path, cached)


def request_inputs(model: str, *, weights: str | None = None, data: Path | str | None = None, count: int = 10,
                   cache: Cache | None = None, seed: int = 0) -> tuple[list[dict], list[np.ndarray]]:
    """``count`` samples of ``model``'s evaluation data as single-sample feeds (what requests
    send; more than the data set has is an error), with the untransformed model's output for each
    (what the answers are checked against)."""
    from .export import export_model

    cache = cache or Cache()
    entry = get_model(model)
    weights = weights or entry.weights[0]
    check_weights(entry, weights)
    ctx = BuildContext(cache=cache, weights=weights, seed=seed)
    base = export_model(entry, ctx)
    data = user_data(entry, data)["eval"] if data is not None else entry.dataset("eval", ctx)
    if count > len(data):
        raise WorkloadError(f"{entry.name}: requests.inputs is {count} but its evaluation data has {len(data)} "
                            f"samples; set requests.inputs to at most {len(data)}")
    picks = np.linspace(0, len(data) - 1, num=count).round().astype(int)
    samples = [data.sample(int(i)) for i in picks]
    sess = session(base)
    return samples, [sess.run(None, s)[0] for s in samples]
