"""The artifact being prepared: a backbone graph plus where it exits early and where it is cut.

Operators transform a `Pipeline`; only `save` turns it into files. Keeping the whole backbone
until the end lets any chain of operators compose: quantization rewrites the backbone, exit
heads and partition cuts are *boundaries* on it, and `segments()` splits the backbone at every
boundary at once, appends each exit head to the segment that ends at its tensor, and numbers
the parts (one per host) by the partition cuts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from . import graph
from .errors import WorkloadError
from .runtime import MANIFEST


@dataclass(frozen=True)
class ExitHead:
    """An exit classifier on backbone tensor ``tensor``: ONNX nodes and initializers that read
    ``tensor`` (and ``side_inputs``) and write ``output`` (logits)."""
    tensor: str
    output: str
    nodes: tuple
    initializers: tuple
    side_inputs: tuple[str, ...]
    threshold: float


@dataclass(frozen=True)
class Pipeline:
    """The backbone is never changed in place: an operator that rewrites it makes a new model
    (``replace(p, backbone=new)``), which is what lets `info` keep its analysis."""
    model_name: str
    task: str
    backbone: onnx.ModelProto
    exits: tuple[ExitHead, ...] = ()
    cuts: tuple[str, ...] = ()                 # partition boundaries, in topological order
    report: dict = field(default_factory=dict)  # what each operator measured, keyed by operator
    # (the backbone analysed, its graph.analyze): made by `info` once, passed on by replace()
    _analysis: tuple | None = field(default=None, compare=False, repr=False)

    @property
    def inputs(self) -> tuple[str, ...]:
        inits = {i.name for i in self.backbone.graph.initializer}
        return tuple(i.name for i in self.backbone.graph.input if i.name not in inits)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.backbone.graph.output)

    @property
    def parts(self) -> int:
        return len(self.cuts) + 1

    def with_report(self, key: str, value) -> "Pipeline":
        return replace(self, report={**self.report, key: value})

    def info(self) -> graph.GraphInfo:
        """`graph.analyze` of the backbone, made once per backbone model: pipelines derived
        from this one (``dataclasses.replace``, `with_report`) reuse it while their backbone is
        the very same model, and analyse a new one anew."""
        memo = self._analysis
        if memo is None or memo[0] is not self.backbone:
            memo = (self.backbone, graph.analyze(self.backbone))
            object.__setattr__(self, "_analysis", memo)
        return memo[1]

    def segments(self) -> list[tuple[onnx.ModelProto, int, ExitHead | None]]:
        """``(model, part, exit head or None)`` per segment, in order."""
        bounds = [*self.cuts, *(e.tensor for e in self.exits)]
        if not bounds:
            models = [self.backbone]
        else:
            info = self.info()
            order = {c.tensor: c.index for c in info.cuts}
            bounds = sorted(set(bounds), key=lambda t: order[t])
            models = graph.split(self.backbone, bounds, info)
        heads = {e.tensor: e for e in self.exits}
        out, part = [], 0
        for i, m in enumerate(models):
            end = bounds[i] if i < len(bounds) else None
            head = heads.get(end) if end else None
            if head is not None:
                m = attach_head(m, head)
            out.append((m, part, head))
            if end in self.cuts:
                part += 1
        return out

    def save(self, folder: Path, metadata: dict) -> dict:
        """Write ``seg<i>.onnx`` files and the manifest; returns the manifest."""
        segs = []
        for i, (m, part, head) in enumerate(self.segments()):
            name = f"seg{i}.onnx"
            onnx.save(m, str(folder / name))
            inits = {x.name for x in m.graph.initializer}
            segs.append({
                "file": name, "part": part,
                "inputs": [x.name for x in m.graph.input if x.name not in inits],
                "outputs": [x.name for x in m.graph.output],
                "exit_output": head.output if head else None,
                "threshold": head.threshold if head else None,
                "bytes": (folder / name).stat().st_size,
            })
        manifest = {"model": self.model_name, "task": self.task, "parts": self.parts,
                    "inputs": list(self.inputs), "outputs": list(self.outputs),
                    "cuts": list(self.cuts), "exits": [e.tensor for e in self.exits],
                    "segments": segs, "report": self.report, **metadata}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        return manifest


def attach_head(model: onnx.ModelProto, head: ExitHead) -> onnx.ModelProto:
    """A copy of segment ``model`` (which outputs ``head.tensor``) that also outputs the head's logits."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    have = {i.name for i in g.input}
    for name in head.side_inputs:
        if name not in have:
            raise WorkloadError(f"exit head on {head.tensor}: segment lacks side input {name}")
    g.node.extend(head.nodes)
    g.initializer.extend(head.initializers)
    classes = head.initializers[0].dims[0]            # the head's weight is (classes, features)
    g.output.append(onnx.helper.make_tensor_value_info(head.output, onnx.TensorProto.FLOAT, [None, classes]))
    onnx.checker.check_model(m)
    return m
