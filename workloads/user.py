"""A user's own model as a registry entry: an ONNX file, or a Python factory of a torch module.

``get_model`` calls `user_model` for a name that ends in ``.onnx`` or contains ``:``.

**ONNX file** (``path/to/model.onnx``): checked with ``onnx.checker`` (a corrupt or invalid
file is one error line), inputs read from the graph with a symbolic batch axis taken as 1
(any other symbolic axis is an error: export with fixed shapes). The entry's name is the
file stem, its ``version`` the first 16 hex digits of the file's SHA-256 (so a changed file
gets new cache entries). There is no torch module: ``entry.build`` raises, and
``onnx_path(entry)`` gives the file to use as the exported model instead.

**Factory** (``package.module:factory``): the module is imported and ``factory()`` called
once when the entry is made. It must return a ``torch.nn.Module`` and say what one example
input looks like, in one of two ways:

- return ``(module, example_input_shape)``, or
- return the module with an attribute ``module.example_input_shape``;

``example_input_shape`` is the shape of one float32 input *with its batch axis of 1*, e.g.
``(1, 3, 224, 224)``, or a mapping ``{input_name: shape}`` for several inputs (in the
order ``forward`` takes them). A single input is named ``input``; the output ``output``.
``entry.build(ctx)`` returns that module in eval mode (the same object each time); its
``version`` hashes the module's parameters and buffers and the factory module's source file.
``factory_ref(entry)`` gives the reference string.

Both kinds: task ``classification`` (argmax of the first output), metric ``agreement``,
weights ``("given",)``, ``offline=True``. Their ``dataset(split, ctx)`` gives *probe* inputs
that carry no labels (see `probe_dataset`); a user's labelled data (`datasets.image_folder`,
`datasets.array_file`) replaces it where the caller supports that.
"""
from __future__ import annotations

import hashlib
import importlib
import re
from pathlib import Path

import numpy as np

from .errors import WorkloadError
from .models import BuildContext, InputSpec, ModelEntry

USER_WEIGHTS = ("given",)
PROBE_COUNTS = {"train": 256, "calibration": 64, "eval": 64}
_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class OnnxFile:
    """``build`` of an ONNX-file entry: holds the path; calling it raises (no torch module)."""

    def __init__(self, path: Path, sha256: str):
        self.path = path
        self.sha256 = sha256

    def __call__(self, ctx: BuildContext | None = None):
        raise WorkloadError(f"{self.path}: an ONNX file has no torch module to build; "
                            "use workloads.user.onnx_path(entry) as the exported model")


class FactoryBuild:
    """``build`` of a factory entry: returns the module the factory made, in eval mode."""

    def __init__(self, ref: str, module):
        self.ref = ref
        self.module = module

    def __call__(self, ctx: BuildContext | None = None):
        return self.module.eval()


def onnx_path(entry: ModelEntry) -> Path | None:
    """The ONNX file of a user ONNX entry (absolute path), else None."""
    return entry.build.path if isinstance(entry.build, OnnxFile) else None


def factory_ref(entry: ModelEntry) -> str | None:
    """``package.module:factory`` of a user factory entry, else None."""
    return entry.build.ref if isinstance(entry.build, FactoryBuild) else None


def user_model(ref: str) -> ModelEntry:
    """The entry for ``path/to/model.onnx`` or ``package.module:factory`` (see the module doc)."""
    if ref.endswith(".onnx"):
        return _onnx_entry(ref)
    return _factory_entry(ref)


# ----------------------------------------------------------------------------------------------
# probe data


def probe_dataset(name: str, task: str, inputs: tuple[InputSpec, ...], split: str, seed: int = 0):
    """Unlabelled inputs for ``split`` shaped like ``inputs`` (each ``spec.shape[1:]`` per sample):
    a float input shaped ``(1, 3, H, W)`` gets `datasets.sample_photos` crops (ImageNet
    normalisation, which may not be the model's); any other float input standard normal
    noise; an integer or bool input random 0/1. Sizes `PROBE_COUNTS`, seeded per split. Fit for
    latency and agreement with the untransformed model only; the description says so."""
    from . import datasets
    from .data import SPLITS, Dataset

    if split not in SPLITS:
        raise WorkloadError(f"model {name}: split {split!r} unknown")
    count = PROBE_COUNTS[split]
    split_seed = seed + 1000 * (SPLITS.index(split) + 1)
    rng = np.random.default_rng(split_seed)
    arrays, kinds = {}, []
    for spec in inputs:
        dtype = np.dtype(spec.dtype)
        shape = (count,) + tuple(spec.shape[1:])
        if dtype.kind == "f" and len(spec.shape) == 4 and spec.shape[1] == 3:
            photos = datasets.sample_photos(count, (spec.shape[2], spec.shape[3]), seed=split_seed)
            arrays[spec.name] = photos.inputs["image"].astype(dtype)
            kinds.append(f"{spec.name}: crops of scikit-image photos (ImageNet-normalised)")
        elif dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(shape).astype(dtype)
            kinds.append(f"{spec.name}: standard normal noise")
        else:
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
            kinds.append(f"{spec.name}: random 0/1")
    return Dataset(f"{name}-probe", task, arrays, None, (),
                   f"probe inputs for a user model, {count} samples ({'; '.join(kinds)}); unlabelled and "
                   "meaningless as data: quality is agreement with the untransformed model")


def _probe(name: str, task: str, inputs: tuple[InputSpec, ...]):
    def dataset(split: str, ctx: BuildContext | None = None):
        return probe_dataset(name, task, inputs, split, ctx.seed if ctx is not None else 0)
    return dataset


# ----------------------------------------------------------------------------------------------
# ONNX files


def _onnx_entry(ref: str) -> ModelEntry:
    import onnx
    from onnx import helper

    path = Path(ref).expanduser().resolve()
    if not path.is_file():
        raise WorkloadError(f"{ref}: no such ONNX file")
    try:
        onnx.checker.check_model(str(path))      # by path: models with external data work too
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:                       # DecodeError, ValidationError, ...: one line
        reason = " ".join(str(e).split()) or type(e).__name__
        raise WorkloadError(f"{ref}: not a valid ONNX model ({reason[:300]})") from None
    graph = model.graph
    initialisers = {t.name for t in graph.initializer}
    specs = []
    for value in graph.input:
        if value.name in initialisers:
            continue
        ttype = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise WorkloadError(f"{ref}: input {value.name} is not a tensor; only tensor inputs are supported")
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
        except Exception:
            raise WorkloadError(f"{ref}: input {value.name} has unsupported element type {ttype.elem_type}") from None
        if not ttype.HasField("shape"):
            raise WorkloadError(f"{ref}: input {value.name} has no shape; export the model with fixed input shapes")
        shape = []
        for axis, dim in enumerate(ttype.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(int(dim.dim_value))
            elif axis == 0:
                shape.append(1)                  # symbolic batch axis: one sample per request
            else:
                label = dim.dim_param or "?"
                raise WorkloadError(f"{ref}: input {value.name} has a symbolic axis {axis} ({label}); only "
                                    "the batch axis (0) may be symbolic: export with fixed shapes")
        specs.append(InputSpec(value.name, dtype, tuple(shape)))
    if not specs:
        raise WorkloadError(f"{ref}: the model has no inputs")
    outputs = tuple(o.name for o in graph.output)
    num_classes = 0
    dims = graph.output[0].type.tensor_type.shape.dim if graph.output else []
    if len(dims) == 2 and dims[1].HasField("dim_value"):
        num_classes = int(dims[1].dim_value)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    name = path.stem
    inputs = tuple(specs)
    task = "classification"
    return ModelEntry(
        name=name, task=task,
        description=f"user ONNX model {path.name} (opset "
                    f"{max((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')), default='?')})",
        inputs=inputs, output_names=outputs, metric="agreement", offline=True,
        source=f"user file {path}", build=OnnxFile(path, sha), dataset=_probe(name, task, inputs),
        weights=USER_WEIGHTS, version=sha[:16], num_classes=num_classes)


# ----------------------------------------------------------------------------------------------
# factories

_CONVENTION = ("return (module, example_input_shape) from the factory, or set module.example_input_shape, "
               "e.g. (1, 3, 224, 224) with the batch axis")


def _shape(value, ref: str, what: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in value)
        ok = len(shape) >= 1 and all(d >= 1 for d in shape) and all(float(d) == int(d) for d in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise WorkloadError(f"{ref}: {what} {value!r} is not a shape of positive integers; {_CONVENTION}")
    if shape[0] != 1:
        raise WorkloadError(f"{ref}: {what} {shape} must start with the batch axis 1, e.g. (1,) + {shape}")
    return shape


def _factory_entry(ref: str) -> ModelEntry:
    if not _REF.match(ref):
        raise WorkloadError(f"{ref!r}: not a model reference; expected a path ending in .onnx or "
                            "package.module:factory (dotted names, one colon)")
    module_name, attr = ref.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:                       # ImportError, or the module's own error
        raise WorkloadError(f"{ref}: cannot import {module_name} ({type(e).__name__}: {e}); "
                            "make it importable (PYTHONPATH, or pip install it)") from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise WorkloadError(f"{ref}: module {module_name} has no attribute {attr}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise WorkloadError(f"{ref}: {attr} is not callable; give a function that returns a torch.nn.Module")
    try:
        made = factory()
    except Exception as e:
        raise WorkloadError(f"{ref}: the factory failed ({type(e).__name__}: {e})") from None

    import torch

    example = None
    if isinstance(made, tuple):
        if len(made) != 2:
            raise WorkloadError(f"{ref}: the factory returned a tuple of {len(made)}; {_CONVENTION}")
        made, example = made
    if not isinstance(made, torch.nn.Module):
        raise WorkloadError(f"{ref}: the factory returned {type(made).__name__}, not a torch.nn.Module")
    if example is None:
        example = getattr(made, "example_input_shape", None)
    if example is None:
        raise WorkloadError(f"{ref}: no example input shape; {_CONVENTION}")
    if isinstance(example, dict):
        if not example:
            raise WorkloadError(f"{ref}: example_input_shape is an empty mapping; {_CONVENTION}")
        specs = tuple(InputSpec(str(k), "float32", _shape(v, ref, f"example input shape of {k}"))
                      for k, v in example.items())
    else:
        specs = (InputSpec("input", "float32", _shape(example, ref, "example input shape")),)

    digest = hashlib.sha256()
    src = getattr(module, "__file__", None)
    if src and Path(src).is_file():
        digest.update(Path(src).read_bytes())
    for key, tensor in sorted(made.state_dict().items()):
        digest.update(key.encode())
        t = tensor.detach().cpu().contiguous().reshape(-1)
        try:                                     # raw bytes, whatever the dtype (bfloat16 too)
            digest.update(t.view(torch.uint8).numpy().tobytes())
        except (RuntimeError, TypeError):        # e.g. quantized tensors: their repr will do
            digest.update(repr(tensor).encode())
    name = ref
    task = "classification"
    return ModelEntry(
        name=name, task=task, description=f"user model from {ref} ({type(made).__name__})",
        inputs=specs, output_names=("output",), metric="agreement", offline=True,
        source=f"user factory {ref}" + (f" ({src})" if src else ""),
        build=FactoryBuild(ref, made.eval()), dataset=_probe(name, task, specs),
        weights=USER_WEIGHTS, version=digest.hexdigest()[:16])
