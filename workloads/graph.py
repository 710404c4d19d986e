"""Partitioning analysis of ONNX models: where a graph can be cut in two, what each side costs,
splitting it into consecutive parts, and checking that the parts chained give the whole model.

Vocabulary
----------
*Primary input*: the first graph input that is not an initializer (the image, the token ids).
*Side inputs*: the other graph inputs (e.g. ``attention_mask``). They do not flow through a cut:
every part that needs one receives it directly, so its bytes are part of what crosses a cut.

A *valid cut* is one tensor ``T`` such that every path from the primary input to every graph
output passes through ``T`` (``T`` dominates the outputs). Cutting there gives two parts that talk
through ``T`` plus side inputs only; nodes that depend only on side inputs, initializers or
constants are recomputed by whichever part needs them. The primary input and the graph outputs
themselves are not cuts. Cuts are found with a dominator computation over the node/tensor DAG, in
time linear in practice (a 5000-node graph takes well under a second, most of it shape inference).

FLOPs convention (what ``Cut.flops_before``, ``GraphInfo.total_flops`` and ``node_flops`` count)
--------------------------------------------------------------------------------------------
At batch 1 (a symbolic first dimension of a graph input counts as 1; other unknown dimensions count
as 1 too, so pass ``input_shapes`` to :func:`analyze` for exact numbers on such models):

* Conv, ConvInteger, QLinearConv, FusedConv: ``2 * N * prod(output spatial) * prod(weight shape)``
  (``weight = C_out x C_in/group x k...``, so grouped and depthwise convolutions come out right);
  NhwcFusedConv the same with its output in NHWC;
* ConvTranspose, QLinearConvTranspose: ``2 * N * prod(input spatial) * prod(weight shape)``;
* Gemm, QGemm, FusedGemm: ``2 * M * K * N``; MatMul, MatMulInteger, QLinearMatMul,
  MatMulIntegerToFloat, DynamicQuantizeMatMul, FusedMatMul: ``2 * prod(output shape) * K``
  (batched and broadcast matmuls included); biases and the ``C`` term of Gemm are not counted
  (a MAC is one multiply and one add);
* LSTM, GRU, RNN, DynamicQuantizeLSTM: ``2 * seq * batch * (prod(W) + prod(R))``; Attention,
  QAttention: ``2 * prod(input shape without its last dim) * prod(weights)`` (the input
  projections only); MultiHeadAttention the same with its key in place of the weights (at
  batch 1 its Q·Kᵀ product, as ``quantize.int8_report`` has always counted it);
* ops that only relabel or reshape data (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout,
  Shape, Size, Constant): 0;
* every other op (elementwise, activations, pooling, normalisation, QuantizeLinear,
  DequantizeLinear, Concat, ...): 1 per output element.

Only nodes that some graph output depends on are counted. :func:`node_macs` (the half that is
multiply-accumulates) is also what ``quantize.int8_report`` counts int8 and float work with.

Shapes
------
ONNX shape inference (strict mode, else lenient; with data propagation) on a copy of the graph
whose large initializers are replaced by typed inputs (weights never decide shapes, and this
keeps a 170 MB model cheap). What it cannot type (outputs of ONNX Runtime contrib ops, as in
QOperator models) is completed by ONNX Runtime's symbolic shape inference, and what remains by
running the model once on zeros at batch 1 (:func:`probe_shapes`; only possible when every input
shape is static).

Everything here needs onnx, onnxruntime and numpy only (never torch); onnxruntime is imported
only when a session is made.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from .runtime import session  # noqa: F401 - one way to open a session, re-exported
from .errors import WorkloadError

# Ops counted as 2 FLOPs per multiply-accumulate (see the module docstring); the Fused*, Q*,
# Dynamic* and attention ops are ONNX Runtime's (com.microsoft), as its graph optimiser and
# quantizer write them.
_CONV = {"Conv", "ConvInteger", "QLinearConv", "FusedConv"}
_NHWC_CONV = {"NhwcFusedConv"}
_CONV_TRANSPOSE = {"ConvTranspose", "QLinearConvTranspose"}
_MATMUL = {"MatMul", "MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
           "FusedMatMul"}
_GEMM = {"Gemm", "QGemm", "FusedGemm"}  # QGemm: quantized A first
_RECURRENT = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"}
_ATTENTION = {"Attention", "QAttention", "MultiHeadAttention"}
MAC_OPS = frozenset(_CONV | _NHWC_CONV | _CONV_TRANSPOSE | _MATMUL | _GEMM | _RECURRENT | _ATTENTION)
# Ops that move no data in an optimized runtime (metadata changes or constants): 0 FLOPs.
_FREE = {"Constant", "Shape", "Size", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
# Initializers above this many elements are replaced by typed inputs before shape inference: their
# values never matter for shapes, and serializing hundreds of MB of weights would dominate the time.
_INLINE_LIMIT = 4096
# Cuts listed by name in an error before the list is abbreviated.
_LIST_LIMIT = 10


@dataclass(frozen=True)
class Cut:
    """A valid cut tensor and what cutting there costs.

    ``shape`` is the static shape at batch 1 (a symbolic first dimension is reported as 1, any
    other unknown dimension as -1). ``side_inputs`` are the graph inputs besides the primary one
    that some node after the cut needs. ``bytes`` (the tensor at batch 1 plus those side inputs)
    raises :class:`WorkloadError` when a dimension is unknown; ``own_bytes``/``side_bytes`` are
    ``None`` then. ``flops_before`` counts the nodes the cut tensor depends on (what the first part
    runs), ``flops_after = total - flops_before``. ``index`` is the position in ``GraphInfo.cuts``
    (topological order: a larger index is later in the graph).
    """
    tensor: str
    index: int
    dtype: str
    shape: tuple[int, ...]
    flops_before: int
    flops_after: int
    side_inputs: tuple[str, ...] = ()
    own_bytes: int | None = None
    side_bytes: int | None = 0

    @property
    def bytes(self) -> int:
        """Bytes that cross this cut per sample: the tensor plus the side inputs needed after it."""
        if self.own_bytes is None or self.side_bytes is None:
            what = (f"side inputs {', '.join(self.side_inputs)} have" if self.own_bytes is not None
                    else f"shape {_fmt_shape(self.shape)} has")
            raise WorkloadError(f"cut {self.tensor}: size unknown: {what} an unknown dimension; "
                                "analyze the model with input_shapes={input: shape} to fix it")
        return self.own_bytes + self.side_bytes

    @property
    def fraction(self) -> float:
        """Share of the model's FLOPs computed before the cut, in [0, 1]."""
        total = self.flops_before + self.flops_after
        return self.flops_before / total if total else 0.0


@dataclass(frozen=True)
class GraphInfo:
    """What :func:`analyze` found. ``cuts`` are in topological order (``cuts[i].index == i``).

    ``params`` counts the elements of the initializers, except int64 ones (shapes, axes, indices by
    ONNX convention) and single-element ones (quantization scales and zero points, scalars), so a
    QDQ model reports about as many parameters as its float twin. ``node_flops`` is keyed by node
    name (``#i`` for the i-th node when it has no name or its name is taken). ``tensors`` holds every
    tensor name in the graph and ``dependent`` those computed from the primary input.
    """
    cuts: tuple[Cut, ...]
    total_flops: int
    params: int
    primary_input: str
    side_inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    node_flops: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)
    tensors: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    dependent: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def cut(self, tensor: str) -> Cut | None:
        """The cut at ``tensor``, or None when it is not a valid cut."""
        return next((c for c in self.cuts if c.tensor == tensor), None)


# ----------------------------------------------------------------------------------------- helpers

def tensor_bytes(dtype, shape: Sequence[int]) -> int:
    """Bytes of a dense tensor. ``dtype``: a numpy dtype (or its name) or an ONNX element type
    number. Raises :class:`WorkloadError` when a dimension is unknown (None or negative)."""
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        dtype = helper.tensor_dtype_to_np_dtype(int(dtype))
    shape = tuple(shape)
    if any(d is None or d < 0 for d in shape):
        raise WorkloadError(f"tensor shape {_fmt_shape(shape)} has an unknown dimension; its size is unknown")
    return int(np.dtype(dtype).itemsize) * math.prod(shape)


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("?" if d is None or d < 0 else str(d) for d in shape) + ")"


def _np_dtype_name(elem_type: int) -> str:
    if not elem_type:
        return "undefined"
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return TensorProto.DataType.Name(elem_type).lower()


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from enclosing scopes (its implicit inputs)."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    defined |= {i.values.name for i in graph.sparse_initializer}
    used = {o.name for o in graph.output}
    for n in graph.node:
        defined.update(n.output)
        used.update(x for x in n.input if x)
        for g in _subgraphs(n):
            used |= _outer_names(g)
    return used - defined


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """Every tensor ``node`` reads: its inputs and, for If/Loop/Scan, what its bodies read from outside."""
    names = [x for x in node.input if x]
    for g in _subgraphs(node):
        names.extend(sorted(_outer_names(g) - set(names)))
    return names


def _skeleton(model: onnx.ModelProto, fixed: Mapping[str, Sequence[int]] | None,
              batch_one: bool) -> onnx.ModelProto:
    """A copy of ``model`` for shape inference: large initializers become typed graph inputs, and
    graph inputs get the shapes in ``fixed`` (and, with ``batch_one``, a symbolic first dim of 1)."""
    g0 = model.graph
    skel = onnx.ModelProto()
    skel.ir_version = model.ir_version
    skel.opset_import.extend(model.opset_import)
    skel.functions.extend(model.functions)
    g = skel.graph
    g.name = g0.name
    g.node.extend(g0.node)
    g.input.extend(g0.input)
    g.output.extend(g0.output)
    g.value_info.extend(g0.value_info)
    g.sparse_initializer.extend(g0.sparse_initializer)
    inputs = {i.name for i in g0.input}
    for init in g0.initializer:
        if math.prod(init.dims) <= _INLINE_LIMIT and init.data_location != TensorProto.EXTERNAL:
            g.initializer.append(init)
        elif init.name not in inputs:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    inits = {i.name for i in g0.initializer}
    for vi in g.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        if fixed and vi.name in fixed:
            tt.ClearField("shape")
            for d in fixed[vi.name]:
                tt.shape.dim.add().dim_value = int(d)
        elif batch_one and tt.HasField("shape") and tt.shape.dim and not tt.shape.dim[0].HasField("dim_value"):
            tt.shape.dim[0].dim_value = 1
    return skel


def _infer(skel: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``skel`` with the types and shapes ONNX shape inference finds (strict mode first, lenient
    if strict rejects the model), completed by ONNX Runtime's symbolic shape inference for what
    ONNX cannot type: the outputs of contrib ops (QGemm, QLinearAdd, ... of QOperator models)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skel, check_type=True, strict_mode=True, data_prop=True)
    except Exception:  # noqa: BLE001 - strict mode rejects some valid exports; lenient still gives most shapes
        try:
            inferred = onnx.shape_inference.infer_shapes(skel, data_prop=True)
        except Exception as e:  # noqa: BLE001
            raise WorkloadError(f"model {name}: ONNX shape inference failed: {str(e).splitlines()[0]}") from None
    typed = _value_infos(inferred.graph)
    missing = [t for n in inferred.graph.node for t in n.output
               if t and (t not in typed or not typed[t].type.tensor_type.HasField("shape"))]
    if missing:
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
            extra = _value_infos(SymbolicShapeInference.infer_shapes(skel, auto_merge=True,
                                                                     guess_output_rank=True).graph)
        except Exception:  # noqa: BLE001 - best effort: the tensors stay untyped (their bytes unknown)
            extra = {}
        known = {o.name for o in inferred.graph.output}
        for t in missing:
            if t in extra and extra[t].type.tensor_type.elem_type and t not in known:
                inferred.graph.value_info.append(extra[t])
    return inferred


def _value_infos(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    out = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        if vi.type.HasField("tensor_type"):
            out[vi.name] = vi
    return out


def _types(graph: onnx.GraphProto) -> dict[str, tuple[int, tuple[int | None, ...] | None]]:
    """name -> (ONNX element type, dims with None where unknown; None when the rank is unknown)."""
    out: dict[str, tuple[int, tuple[int | None, ...] | None]] = {}
    for name, vi in _value_infos(graph).items():
        tt = vi.type.tensor_type
        dims = (tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
                if tt.HasField("shape") else None)
        out[name] = (tt.elem_type, dims)
    for init in graph.initializer:
        out[init.name] = (init.data_type, tuple(init.dims))
    return out


def _static(entry) -> bool:
    return bool(entry and entry[0] and entry[1] is not None and all(d is not None for d in entry[1]))


def probe_shapes(model: onnx.ModelProto, names: Iterable[str],
                 input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, tuple[int, tuple[int, ...]]]:
    """``name -> (ONNX element type, shape)`` of tensors ``names``, measured by running ``model``
    once in ONNX Runtime (graph optimisation disabled) on zeros: each graph input at its shape in
    ``input_shapes``, else at its declared shape with unknown dimensions set to 1. Best effort:
    what the run does not return as an array is left out, and everything when an input has no
    declared shape or the run fails.

    The last resort for what no shape inference can type (e.g. ONNX Runtime contrib ops that its
    symbolic inference does not know, such as QLinearGlobalAveragePool), at the cost of one
    inference; also how ``quantize.int8_report`` learns the shapes of ORT's optimised graph.
    """
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    try:
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            tt = vi.type.tensor_type
            if input_shapes and vi.name in input_shapes:
                dims = list(input_shapes[vi.name])
            elif tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
            else:
                return {}
            feeds[vi.name] = np.zeros(dims, helper.tensor_dtype_to_np_dtype(tt.elem_type))
    except (KeyError, TypeError, ValueError):  # not a tensor of a numeric type
        return {}
    probe = onnx.ModelProto()
    probe.ir_version = model.ir_version
    probe.opset_import.extend(model.opset_import)
    probe.functions.extend(model.functions)
    g = probe.graph
    g.node.extend(model.graph.node)
    g.initializer.extend(model.graph.initializer)
    g.sparse_initializer.extend(model.graph.sparse_initializer)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    names = list(dict.fromkeys(names))
    outputs = {o.name for o in model.graph.output}
    g.output.extend(onnx.ValueInfoProto(name=t) for t in names if t not in outputs)  # ORT types them itself
    try:
        results = session(probe, optimization="disable").run(names, feeds)
    except Exception:  # noqa: BLE001
        return {}
    return {t: (helper.np_dtype_to_tensor_dtype(r.dtype), tuple(r.shape)) for t, r in zip(names, results)
            if isinstance(r, np.ndarray)}


def _count(dims) -> int:
    """Elements of a shape, counting unknown dimensions (and an unknown rank) as 1."""
    return math.prod(d for d in (dims or ()) if d is not None and d > 0) if dims else 1


def node_macs(node: onnx.NodeProto, shape_of: Callable[[str], Sequence[int | None] | None]) -> int | None:
    """Multiply-accumulates of one node of an op in `MAC_OPS` (the module docstring gives each
    formula, at half the FLOPs), from ``shape_of(tensor)``: its dims (None where unknown, counted
    as 1) or None when even its rank is unknown. None for other ops, and when a shape the
    formula needs is unknown."""
    op, ins = node.op_type, node.input

    def dims(names, i: int):
        return shape_of(names[i]) if i < len(names) and names[i] else None

    y = dims(node.output, 0)
    if op in _CONV or op in _NHWC_CONV:
        w = dims(ins, 3 if op == "QLinearConv" else 1)
        if w and y:
            return _count(y[:1]) * _count(y[1:-1] if op in _NHWC_CONV else y[2:]) * _count(w)
    elif op in _CONV_TRANSPOSE:
        x, w = dims(ins, 0), dims(ins, 3 if op == "QLinearConvTranspose" else 1)
        if w and x:
            return _count(x[:1]) * _count(x[2:]) * _count(w)
    elif op in _GEMM:
        a = dims(ins, 0)
        if a and y and len(a) == 2:
            return _count(y) * _count(a[:1] if _attr_int(node, "transA") else a[1:])
    elif op in _MATMUL:
        a = dims(ins, 0)
        if a and y is not None:
            transposed = op == "FusedMatMul" and _attr_int(node, "transA") and len(a) > 1
            return _count(y) * _count(a[-2:-1] if transposed else a[-1:])
    elif op in _RECURRENT:
        x, w, r = dims(ins, 0), dims(ins, 1), dims(ins, 2)   # X: (seq, batch, input) or (batch, seq, input)
        if x and w and r and len(x) > 1:
            return _count(x[:2]) * (_count(w) + _count(r))
    elif op in _ATTENTION:
        x, w = dims(ins, 0), dims(ins, 3 if op == "QAttention" else 1)
        if x and w:
            return _count(x[:-1]) * _count(w)
    return None


def _attr_int(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


def _flops(node: onnx.NodeProto, types) -> int:
    """FLOPs of one node under the module's convention."""
    if node.op_type in _FREE:
        return 0

    def shape_of(name: str):
        return types.get(name, (0, None))[1]

    macs = node_macs(node, shape_of)
    if macs is not None:
        return 2 * macs
    total = 0
    for i, name in enumerate(node.output):
        y = shape_of(name) if name else None
        if y is not None:
            total += _count(y)
        elif i == 0:  # rank unknown: assume elementwise over the largest input
            total += max((_count(shape_of(t) if t else None) for t in node.input), default=1)
    return total


def _params(graph: onnx.GraphProto) -> int:
    return sum(math.prod(t.dims) for t in graph.initializer
               if t.data_type != TensorProto.INT64 and math.prod(t.dims) > 1)


# ---------------------------------------------------------------------------------------- analysis

def _primary_input(graph: onnx.GraphProto, name: str) -> tuple[str, tuple[str, ...]]:
    inits = {i.name for i in graph.initializer} | {i.values.name for i in graph.sparse_initializer}
    real = [i.name for i in graph.input if i.name not in inits]
    if not real:
        raise WorkloadError(f"model {name}: the graph has no input (every input is an initializer)")
    return real[0], tuple(real[1:])


def _dominator_cuts(nodes_in: list[list[str]], nodes_out: list[list[str]], source: str,
                    outputs: Iterable[str]) -> tuple[list[str], set[str]]:
    """Tensors on every path from ``source`` to the outputs, in topological order (without ``source``
    and the outputs), and the set of tensors that depend on ``source``.

    Vertices are nodes (ints) and tensors (strs); a virtual sink follows every output. Immediate
    dominators are computed in one pass over a topological order (every predecessor of a vertex is
    finished before it), intersecting predecessors by walking up the dominator tree by depth.
    """
    consumers: dict[str, list[int]] = {}
    for i, ins in enumerate(nodes_in):
        for t in dict.fromkeys(ins):  # once per node, even for Mul(x, x)
            consumers.setdefault(t, []).append(i)
    # Nodes that depend on the source, and how many of their inputs do (for Kahn's order).
    dependent = {source}
    pending: dict[int, int] = {}
    stack = [source]
    while stack:
        for n in consumers.get(stack.pop(), ()):
            if n not in pending:
                pending[n] = 0
                for t in nodes_out[n]:
                    if t not in dependent:
                        dependent.add(t)
                        stack.append(t)
    for n in pending:
        pending[n] = len({t for t in nodes_in[n] if t in dependent})

    idom: dict = {source: source}
    depth: dict = {source: 0}

    def meet(a, b):
        while a != b:
            while depth[a] > depth[b]:
                a = idom[a]
            while depth[b] > depth[a]:
                b = idom[b]
            if a != b:
                a, b = idom[a], idom[b]
        return a

    def settle(v, preds):
        d = preds[0]
        for p in preds[1:]:
            d = meet(d, p)
        idom[v], depth[v] = d, depth[d] + 1

    ready: list[int] = []

    def produced(t):
        for m in consumers.get(t, ()):
            pending[m] -= 1
            if pending[m] == 0:
                ready.append(m)

    produced(source)
    while ready:  # Kahn's order over the nodes that depend on the source
        n = ready.pop()
        settle(n, list(dict.fromkeys(t for t in nodes_in[n] if t in dependent)))
        for t in nodes_out[n]:
            settle(t, [n])
            produced(t)
    outs = list(dict.fromkeys(t for t in outputs if t in idom))
    if not outs:
        return [], dependent
    sink = object()
    settle(sink, outs)
    chain, v, out_set = [], idom[sink], set(outs)
    while v != source:
        if isinstance(v, str) and v not in out_set:
            chain.append(v)
        v = idom[v]
    chain.reverse()
    return chain, dependent


def analyze(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None,
            name: str = "model") -> GraphInfo:
    """Valid cuts, FLOPs and parameters of ``model`` (see the module docstring for definitions).

    ``input_shapes`` optionally fixes graph input shapes (batch dimension included) for models with
    symbolic dimensions other than the batch; ``name`` only appears in error messages. The model is
    not modified. Raises :class:`WorkloadError` for a graph without inputs or that shape inference
    rejects.
    """
    g = model.graph
    primary, sides = _primary_input(g, name)
    if input_shapes:
        unknown = sorted(set(input_shapes) - {primary, *sides})
        if unknown:
            raise WorkloadError(f"model {name}: input_shapes names {unknown[0]!r}, not a graph input; "
                                f"inputs: {', '.join((primary, *sides))}")
    skel = _skeleton(model, input_shapes, batch_one=True)
    types = _types(_infer(skel, name).graph)
    unknown = [t for n in g.node for t in n.output if t and not _static(types.get(t))]
    if unknown and all(_static(types.get(t)) for t in (primary, *sides)):
        types.update(probe_shapes(model, unknown, {t: types[t][1] for t in (primary, *sides)}))

    nodes = list(g.node)
    nodes_in = [_node_inputs(n) for n in nodes]
    nodes_out = [[t for t in n.output if t] for n in nodes]
    producer = {t: i for i, outs in enumerate(nodes_out) for t in outs}
    flops = [_flops(n, types) for n in nodes]
    keys, node_flops = set(), {}
    for i, n in enumerate(nodes):
        key = n.name if n.name and n.name not in keys else f"#{i}"
        keys.add(key)
        node_flops[key] = flops[i]

    outputs = tuple(o.name for o in g.output)
    chain, dependent = _dominator_cuts(nodes_in, nodes_out, primary, outputs)

    def walk(starts: Iterable[str], stop: str | None, seen: set[int], found: set[str] | None = None) -> int:
        """Visit the producers of ``starts`` and their ancestors (not past ``stop`` or ``seen``);
        return their FLOPs and add the side inputs reached to ``found``."""
        added, stack = 0, list(starts)
        while stack:
            t = stack.pop()
            if t == stop:
                continue
            if found is not None and t in side_set:
                found.add(t)
            n = producer.get(t)
            if n is not None and n not in seen:
                seen.add(n)
                added += flops[n]
                stack.extend(nodes_in[n])
        return added

    side_set = set(sides)
    total = walk(outputs, None, set())
    before, seen = [], set()
    acc = 0
    for t in chain:  # each cut's ancestors contain the previous cut's: one cumulative walk
        acc += walk([t], None, seen)
        before.append(acc)
    after_sides: list[tuple[str, ...]] = [()] * len(chain)
    seen, found = set(), set()
    for k in reversed(range(len(chain))):  # what follows cut k = what follows cut k+1 + the nodes between
        walk(outputs if k == len(chain) - 1 else [chain[k + 1]], chain[k], seen, found)
        after_sides[k] = tuple(s for s in sides if s in found)

    def size(t: str) -> tuple[int, tuple[int, ...], int | None]:
        elem, dims = types.get(t, (0, None))
        shape = tuple(-1 if d is None else d for d in (dims or ()))
        if shape and dims[0] is None:
            shape = (1, *shape[1:])  # a symbolic batch dimension counts as 1
        known = elem and dims is not None and all(d >= 0 for d in shape)
        return elem, shape, tensor_bytes(elem, shape) if known else None

    side_sizes = {s: size(s)[2] for s in sides}
    cuts = []
    for i, t in enumerate(chain):
        elem, shape, own = size(t)
        side = [side_sizes[s] for s in after_sides[i]]
        cuts.append(Cut(t, i, _np_dtype_name(elem), shape, before[i], total - before[i], after_sides[i],
                        own, None if None in side else sum(side)))
    tensors = {i.name for i in g.input} | {i.name for i in g.initializer} | set(producer)
    tensors |= {t for ins in nodes_in for t in ins}
    return GraphInfo(tuple(cuts), total, _params(g), primary, sides, outputs, node_flops,
                     frozenset(tensors), frozenset(dependent))


# ----------------------------------------------------------------------------------- choosing cuts

def _cut_names(info: GraphInfo, model_name: str) -> str:
    names = [c.tensor for c in info.cuts]
    if len(names) <= _LIST_LIMIT:
        return ", ".join(names)
    return (", ".join(names[:_LIST_LIMIT]) +
            f", … ({len(names)} in all; see `testbed models cuts {model_name}`)")


def _no_cuts(info: GraphInfo, model_name: str) -> WorkloadError:
    return WorkloadError(f"model {model_name}: no tensor cuts the graph in two (from input "
                         f"{info.primary_input!r} every tensor has a bypass to the outputs); "
                         "it cannot be partitioned")


def _auto_one(info: GraphInfo) -> Cut:
    middle = [c for c in info.cuts if 1 / 3 <= c.fraction <= 2 / 3]
    if middle:
        return min(middle, key=lambda c: (c.bytes, c.index))
    return min(info.cuts, key=lambda c: (abs(c.fraction - 0.5), c.index))


def resolve_cut(info: GraphInfo, spec, model_name: str = "model") -> Cut:
    """The cut that ``spec`` names.

    ``spec``: a tensor name; a float in (0, 1), the FLOPs fraction (the cut whose ``fraction`` is
    closest; ties go to the earlier cut); ``"auto"``, the smallest-``bytes`` cut whose fraction lies
    in [1/3, 2/3] (ties go to the earlier), or when none does the cut closest to 0.5; or a
    :class:`Cut`. Anything else raises a one-line :class:`WorkloadError` (it lists the valid cuts
    when a tensor is unknown or not a valid cut).
    """
    where = f"model {model_name}"
    if isinstance(spec, Cut):
        spec = spec.tensor
    if isinstance(spec, str):
        if not info.cuts:
            raise _no_cuts(info, model_name)
        if spec == "auto":
            return _auto_one(info)
        found = info.cut(spec)
        if found is not None:
            return found
        if spec not in info.tensors:
            why = "is not in the graph"
        elif spec == info.primary_input:
            why = "is the model's input, not a cut"
        elif spec in info.outputs:
            why = "is a model output, not a cut"
        elif spec not in info.dependent:
            why = f"is not a valid cut (it does not depend on input {info.primary_input!r})"
        else:
            why = f"is not a valid cut (a path from input {info.primary_input!r} to the outputs bypasses it)"
        raise WorkloadError(f"{where}: tensor {spec!r} {why}; valid cuts: {_cut_names(info, model_name)}")
    if isinstance(spec, (int, float, np.floating)) and not isinstance(spec, bool):
        if not 0 < spec < 1:
            raise WorkloadError(f"{where}: cut fraction {spec} is outside (0, 1); give a FLOPs fraction "
                                "such as 0.5, a tensor name, or auto")
        if not info.cuts:
            raise _no_cuts(info, model_name)
        return min(info.cuts, key=lambda c: (abs(c.fraction - spec), c.index))
    raise WorkloadError(f"{where}: cut {spec!r} is not valid; give auto, a tensor name, or a FLOPs "
                        "fraction in (0, 1)")


def resolve_cuts(info: GraphInfo, specs: Sequence, model_name: str = "model") -> list[Cut]:
    """One cut per boundary (``len(specs) + 1`` parts), each resolved by :func:`resolve_cut`.

    The cuts must be distinct and in graph order. A list of only ``"auto"`` means
    :func:`auto_cuts` with that many boundaries; ``auto`` mixed with explicit cuts is an error.
    """
    where = f"model {model_name}"
    specs = list(specs)
    if not specs:
        raise WorkloadError(f"{where}: the list of cuts is empty; give auto or one cut per boundary")
    autos = sum(1 for s in specs if isinstance(s, str) and s == "auto")
    if autos == len(specs):
        return auto_cuts(info, len(specs) + 1, model_name)
    if autos:
        raise WorkloadError(f"{where}: auto cannot be mixed with tensor names or fractions in a list of "
                            "cuts; give cut: auto, or one explicit cut per boundary")
    cuts = [resolve_cut(info, s, model_name) for s in specs]

    def desc(s, c: Cut) -> str:
        return f"{c.tensor!r} (cut #{c.index})" if s == c.tensor else f"{s!r} (= {c.tensor!r}, cut #{c.index})"

    for i in range(1, len(cuts)):
        a, b = cuts[i - 1], cuts[i]
        if b.index <= a.index:
            relation = "is the same cut as" if b.index == a.index else "does not come after"
            raise WorkloadError(f"{where}: cuts must be distinct and in graph order; {desc(specs[i], b)} "
                                f"{relation} {desc(specs[i - 1], a)}")
    return cuts


def auto_cuts(info: GraphInfo, parts: int, model_name: str = "model") -> list[Cut]:
    """``parts - 1`` cuts for ``parts`` parts of about equal FLOPs with little traffic.

    Boundary k (of n parts) takes the smallest-``bytes`` cut whose fraction lies within 1/6 of
    k/n (ties go to the earlier cut). When those picks are not in strictly increasing graph order,
    the ordered choice with the least total bytes is taken instead. ``parts == 2`` is the same as
    ``resolve_cut(info, "auto")`` (including its fallback to the cut closest to 0.5). When no
    window has a cut, the cuts closest to k/n in graph order are taken. Raises
    :class:`WorkloadError` only when the model has fewer valid cuts than boundaries.
    """
    where = f"model {model_name}"
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 2:
        raise WorkloadError(f"{where}: a partition needs 2 or more parts, not {parts!r}")
    if not info.cuts:
        raise _no_cuts(info, model_name)
    if parts == 2:
        return [_auto_one(info)]
    targets = [k / parts for k in range(1, parts)]
    windows = [[c for c in info.cuts if abs(c.fraction - t) <= 1 / 6 + 1e-12] for t in targets]
    if all(windows):
        picks = [min(w, key=lambda c: (c.bytes, c.index)) for w in windows]
        if all(a.index < b.index for a, b in zip(picks, picks[1:])):
            return picks
        # Ordered choice with the least total bytes (ties: earlier cuts): for each boundary and
        # candidate, the best chain ending there, using the best chain of the previous boundary
        # among candidates strictly before it (a running minimum over candidates sorted by index).
        best = [(c.bytes, (c.index,), [c]) for c in windows[0]]
        for window in windows[1:]:
            nxt, j, run = [], 0, None
            for c in window:
                while j < len(best) and best[j][2][-1].index < c.index:
                    if run is None or best[j][:2] < run[:2]:
                        run = best[j]
                    j += 1
                if run is not None:
                    nxt.append((run[0] + c.bytes, run[1] + (c.index,), run[2] + [c]))
            best = nxt
        if best:
            return min(best, key=lambda b: b[:2])[2]
    # Like the 2-part fallback: the cuts closest to k/n, in graph order (greedy, each boundary
    # leaving enough later cuts for the ones after it).
    if len(info.cuts) < parts - 1:
        raise WorkloadError(f"{where}: {len(info.cuts)} valid cut(s) cannot make {parts} parts")
    picks, start = [], 0
    for k, t in enumerate(targets):
        room = len(info.cuts) - (len(targets) - k - 1)
        pick = min(info.cuts[start:room], key=lambda c: (abs(c.fraction - t), c.bytes, c.index))
        picks.append(pick)
        start = info.cuts.index(pick) + 1
    return picks


# ---------------------------------------------------------------------------------------- splitting

def split(model: onnx.ModelProto, cuts: Sequence, info: GraphInfo | None = None,
          model_name: str = "model") -> list[onnx.ModelProto]:
    """The ``len(cuts) + 1`` consecutive parts of ``model`` cut at ``cuts`` (tensor names, or any
    spec :func:`resolve_cuts` takes), as in-memory models; nothing is written.

    Part 0 takes the model's inputs it needs and outputs ``cuts[0]``; part i takes ``cuts[i-1]``
    plus the side inputs it needs and outputs ``cuts[i]``; the last part outputs the model's outputs.
    Boundary tensors keep their names (part i's output is part i+1's input). Each part keeps the
    opset imports, functions and metadata of ``model``, only the nodes and initializers it uses
    (nodes computed from side inputs or initializers alone are repeated in every part that needs
    them), and passes ``onnx.checker.check_model``. ``info`` saves re-analysing the model.
    """
    if info is None:
        info = analyze(model, name=model_name)
    names = [c.tensor for c in resolve_cuts(info, list(cuts), model_name)]
    g = model.graph
    # Boundary types with the model's own (possibly symbolic) batch dimension, not analyze()'s batch 1.
    vis = _value_infos(_infer(_skeleton(model, None, batch_one=False), model_name).graph)
    nodes = list(g.node)
    nodes_in = [_node_inputs(n) for n in nodes]
    producer = {t: i for i, n in enumerate(nodes) for t in n.output if t}
    inits = {t.name: t for t in g.initializer}
    sparse = {t.values.name: t for t in g.sparse_initializer}
    graph_inputs = {i.name: i for i in g.input}
    originals = {vi.name: vi for vi in g.value_info}

    def boundary(t: str) -> onnx.ValueInfoProto:
        if t in vis:
            return vis[t]
        c = info.cut(t)  # inference left it shapeless: declare the element type and rank only
        if c.dtype == "undefined":
            raise WorkloadError(f"model {model_name}: the type of cut tensor {t!r} is unknown (shape "
                                "inference cannot type it); choose another cut")
        return helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(np.dtype(c.dtype)),
                                             [None] * len(c.shape))

    parts = []
    bounds = [None, *names, None]
    for i in range(len(names) + 1):
        start, stop = bounds[i], bounds[i + 1]
        outputs = [stop] if stop else [o.name for o in g.output]
        keep, used, stack, seen = set(), set(), list(outputs), set()
        while stack:  # everything the outputs need, not past the start tensor
            t = stack.pop()
            if t in seen or t == start:
                continue
            seen.add(t)
            if t in inits or t in sparse or t in graph_inputs:
                used.add(t)
                continue
            n = producer.get(t)
            if n is not None and n not in keep:
                keep.add(n)
                stack.extend(nodes_in[n])
        if i and info.primary_input in used:  # the cuts dominate, so only a bug gets here
            raise WorkloadError(f"model {model_name}: part {i} after cut {start!r} still needs input "
                                f"{info.primary_input!r}; {start!r} is not a valid cut")
        part = onnx.ModelProto()
        for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
            setattr(part, f, getattr(model, f))
        part.opset_import.extend(model.opset_import)
        part.functions.extend(model.functions)
        part.metadata_props.extend(model.metadata_props)
        pg = part.graph
        pg.name = f"{g.name or 'graph'}_part{i}"
        pg.node.extend(n for j, n in enumerate(nodes) if j in keep)
        pg.initializer.extend(t for t in g.initializer if t.name in used)
        pg.sparse_initializer.extend(t for t in g.sparse_initializer if t.values.name in used)
        if start:
            pg.input.append(boundary(start))
        # Graph inputs used (initializers listed as inputs stay overridable, as in the model).
        pg.input.extend(vi for vi in g.input if vi.name in used)
        if stop:
            pg.output.append(boundary(stop))
        else:
            pg.output.extend(g.output)
        inner = seen - {start, stop} - used
        pg.value_info.extend(vi for name, vi in originals.items() if name in inner)
        try:
            onnx.checker.check_model(part)
        except onnx.checker.ValidationError as e:
            raise WorkloadError(f"model {model_name}: part {i} of the split is not a valid model: "
                                f"{str(e).splitlines()[0]}") from None
        parts.append(part)
    return parts


def verify_split(model, parts: Sequence[onnx.ModelProto], feeds: Mapping[str, np.ndarray],
                 atol: float = 1e-5, threads: int = 1, optimization: str = "disable") -> float:
    """Max abs difference between ``model`` and its ``parts`` chained, over all outputs.

    Both run in ONNX Runtime on the CPU. Part i is fed the earlier parts' outputs and whatever else
    it declares from ``feeds`` (side inputs). Raises :class:`WorkloadError` naming the cut tensors
    when the difference exceeds ``atol``, or when ``feeds`` lack an input.

    ``optimization`` (see :func:`session`) defaults to ``disable``: the check is about the graph
    surgery, and with the same kernels on both sides the difference is exactly 0 for a correct
    split. At ``extended``/``all`` ONNX Runtime fuses across what is a part boundary in the whole
    model (QDQ groups into quantized kernels, a trailing Q/DQ pair dropped), so a QDQ model and its
    parts then differ by up to one quantization step depending on the cut: a real effect of
    partitioning, but not a splitting error.
    """
    cut_names = [p.graph.output[0].name for p in parts[:-1]]
    where = f"partition at {', '.join(cut_names) or '(no cut)'}"

    def run(m, env: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
        s = session(m, threads, optimization)
        names = [i.name for i in s.get_inputs()]
        missing = [n for n in names if n not in env]
        if missing:
            raise WorkloadError(f"{where}: {what} needs input {missing[0]!r}, which the feeds lack; "
                                f"feeds: {', '.join(feeds) or '(none)'}")
        outs = s.run(None, {n: env[n] for n in names})
        return dict(zip((o.name for o in s.get_outputs()), outs))

    full = run(model, feeds, "the model")
    env = dict(feeds)
    for i, p in enumerate(parts):
        env.update(run(p, env, f"part {i}"))
    worst = 0.0
    for name, want in full.items():
        got = env.get(name)
        if got is None or np.shape(got) != np.shape(want):
            raise WorkloadError(f"{where}: output {name!r} of the chained parts is "
                                f"{'missing' if got is None else f'of shape {np.shape(got)}'}, "
                                f"the model's is of shape {np.shape(want)}")
        worst = max(worst, _max_abs_diff(np.asarray(want), np.asarray(got)))
    if not worst <= atol:
        raise WorkloadError(f"{where}: the chained parts differ from the whole model by {worst:.3g} "
                            f"(max abs over outputs {', '.join(full)}), above atol {atol:g}")
    return worst


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    if a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
        return 0.0 if np.array_equal(a, b) else math.inf
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(b64)  # NaN where the model has NaN is agreement
    d = np.where(both_nan, 0.0, np.abs(a64 - b64))
    return float(np.nan_to_num(d, nan=math.inf).max())
