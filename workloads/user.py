"""A user's own model as a registry entry: an ONNX file, or a Python factory of a torch module.

``get_model`` calls `user_model` for a name that ends in ``.onnx`` or contains ``:``.

**ONNX file** (``path/to/model.onnx``): checked with ``onnx.checker`` (a corrupt or invalid
file is one error line), inputs read from the graph with a symbolic batch axis taken as 1
(any other symbolic axis is an error: export with fixed shapes). The entry's name is the
file stem, its ``version`` the first 16 hex digits of the file's SHA-256 (so a changed file
gets new cache entries). There is no torch module: ``entry.build`` raises, and
``onnx_path(entry)`` gives the file to use as the exported model instead.

**Factory** (``path/to/file.py:factory`` or ``package.module:factory``): trusted code.
Importing a module runs it, as does calling the factory, with the testbed's rights (root).
So, before anything of it runs, `check_factory` refuses in one line a file that someone
other than root or the invoking user could change (`topologies.trust.read_code`: the file,
each package's ``__init__.py``, their folders, a ``__pycache__`` beside them), a module of
Python's standard library or of the testbed itself, and a module not found on ``sys.path``
as a ``.py`` file; a file reference is executed from the very bytes checked. The factory must
be defined in the module named (its ``__module__``; a function imported into it from
elsewhere is refused), is called with no arguments when the entry is made (by `get_model`,
never by the experiment loader or ``testbed run --dry-run``, which only check), and must
return a ``torch.nn.Module`` (else one line naming it and what it returned), saying what one
example input looks like, in one of two ways:

- return ``(module, example_input_shape)``, or
- return the module with an attribute ``module.example_input_shape``;

``example_input_shape`` is the shape of one float32 input *with its batch axis of 1*, e.g.
``(1, 3, 224, 224)``, or a mapping ``{input_name: shape}`` for several inputs (in the
order ``forward`` takes them). A single input is named ``input``; the output ``output``.
``entry.build(ctx)`` returns that module in eval mode (the same object each time); its
``version`` hashes the module's parameters and buffers and the factory module's source file.
``factory_ref(entry)`` gives the reference string. A reference ending in ``.py:NAME`` is a
file (relative to the current folder, or to the experiment file's folder in an experiment).

Both kinds: task ``classification`` (argmax of the first output), metric ``agreement``,
weights ``("given",)``, ``offline=True``. Their ``dataset(split, ctx)`` gives *probe* inputs
that carry no labels (see `probe_dataset`); a user's labelled data (`datasets.image_folder`,
`datasets.array_file`) replaces it where the caller supports that.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from topologies.trust import UntrustedError, check_code_folder, read_code

from .errors import WorkloadError
from .models import BuildContext, InputSpec, ModelEntry

USER_WEIGHTS = ("given",)
PROBE_COUNTS = {"train": 256, "calibration": 64, "eval": 64}
_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_FILE_REF = re.compile(r"^(?P<file>.+\.py):(?P<attr>[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)$")
OWN_PACKAGES = ("topologies", "emulation", "workloads", "testbed")    # the testbed's own: no factories


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
    a float input shaped ``(1, 3, H, W)`` gets `datasets.photo_crops` of the split's own
    photographs (ImageNet normalisation, which may not be the model's); any other float input
    standard normal noise; an integer or bool input random 0/1. Sizes `PROBE_COUNTS`, seeded per
    split; a sample's source is its photograph, or else its draw (the split's seed and its
    index). Fit for latency and agreement with the untransformed model only; the description
    says so."""
    from . import datasets
    from .data import SPLITS, Dataset

    if split not in SPLITS:
        raise WorkloadError(f"model {name}: split {split!r} unknown")
    count = PROBE_COUNTS[split]
    split_seed = seed + 1000 * (SPLITS.index(split) + 1)
    rng = np.random.default_rng(split_seed)
    arrays, kinds = {}, []
    sources = [[f"probe:{split_seed}:{i}"] for i in range(count)]     # the draw: the split's seed and index
    for spec in inputs:
        dtype = np.dtype(spec.dtype)
        shape = (count,) + tuple(spec.shape[1:])
        if dtype.kind == "f" and len(spec.shape) == 4 and spec.shape[1] == 3:
            photos = datasets.photo_crops(split, count, (spec.shape[2], spec.shape[3]), seed=split_seed)
            arrays[spec.name] = photos.inputs["image"].astype(dtype)
            sources = [ids + list(photo) for ids, photo in zip(sources, photos.sources)]
            kinds.append(f"{spec.name}: crops of photographs (ImageNet-normalised)")
        elif dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(shape).astype(dtype)
            kinds.append(f"{spec.name}: standard normal noise")
        else:
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
            kinds.append(f"{spec.name}: random 0/1")
    return Dataset(f"{name}-probe", task, arrays, None, (),
                   f"probe inputs for a user model, {count} samples ({'; '.join(kinds)}); unlabelled and "
                   "meaningless as data: quality is agreement with the untransformed model", sources=sources)


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


def is_factory_ref(ref: str) -> bool:
    """True for a reference `get_model` treats as a factory (``...:factory``, not ``.onnx``)."""
    return ":" in ref and not ref.endswith(".onnx")


def is_factory_file(ref: str) -> bool:
    """True for ``path/to/file.py:factory`` (a file, not ``package.module:factory``)."""
    return bool(_FILE_REF.match(ref))


@dataclass(frozen=True)
class FactorySource:
    """Where a factory comes from, found and checked without importing or running anything.

    ``file``: the resolved ``.py`` file of a ``path/to/file.py:factory`` reference (else
    None); ``module``: the dotted module of a ``package.module:factory`` one (else None);
    ``files``: every file importing it executes itself, outermost package first, each passed
    by `topologies.trust.read_code`; ``attr``: the factory's (dotted) name in the module."""

    ref: str
    attr: str
    files: tuple[Path, ...]
    file: Path | None = None
    module: str | None = None


def _untrusted(ref: str, e: UntrustedError) -> WorkloadError:
    return WorkloadError(f"{ref}: {e}")


def _checked_folder(ref: str, folder: Path, file: Path) -> None:
    try:
        check_code_folder(folder, file)
    except UntrustedError as e:
        raise _untrusted(ref, e) from None


def _module_files(ref: str, module_name: str) -> tuple[Path, ...]:
    """The source file of ``module_name`` and of each package above it, found on ``sys.path``
    as the import system's path finder finds them, without importing anything."""
    from importlib.machinery import PathFinder

    parts = module_name.split(".")
    top = parts[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise WorkloadError(f"{ref}: {module_name} is part of Python's standard library, which holds no model "
                            "factories; name a module of your own (package.module:factory or path/to/file.py:factory)")
    if top in OWN_PACKAGES:
        raise WorkloadError(f"{ref}: {module_name} is part of the testbed itself, not a model factory; built-in "
                            "models go by their names (testbed models list)")
    files: list[Path] = []
    search = None
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        try:
            spec = PathFinder.find_spec(name, search)
        except (ImportError, ValueError) as e:
            spec, why = None, f" ({type(e).__name__}: {e})"
        else:
            why = ""
        if spec is None:
            raise WorkloadError(f"{ref}: cannot find module {name} on the Python path{why}; make it importable "
                                "(PYTHONPATH, or pip install it), or give path/to/file.py:factory")
        if spec.origin is not None and spec.has_location:
            if not spec.origin.endswith(".py"):
                raise WorkloadError(f"{ref}: {name} is {spec.origin}, not a Python source file (.py)")
            files.append(Path(spec.origin))
        elif i == len(parts):
            raise WorkloadError(f"{ref}: {name} is a folder without __init__.py (a namespace package); name a "
                                "module in it")
        search = spec.submodule_search_locations
        if i < len(parts) and search is None:
            raise WorkloadError(f"{ref}: {name} is a module, not a package: it has no module {parts[i]}")
    return tuple(files)


def check_factory(ref: str) -> FactorySource:
    """What a factory reference may name, checked before anything of it runs:

    - ``path/to/file.py:factory``: that file (resolved; its folders included) passes
      `topologies.trust.read_code`, and is executed as a module of its own;
    - ``package.module:factory``: a module found on ``sys.path`` as a ``.py`` file, not of
      Python's standard library (``sys.stdlib_module_names``) nor of the testbed's own
      packages, whose file and whose packages' ``__init__.py`` files pass the same check;

    and (checked once it is imported) ``factory`` must be defined in that very module (its
    ``__module__``), not imported into it from elsewhere. The experiment loader calls this
    for each factory model (so does ``--dry-run``); only `user_model` imports and calls."""
    m = _FILE_REF.match(ref)
    if m:
        path = Path(m.group("file")).expanduser()
        if not path.is_file():
            raise WorkloadError(f"{ref}: no such Python file {path}")
        try:
            file, _ = read_code(path)
        except UntrustedError as e:
            raise _untrusted(ref, e) from None
        return FactorySource(ref, m.group("attr"), (file,), file=file)   # executed from its bytes: no .pyc
    if not _REF.match(ref):
        raise WorkloadError(f"{ref!r}: not a model reference; expected a path ending in .onnx, "
                            "path/to/file.py:factory or package.module:factory (dotted names, one colon)")
    module_name, attr = ref.split(":")
    files = _module_files(ref, module_name)
    for file in files:
        try:
            read_code(file)
        except UntrustedError as e:
            raise _untrusted(ref, e) from None
        _checked_folder(ref, file.parent / "__pycache__", file)    # a cached .pyc is what import runs
    return FactorySource(ref, attr, files, module=module_name)


def _import(source: FactorySource):
    """The module of ``source``: the file executed as it was checked, or the module imported
    (and its files checked again against what the import found)."""
    ref = source.ref
    if source.file is not None:
        try:
            file, code = read_code(source.file)
        except UntrustedError as e:
            raise _untrusted(ref, e) from None
        name = f"_testbed_factory_{hashlib.sha256(str(file).encode()).hexdigest()[:16]}"
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module        # classes defined there find their module (copy, pickle, fx)
        try:
            exec(compile(code, str(file), "exec", dont_inherit=True), module.__dict__)  # noqa: S102
        except BaseException as e:        # noqa: BLE001 - whatever the file does: one line
            sys.modules.pop(name, None)
            if isinstance(e, KeyboardInterrupt):
                raise
            raise WorkloadError(f"{ref}: running {file} raised {type(e).__name__}: {e}") from None
        return module
    module_name = source.module
    try:
        module = importlib.import_module(module_name)
    except BaseException as e:                   # noqa: BLE001 - ImportError, or the module's own: one line
        if isinstance(e, KeyboardInterrupt):
            raise
        raise WorkloadError(f"{ref}: cannot import {module_name} ({type(e).__name__}: {e}); "
                            "make it importable (PYTHONPATH, or pip install it)") from None
    parts = module_name.split(".")
    imported = [sys.modules.get(".".join(parts[:i])) for i in range(1, len(parts) + 1)]
    got = {Path(f).resolve() for f in (getattr(m, "__file__", None) for m in imported) if f}
    if not got <= {f.resolve() for f in source.files}:
        raise WorkloadError(f"{ref}: {module_name} was imported from {', '.join(sorted(map(str, got)))}, not "
                            f"from the files checked ({', '.join(map(str, source.files))}); check sys.path")
    return module


def _short(value) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _factory_entry(ref: str) -> ModelEntry:
    source = check_factory(ref)
    module = _import(source)
    attr = source.attr
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise WorkloadError(f"{ref}: module {source.module or source.file} has no attribute {attr}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise WorkloadError(f"{ref}: {attr} is not callable; give a function that returns a torch.nn.Module")
    defined_in = getattr(factory, "__module__", None)
    if defined_in != module.__name__:
        raise WorkloadError(f"{ref}: {attr} is defined in {defined_in or 'no module'}, not in "
                            f"{source.module or source.file}; a factory must be defined in the file or module "
                            "named (write a function there that builds the model)")
    try:
        made = factory()
    except BaseException as e:                   # noqa: BLE001 - SystemExit too: one line, not an exit
        if isinstance(e, KeyboardInterrupt):
            raise
        raise WorkloadError(f"{ref}: the factory failed ({type(e).__name__}: {e})") from None

    import torch

    example = None
    if isinstance(made, tuple):
        if len(made) != 2:
            raise WorkloadError(f"{ref}: the factory returned a tuple of {len(made)}; {_CONVENTION}")
        made, example = made
    if not isinstance(made, torch.nn.Module):
        raise WorkloadError(f"{ref}: the factory {attr} returned {type(made).__name__} ({_short(made)}), "
                            "not a torch.nn.Module")
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
    src = str(source.files[-1])               # the module's own file (its packages' are not hashed)
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
