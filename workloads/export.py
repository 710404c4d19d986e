"""A registry entry as one checked, shape-inferred ONNX file in the cache.

`export_model(entry, ctx)` builds the entry's torch module (``entry.build(ctx)``, which loads
or trains its weights) and exports it with the TorchScript-based exporter of ``torch.onnx``
(``dynamo=False``) at opset `OPSET`, batch 1, with the entry's input and output names. Why that
exporter (measured with torch 2.14): the torch.export-based one ("dynamo") has no opset below
18 and fails to convert down (no adapter for ``Pad``); and it names nodes ``node_Conv_12``,
where the TorchScript exporter writes the module path (``/layer3/layer3.5/conv1/Conv``), which
`early_exit` uses to find residual blocks. The result goes through ``onnx.checker`` (full
check) and ``onnx.shape_inference`` and is saved as ``model.onnx`` beside ``model.json`` (input
specs, output names, parameter count, file size, build and export seconds) in cache entry
``models/<key>``, keyed by model, version, weights, seed, opset and library versions.

A model that already is ONNX (a user's ``.onnx`` file, or a zoo entry whose pretrained weights
come as an ONNX download) is checked, shape-inferred and copied: `source_onnx(entry)` names the
file for entries that carry one, and a builder may return a path instead of a module.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from topologies.errors import no_space

from .cache import Cache, content_key, library_versions
from .errors import WorkloadError
from .models import BuildContext, InputSpec, ModelEntry

# Pinned opset. 17 is supported by every ONNX Runtime since 1.14 (hosts may run older ones than
# the preparing machine), by ORT's quantization tooling (QDQ and QOperator formats; opset ≥ 13
# is needed for per-channel QDQ) and natively by the TorchScript exporter; it has
# LayerNormalization as one op, which keeps transformer graphs small.
OPSET = 17

MODEL_FILE = "model.onnx"
INFO_FILE = "model.json"


def source_onnx(entry) -> Path | None:
    """The ONNX file an entry is made from (a user's ``.onnx``: `user.onnx_path`), or None for
    entries built in torch."""
    from .user import onnx_path

    found = onnx_path(entry)
    return Path(found) if found is not None else None


def model_key(entry: ModelEntry, ctx: BuildContext) -> str:
    """The cache key of ``entry``'s exported model under ``ctx`` (weights and seed). A user's
    ONNX file is covered by ``entry.version`` (a hash of the file)."""
    return content_key("model", name=entry.name, version=entry.version, weights=ctx.weights, seed=ctx.seed,
                       opset=OPSET, libs=library_versions())


def dummy_inputs(specs: tuple[InputSpec, ...]):
    """Torch tensors shaped like ``specs``: standard normal floats, ones for integers (valid
    token ids and a full attention mask)."""
    import numpy as np
    import torch

    gen = torch.Generator().manual_seed(0)
    out = []
    for s in specs:
        if np.issubdtype(np.dtype(s.dtype), np.floating):
            out.append(torch.randn(s.shape, generator=gen, dtype=getattr(torch, s.dtype)))
        else:
            out.append(torch.ones(s.shape, dtype=getattr(torch, s.dtype)))
    return tuple(out)


def torch_to_onnx(module, inputs: tuple[InputSpec, ...], output_names, path: Path) -> None:
    """Export ``module`` (eval mode, positional inputs in ``inputs`` order) to ``path``."""
    import torch

    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")          # legacy-exporter deprecation, constant-folding notes
        torch.onnx.export(module, dummy_inputs(inputs), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[s.name for s in inputs], output_names=list(output_names),
                          do_constant_folding=True, export_params=True)


def _check_io(model, entry: ModelEntry) -> None:
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    want = [s.name for s in entry.inputs]
    if want and names != want:
        raise WorkloadError(f"model {entry.name}: the ONNX graph has inputs {names}, the entry declares {want}")
    outs = [o.name for o in model.graph.output]
    if entry.output_names and outs[:len(entry.output_names)] != list(entry.output_names):
        raise WorkloadError(f"model {entry.name}: the ONNX graph has outputs {outs}, "
                            f"the entry declares {list(entry.output_names)}")


def export_model(entry: ModelEntry, ctx: BuildContext) -> Path:
    """The cached, checked ONNX file of ``entry`` with ``ctx.weights`` (built when absent)."""
    import onnx

    cache: Cache = ctx.cache

    def build(folder: Path) -> None:
        t0 = time.monotonic()
        path = folder / MODEL_FILE
        src = source_onnx(entry)
        built = src if src is not None else entry.build(ctx)
        t_built = time.monotonic()
        if isinstance(built, (str, Path)):
            ctx.progress(f"{entry.name}: checking {Path(built).name}")
            try:
                model = onnx.load(str(built))
            except Exception as e:  # noqa: BLE001 - any load failure is the user's file
                raise WorkloadError(f"model {entry.name}: cannot read {built}: {str(e).splitlines()[0]}") from None
            exporter = "none (ONNX source)"
        else:
            ctx.progress(f"{entry.name}: exporting to ONNX (opset {OPSET})")
            try:
                torch_to_onnx(built, entry.inputs, entry.output_names, path)
            except WorkloadError:
                raise
            except Exception as e:  # noqa: BLE001 - the exporter raises many types; one line for the user
                if no_space(e):
                    raise               # a full disk, not the model: the cache says where
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise WorkloadError(f"model {entry.name}: ONNX export failed ({type(e).__name__}: {first[:300]})") \
                    from e
            model = onnx.load(str(path))
            exporter = "torch.onnx (TorchScript, dynamo=False)"
        export_seconds = time.monotonic() - t_built
        try:
            onnx.checker.check_model(model, full_check=True)
            model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except Exception as e:  # noqa: BLE001 - checker and inference raise several types
            raise WorkloadError(f"model {entry.name}: ONNX check failed: {str(e).strip().splitlines()[0]}") from None
        _check_io(model, entry)
        onnx.save(model, str(path))
        params = sum(int(_numel(i.dims)) for i in model.graph.initializer)
        info = {"model": entry.name, "version": entry.version, "weights": ctx.weights, "seed": ctx.seed,
                "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
                "exporter": exporter,
                "inputs": [{"name": i.name, "dtype": _dtype(i), "shape": _shape(i)} for i in _real_inputs(model)],
                "outputs": [o.name for o in model.graph.output], "params": params,
                "file_bytes": path.stat().st_size, "build_seconds": round(t_built - t0, 2),
                "export_seconds": round(export_seconds, 2), "seconds": round(time.monotonic() - t0, 2),
                "libraries": library_versions()}
        (folder / INFO_FILE).write_text(json.dumps(info, indent=1))

    folder = cache.get_or_build("models", model_key(entry, ctx), build,
                                description={"model": entry.name, "weights": ctx.weights, "seed": ctx.seed})
    return folder / MODEL_FILE


def model_info(path: Path) -> dict:
    """``model.json`` of an exported model (``path``: its ``model.onnx``)."""
    return json.loads((Path(path).parent / INFO_FILE).read_text())


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _real_inputs(model):
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _dtype(vi) -> str:
    import numpy as np
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).name


def _shape(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]
