"""Quality metrics and a generic evaluation loop; numpy only.

Conventions:

* Predictions are class ids; logits/scores carry the class (channel) axis at 1, i.e.
  ``(N, C)`` for classification and ``(N, C, H, W)`` for segmentation, and `top1` takes the
  argmax over it.
* F1 follows scikit-learn: per class ``2 TP / (2 TP + FP + FN)``, 0 when a class has no true
  and no predicted samples (``zero_division=0``); `macro_f1` averages over the classes present
  in labels or predictions unless ``classes`` names them.
* `miou` is the dataset-level (accumulated) mean IoU used by segmentation benchmarks: one
  confusion matrix over all pixels of all images, ``IoU_c = TP / (TP + FP + FN)``, averaged
  over the classes that occur in the labels or the predictions (classes absent from both
  have no defined IoU and are left out; a class only predicted counts with IoU 0). Pixels
  whose label is ``ignore_index`` count nowhere.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .data import Dataset
from .errors import WorkloadError


def top1(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Class ids: argmax over the class axis (1: ``(N, C)`` logits or ``(N, C, H, W)`` maps)."""
    return np.asarray(logits).argmax(axis=axis)


def _pred(logits_or_pred, labels_ndim: int | None = None) -> np.ndarray:
    """Class ids from ids or logits: with ``labels_ndim`` known, an array with one more axis
    is logits; without it, float arrays of two or more axes are (ids are integers)."""
    a = np.asarray(logits_or_pred)
    if labels_ndim is not None:
        return top1(a) if a.ndim == labels_ndim + 1 else a
    return top1(a) if np.issubdtype(a.dtype, np.floating) and a.ndim >= 2 else a


def _pair(pred, labels, what: str) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(pred), np.asarray(labels)
    if p.shape != y.shape:
        raise WorkloadError(f"{what}: predictions have shape {p.shape} but labels {y.shape}; "
                            "give one prediction per label")
    if p.size == 0:
        raise WorkloadError(f"{what}: no samples")
    return p, y


def accuracy(logits_or_pred, labels) -> float:
    """Share of samples whose (top-1) prediction equals the label."""
    y = np.asarray(labels)
    p, y = _pair(_pred(logits_or_pred, y.ndim), y, "accuracy")
    return float((p == y).mean())


def agreement(pred, reference_pred) -> float:
    """Share of predictions (or pixels) equal to the reference model's: top-1 agreement.
    Either argument may be logits (floats, class axis 1) instead of class ids (integers)."""
    r = _pred(reference_pred)
    p, r = _pair(_pred(pred, r.ndim), r, "agreement")
    return float((p == r).mean())


def confusion(pred, labels, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` counts, rows = true label, columns = prediction
    (scikit-learn's layout). Ids outside ``0..num_classes-1`` are an error."""
    p, y = _pair(pred, labels, "confusion")
    p, y = p.ravel().astype(np.int64), y.ravel().astype(np.int64)
    for name, a in (("predictions", p), ("labels", y)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise WorkloadError(f"confusion: {name} hold class ids {a.min()}..{a.max()} outside "
                                f"0..{num_classes - 1}; give num_classes or map ignored ids first")
    return np.bincount(y * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _f1_per_class(p: np.ndarray, y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    tp = np.array([np.sum((p == c) & (y == c)) for c in classes], dtype=np.float64)
    fp = np.array([np.sum((p == c) & (y != c)) for c in classes], dtype=np.float64)
    fn = np.array([np.sum((p != c) & (y == c)) for c in classes], dtype=np.float64)
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def macro_f1(pred, labels, classes=None) -> float:
    """Unweighted mean of per-class F1 over ``classes`` (a count ``n`` meaning ``0..n-1``, or
    a sequence of class ids); by default the classes present in labels or predictions."""
    p, y = _pair(_pred(pred, np.ndim(labels)), labels, "macro F1")
    if classes is None:
        ids = np.union1d(np.unique(p), np.unique(y))
    elif isinstance(classes, (int, np.integer)):
        ids = np.arange(int(classes))
    else:
        ids = np.asarray(list(classes))
    if ids.size == 0:
        raise WorkloadError("macro F1: no classes")
    return float(_f1_per_class(p, y, ids).mean())


def binary_f1(pred, labels, positive: int = 1) -> float:
    """F1 of class ``positive`` (1): ``2 TP / (2 TP + FP + FN)``, 0 when neither labels nor
    predictions contain it."""
    p, y = _pair(_pred(pred, np.ndim(labels)), labels, "binary F1")
    return float(_f1_per_class(p, y, np.array([positive]))[0])


def miou(pred_masks, label_masks, num_classes: int, ignore_index: int | None = None) -> float:
    """Mean intersection over union of class-id masks (see the module notes for the convention)."""
    p, y = _pair(pred_masks, label_masks, "mIoU")
    p, y = p.ravel(), y.ravel()
    if ignore_index is not None:
        keep = y != ignore_index
        p, y = p[keep], y[keep]
    if p.size == 0:
        raise WorkloadError("mIoU: every pixel is ignored")
    cm = confusion(p, y, num_classes).astype(np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp          # predicted + labelled - both
    present = union > 0
    return float((tp[present] / union[present]).mean())


def class_counts(pred, labels, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Per sample and class, ``(N, num_classes, 2)`` int64: the intersection (TP) and the union
    (TP + FP + FN) of the predicted and the labelled positions (one for a classifier, the
    pixels of a mask; ``ignore_index`` left out). Summed over any subset of samples they give
    that subset's F1 and mIoU (:func:`count_metric`), so that the samples can be resampled."""
    p, y = _pair(pred, labels, "class counts")
    p, y = p.reshape(len(p), -1).astype(np.int64), y.reshape(len(y), -1).astype(np.int64)
    out = np.zeros((len(p), num_classes, 2), dtype=np.int64)
    for i, (pi, yi) in enumerate(zip(p, y)):
        if ignore_index is not None:
            keep = yi != ignore_index
            pi, yi = pi[keep], yi[keep]
        tp = np.diag(confusion(pi, yi, num_classes)) if pi.size else np.zeros(num_classes, np.int64)
        out[i, :, 0] = tp
        out[i, :, 1] = (np.bincount(pi, minlength=num_classes) + np.bincount(yi, minlength=num_classes) - tp
                        if pi.size else 0)
    return out


COUNT_METRICS = ("binary_f1", "macro_f1", "miou")


def count_metric(statistic: str, totals) -> np.ndarray:
    """F1 or mIoU from summed `class_counts`: ``totals`` is ``(C, 2, ...)`` (class, then
    intersection / union, then any batch axes). ``binary_f1``: class 1's ``2 I / (I + U)`` (0
    when absent); ``macro_f1`` / ``miou``: the mean of ``2 I / (I + U)`` / ``I / U`` over the
    classes present (``U > 0``, as :func:`macro_f1` and :func:`miou` take them); NaN where no
    class is present."""
    t = np.asarray(totals, dtype=np.float64)
    inter, union = t[:, 0], t[:, 1]
    present = union > 0
    if statistic == "binary_f1":
        i, u = inter[1], union[1]
        return np.divide(2 * i, i + u, out=np.zeros_like(i), where=u > 0)
    if statistic == "macro_f1":
        per_class = np.divide(2 * inter, inter + union, out=np.zeros_like(inter), where=present)
    elif statistic == "miou":
        per_class = np.divide(inter, union, out=np.zeros_like(inter), where=present)
    else:
        raise WorkloadError(f"count metric {statistic!r} unknown; allowed: {', '.join(COUNT_METRICS)}")
    n = present.sum(axis=0)
    return np.divide(per_class.sum(axis=0), n, out=np.full(n.shape, np.nan), where=n > 0)


def sample_scores(pred, target, ignore_index: int | None = None) -> np.ndarray:
    """Per sample, the fraction of positions where ``pred`` equals ``target`` (class ids): 0 or
    1 for a classifier, pixel accuracy for a segmentation mask (``ignore_index`` left out).
    Paired over the same samples, they feed the Wilcoxon signed-rank test of quality."""
    p, t = np.asarray(pred), np.asarray(target)
    if p.shape != t.shape:
        raise WorkloadError(f"sample scores: predictions {p.shape} and targets {t.shape} differ in shape")
    flat_p, flat_t = p.reshape(len(p), -1), t.reshape(len(t), -1)
    hit = (flat_p == flat_t).astype(np.float64)
    if ignore_index is None:
        return hit.mean(axis=1)
    keep = flat_t != ignore_index
    return np.where(keep.any(axis=1), (hit * keep).sum(axis=1) / np.maximum(keep.sum(axis=1), 1), np.nan)


def evaluate(session_run: Callable[[dict], np.ndarray], dataset: Dataset, task: str | None = None,
             reference=None, batch: int = 1, with_scores: bool = False) -> dict:
    """Run ``dataset`` through ``session_run`` (``feeds -> first output``) in batches of
    ``batch`` and score the predictions: argmax over axis 1 of float outputs; integer outputs
    are class ids; a 1-D float output (one logit per sample) means class 1 where it is > 0.

    Labelled data: ``accuracy`` for classification, ``miou`` for segmentation (over
    ``len(dataset.classes)`` classes, or the output's channel count; ``ignore_index`` from
    ``dataset.extra``), ``f1`` for text classification (binary F1 of class 1 with two
    classes, else macro F1 over the classes present in labels or predictions).
    Unlabelled data: ``agreement`` with ``reference``: the reference model's predictions
    (class ids or logits, in dataset order) or another ``session_run``; unlabelled data
    without a reference is an error.
    Returns ``{"metric", "value", "samples"}``, plus ``"agreement"`` when the data are
    labelled and a reference is given, and with ``with_scores`` the per-sample
    `sample_scores` against the labels (or the reference) as ``"scores"`` (an array) and what
    the metric is of them: ``"statistic"``, ``mean`` for accuracy and agreement (the mean of
    the scores), else one of :data:`COUNT_METRICS`, computed from the per-sample
    `class_counts` given as ``"counts"`` (over ``"classes"`` classes).
    """
    task = task or dataset.task
    if task not in ("classification", "segmentation", "text_classification"):
        raise WorkloadError(f"evaluate: task {task!r} unknown; allowed: classification, segmentation, "
                            "text_classification")
    if batch < 1:
        raise WorkloadError(f"evaluate: batch {batch} must be 1 or more")
    if not dataset.labelled and reference is None:
        raise WorkloadError(f"evaluate: data set {dataset.name} has no labels; give the reference model's "
                            "predictions (or runner) to measure agreement instead")
    preds, channels = _predict(session_run, dataset, batch)
    out: dict = {"samples": len(preds)}
    ref = None
    if reference is not None:
        ref = _predict(reference, dataset, batch)[0] if callable(reference) else _pred(reference, preds.ndim)
        if len(ref) != len(preds):
            raise WorkloadError(f"evaluate: {len(ref)} reference predictions for {len(preds)} samples "
                                f"of {dataset.name}")
    if not dataset.labelled:
        if with_scores:
            out.update(scores=sample_scores(preds, ref), statistic="mean")
        return {"metric": "agreement", "value": agreement(preds, ref), **out}
    labels = np.asarray(dataset.labels)
    ignore = dataset.extra.get("ignore_index") if task == "segmentation" else None
    if with_scores:
        out.update(scores=sample_scores(preds, labels, dataset.extra.get("ignore_index")), statistic="mean")
    n_classes = len(dataset.classes) or channels
    if task == "classification":
        metric, value = "accuracy", accuracy(preds, labels)
    else:
        known = labels if ignore is None else labels[labels != ignore]
        inferred = int(max(preds.max(), known.max(initial=0))) + 1
        if task == "segmentation":
            n_classes = n_classes or inferred
            metric, statistic, value = "miou", "miou", miou(preds, labels, n_classes, ignore)
        else:
            binary = n_classes == 2 or (not n_classes and set(np.unique(labels).tolist()) <= {0, 1})
            metric, statistic = "f1", "binary_f1" if binary else "macro_f1"
            value = binary_f1(preds, labels) if binary else macro_f1(preds, labels)
            n_classes = max(n_classes, inferred, 2)         # every id predicted or labelled has its row
        if with_scores:
            out.update(statistic=statistic, classes=n_classes, counts=class_counts(preds, labels, n_classes, ignore))
    result = {"metric": metric, "value": value, **out}
    if ref is not None:
        result["agreement"] = agreement(preds, ref)
    return result


def _predict(run, dataset: Dataset, batch: int) -> tuple[np.ndarray, int]:
    """Class ids for every sample, and the output's class-axis size (0 for id outputs)."""
    parts, channels = [], 0
    for feeds, _ in dataset.batches(batch):
        y = run(feeds)
        if isinstance(y, (list, tuple)):
            y = y[0]
        y = np.asarray(y)
        if np.issubdtype(y.dtype, np.floating):
            channels = y.shape[1] if y.ndim > 1 else 0
            y = top1(y) if y.ndim > 1 else (y > 0).astype(np.int64)
        parts.append(y)
    return np.concatenate(parts), channels
