"""Data sets as plain arrays: what calibration, training and evaluation read.

A `Dataset` holds model inputs keyed by the ONNX input name, with the sample axis first, and
labels (class ids for classification, per-pixel class ids for segmentation) or ``None`` when
the data are unlabelled (then quality is judged as agreement with the untransformed model).

Each sample names the source items it comes from (`Dataset.sources`): a Fashion-MNIST image
(``fashion-train:12345``), a photograph (``photo:<package>/<SHA-256 prefix>``), a sentence, a
user's file or array row. A crop has one source, a composite one per item in it. Splits are
made by source, `provenance` records them in an artifact, and `check_held_out` refuses an
evaluation that shares a source with what an artifact learnt from. A data set built without
sources (a test's toy arrays) gets content digests: then only exact repeats are recognised.
numpy only: nothing here imports torch.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .errors import WorkloadError

TASKS = ("classification", "segmentation", "text_classification")
SPLITS = ("train", "calibration", "eval")


@dataclass(frozen=True)
class Dataset:
    name: str
    task: str
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    classes: tuple[str, ...] = ()
    description: str = ""
    extra: dict = field(default_factory=dict, compare=False)
    # per sample, the identities of the source items it comes from (see the module docstring);
    # a plain string per sample is one source each; None: content digests (`source_ids`)
    sources: tuple | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.task not in TASKS:
            raise WorkloadError(f"data set {self.name}: task {self.task!r} unknown; allowed: {', '.join(TASKS)}")
        sizes = {k: len(v) for k, v in self.inputs.items()}
        if not sizes:
            raise WorkloadError(f"data set {self.name}: no inputs")
        if len(set(sizes.values())) != 1:
            raise WorkloadError(f"data set {self.name}: inputs have different sample counts {sizes}")
        if self.labels is not None and len(self.labels) != len(self):
            raise WorkloadError(
                f"data set {self.name}: {len(self.labels)} labels for {len(self)} samples")
        if self.sources is not None:
            sources = tuple((s,) if isinstance(s, str) else tuple(s) for s in self.sources)
            if len(sources) != len(self):
                raise WorkloadError(f"data set {self.name}: {len(sources)} source entries for {len(self)} samples")
            object.__setattr__(self, "sources", sources)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def take(self, count: int | None = None, offset: int = 0) -> "Dataset":
        """Samples ``offset .. offset+count`` (all remaining when ``count`` is None)."""
        end = len(self) if count is None else min(len(self), offset + count)
        return self.select(slice(offset, end))

    def select(self, rows) -> "Dataset":
        """The samples at ``rows`` (a slice or integer indices), with their labels and sources."""
        sources = self.sources
        if sources is not None:
            sources = sources[rows] if isinstance(rows, slice) else tuple(sources[int(r)] for r in rows)
        return Dataset(self.name, self.task, {k: v[rows] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[rows], self.classes, self.description,
                       self.extra, sources)

    def source_ids(self) -> tuple[tuple[str, ...], ...]:
        """Per sample, its sources: `sources`, or a digest of the sample's inputs when none were given."""
        if self.sources is not None:
            return self.sources
        digests = []
        for i in range(len(self)):
            h = hashlib.sha256()
            for k in sorted(self.inputs):
                h.update(np.ascontiguousarray(self.inputs[k][i]).tobytes())
            digests.append((f"content:{h.hexdigest()[:16]}",))
        return tuple(digests)

    def source_set(self) -> frozenset[str]:
        """Every source item any sample comes from."""
        return frozenset(s for ids in self.source_ids() for s in ids)

    def provenance(self) -> dict:
        """What an artifact records of the data it used: the data set's name, how many samples
        and distinct sources, and a digest of the sorted source identities."""
        sources = sorted(self.source_set())
        return {"dataset": self.name, "samples": len(self), "sources": len(sources),
                "first_source": sources[0] if sources else None,
                "digest": hashlib.sha256("\n".join(sources).encode()).hexdigest()[:32]}

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """One sample as a batch of one, ready for ``InferenceSession.run``."""
        return {k: v[i:i + 1] for k, v in self.inputs.items()}

    def batches(self, size: int):
        """Consecutive batches ``(inputs, labels)``; the last may be shorter."""
        for start in range(0, len(self), size):
            part = self.take(size, start)
            yield part.inputs, part.labels


def check_held_out(model: str, evaluation: Dataset, learnt: dict[str, tuple[Dataset, list[str]]]) -> None:
    """Refuse, in one line, an evaluation that shares a source item with data an artifact of
    ``model`` learnt from: ``learnt`` maps a split to its data set and what learnt from it."""
    judged = evaluation.source_set()
    for split, (data, by) in learnt.items():
        shared = judged & data.source_set()
        if shared:
            example = sorted(shared)[0]
            raise WorkloadError(
                f"{model}: the evaluation data ({evaluation.name}) shares {len(shared)} of its {len(judged)} source "
                f"items (e.g. {example}) with the {split} data ({data.name}) that {', '.join(by)} learnt from, so "
                f"its quality would not be measured on held-out data; give evaluation data that no train or "
                f"calibration sample comes from")
