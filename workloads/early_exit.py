"""Early exit, both kinds.

``skip`` (study A): drop whole residual blocks from the backbone, the block's output replaced
by its input. Done on the ONNX graph, so it composes with quantization. Blocks are found by
the module path the exporter writes into node names (``/layer3/layer3.5/conv1/Conv``): a
block is a module whose nodes contain an ``Add`` and whose input and output (both valid cuts)
have the same shape and type. ``blocks: auto`` drops the later half of the longest run of
such blocks (ResNet-101: the last 11 of layer3's 22 identity blocks).

``heads``: real exits. A small classifier (global average pool, or a masked mean over tokens
for text, then one linear layer) is attached at each exit tensor, trained on that tensor's
features with the backbone frozen (features come from ONNX Runtime running the prepared
backbone, so a quantized backbone gets heads trained on its own int8 features), and exported
as ONNX nodes appended to the segment that ends there. At run time an exit whose top softmax
probability reaches its threshold answers the request; nothing runs after it.
"""
from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import graph
from .errors import WorkloadError, choices
from .pipeline import ExitHead, Pipeline
from .runtime import session, softmax_confidence

EXIT_TASKS = ("classification", "text_classification")
THRESHOLD_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def check_task(task: str, model: str, kind: str = "heads") -> None:
    """Exit heads answer with a class, so they need a task with one class decision per sample;
    skipping blocks (``kind: skip``) changes only the backbone and applies to any task whose
    model has skippable residual blocks (:func:`skip_blocks` says when it has none)."""
    if kind == "heads" and task not in EXIT_TASKS:
        raise WorkloadError(f"early_exit on {model}: task {task} has no single class decision to exit with; "
                            f"exit heads apply to {choices(EXIT_TASKS)}; for {task}, use kind: skip on a model "
                            "with residual blocks")


# ---------------------------------------------------------------- block skipping -------

def _module_path(node_name: str) -> tuple[str, ...]:
    parts = [p for p in node_name.split("/") if p]
    return tuple(parts[:-1])


def residual_blocks(model: onnx.ModelProto, info: graph.GraphInfo) -> dict[str, tuple[str, str]]:
    """``{block name: (input cut, output cut)}`` for every skippable residual block, in order."""
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    cut_at = {c.tensor: c for c in info.cuts}
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, n in enumerate(nodes):
        path = _module_path(n.name)
        for d in range(1, len(path) + 1):
            groups.setdefault(path[:d], []).append(i)
    found: dict[tuple[str, ...], tuple[str, str]] = {}
    for prefix, members in groups.items():
        if not any(nodes[i].op_type == "Add" for i in members):
            continue
        first, last, inside = min(members), max(members), set(members)
        outs = [c for c in info.cuts if producer.get(c.tensor) in inside]
        ins = [c for c in info.cuts if producer.get(c.tensor, -1) < first and producer.get(c.tensor) not in inside]
        if not outs or not ins:
            continue
        cin, cout = ins[-1], max(outs, key=lambda c: c.index)
        if producer.get(cout.tensor) != last and any(producer.get(c.tensor) == last for c in outs):
            cout = next(c for c in outs if producer.get(c.tensor) == last)
        if cin.shape == cout.shape and cin.dtype == cout.dtype and cut_at.get(cin.tensor):
            found[prefix] = (cin.tensor, cout.tensor)
    # keep the innermost blocks (a stage that happens to keep its shape contains blocks)
    inner = {p: v for p, v in found.items() if not any(q != p and q[:len(p)] == p for q in found)}
    order = {c.tensor: c.index for c in info.cuts}
    return {"/".join(p): v for p, v in sorted(inner.items(), key=lambda kv: order[kv[1][1]])}


def auto_blocks(blocks: dict[str, tuple[str, str]]) -> list[str]:
    """The later half of the longest run of consecutive blocks of one stage."""
    names = list(blocks)
    runs: list[list[str]] = []
    for name in names:
        stage = name.rsplit("/", 1)[0] if "/" in name else re.sub(r"\d+$", "", name)
        if runs and runs[-1][0].rsplit("/", 1)[0] == stage and blocks[runs[-1][-1]][1] == blocks[name][0]:
            runs[-1].append(name)
        elif runs and "/" not in name and blocks[runs[-1][-1]][1] == blocks[name][0]:
            runs[-1].append(name)
        else:
            runs.append([name])
    longest = max(runs, key=len)
    return longest[len(longest) // 2:]


def skip_blocks(p: Pipeline, blocks) -> Pipeline:
    info = p.info()
    found = residual_blocks(p.backbone, info)
    if not found:
        instead = ("use kind: heads" if p.task in EXIT_TASKS else
                   f"a {p.task} model has no exit heads either: choose a model with residual blocks, or drop "
                   "early_exit from this strategy")
        raise WorkloadError(f"early_exit kind skip on {p.model_name}: no residual blocks with identity shortcut "
                            f"found (a block's input added to its output, same shape in and out); {instead}")
    chosen = auto_blocks(found) if blocks == "auto" else list(blocks)
    for b in chosen:
        if b not in found:
            raise WorkloadError(f"early_exit kind skip on {p.model_name}: block {b!r} not skippable; valid: "
                                f"{choices(list(found)[:12])}{' …' if len(found) > 12 else ''} ({len(found)} in all)")
    m = onnx.ModelProto()
    m.CopyFrom(p.backbone)
    rename = {found[b][1]: found[b][0] for b in chosen}

    def resolve(name):
        while name in rename:
            name = rename[name]
        return name

    for n in m.graph.node:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = resolve(name)
    _prune_dead(m)
    onnx.checker.check_model(m)
    skipped = replace(p, backbone=m)
    return skipped.with_report("early_exit", {
        "kind": "skip", "skipped_blocks": chosen, "skippable_blocks": len(found),
        "flops_before": info.total_flops, "flops_after": skipped.info().total_flops})


def _prune_dead(m: onnx.ModelProto) -> None:
    """Remove nodes and initializers that no graph output depends on."""
    g = m.graph
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    vis = [v for v in g.value_info if v.name in needed]
    del g.value_info[:]
    g.value_info.extend(vis)


# ---------------------------------------------------------------- exit heads -----------

def exit_points(info: graph.GraphInfo, points, model: str) -> list[graph.Cut]:
    """Float cuts where heads attach: ``auto`` = 2 exits near 1/3 and 2/3 of the FLOPs."""
    floats = [c for c in info.cuts if c.dtype == "float32" and len(c.shape) in (2, 3, 4)]
    if not floats:
        raise WorkloadError(f"early_exit on {model}: no float tensor where an exit head could attach")
    if points == "auto":
        points = 2
    if isinstance(points, int):
        targets = [(k + 1) / (points + 1) for k in range(points)]
        chosen = []
        for t in targets:
            c = min(floats, key=lambda c: (abs(c.fraction - t), c.bytes))
            if c not in chosen:
                chosen.append(c)
        return sorted(chosen, key=lambda c: c.index)
    out = []
    for spec in points:
        c = graph.resolve_cut(info, spec, model)
        if c.dtype != "float32" or len(c.shape) not in (2, 3, 4):
            raise WorkloadError(f"early_exit on {model}: exit point {c.tensor} is {c.dtype}{list(c.shape)}; "
                                "an exit head needs a float tensor of rank 2 to 4")
        out.append(c)
    if [c.index for c in out] != sorted({c.index for c in out}):
        raise WorkloadError(f"early_exit on {model}: exit points must be distinct and in graph order")
    return out


def _pooled(features: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """(N, C) features: spatial mean for (N,C,H,W), masked token mean for (N,L,D), as is for (N,C)."""
    if features.ndim == 4:
        return features.mean(axis=(2, 3))
    if features.ndim == 3:
        if mask is None:
            return features.mean(axis=1)
        m = mask.astype(np.float32)[..., None]
        return (features * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
    return features


def _head_nodes(tag: str, cut: graph.Cut, weight: np.ndarray, bias: np.ndarray, mask_input: str | None):
    """ONNX nodes for pooled(features) @ weight.T + bias, writing ``<tag>_logits``."""
    t, out = cut.tensor, f"{tag}_logits"
    inits = [numpy_helper.from_array(weight.astype(np.float32), f"{tag}_W"),
             numpy_helper.from_array(bias.astype(np.float32), f"{tag}_b")]
    nodes = []
    rank = len(cut.shape)
    if rank == 4:
        nodes += [helper.make_node("GlobalAveragePool", [t], [f"{tag}_gap"], name=f"{tag}/gap"),
                  helper.make_node("Flatten", [f"{tag}_gap"], [f"{tag}_pooled"], axis=1, name=f"{tag}/flatten")]
    elif rank == 3 and mask_input:
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), f"{tag}_axis1"))
        inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{tag}_axislast"))
        inits.append(numpy_helper.from_array(np.array(1.0, dtype=np.float32), f"{tag}_one"))
        nodes += [
            helper.make_node("Cast", [mask_input], [f"{tag}_m"], to=TensorProto.FLOAT, name=f"{tag}/cast"),
            helper.make_node("Unsqueeze", [f"{tag}_m", f"{tag}_axislast"], [f"{tag}_m3"], name=f"{tag}/unsq"),
            helper.make_node("Mul", [t, f"{tag}_m3"], [f"{tag}_masked"], name=f"{tag}/mul"),
            helper.make_node("ReduceSum", [f"{tag}_masked", f"{tag}_axis1"], [f"{tag}_sum"], keepdims=0,
                             name=f"{tag}/sum"),
            helper.make_node("ReduceSum", [f"{tag}_m3", f"{tag}_axis1"], [f"{tag}_cnt0"], keepdims=0,
                             name=f"{tag}/cnt"),
            helper.make_node("Max", [f"{tag}_cnt0", f"{tag}_one"], [f"{tag}_cnt"], name=f"{tag}/max"),
            helper.make_node("Div", [f"{tag}_sum", f"{tag}_cnt"], [f"{tag}_pooled"], name=f"{tag}/div"),
        ]
    elif rank == 3:
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), f"{tag}_axis1"))
        nodes.append(helper.make_node("ReduceMean", [t, f"{tag}_axis1"], [f"{tag}_pooled"], keepdims=0,
                                      name=f"{tag}/mean"))
    else:
        nodes.append(helper.make_node("Identity", [t], [f"{tag}_pooled"], name=f"{tag}/id"))
    nodes.append(helper.make_node("Gemm", [f"{tag}_pooled", f"{tag}_W", f"{tag}_b"], [out], transB=1,
                                  name=f"{tag}/fc"))
    return tuple(nodes), tuple(inits), out


def collect_features(model: onnx.ModelProto, cuts: list[graph.Cut], data, mask_input: str | None,
                     limit: int | None = None, info: graph.GraphInfo | None = None) -> list[np.ndarray]:
    """Pooled features at each tensor for every sample of ``data`` (batch 1, ONNX Runtime).
    ``info``: ``model``'s analysis, if the caller has it (saves making it again)."""
    tensors = [c.tensor for c in cuts]
    sub = graph.split(model, [tensors[-1]], info)[0]    # input -> the last exit tensor
    have = {o.name for o in sub.graph.output}
    sub.graph.output.extend(onnx.helper.make_tensor_value_info(c.tensor, TensorProto.FLOAT, [None] * len(c.shape))
                            for c in cuts if c.tensor not in have)
    sess = session(sub)
    n = len(data) if limit is None else min(limit, len(data))
    rows: list[list[np.ndarray]] = [[] for _ in tensors]
    for i in range(n):
        feeds = data.sample(i)
        outs = sess.run(list(tensors), feeds)
        mask = feeds.get(mask_input) if mask_input else None
        for k, o in enumerate(outs):
            rows[k].append(_pooled(o, mask)[0])
    return [np.stack(r) for r in rows]


def train_head(features: np.ndarray, labels: np.ndarray, classes: int, epochs: int, seed: int):
    """A linear softmax classifier on ``features``; returns (weight (classes, C), bias)."""
    import torch

    from .data import Dataset
    from .training import fit

    mean = features.mean(axis=0)
    std = features.std(axis=0) + 1e-6
    torch.manual_seed(seed)
    fc = torch.nn.Linear(features.shape[1], classes)

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = fc

        def forward(self, features):
            return self.fc(features)

    x = ((features - mean) / std).astype(np.float32)
    fit(Head(), Dataset("exit-features", "classification", {"features": x}, labels.astype(np.int64)),
        input_names=["features"], epochs=epochs, batch_size=256, lr=1e-2, seed=seed)
    w = fc.weight.detach().numpy() / std[None, :]
    b = fc.bias.detach().numpy() - (fc.weight.detach().numpy() * (mean / std)[None, :]).sum(axis=1)
    return w, b


def add_heads(p: Pipeline, *, points, threshold, epochs: int, train, reference_labels, classes: int,
              seed: int = 0, limit: int = 10000, progress=lambda m: None) -> Pipeline:
    """Attach trained exit heads; ``train`` supplies inputs, ``reference_labels`` the targets
    (true labels, or the full model's own predictions when the data are unlabelled)."""
    info = p.info()
    cuts = exit_points(info, points, p.model_name)
    limits = threshold if isinstance(threshold, tuple) else (threshold,) * len(cuts)
    if len(limits) != len(cuts):
        raise WorkloadError(f"early_exit on {p.model_name}: {len(limits)} thresholds for {len(cuts)} exit points")
    mask_input = "attention_mask" if "attention_mask" in p.inputs else None
    progress(f"exit features at {', '.join(c.tensor for c in cuts)}")
    feats = collect_features(p.backbone, cuts, train, mask_input, limit, info)
    labels = reference_labels[:len(feats[0])]
    heads = []
    for k, (cut, x) in enumerate(zip(cuts, feats)):
        progress(f"training exit head {k + 1}/{len(cuts)} on {len(x)} samples")
        w, b = train_head(x, labels, classes, epochs, seed + k)
        nodes, inits, out = _head_nodes(f"exit{k}", cut, w, b, mask_input)
        heads.append(ExitHead(cut.tensor, out, nodes, inits, (mask_input,) if mask_input and len(cut.shape) == 3
                              else (), limits[k]))
    return replace(p, exits=tuple(heads)).with_report("early_exit", {
        "kind": "heads", "points": [{"tensor": c.tensor, "fraction": round(c.fraction, 4), "shape": list(c.shape)}
                                    for c in cuts],
        "thresholds": list(limits), "train_samples": len(feats[0]),
        "labels": "true labels" if reference_labels is not None and train.labelled else "the full model's predictions"})


def exit_answers(folder, data, grid=THRESHOLD_GRID) -> tuple[np.ndarray, dict[float, tuple[np.ndarray, list]]]:
    """Run every segment of a prepared artifact on ``data`` (no early stop) and, per threshold
    of ``grid``, what each sample would get: ``(final, {threshold: (answers, exits)})`` with
    the class ids of the last output (``final``) and of the answer at that threshold, and
    ``exits``, per exit head, the boolean mask of the samples that leave there."""
    from .runtime import ArtifactRunner

    runner = ArtifactRunner(folder)
    heads = [i for i, s in enumerate(runner.segments) if s.exit_output]
    conf = {i: [] for i in heads}
    pred = {i: [] for i in heads}
    final = []
    for n in range(len(data)):
        carry = data.sample(n)
        for i, seg in enumerate(runner.segments):
            sess = runner.sessions[i]
            outs = dict(zip((o.name for o in sess.get_outputs()), sess.run(None, {k: carry[k] for k in seg.inputs})))
            if seg.exit_output:
                logits = outs.pop(seg.exit_output)
                conf[i].append(float(softmax_confidence(logits)[0]))
                pred[i].append(int(logits.argmax()))
            carry.update(outs)
        final.append(int(carry[runner.outputs[0]].reshape(1, -1).argmax()))
    final = np.array(final)
    at = {}
    for t in grid:
        answer = final.copy()
        left = np.zeros(len(final), dtype=bool)
        exits = []
        for i in heads:
            c, pr = np.array(conf[i]), np.array(pred[i])
            go = (~left) & (c >= t)
            answer[go] = pr[go]
            exits.append(go)
            left |= go
        at[t] = (answer, exits)
    return final, at


def exit_table(folder, data, reference=None, grid=THRESHOLD_GRID) -> dict:
    """Per threshold, how many samples leave at each exit and the quality of the answers:
    accuracy against labels, or agreement with ``reference`` predictions when unlabelled
    (from :func:`exit_answers`)."""
    target = data.labels if data.labelled else reference
    final, at = exit_answers(folder, data, grid)
    rows = []
    for t, (answer, exits) in at.items():
        left = np.any(exits, axis=0) if exits else np.zeros(len(final), dtype=bool)
        rows.append({"threshold": t, "exit_rates": [float(go.mean()) for go in exits], "exit_rate": float(left.mean()),
                     "quality": float((answer == target).mean())})
    return {"samples": len(final), "final_quality": float((final == target).mean()), "thresholds": rows,
            "judged_by": "labels" if data.labelled else "agreement with the untransformed model"}
