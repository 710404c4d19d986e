"""Tiny real artifacts for tests: ONNX segments built with onnx.helper, run by ONNX Runtime.

``tiny_artifact(folder, parts, exit_threshold, width, delay_loop)`` writes a model
X[1, width] -> MatMul -> H -> ... -> Y[1, 3] cut into ``parts`` parts, optionally with an exit
head (softmax of a MatMul of H) at the end of part 0, and returns (folder, the whole model as
a function of X for reference checks).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _matmul_model(name: str, inp: str, out: str, w: np.ndarray, extra: tuple | None = None):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", [inp, f"{name}_w"], [out])]
    inits = [numpy_helper.from_array(w.astype(np.float32), f"{name}_w")]
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, w.shape[1]])]
    if extra is not None:
        exit_name, we = extra
        nodes.append(helper.make_node("MatMul", [out, f"{name}_we"], [exit_name]))
        inits.append(numpy_helper.from_array(we.astype(np.float32), f"{name}_we"))
        outputs.append(helper.make_tensor_value_info(exit_name, TensorProto.FLOAT, [1, we.shape[1]]))
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(inp, TensorProto.FLOAT, [1, w.shape[0]])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def tiny_artifact(folder: Path, parts: int = 2, exit_threshold: float | None = None, width: int = 4,
                  seed: int = 0):
    import onnx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dims = [width] + [8] * (parts - 1) + [3]
    weights = [rng.standard_normal((dims[i], dims[i + 1])).astype(np.float32) for i in range(parts)]
    we = rng.standard_normal((dims[1], 3)).astype(np.float32)
    names = ["X"] + [f"H{i}" for i in range(1, parts)] + ["Y"]
    segments = []
    for i in range(parts):
        extra = ("E", we) if (exit_threshold is not None and i == 0 and parts > 1) else None
        model = _matmul_model(f"s{i}", names[i], names[i + 1], weights[i], extra)
        onnx.save(model, str(folder / f"seg{i}.onnx"))
        seg = {"file": f"seg{i}.onnx", "part": i, "inputs": [names[i]], "outputs": [names[i + 1]]}
        if extra is not None:
            seg.update({"exit_output": "E", "threshold": exit_threshold})
        segments.append(seg)
    manifest = {"model": "tiny", "parts": parts, "inputs": ["X"], "outputs": ["Y"], "segments": segments,
                "quality": {"metric": "accuracy", "value": 1.0, "baseline": 1.0}}
    (folder / "artifact.json").write_text(json.dumps(manifest))

    def reference(x: np.ndarray) -> np.ndarray:
        h = x.astype(np.float32)
        for w in weights:
            h = h @ w
        return h

    def exit_logits(x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float32) @ weights[0]) @ we

    return folder, reference, exit_logits


def register_model(monkeypatch, name: str, build, data, shape: tuple, input_name: str = "image",
                   classes: int = 3):
    """Put a classification model built in a test into the registry (for the test only), with
    torch held to one thread; returns its entry."""
    import torch

    from workloads import models
    from workloads.models import InputSpec, ModelEntry

    entry = ModelEntry(name, "classification", "test model", (InputSpec(input_name, "float32", shape),),
                       ("logits",), "accuracy", True, "built in the test", build, data, num_classes=classes)
    monkeypatch.setitem(models._REGISTRY, name, entry)
    torch.set_num_threads(1)
    return entry


def chain(*items):
    """A validated operator chain from experiment-file items."""
    from workloads.operators import parse_chain

    return parse_chain(list(items), "test")
