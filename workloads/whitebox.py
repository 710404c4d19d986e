"""White-box operators: those that change weights, on the torch model, before export.

A chain's training operators (``qat``, ``prune``, ``distill``; see `workloads.operators`) run
first, in the prepare -> train -> convert shape, all through the one loop of
`workloads.training.fit`:

* **prepare**: the model's torch module (``ModelEntry.build``) is changed: channels removed,
  masks attached, fake quantization inserted, a student made;
* **train**: `fit` fine-tunes it on the model's training data (true labels, or the
  untransformed model's predictions for unlabelled data) within the operator's budget
  (``epochs``, ``steps`` and/or ``seconds``: the first one spent ends it), with a checkpoint in
  the cache so that an interrupted build resumes where it stopped;
* **convert**: masks are folded in, and the module is exported to ONNX (opset 17) and checked.

The result is cached (kind ``trained``) by the exported model's key, the training calls with
every parameter, the data and the library versions; what follows in the chain (quantize,
early exit, partition) starts from it. Each operator reports parameters and FLOPs before and
after, its budget, seed, training history and the measured single-thread ONNX Runtime latency
of the model before and after, side by side.

Pruning (``prune``):

* ``kind: structured`` (default) removes whole channels with torch-pruning's dependency graph
  (every layer that consumes a removed channel shrinks with it; the classifier's outputs are
  kept), L2-magnitude importance, ``ratio`` of the channels of each prunable layer. The model
  is smaller, so ONNX Runtime runs it faster.
* ``kind: unstructured`` zeroes the ``ratio`` of weights with the smallest magnitude across
  all convolution and linear layers (study B's pruning). The shapes do not change; ONNX Runtime
  has no sparse kernels, so it is not faster, which the report shows, measured.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .cache import Cache, content_key, library_versions
from .errors import WorkloadError
from .operators import OPERATORS, OperatorCall
from .registry import BuildContext, ModelEntry

TRAINED_FILE = "model.onnx"
REPORT_FILE = "report.json"


def training_calls(chain: tuple[OperatorCall, ...]) -> tuple[OperatorCall, ...]:
    """The leading training operators of a validated chain."""
    return tuple(c for c in chain if OPERATORS[c.name].kind == "training")


def _module(entry: ModelEntry, ctx: BuildContext):
    import torch

    from .user import onnx_path

    if onnx_path(entry) is not None:
        raise WorkloadError(f"{entry.name}: training operators need the torch model, and this model is an ONNX "
                            "file; give it as package.module:factory to train it")
    built = entry.build(ctx)
    if not isinstance(built, torch.nn.Module):
        raise WorkloadError(f"{entry.name}: training operators need a torch module; this model is built as "
                            f"{type(built).__name__}")
    return built


def _training_data(data: dict):
    """The training split with labels: its own, or the untransformed model's predictions."""
    from dataclasses import replace

    train = data["train"]()
    if len(train) == 0:
        raise WorkloadError(f"{train.name}: no training data; a training operator needs some")
    if not train.labelled:
        train = replace(train, labels=data["reference_train"](train))
    return train


def _output_layers(module, classes: int | None) -> list:
    """Layers whose outputs are the model's classes (kept whole by structured pruning): the
    last linear or convolution layer with ``classes`` outputs, or else the last such layer."""
    import torch.nn as nn

    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    if not layers:
        return []
    out = lambda m: m.out_features if isinstance(m, nn.Linear) else m.out_channels  # noqa: E731
    matching = [m for m in layers if classes is not None and out(m) == classes]
    return [matching[-1] if matching else layers[-1]]


def _weights(module):
    import torch.nn as nn

    return [(m, "weight") for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d))]


def sparsity(module) -> float:
    """Fraction of exactly-zero weights over convolution and linear layers."""
    total = zeros = 0
    for m, name in _weights(module):
        w = getattr(m, name).detach()
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / total if total else 0.0


def _example(entry: ModelEntry, train) -> tuple:
    import torch

    sample = train.sample(0)
    return tuple(torch.from_numpy(np.ascontiguousarray(sample[s.name])) for s in entry.inputs)


def prune(module, entry: ModelEntry, call: OperatorCall, train, ctx: BuildContext, checkpoint: Path) -> dict:
    """Prune ``module`` in place as ``call`` says, fine-tune it; the report."""
    import torch

    from .training import fit

    prm = dict(call.params)
    params_before = sum(p.numel() for p in module.parameters())
    ratio = prm["ratio"]
    if prm["kind"] == "structured":
        if entry.task == "text_classification":
            raise WorkloadError(f"{entry.name}: structured pruning of transformer models is not built yet "
                                "(attention heads need their own grouping); use kind: unstructured")
        import torch_pruning as tp

        example = _example(entry, train)
        ignored = _output_layers(module, entry.num_classes)
        torch.manual_seed(ctx.seed)
        pruner = tp.pruner.MetaPruner(module, example if len(example) > 1 else example[0],
                                      importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=ignored, round_to=prm["round_to"])
        pruner.step()
        targets = []
    else:
        import torch.nn.utils.prune as tprune

        targets = _weights(module)
        tprune.global_unstructured(targets, pruning_method=tprune.L1Unstructured, amount=ratio)
    ctx.progress(f"{entry.name}: prune ({prm['kind']}, {ratio:g}): fine-tuning")
    history = fit(module, train, input_names=[s.name for s in entry.inputs],
                  epochs=prm["epochs"], steps=prm["steps"], seconds=prm["seconds"], lr=prm["lr"],
                  batch_size=prm["batch_size"], seed=ctx.seed, progress=ctx.progress, checkpoint=checkpoint)
    if targets:
        import torch.nn.utils.prune as tprune

        for m, name in targets:
            tprune.remove(m, name)          # masks folded into the weights: plain zeros
    return {"params": prm, "params_before": params_before, "params_after": sum(p.numel() for p in module.parameters()),
            "sparsity": round(sparsity(module), 4), "history": history}


APPLY = {"prune": prune}


def trained_model(entry: ModelEntry, calls: tuple[OperatorCall, ...], ctx: BuildContext, data: dict,
                  base: Path, data_digest: str | None) -> tuple[Path, dict]:
    """The ONNX model of ``entry`` after the training operators ``calls`` (cached), and their
    reports keyed by operator. ``base``: the untransformed export (to compare with)."""
    from . import graph
    from .export import torch_to_onnx
    from .quantize import measure_latency

    cache: Cache = ctx.cache
    key = content_key("trained", base=base.parent.name, calls=[c.as_dict() for c in calls], seed=ctx.seed,
                      data=data_digest, libs=library_versions())
    checkpoint_dir = cache.root / "checkpoints"

    def build(folder: Path) -> None:
        import onnx

        t0 = time.monotonic()
        module = _module(entry, ctx)
        train = _training_data(data)
        reports = {}
        for i, call in enumerate(calls):
            if call.name not in APPLY:
                raise WorkloadError(f"{entry.name}: operator {call.name} is not built yet")
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            t_call = time.monotonic()
            reports[call.name] = APPLY[call.name](module, entry, call, train, ctx,
                                                  checkpoint_dir / f"{key}-{i}.pt")
            reports[call.name]["seconds"] = round(time.monotonic() - t_call, 2)
            reports[call.name]["seed"] = ctx.seed
        path = folder / TRAINED_FILE
        ctx.progress(f"{entry.name}: exporting the trained model")
        torch_to_onnx(module, entry.inputs, entry.output_names, path)
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        before, after = graph.analyze(onnx.load(str(base))), graph.analyze(model)
        feeds = data["eval"]().sample(0)
        # the speed-up on this CPU, measured side by side (single thread, one sample); never assumed
        base_ms, trained_ms = [], []
        for _ in range(2):                 # interleaved rounds: both see the same machine
            base_ms.append(measure_latency(base, feeds, threads=1, warmup=3, repeats=15).median_ms)
            trained_ms.append(measure_latency(path, feeds, threads=1, warmup=3, repeats=15).median_ms)
        fp, tr = float(np.mean(base_ms)), float(np.mean(trained_ms))
        last = calls[-1].name
        reports[last].update({"flops_before": before.total_flops, "flops_after": after.total_flops,
                              "onnx_params_before": before.params, "onnx_params_after": after.params,
                              "base_ms": round(fp, 3), "trained_ms": round(tr, 3), "speedup": round(fp / tr, 3),
                              "size_before": base.stat().st_size, "size_after": path.stat().st_size})
        reports["training_seconds"] = round(time.monotonic() - t0, 2)
        (folder / REPORT_FILE).write_text(json.dumps(reports, indent=1, default=str))

    folder = cache.get_or_build("trained", key, build,
                                description={"model": entry.name, "operators": [c.label() for c in calls]})
    return folder / TRAINED_FILE, json.loads((folder / REPORT_FILE).read_text())
