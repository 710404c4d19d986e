"""Data sets as plain arrays: what calibration, training and evaluation read.

A `Dataset` holds model inputs keyed by the ONNX input name, with the sample axis first, and
labels (class ids for classification, per-pixel class ids for segmentation) or ``None`` when
the data are unlabelled (then quality is judged as agreement with the untransformed model).
numpy only: nothing here imports torch.
"""
from __future__ import annotations

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

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def take(self, count: int | None = None, offset: int = 0) -> "Dataset":
        """Samples ``offset .. offset+count`` (all remaining when ``count`` is None)."""
        end = len(self) if count is None else min(len(self), offset + count)
        return Dataset(self.name, self.task, {k: v[offset:end] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[offset:end],
                       self.classes, self.description, self.extra)

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """One sample as a batch of one, ready for ``InferenceSession.run``."""
        return {k: v[i:i + 1] for k, v in self.inputs.items()}

    def batches(self, size: int):
        """Consecutive batches ``(inputs, labels)``; the last may be shorter."""
        for start in range(0, len(self), size):
            part = self.take(size, start)
            yield part.inputs, part.labels
