"""The model registry: what each model is, how to build it, and which data judge it.

An entry is plain data plus two functions: ``build(ctx)`` returns a torch module in eval mode
(torch is imported inside, never at import time) and ``dataset(split, ctx)`` returns a
`Dataset` for ``train`` / ``calibration`` / ``eval``. `export.export_model` turns an entry into a
checked, shape-inferred ONNX file in the cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .cache import Cache
from .errors import WorkloadError, choices

METRICS = ("accuracy", "miou", "f1", "agreement")
WEIGHTS = ("pretrained", "random")


@dataclass(frozen=True)
class InputSpec:
    """One model input as exported: ONNX name, numpy dtype name, shape with batch 1."""
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        import numpy as np
        n = 1
        for d in self.shape:
            n *= d
        return n * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class BuildContext:
    """What a builder may use: the cache (for trained weights), the weights choice, a seed, and
    a progress callback ``progress(message)`` for long steps such as training."""
    cache: Cache
    weights: str = "pretrained"
    seed: int = 0
    progress: Callable[[str], None] = field(default=lambda message: None, compare=False)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str                      # data.TASKS
    description: str
    inputs: tuple[InputSpec, ...]
    output_names: tuple[str, ...]
    metric: str                    # METRICS; "agreement" when no labelled data is available offline
    offline: bool                  # weights and data are available without a network
    source: str                    # one line: where weights and data come from
    build: Callable[[BuildContext], object] = field(compare=False)
    dataset: Callable[[str, BuildContext], object] = field(compare=False)
    weights: tuple[str, ...] = WEIGHTS
    version: str = "1"             # bump when build or training code changes (part of cache keys)
    num_classes: int = 0
    # residual blocks that early_exit(kind=skip) drops by default, named as early_exit.residual_blocks
    # names them (module paths of the exported graph joined by '/', e.g. layer3/layer3.12)
    skippable_blocks: tuple[str, ...] = ()
    # optimizer steps that training operators default to when the chain gives no budget
    # (epochs, steps or seconds): a large training set's default epochs would take too long
    training_steps: int | None = None
    # splits of ``dataset`` that ``build`` trains the pretrained weights on (models trained here):
    # an artifact's evaluation must be disjoint from them too
    trained_on: tuple[str, ...] = ()
    # (mean, std) per channel the model's images are normalised with after scaling to [0, 1]:
    # a user's image folder given as its data is normalised the same way (None: left in [0, 1])
    image_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name} registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def _load_builtins() -> None:
    from . import zoo  # noqa: F401 - registers the built-in entries on import


def models() -> list[ModelEntry]:
    _load_builtins()
    return list(_REGISTRY.values())


def get_model(name: str) -> ModelEntry:
    """The entry for a built-in name, an ``.onnx`` path, or ``package.module:factory``."""
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.endswith(".onnx") or ":" in name:
        from .user import user_model
        return user_model(name)
    raise WorkloadError(f"model {name!r} unknown; valid: {choices(_REGISTRY)}, "
                        "a path to an .onnx file, or package.module:factory")


def check_weights(entry: ModelEntry, weights: str) -> None:
    check_offered(entry.name, entry.weights, weights)


def check_offered(name: str, offered: tuple[str, ...], weights: str) -> None:
    """``weights`` must be one of ``offered`` (model ``name``'s weights choices)."""
    if weights not in offered:
        raise WorkloadError(f"model {name}: weights {weights!r} unknown; allowed: {choices(offered)}")


def default_cache_dir() -> Path:
    return Cache().root


RANDOM_NOTE = "not applicable: random weights (latency-only study)"


def metric_applicable(entry: ModelEntry, weights: str) -> bool:
    """False for random weights: their quality means nothing and is reported as not applicable."""
    return weights != "random"
