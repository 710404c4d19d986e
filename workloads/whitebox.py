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
  is smaller, so ONNX Runtime runs it faster. In a transformer, ``ratio`` of each layer's
  attention heads and feed-forward neurons go and the width (embeddings, residual stream)
  stays.
* ``kind: unstructured`` zeroes the ``ratio`` of weights with the smallest magnitude across
  all convolution and linear layers (study B's pruning). The shapes do not change; ONNX Runtime
  has no sparse kernels, so it is not faster, which the report shows, measured.

Distillation (``distill``): a student learns from the model (the teacher, frozen) with
``alpha`` x T² x KL(teacher ‖ student at temperature T) + (1 - ``alpha``) x cross entropy with
the labels (per pixel for segmentation). The student is ``narrow`` (the teacher with
``ratio`` of its channels, or a transformer's heads and feed-forward neurons, removed, starting
from the teacher's own weights), ``shallow`` (the
teacher keeping an evenly spaced 1 - ``ratio`` of its longest list of repeated layers: a
transformer's encoder layers), or a registry model of the same task, classes and inputs; it is
what gets exported. DSPTQ is ``[distill, quantize]``.

Quantization-aware training (``qat``): convolutional models through torch.fx (batch norm folded
first); transformers, which torch.fx cannot trace, by fake quantization in every linear layer
(`_fake_quant_linear`). Either way the export's weight quantization is folded into int8
initializers (`workloads.quantize.fold_weight_quantization`) and ORT's int8 kernels are checked.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .cache import Cache, content_key, library_versions
from .errors import WorkloadError
from .models import BuildContext, ModelEntry
from .operators import OPERATORS, OperatorCall

VERSION = "4"              # bump when what a trained model holds changes (part of its key)
TRAINED_FILE = "model.onnx"
REPORT_FILE = "report.json"


def training_calls(chain: tuple[OperatorCall, ...]) -> tuple[OperatorCall, ...]:
    """The leading training operators of a validated chain."""
    return tuple(c for c in chain if OPERATORS[c.name].kind == "training")


def with_model_budget(call: OperatorCall, entry: ModelEntry) -> OperatorCall:
    """``call`` with the model's default step budget (`ModelEntry.training_steps`) when the
    user gave none: it is then part of the call, so of the cache key and the report."""
    if entry.training_steps is None or call.given & {"epochs", "steps", "seconds"}:
        return call
    from dataclasses import replace

    return replace(call, params=tuple((k, entry.training_steps if k == "steps" else v) for k, v in call.params))


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


def prune(module, entry: ModelEntry, call: OperatorCall, train, ctx: BuildContext, checkpoint: Path):
    """Prune ``module`` in place as ``call`` says, fine-tune it; returns (module, report)."""
    from .training import fit

    prm = dict(call.params)
    params_before = sum(p.numel() for p in module.parameters())
    ratio = prm["ratio"]
    if prm["kind"] == "structured":
        _structured(module, entry, train, ratio, prm["round_to"], ctx.seed)
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
    return module, {"params": prm, "params_before": params_before,
                    "params_after": sum(p.numel() for p in module.parameters()),
                    "sparsity": round(sparsity(module), 4), "history": history}


# ---- distillation ------------------------------------------------------------------------

def _attention_modules(module) -> list:
    """Self-attention modules in the Hugging Face shape: ``num_attention_heads`` and linear
    ``query``, ``key`` and ``value`` projections."""
    import torch.nn as nn

    return [m for m in module.modules() if hasattr(m, "num_attention_heads")
            and all(isinstance(getattr(m, a, None), nn.Linear) for a in ("query", "key", "value"))]


def _structured(module, entry: ModelEntry, train, ratio: float, round_to: int, seed: int) -> None:
    """Remove ``ratio`` of the channels of every prunable layer in place (dependency-aware).

    Transformers (modules with self-attention): whole attention heads (``ratio`` of each
    layer's heads, by the L2 norm of their query/key/value weights) and ``ratio`` of each
    feed-forward layer's hidden neurons go; the model width (embeddings, residual stream,
    layer norms) stays, so every layer keeps its input and output shape."""
    import torch
    import torch.nn as nn
    import torch_pruning as tp

    example = _example(entry, train)
    torch.manual_seed(seed)
    ignored = _output_layers(module, entry.num_classes)
    attention = _attention_modules(module)
    extra = {}
    if attention:
        ignored += [m for m in module.modules() if isinstance(m, nn.Embedding)]   # keeps the model width
        extra = dict(num_heads={getattr(a, p): a.num_attention_heads for a in attention
                                for p in ("query", "key", "value")},
                     prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio)
    pruner = tp.pruner.MetaPruner(module, example if len(example) > 1 else example[0],
                                  importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                                  ignored_layers=ignored, round_to=round_to, **extra)
    pruner.step()
    for a in attention:               # the attention's reshapes read these
        a.num_attention_heads = pruner.num_heads[a.query]
        a.all_head_size = a.query.out_features
        a.attention_head_size = a.all_head_size // a.num_attention_heads


def _shallow(module, keep: float) -> str:
    """Keep an evenly spaced ``keep`` fraction of the longest list of identical layers (a
    transformer's encoder layers); the list's dotted name."""
    import torch.nn as nn

    best = None
    for name, m in module.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) >= 2 and len({type(c) for c in m}) == 1:
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    if best is None:
        raise WorkloadError("distill: student shallow needs a model with a list of repeated layers "
                            "(a transformer's encoder); use student: narrow")
    name, layers = best
    n = len(layers)
    k = max(1, round(n * keep))
    idx = sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)}) if k > 1 else [0]
    parent = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
    setattr(parent, name.rsplit(".", 1)[-1], nn.ModuleList([layers[i] for i in idx]))
    for m in module.modules():                      # transformers read their depth from the config
        cfg = getattr(m, "config", None)
        if cfg is not None and getattr(cfg, "num_hidden_layers", None) == n:
            cfg.num_hidden_layers = len(idx)
    return f"{name}: kept {len(idx)} of {n} ({', '.join(map(str, idx))})"


def _student(entry: ModelEntry, call: OperatorCall, teacher, train, ctx: BuildContext):
    """The student module and a description of how it was made."""
    import copy

    from .models import get_model

    prm = dict(call.params)
    kind = prm["student"]
    if kind == "auto":
        kind = "shallow" if entry.task == "text_classification" else "narrow"
    if kind == "narrow":
        student = copy.deepcopy(teacher)
        _structured(student, entry, train, prm["ratio"], 8, ctx.seed)
        what = "attention heads and feed-forward neurons" if _attention_modules(student) else "channels"
        return student, f"the teacher with {prm['ratio']:g} of its {what} removed (torch-pruning, L2 magnitude)"
    if kind == "shallow":
        student = copy.deepcopy(teacher)
        return student, _shallow(student, 1 - prm["ratio"])
    other = get_model(kind)
    if other.task != entry.task or other.num_classes != entry.num_classes \
            or [s.name for s in other.inputs] != [s.name for s in entry.inputs]:
        raise WorkloadError(f"{entry.name}: student {kind} does not fit the teacher: task {other.task} vs "
                            f"{entry.task}, {other.num_classes} vs {entry.num_classes} classes, inputs "
                            f"{[s.name for s in other.inputs]} vs {[s.name for s in entry.inputs]}")
    # a teacher with random weights (a latency-only study) gets a random student: no download
    weights = ctx.weights if ctx.weights in other.weights else other.weights[0]
    student = other.build(BuildContext(cache=ctx.cache, weights=weights, seed=ctx.seed, progress=ctx.progress))
    return student, f"registry model {kind} ({weights} weights)"


def _kd_loss(temperature: float, alpha: float, segmentation: bool):
    """alpha x T^2 x KL(teacher || student at temperature T) + (1 - alpha) x cross entropy with
    the labels, on the stacked (student, teacher) outputs of `_Distilled`."""
    import torch.nn.functional as F

    def loss(stacked, labels):
        s, t = stacked[0], stacked[1]
        if segmentation:          # per pixel: classes on axis 1 -> move them last, flatten pixels
            s = s.movedim(1, -1).reshape(-1, s.shape[1])
            t = t.movedim(1, -1).reshape(-1, t.shape[1])
        soft = F.kl_div(F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1),
                        reduction="batchmean", log_target=True) * temperature ** 2
        hard = F.cross_entropy(stacked[0], labels) if alpha < 1 else 0.0
        return alpha * soft + (1 - alpha) * hard

    return loss


def _distilled(student, teacher):
    import torch
    import torch.nn as nn

    from .training import outputs_tensor

    class Distilled(nn.Module):
        """Training-time pair: the frozen teacher's outputs ride along with the student's."""

        def __init__(self):
            super().__init__()
            self.student = student
            self.teacher = teacher

        def forward(self, *args, **kwargs):
            with torch.no_grad():
                t = outputs_tensor(self.teacher(*args, **kwargs))
            return torch.stack([outputs_tensor(self.student(*args, **kwargs)), t])

        def train(self, mode: bool = True):
            super().train(mode)
            self.teacher.eval()               # batch norm / dropout of the teacher stay frozen
            return self

    for p in teacher.parameters():
        p.requires_grad_(False)
    return Distilled()


def distill(module, entry: ModelEntry, call: OperatorCall, train, ctx: BuildContext, checkpoint: Path):
    """Train a student on the teacher (``module``); returns (student, report)."""
    from .training import fit

    prm = dict(call.params)
    teacher = module.eval()
    student, how = _student(entry, call, teacher, train, ctx)
    params_teacher = sum(p.numel() for p in teacher.parameters())
    ctx.progress(f"{entry.name}: distilling into {prm['student']}")
    history = fit(_distilled(student, teacher), train, input_names=[s.name for s in entry.inputs],
                  loss=_kd_loss(prm["temperature"], prm["alpha"], entry.task == "segmentation"),
                  epochs=prm["epochs"], steps=prm["steps"], seconds=prm["seconds"], lr=prm["lr"],
                  batch_size=prm["batch_size"], seed=ctx.seed, progress=ctx.progress, checkpoint=checkpoint)
    student.eval()
    return student, {"params": prm, "student": how, "params_before": params_teacher,
                     "params_after": sum(p.numel() for p in student.parameters()), "history": history}


# ---- quantization-aware training ----------------------------------------------------------

def _fake_quant_args(per_channel: bool, ch_axis: int = 0) -> tuple[dict, dict]:
    """FakeQuantize arguments (activation, weight): activations uint8 0..255 (affine), weights
    int8 -128..127 (symmetric, per output channel on ``ch_axis`` or per tensor): the ranges
    ONNX's QuantizeLinear has and ORT's U8S8 kernels run."""
    import torch
    from torch.ao.quantization import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

    act = dict(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
               qscheme=torch.per_tensor_affine)
    if per_channel:
        wt = dict(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
                  qscheme=torch.per_channel_symmetric, ch_axis=ch_axis)
    else:
        wt = dict(observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
                  qscheme=torch.per_tensor_symmetric)
    return act, wt


def _qat_qconfig(per_channel: bool):
    from torch.ao.quantization import FakeQuantize, QConfig, QConfigMapping

    act, wt = _fake_quant_args(per_channel)
    return QConfigMapping().set_global(QConfig(activation=FakeQuantize.with_args(**act),
                                               weight=FakeQuantize.with_args(**wt)))


def qat(module, entry: ModelEntry, call: OperatorCall, train, ctx: BuildContext, checkpoint: Path):
    """prepare (fake quantization: by torch.fx, or in every linear layer of a transformer) ->
    train -> convert (observers frozen; the export turns every fake quantization into a
    QuantizeLinear/DequantizeLinear pair, and `fold_weight_quantization` stores the weights as
    int8)."""
    import torch

    from .training import fit

    prm = dict(call.params)
    if _attention_modules(module):
        prepared = _qat_linears(module, prm["per_channel"])
    else:
        prepared = _qat_fx(module, entry, train, prm["per_channel"])
    ctx.progress(f"{entry.name}: quantization-aware training")
    history = fit(prepared, train, input_names=[s.name for s in entry.inputs], epochs=prm["epochs"],
                  steps=prm["steps"], seconds=prm["seconds"], lr=prm["lr"], batch_size=prm["batch_size"],
                  seed=ctx.seed, progress=ctx.progress, checkpoint=checkpoint)
    prepared.eval()
    prepared.apply(torch.ao.quantization.disable_observer)     # the learnt ranges are what gets exported
    return prepared, {"params": prm, "params_before": sum(p.numel() for p in module.parameters()),
                      "history": history}


def _qat_fx(module, entry: ModelEntry, train, per_channel: bool):
    """Convolutional models: batch norm folded, fake quantization inserted by torch.fx."""
    import warnings

    import torch

    example = _example(entry, train)
    module.train()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # torch.ao's notice that FX quantization moved to torchao
            from torch.ao.quantization.quantize_fx import fuse_fx, prepare_qat_fx

            # batch norm folded into the convolutions first (statistics frozen): a BN left
            # between a convolution and its quantization keeps ORT from fusing them into
            # int8 kernels, and the model runs slower than float
            fused = fuse_fx(module.eval())
    except Exception as e:  # noqa: BLE001 - tracing fails in many ways; one line for the user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WorkloadError(f"{entry.name}: qat could not insert fake quantization (torch.fx tracing failed: "
                            f"{first[:200]})") from None
    left = [type(m).__name__ for m in fused.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if left:
        raise WorkloadError(f"{entry.name}: qat needs batch norm folded into the convolutions, and {len(left)} "
                            "could not be (a custom convolution module, or a batch norm that does not follow a "
                            "convolution); its int8 export would run slower than float: use quantize "
                            "(post-training) for this model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_qat_fx(fused.train(), _qat_qconfig(per_channel), example)


def _qat_linears(module, per_channel: bool):
    """Transformers (torch.fx cannot trace Hugging Face models): every linear layer in place
    becomes `_fake_quant_linear`; attention's activation-by-activation products, embeddings and
    layer norms stay float (they hold a few percent of the multiply-adds)."""
    import torch.nn as nn

    def swap(parent):
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                setattr(parent, name, _fake_quant_linear(child, per_channel))
            else:
                swap(child)

    swap(module)
    return module.train()


def _fake_quant_linear(linear, per_channel: bool):
    """``linear`` with fake quantization of its input, its (transposed) weight and its output
    before the bias. Exported, that is DequantizeLinear(x) and DequantizeLinear(W^T) into a
    MatMul followed by QuantizeLinear, which ONNX Runtime fuses into one QLinearMatMul (int8
    kernels). Without the output quantization it keeps the MatMul float (it first fuses the
    MatMul with the bias Add into a Gemm, breaking the pattern: measured, 0 int8 kernels);
    with the weight as ``W`` rather than ``W^T`` a Transpose sits between DequantizeLinear and
    MatMul, with the same effect."""
    import torch
    import torch.nn as nn
    from torch.ao.quantization import FakeQuantize

    act, wt = _fake_quant_args(per_channel, ch_axis=1)      # W^T is [in, out]: output channels on axis 1

    class FakeQuantLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.bias = linear.weight, linear.bias
            self.input_fq, self.weight_fq, self.output_fq = FakeQuantize(**act), FakeQuantize(**wt), FakeQuantize(**act)

        def forward(self, x):
            y = self.output_fq(torch.matmul(self.input_fq(x), self.weight_fq(self.weight.t())))
            return y if self.bias is None else y + self.bias

    return FakeQuantLinear()


APPLY = {"prune": prune, "distill": distill, "qat": qat}     # each returns (module, report)


def trained_model(entry: ModelEntry, calls: tuple[OperatorCall, ...], ctx: BuildContext, data: dict,
                  base: Path, data_digest: str | None) -> tuple[Path, dict]:
    """The ONNX model of ``entry`` after the training operators ``calls`` (cached), and their
    reports keyed by operator. ``base``: the untransformed export (to compare with)."""
    from . import graph
    from .export import torch_to_onnx
    from .quantize import measure_latency

    cache: Cache = ctx.cache
    key = content_key("trained", base=base.parent.name, calls=[c.as_dict() for c in calls], seed=ctx.seed,
                      data=data_digest, libs=library_versions(), version=VERSION)

    def build(folder: Path) -> None:
        import onnx

        t0 = time.monotonic()
        module = _module(entry, ctx)
        train = _training_data(data)
        reports = {}
        for i, call in enumerate(calls):
            if call.name not in APPLY:
                raise WorkloadError(f"{entry.name}: operator {call.name} is not built yet")
            t_call = time.monotonic()
            module, reports[call.name] = APPLY[call.name](module, entry, call, train, ctx,
                                                          cache.folder("checkpoints") / f"{key}-{i}.pt")
            reports[call.name]["seconds"] = round(time.monotonic() - t_call, 2)
            reports[call.name]["seed"] = ctx.seed
        path = folder / TRAINED_FILE
        ctx.progress(f"{entry.name}: exporting the trained model")
        torch_to_onnx(module, entry.inputs, entry.output_names, path)
        model = onnx.load(str(path))
        if "qat" in reports:
            from .quantize import fold_weight_quantization

            reports["qat"]["int8_weights"] = fold_weight_quantization(model)
            onnx.save(model, str(path))
        onnx.checker.check_model(model, full_check=True)
        if "qat" in reports:
            from .quantize import int8_report

            report = int8_report(model)
            report.check("qat")                 # a QAT model without int8 kernels is refused
            reports["qat"].update(report.as_dict())
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
