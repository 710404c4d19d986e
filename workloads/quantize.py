"""Post-training int8 quantization through ``onnxruntime.quantization``, and proof that it runs.

Three parts:

* `QuantizeParams` (declared in `quantize_params`) + `quantize_model`: static (calibrated)
  or dynamic quantization of an ONNX model. ORT's API works on files, so the model goes
  through a temporary folder: ``quant_pre_process`` (symbolic + ONNX shape inference and
  ORT's basic graph optimisation, e.g. BatchNorm folded into Conv) and then
  ``quantize_static`` / ``quantize_dynamic``.
* `int8_report`: what ONNX Runtime will really execute. Q/DQ nodes in a file prove nothing:
  a QDQ model only runs int8 kernels if ORT's graph optimiser fuses each
  ``DQ -> Conv -> Q`` group into ``QLinearConv`` (``QGemm``, ``QLinearMatMul``, ...). The
  report builds a session, saves ORT's optimised graph and counts what is left in it.
* `measure_latency` and `cpu_features`: median/p10/p90 latency of a model, and the CPU flags
  that decide how much faster int8 can be (VNNI/AMX do 8-bit dot products in one
  instruction; plain AVX2 needs ``VPMADDUBSW`` + ``VPMADDWD``). On a 2-core AVX2 EPYC without
  VNNI, one thread, resnet18 1x3x224x224 ran in ~44-48 ms fp32 and ~23-24 ms U8S8 int8
  (QDQ or QOperator, fully fused).

What ONNX Runtime 1.32's CPU provider fuses, found on an AVX2 machine without VNNI:

* QDQ models: at ``ORT_ENABLE_EXTENDED`` (level 2) the QDQ selector/action transformers turn
  ``DQ->Conv->Q`` into ``QLinearConv`` and ``DQ->Gemm->Q`` into ``QGemm`` (com.microsoft);
  ``ORT_ENABLE_BASIC`` fuses nothing. ``ORT_ENABLE_ALL`` (level 3) fuses the same and then
  only changes layout (NHWC ``QLinearConv`` with ``Transpose`` at the ends, NCHWc float
  convolutions); its saved graph is machine-specific. The report therefore optimises at
  EXTENDED: the same int8 kernels as the deployed session, in a portable graph whose shapes
  can be probed.
* QOperator models already hold ``QLinearConv``/``QGemm``; nothing to fuse.
* Dynamic models: ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul`` becomes
  ``DynamicQuantizeMatMul`` or stays ``MatMulInteger``; both are int8 kernels.

Only onnx, onnxruntime and numpy are imported (onnxruntime.quantization lazily).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .data import Dataset
from .graph import node_macs, probe_shapes
from .runtime import session
from .errors import WorkloadError, choices
from .quantize_params import FORMATS, INT_TYPES, METHODS, MODES, QuantizeParams  # noqa: F401 - re-exported

_TWO_GB = 2 ** 31
METADATA_KEY = "workloads.quantize"   # model metadata: the parameters used, as JSON

# Kernels that do multiply-accumulate work in 8-bit integers.
INT8_COMPUTE = frozenset({
    "QLinearConv", "QLinearConvTranspose", "ConvInteger", "QLinearMatMul", "MatMulInteger",
    "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "DynamicQuantizeLSTM",
})
# Float kernels that do the same kind of work (ORT's fused float variants included).
FLOAT_COMPUTE = frozenset({
    "Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm",
    "FusedGemm", "Attention", "MultiHeadAttention", "LSTM", "GRU", "RNN",
})
# float <-> int8 conversions; each is one pass over its tensor.
CONVERSIONS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def _is_int8_kernel(op_type: str) -> bool:
    """Int8 compute kernels and int8 element-wise/pooling kernels (QLinearAdd, QLinearSigmoid...)."""
    return (op_type in INT8_COMPUTE or op_type.startswith("QLinear") or "Integer" in op_type
            or op_type == "QEmbedLayerNormalization")


# ---- quantization -------------------------------------------------------------------------

def quantize_model(model: onnx.ModelProto, params: QuantizeParams,
                   calibration: Dataset | None = None) -> onnx.ModelProto:
    """The int8 model: ``quant_pre_process`` then ``quantize_static`` (calibrated on the first
    ``params.samples`` samples of ``calibration``, fed one at a time) or ``quantize_dynamic``.

    Pre-processing runs symbolic shape inference, ORT's basic optimisation and ONNX shape
    inference. Symbolic shape inference fails on some graphs (unknown ops, data-dependent
    shapes); it is then skipped and ONNX shape inference alone is used (tensors whose shape
    stays unknown may be left in float), and if pre-processing fails altogether the model is
    quantized as it is. The result's metadata (`METADATA_KEY`) records the parameters used,
    ``per_channel`` resolved, the calibration samples used and which pre-processing ran.
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    size = model.ByteSize()
    if size >= _TWO_GB:
        raise WorkloadError(f"quantize: the model is {size / 2**30:.1f} GiB; models of 2 GiB or more "
                            "(external data) are not supported")
    if params.mode == "static":
        if calibration is None or len(calibration) == 0:
            raise WorkloadError("quantize: static quantization needs calibration data; give the model "
                                "a data set or use mode: dynamic")
        _check_calibration(model, calibration)
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    per_channel = params.resolved_per_channel(model)

    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        src, pre, out = (os.path.join(tmp, n) for n in ("model.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, src)
        prepared, pre_done = _pre_process(src, pre)
        op_types = list(params.op_types) if params.op_types else None
        exclude = list(params.exclude_nodes) if params.exclude_nodes else None
        try:
            if params.mode == "dynamic":
                quantize_dynamic(prepared, out, op_types_to_quantize=op_types, per_channel=per_channel,
                                 reduce_range=params.reduce_range, weight_type=qtype[params.weight_qtype],
                                 nodes_to_exclude=exclude)
            else:
                names = [name for name, _, _ in _model_inputs(model)]
                reader = _Reader(calibration.take(params.samples), names)
                method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[params.method]
                with contextlib.redirect_stdout(io.StringIO()):  # entropy/percentile print progress
                    quantize_static(prepared, out, reader,
                                    quant_format=QuantFormat.QDQ if params.format == "qdq" else QuantFormat.QOperator,
                                    op_types_to_quantize=op_types, per_channel=per_channel,
                                    reduce_range=params.reduce_range,
                                    activation_type=qtype[params.activation_qtype],
                                    weight_type=qtype[params.weight_qtype], nodes_to_exclude=exclude,
                                    calibrate_method=method, calibration_providers=["CPUExecutionProvider"])
        except WorkloadError:
            raise
        except Exception as e:  # ORT raises many types; the user needs one line
            raise WorkloadError(f"quantize: ONNX Runtime quantization failed ({type(e).__name__}: "
                                f"{_first_line(e)}); try other op_types, exclude_nodes or mode") from e
        result = onnx.load(out)
    done = {**params.as_dict(), "per_channel": per_channel, "pre_process": pre_done,
            "samples": min(params.samples, len(calibration)) if params.mode == "static" else 0}
    onnx.helper.set_model_props(result, {**{p.key: p.value for p in result.metadata_props},
                                         METADATA_KEY: json.dumps(done, sort_keys=True)})
    return result


def _pre_process(src: str, dst: str) -> tuple[str, str]:
    """``quant_pre_process`` of ``src`` into ``dst``: ``(path to quantize, what was done)``,
    what being ``full``, ``no-symbolic-shape`` or ``skipped``."""
    from onnxruntime.quantization import quant_pre_process

    for skip_symbolic, done in ((False, "full"), (True, "no-symbolic-shape")):
        try:
            quant_pre_process(src, dst, skip_symbolic_shape=skip_symbolic)
            return dst, done
        except Exception:
            continue
    return src, "skipped"


class _Reader:
    """ORT calibration reader: the samples of a data set, one at a time (batch of one)."""

    def __init__(self, data: Dataset, names: list[str]):
        self._data = data
        self._names = names
        self._next = 0

    def __len__(self):
        return len(self._data)

    def get_next(self):
        if self._next >= len(self._data):
            return None
        self._next += 1
        sample = self._data.sample(self._next - 1)
        return {name: sample[name] for name in self._names}

    def rewind(self):
        self._next = 0

    def __iter__(self):
        return iter(self.get_next, None)


# onnx TensorProto element type -> numpy dtype name, for inputs
_NP = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64",
       onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT64: "int64",
       onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
       onnx.TensorProto.BOOL: "bool"}


def _model_inputs(model: onnx.ModelProto) -> list[tuple[str, list | None, str]]:
    """``(name, dims, dtype)`` of each real input; a dim is an int or None (symbolic/unknown);
    dims is None when the input has no shape at all."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for i in model.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        dims = ([d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
                if t.HasField("shape") else None)
        out.append((i.name, dims, _NP.get(t.elem_type, onnx.TensorProto.DataType.Name(t.elem_type).lower())))
    return out


def _fmt(dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _check_calibration(model: onnx.ModelProto, data: Dataset) -> None:
    """Every model input has samples of the right per-sample shape and dtype."""
    for name, dims, dtype in _model_inputs(model):
        if name not in data.inputs:
            raise WorkloadError(f"calibration data {data.name}: no samples for model input {name!r} "
                                f"(the data set has {choices(data.inputs)}); use a data set made for this model")
        arr = data.inputs[name]
        want, have = (list(arr.shape[1:]) if dims is None else dims[1:]), list(arr.shape[1:])
        fits = (str(arr.dtype) == dtype and (dims is None or len(dims) == arr.ndim)
                and all(w is None or w == h for w, h in zip(want, have)))
        if not fits:
            raise WorkloadError(f"calibration data {data.name}: samples have shape {_fmt(have)} {arr.dtype} "
                                f"but model input {name!r} expects {_fmt(want)} {dtype} per sample; "
                                "use a data set made for this model")
        if dims and dims[0] not in (None, 1):
            raise WorkloadError(f"calibration data {data.name}: model input {name!r} has a fixed batch of {dims[0]} "
                                "but calibration feeds one sample at a time; export the model with batch 1 "
                                "or a dynamic batch")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


# ---- what ORT executes ----------------------------------------------------------------------

@dataclass(frozen=True)
class Int8Report:
    """What ORT runs after graph optimisation (``ORT_ENABLE_EXTENDED``).

    ``int8_ops``: counts of int8 kernels (compute kernels such as ``QLinearConv``, ``QGemm``,
    ``MatMulInteger``, ``DynamicQuantizeMatMul`` and int8 element-wise ones such as
    ``QLinearAdd``); ``float_ops``: counts of compute kernels left in float (``Conv``,
    ``MatMul``, ``Gemm``, ``FusedConv``...); ``qdq_nodes``: float<->int8 conversions left
    (``QuantizeLinear``, ``DequantizeLinear``, ``DynamicQuantizeLinear``).
    ``int8_fraction``: share of the multiply-accumulates done by int8 compute kernels, from
    the shapes of one probe run with symbolic dims set to 1 (so attention-like matmuls
    between two activations are undercounted for long sequences); when that probe is not
    possible, the share of compute nodes (``basis`` says which).
    """
    int8_ops: dict[str, int]
    float_ops: dict[str, int]
    qdq_nodes: int
    int8_fraction: float
    basis: str                      # "macs" or "nodes"
    int8_macs: int = 0
    float_macs: int = 0
    nodes: int = 0
    level: str = "extended"

    @property
    def int8_compute(self) -> int:
        """Number of int8 compute (multiply-accumulate) kernels."""
        return sum(n for op, n in self.int8_ops.items() if op in INT8_COMPUTE)

    def check(self, where: str = "quantize") -> "Int8Report":
        """Raises unless ORT runs at least one int8 compute kernel; returns self."""
        if self.int8_compute == 0:
            left = ", ".join(f"{n} {op}" for op, n in sorted(self.float_ops.items())) or "none"
            raise WorkloadError(f"{where}: no int8 compute kernel after ONNX Runtime's graph optimisation "
                                f"(float compute left: {left}; {self.qdq_nodes} Q/DQ nodes); "
                                "check op_types/exclude_nodes and that the model has Conv, MatMul or Gemm")
        return self

    def summary(self) -> str:
        """One line for logs and tables."""
        i8 = ", ".join(f"{n} {op}" for op, n in sorted(self.int8_ops.items())) or "none"
        fl = ", ".join(f"{n} {op}" for op, n in sorted(self.float_ops.items())) or "none"
        return (f"int8 {self.int8_fraction:.1%} of {self.basis}; int8 kernels: {i8}; float: {fl}; "
                f"Q/DQ left: {self.qdq_nodes}")

    def as_dict(self) -> dict:
        return asdict(self)


def int8_report(model: onnx.ModelProto | bytes | str | Path) -> Int8Report:
    """Count the kernels ORT's CPU provider runs for ``model`` after its graph optimisation."""
    with tempfile.TemporaryDirectory(prefix="int8-report-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        try:
            session(model, optimization="extended", optimized_path=path)
        except Exception as e:
            raise WorkloadError(f"int8 report: ONNX Runtime cannot load the model ({_first_line(e)})") from e
        opt = onnx.load(path)
    counts = Counter(n.op_type for n in opt.graph.node)
    int8_ops = {op: n for op, n in sorted(counts.items()) if _is_int8_kernel(op)}
    float_ops = {op: n for op, n in sorted(counts.items()) if op in FLOAT_COMPUTE}
    qdq = sum(n for op, n in counts.items() if op in CONVERSIONS)
    macs = _compute_macs(opt)
    if macs is not None and sum(macs.values()) > 0:
        i8 = sum(v for (op, _), v in macs.items() if op in INT8_COMPUTE)
        fl = sum(v for (op, _), v in macs.items() if op in FLOAT_COMPUTE)
        return Int8Report(int8_ops, float_ops, qdq, i8 / (i8 + fl), "macs", i8, fl, len(opt.graph.node))
    i8n = sum(n for op, n in int8_ops.items() if op in INT8_COMPUTE)
    fln = sum(float_ops.values())
    return Int8Report(int8_ops, float_ops, qdq, i8n / (i8n + fln) if i8n + fln else 0.0, "nodes",
                      nodes=len(opt.graph.node))


def fold_weight_quantization(model: onnx.ModelProto) -> int:
    """Store quantized weights as integers: every QuantizeLinear whose inputs are all constants
    (initializers, Constant nodes, or Identity of either: the exporter's fake quantization of a
    weight) is replaced by its result, an int8/uint8 initializer that the DequantizeLinear after
    it reads, as ONNX Runtime's own quantizer writes them. Computed as the operator defines it
    (round half to even, saturate), so the model's outputs do not change; it is a quarter of the
    size. Returns how many were folded; initializers and constants left unused are removed."""
    from onnx import numpy_helper

    graph = model.graph
    const = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            const[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in const:
            const[n.output[0]] = const[n.input[0]]
    kept, folded = [], []
    for n in graph.node:
        if n.op_type != "QuantizeLinear" or len(n.input) < 3 or not all(i in const for i in n.input):
            kept.append(n)
            continue
        w, scale, zp = (const[i] for i in n.input[:3])
        if scale.ndim == 1 and w.ndim > 1:             # per axis: broadcast along it
            shape = [1] * w.ndim
            shape[_attr(n, "axis", 1)] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(w / scale) + zp.astype(np.int32), info.min, info.max).astype(zp.dtype)
        folded.append(numpy_helper.from_array(q, n.output[0]))
    if not folded:
        return 0
    graph.initializer.extend(folded)
    while True:                     # drop what nothing reads any more (Constant/Identity chains)
        used = {i for n in kept for i in n.input} | {o.name for o in graph.output}
        live = [n for n in kept if n.op_type not in ("Constant", "Identity") or any(o in used for o in n.output)]
        if len(live) == len(kept):
            break
        kept = live
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return len(folded)


def _compute_macs(model: onnx.ModelProto) -> dict[tuple[str, int], int] | None:
    """Multiply-accumulates per compute node, keyed ``(op_type, node index)``, as
    `graph.node_macs` counts them from the shapes of one run of the optimised model
    (`graph.probe_shapes`: unoptimised, zero inputs, symbolic dims = 1). None when the probe
    fails or leaves a shape unknown."""
    compute = [(i, n) for i, n in enumerate(model.graph.node)
               if n.op_type in INT8_COMPUTE or n.op_type in FLOAT_COMPUTE]
    if not compute:
        return {}
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    wanted = [t for _, n in compute for t in (*n.input, n.output[0]) if t and t not in inits]
    shapes = {t: dims for t, (_, dims) in probe_shapes(model, wanted).items()} | inits
    out = {}
    for i, n in compute:
        macs = node_macs(n, shapes.get)
        if macs is None:
            return None
        out[(n.op_type, i)] = macs
    return out


def _attr(node, name, default=0):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


# ---- latency and CPU ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LatencyStats:
    """Latency of ``session.run`` in milliseconds over ``repeats`` timed runs."""
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    repeats: int
    threads: int
    samples_ms: tuple[float, ...] = field(default=(), repr=False)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("samples_ms")
        return d


def measure_latency(model_or_bytes, feeds: dict[str, np.ndarray], threads: int = 1,
                    warmup: int = 5, repeats: int = 30) -> LatencyStats:
    """Time ``repeats`` runs of ``feeds`` (after ``warmup`` untimed ones) in an ORT CPU session
    with ``threads`` intra-op threads and full graph optimisation, as deployed.
    ``model_or_bytes``: ModelProto, serialized bytes, a path, or an ``InferenceSession``."""
    if repeats < 1 or warmup < 0 or threads < 1:
        raise WorkloadError(f"latency: repeats ({repeats}) and threads ({threads}) must be ≥ 1 and "
                            f"warmup ({warmup}) ≥ 0")
    sess = model_or_bytes if hasattr(model_or_bytes, "run") else session(model_or_bytes, threads=threads)
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        sess.run(None, feeds)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    a = np.asarray(times)
    return LatencyStats(float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90)),
                        float(a.mean()), repeats, threads, tuple(times))


_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


def cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The x86 flags that decide int8 speed, from ``/proc/cpuinfo``: ``{flag: bool}`` for
    avx2, avx512f, avx512_vnni, avx_vnni, amx_tile, amx_int8, plus ``vnni`` (any 8-bit dot
    product instruction: AVX512-VNNI, AVX-VNNI or AMX) and ``model`` (the CPU's name).
    Empty where there is no cpuinfo (not Linux). Without VNNI, ORT's int8 GEMM on x86 uses
    AVX2 ``VPMADDUBSW`` + ``VPMADDWD`` (and U8S8 may saturate, see ``reduce_range``); with
    VNNI one instruction does the 8-bit dot product and int8 gains more over float."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {}
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    if not flags:
        return {}
    out: dict[str, Any] = {f: f in flags for f in _CPU_FLAGS}
    out["vnni"] = out["avx512_vnni"] or out["avx_vnni"] or out["amx_int8"]
    out["model"] = model
    return out
