"""Running an artifact: its segments in order, with early exits, on ONNX Runtime + numpy only.

This is what a host runs, so it imports neither onnx nor torch. An artifact is a chain of
*segments* (ONNX files). Each segment belongs to one *part*, and each part runs on one host;
a segment may end in an exit head whose softmax confidence, when it reaches the threshold,
ends the request there (nothing is sent on). Original inputs that later segments also need
(side inputs such as an attention mask) travel with the boundary tensors.
"""
from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST = "artifact.json"
BATCH = 1    # samples per request (workloads.prepare.request_inputs): a symbolic axis 0 is this


@dataclass(frozen=True)
class SegmentInfo:
    file: str
    part: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]          # boundary tensors for the next segment, or the model outputs
    exit_output: str | None = None    # logits of this segment's exit head
    threshold: float | None = None

    @staticmethod
    def from_dict(d: dict) -> "SegmentInfo":
        return SegmentInfo(d["file"], d["part"], tuple(d["inputs"]), tuple(d["outputs"]),
                           d.get("exit_output"), d.get("threshold"))


@dataclass(frozen=True)
class Declared:
    """A tensor as an ONNX graph declares it: ``itemsize`` (None: no element type, or one
    without a fixed size such as string) and ``shape`` (None: no shape; each axis its size,
    its symbolic name, or None when neither is given)."""

    itemsize: int | None
    shape: tuple[int | str | None, ...] | None

    def nbytes(self, batch: int = BATCH) -> int | None:
        """The tensor's bytes with a symbolic (or unsized) axis 0 taken as ``batch``; None when
        the declaration leaves the size open (no shape or type, another axis symbolic)."""
        if self.itemsize is None or self.shape is None:
            return None
        n = self.itemsize
        for axis, dim in enumerate(self.shape):
            if type(dim) is int:
                n *= dim
            elif axis == 0:
                n *= batch
            else:
                return None
        return n


# TensorProto.DataType -> bytes per element (4-bit types counted as a byte: an upper bound)
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2,
             17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1}


def _varint(buf, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError(f"a varint longer than 10 bytes at byte {i}")


def _fields(buf, start: int, end: int):
    """(field number, wire type, value or start, end or None) of one protobuf message."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield number, wire, value, None
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > end:
                raise ValueError(f"field {number} runs past its message at byte {i}")
            yield number, wire, i, i + size
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire} of field {number} at byte {i}")
    if i != end:
        raise ValueError(f"a message runs past its end at byte {end}")


def _sub(buf, start: int, end: int, number: int):
    """(start, end) of every length-delimited field ``number`` of a message."""
    for n, wire, a, b in _fields(buf, start, end):
        if n == number and wire == 2:
            yield a, b


def _value_info(buf, start: int, end: int) -> tuple[str, Declared]:
    name, itemsize, shape = "", None, None
    for n, wire, a, b in _fields(buf, start, end):
        if n == 1 and wire == 2:
            name = bytes(buf[a:b]).decode("utf-8")
        elif n == 2 and wire == 2:                              # TypeProto
            for t0, t1 in _sub(buf, a, b, 1):                   # .tensor_type
                for m, w, c, d in _fields(buf, t0, t1):
                    if m == 1 and w == 0:                       # .elem_type
                        itemsize = _ITEMSIZE.get(c)
                    elif m == 2 and w == 2:                     # .shape: its dims
                        shape = tuple(_dim(buf, d0, d1) for d0, d1 in _sub(buf, c, d, 1))
    return name, Declared(itemsize, shape)


def _dim(buf, start: int, end: int) -> int | str | None:
    for n, wire, a, b in _fields(buf, start, end):
        if n == 1 and wire == 0:
            return a if a < 1 << 62 else None                  # a negative int64 is no size
        if n == 2 and wire == 2:
            return bytes(buf[a:b]).decode("utf-8")
    return None


def declared_io(path: Path | str) -> dict[str, Declared]:
    """The inputs and outputs an ONNX file's graph declares (name -> :class:`Declared`),
    read from its protobuf directly: no onnx import, and the weights are skipped, not read
    (the file is mapped). ValueError when the file is not a readable ONNX model."""
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            raise ValueError(f"{path}: empty file, not an ONNX model") from None
    with buf:
        out: dict[str, Declared] = {}
        try:
            for g0, g1 in _sub(buf, 0, len(buf), 7):                 # ModelProto.graph
                for n, wire, a, b in _fields(buf, g0, g1):
                    if n in (11, 12) and wire == 2:                  # GraphProto.input / .output
                        name, decl = _value_info(buf, a, b)
                        out.setdefault(name, decl)
        except (IndexError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path}: not a readable ONNX model ({e})") from None
        return out


def load_manifest(folder: Path | str) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())


def session(model, threads: int = 1, optimization: str = "all", optimized_path: str | None = None,
            spin: bool = True):
    """An ONNX Runtime CPU session for ``model`` (a ModelProto, serialized bytes, or a path).

    ``threads`` is the intra-op thread count (a host's core budget; inter-op is 1);
    ``optimization`` is ``all`` (ORT_ENABLE_ALL, the default), ``extended``, ``basic`` or
    ``disable``; ``optimized_path`` makes ORT write the graph it will really run; ``spin=False``
    stops the intra-op pool's threads spinning while they wait for work (a paced server counts
    their CPU time as the inference's: :mod:`workloads.pacing`).
    """
    import onnxruntime as ort

    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    if optimization not in levels:
        from .errors import WorkloadError
        raise WorkloadError(f"optimization {optimization!r} unknown; valid: {', '.join(levels)}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = levels[optimization]
    so.log_severity_level = 3          # warnings about machine-specific optimised graphs are noise here
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    if hasattr(model, "SerializeToString"):          # an onnx.ModelProto (onnx itself is not imported here)
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def softmax_confidence(logits: np.ndarray) -> np.ndarray:
    """Top softmax probability per row of ``logits`` (N, classes)."""
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e.max(axis=-1) / e.sum(axis=-1)).astype(np.float32)


@dataclass
class PartResult:
    done: bool                        # True: the request is answered (final output or an exit)
    tensors: dict[str, np.ndarray]    # the answer, or what the next part needs
    exited_at: int | None = None      # index of the segment whose exit fired


class ArtifactRunner:
    """Loads the segments of ``parts`` (all by default) once; runs requests through them."""

    def __init__(self, folder: Path | str, parts: tuple[int, ...] | None = None, threads: int = 1,
                 spin: bool = True):
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        self.segments = [SegmentInfo.from_dict(s) for s in self.manifest["segments"]]
        self.parts = tuple(range(self.manifest["parts"])) if parts is None else tuple(parts)
        self.inputs = tuple(self.manifest["inputs"])
        self.outputs = tuple(self.manifest["outputs"])
        self.sessions = {i: session(self.folder / s.file, threads, spin=spin)
                         for i, s in enumerate(self.segments) if s.part in self.parts}
        # per part, what a request walks through, worked out once (a request should cost ORT's time)
        self._walk = {p: [(i, seg, self.sessions[i], [o.name for o in self.sessions[i].get_outputs()])
                          for i, seg in enumerate(self.segments) if seg.part == p] for p in self.parts}
        self._last = max(s.part for s in self.segments)
        self._crossing = {p: self.crossing(p) for p in self.parts if p != self._last}
        self._declared: dict[str, Declared] | None = None

    def run_part(self, part: int, tensors: dict[str, np.ndarray], thresholds: dict[int, float] | None = None) -> PartResult:
        """Run part ``part`` on ``tensors`` (original inputs for part 0; the previous part's
        tensors, side inputs included, after that)."""
        carry = dict(tensors)
        for i, seg, sess, names in self._walk[part]:
            out = sess.run(names, {name: carry[name] for name in seg.inputs})
            produced = dict(zip(names, out))
            if seg.exit_output is not None:
                limit = (thresholds or {}).get(i, seg.threshold)
                logits = produced.pop(seg.exit_output)
                if limit is not None and float(softmax_confidence(logits)[0]) >= limit:
                    return PartResult(True, {self.outputs[0]: logits}, exited_at=i)
            carry.update(produced)
        if part == self._last:
            return PartResult(True, {name: carry[name] for name in self.outputs})
        return PartResult(False, {name: carry[name] for name in self._crossing[part]})

    def declared(self) -> dict[str, Declared]:
        """Every tensor the artifact's segment files declare as a graph input or output (the
        first declaration that gives its size, when one does), read once."""
        if self._declared is None:
            found: dict[str, Declared] = {}
            for s in self.segments:
                for name, decl in declared_io(self.folder / s.file).items():
                    if name not in found or found[name].nbytes() is None:
                        found[name] = decl
            self._declared = found
        return self._declared

    def largest_request(self, part: int) -> tuple[int | None, str]:
        """The payload bytes of the largest request a server of ``part`` may legitimately get:
        the model's inputs for part 0, else what the part before sends on (`crossing`), each
        at its declared shape (a symbolic axis 0 is the batch, :data:`BATCH`). Where a cut's
        declaration is open (a model exported with a symbolic batch often leaves the spatial
        axes of its inner tensors open too), the bytes prepare worked out for that cut at
        batch 1 (``report.partition.cuts``: the cut tensor and the side inputs after it)
        stand in; ``(None, why)`` when neither gives a size."""
        declared, why = self._bytes_of(self.inputs if part == 0 else self.crossing(part - 1))
        if declared is not None or part == 0:
            return declared, why
        cuts = self.manifest.get("report", {}).get("partition", {}).get("cuts", [])
        recorded = cuts[part - 1].get("bytes") if part - 1 < len(cuts) else None
        if type(recorded) is int and recorded >= 0:
            return recorded, ""
        return None, why

    def largest_answer(self, part: int) -> tuple[int | None, str]:
        """The payload bytes of the largest answer a server of ``part`` may get back from the
        next part: the model's outputs, or an exit head's logits of a later part."""
        sizes = [self._bytes_of(self.outputs)]
        sizes += [self._bytes_of((s.exit_output,)) for s in self.segments if s.part > part and s.exit_output]
        open_ = [why for n, why in sizes if n is None]
        if open_:
            return None, open_[0]
        return max(n for n, _ in sizes), ""

    def _bytes_of(self, names) -> tuple[int | None, str]:
        declared, total = self.declared(), 0
        for name in names:
            decl = declared.get(name)
            n = decl.nbytes() if decl is not None else None
            if n is None:
                shown = "declares no size" if decl is None or decl.shape is None or decl.itemsize is None else \
                    f"has the open shape {list(decl.shape)}"
                return None, f"tensor {name} {shown} in the artifact's segment files"
            total += n
        return total, ""

    def crossing(self, part: int) -> tuple[str, ...]:
        """Tensor names sent from ``part`` to the next part (boundary tensors + side inputs)."""
        later = [s for s in self.segments if s.part > part]
        made_before = set(self.inputs)
        for s in self.segments:
            if s.part <= part:
                made_before.update(s.outputs)
        needed = []
        for s in later:
            for name in s.inputs:
                if name in made_before and name not in needed:
                    needed.append(name)
        return tuple(needed)

    def run(self, feeds: dict[str, np.ndarray], thresholds: dict[int, float] | None = None) -> PartResult:
        """Run every part in order on one machine (evaluation); the result says where it ended."""
        tensors = feeds
        for part in sorted(set(s.part for s in self.segments)):
            res = self.run_part(part, dict(tensors) | {k: v for k, v in feeds.items() if k not in tensors},
                                thresholds)
            if res.done:
                return res
            tensors = res.tensors
        raise AssertionError("the last part always answers")
