"""Running an artifact: its segments in order, with early exits, on ONNX Runtime + numpy only.

This is what a host runs, so it imports neither onnx nor torch. An artifact is a chain of
*segments* (ONNX files). Each segment belongs to one *part*, and each part runs on one host;
a segment may end in an exit head whose softmax confidence, when it reaches the threshold,
ends the request there (nothing is sent on). Original inputs that later segments also need
(side inputs such as an attention mask) travel with the boundary tensors.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST = "artifact.json"


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
