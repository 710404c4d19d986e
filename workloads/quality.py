"""Quality with its uncertainty: 95 % intervals of an artifact's metric and of its loss
against the untransformed model, by a paired bootstrap over the evaluation samples.

`prepare` saves, beside every artifact whose metric means something (:func:`save_samples`):

- ``scores.npy`` / ``baseline_scores.npy``: per sample, correct (1/0), pixel accuracy, or
  agreement with the untransformed model, for the artifact and for the untransformed model
  (the Wilcoxon test's pairs; accuracy and agreement are their means);
- ``class_counts.npy`` / ``baseline_class_counts.npy``, for F1 and mIoU, which are not means
  of per-sample scores: per sample and class, the intersection (TP) and union (TP + FP + FN)
  counts (`workloads.metrics.class_counts`), from which any subset's F1 or mIoU follows.

:func:`measure` recomputes the intervals from those files alone: each replicate draws sample
indices with replacement once and recomputes both the artifact's and the untransformed
model's metric on those same samples; the loss is baseline minus artifact (every metric is
higher-is-better). The interval is BCa (scipy.stats.bootstrap), or the percentile interval
of the same replicates where BCa is undefined (e.g. every replicate equal: a zero-width
interval). Seeded: the same files give the same intervals. Numpy and scipy only.

Where no sample tells the two models apart, a bootstrap sees nothing to resample and gives
[0, 0]; yet with n samples and none differing, the two may still differ on up to
``1 - 0.025 ** (1 / n)`` of their inputs (Clopper-Pearson, 0 of n, 95 %: about 3.7 / n). For
a metric that is a mean of per-sample scores in [0, 1] (accuracy, agreement, pixel accuracy)
the loss can be no larger than that share, so its interval is widened to ±that bound, and an
artifact that scores 1 on every sample gets ``1 - bound`` as its lower bound. Not for an
artifact that is the untransformed model by construction (``exact``: only `partition`, whose
parts compute the same graph), whose loss is 0 with nothing to estimate.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .metrics import COUNT_METRICS, class_counts, count_metric, sample_scores

SCORES_FILE = "scores.npy"                          # per-sample quality of the artifact
BASELINE_SCORES_FILE = "baseline_scores.npy"        # the same samples, untransformed model
COUNTS_FILE = "class_counts.npy"                    # F1 / mIoU: per-sample, per-class counts
BASELINE_COUNTS_FILE = "baseline_class_counts.npy"
STATISTICS = ("mean",) + COUNT_METRICS
CONFIDENCE = 0.95
REPLICATES = 2000
SEED = 0
_BATCH_VALUES = 2_000_000       # values a batch of replicates gathers at most (~16 MB)


def bootstrap_interval(data: tuple, statistic, *, paired: bool = False, confidence: float = CONFIDENCE,
                       n_resamples: int = REPLICATES, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(low, high, methods)`` of a vectorized ``statistic(*samples, axis=-1)`` over the samples'
    first axis (scipy.stats.bootstrap; ``paired``: the same indices for every sample), one per
    element of its value: BCa where it is defined, else the percentile interval of the same
    replicates (BCa is 0/0 when the replicates are all equal, or for discrete statistics
    like the median of tied data). A bound that is still not finite is NaN."""
    from scipy import stats

    n, per_sample = len(data[0]), int(np.prod(data[0].shape[1:], dtype=np.int64))
    batch = max(1, _BATCH_VALUES // max(1, n * per_sample * len(data)))
    common = dict(paired=paired, vectorized=True, confidence_level=confidence, axis=0, batch=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # DegenerateDataWarning, 0/0 in BCa: the fallback handles them
        bca = stats.bootstrap(data, statistic, n_resamples=n_resamples, method="BCa",
                              rng=np.random.default_rng(seed), **common)
        pct = stats.bootstrap(data, statistic, n_resamples=0, method="percentile", bootstrap_result=bca,
                              **common).confidence_interval
    low, high = np.atleast_1d(bca.confidence_interval.low), np.atleast_1d(bca.confidence_interval.high)
    defined = np.isfinite(low) & np.isfinite(high)
    low, high = np.where(defined, low, np.atleast_1d(pct.low)), np.where(defined, high, np.atleast_1d(pct.high))
    return low, high, ["BCa" if d else "percentile" for d in defined]


def metric_of(statistic: str, samples: np.ndarray, axis: int = 0) -> np.ndarray:
    """The metric of per-sample data along ``axis`` (the samples: first, or last as scipy's
    bootstrap puts them): the mean of scores, or F1 / mIoU of the summed class counts."""
    if statistic == "mean":
        return np.mean(samples, axis=axis)
    return count_metric(statistic, np.sum(samples, axis=axis))


def _interval_block(statistic: str, files: list[str], n: int, exact: bool = False) -> dict:
    return {"statistic": statistic, "files": files, "samples": n, "confidence": CONFIDENCE,
            "replicates": REPLICATES, "seed": SEED, "exact": exact, "value": None, "baseline": None, "loss": None,
            "method": None, "note": None}


def unseen_share(n: int, confidence: float = CONFIDENCE) -> float:
    """The largest share of inputs on which two models may differ although none of ``n``
    samples shows a difference: the two-sided Clopper-Pearson upper bound for 0 of ``n``."""
    return 1.0 - ((1.0 - confidence) / 2.0) ** (1.0 / n)


def paired_interval(statistic: str, artifact, baseline, files: list[str] | None = None,
                    exact: bool = False) -> dict:
    """Intervals of the artifact's metric, the baseline's, and the loss (baseline − artifact),
    from paired per-sample data (the first axis is the samples, in the same order in both):
    ``{"statistic", "files", "samples", "confidence", "replicates", "seed", "value",
    "baseline", "loss" ([low, high] each, or None), "method" (each one's: BCa or
    percentile), "note" (why there is no interval, else None)}``."""
    a, b = np.asarray(artifact, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    out = _interval_block(statistic, files or [], len(a), exact)
    if a.shape != b.shape:
        out["note"] = f"no interval: {a.shape[0]} artifact samples against {b.shape[0]} of the baseline"
        return out
    if len(a) < 2:
        out["note"] = f"no interval: {len(a)} evaluation sample(s); a bootstrap needs at least 2"
        return out

    def both(x, y, axis=-1):
        vx, vy = metric_of(statistic, x, axis), metric_of(statistic, y, axis)
        return np.stack([vx, vy, vy - vx])

    low, high, methods = bootstrap_interval((a, b), both, paired=True)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        out["note"] = "no interval: the metric is undefined on some resamples (no class present)"
        return out
    for i, key in enumerate(("value", "baseline", "loss")):
        out[key] = [float(low[i]), float(high[i])]
    out["method"] = dict(zip(("value", "baseline", "loss"), methods))
    if statistic == "mean" and not exact and np.array_equal(a, b):     # no sample tells them apart
        u = unseen_share(len(a))
        out["loss"] = [min(out["loss"][0], -u), max(out["loss"][1], u)]
        out["method"]["loss"] = "Clopper-Pearson: no sample differs"
        if (a == 1).all():
            out["value"] = [min(out["value"][0], 1.0 - u), out["value"][1]]
            out["method"]["value"] = "Clopper-Pearson: every sample scores 1"
    return out


def save_samples(folder: Path, evaluation: dict, baseline_predictions: np.ndarray, data, exact: bool = False) -> dict:
    """Write the artifact's and the untransformed model's per-sample data beside the artifact
    (``evaluation``: `workloads.metrics.evaluate`'s result with scores, whose arrays it takes
    out; ``baseline_predictions``: the untransformed model's class ids on the same samples,
    which are the reference when ``data`` has no labels) and measure the intervals from those
    files. Returns what the manifest's quality block gets: ``scores`` and ``interval``."""
    folder = Path(folder)
    statistic = evaluation.pop("statistic")
    np.save(folder / SCORES_FILE, evaluation.pop("scores"))
    labels = None if not data.labelled else np.asarray(data.labels)
    base_scores = (np.ones(len(baseline_predictions)) if labels is None else
                   sample_scores(baseline_predictions, labels, data.extra.get("ignore_index")))
    np.save(folder / BASELINE_SCORES_FILE, base_scores)
    if statistic in COUNT_METRICS:
        classes = evaluation.pop("classes")
        ignore = data.extra.get("ignore_index") if statistic == "miou" else None
        np.save(folder / COUNTS_FILE, evaluation.pop("counts"))
        np.save(folder / BASELINE_COUNTS_FILE, class_counts(baseline_predictions, labels, classes, ignore))
    scores = {"file": SCORES_FILE, "baseline_file": BASELINE_SCORES_FILE,
              "what": "per sample: correct (1/0), pixel accuracy, or agreement with the untransformed model"}
    return {"scores": scores, "interval": measure(folder, statistic, exact)}


def measure(folder: Path, statistic: str, exact: bool = False) -> dict:
    """The intervals (:func:`paired_interval`) recomputed from the per-sample files beside the
    artifact in ``folder``; files that are missing or unreadable (an artifact prepared before
    intervals, or moved) give a block without an interval whose ``note`` says so."""
    if statistic not in STATISTICS:
        return {**_interval_block(statistic, [], 0, exact),
                "note": f"no interval: statistic {statistic!r} unknown; allowed: {', '.join(STATISTICS)}"}
    files = [SCORES_FILE, BASELINE_SCORES_FILE] if statistic == "mean" else [COUNTS_FILE, BASELINE_COUNTS_FILE]
    try:
        artifact, baseline = (np.load(Path(folder) / f, allow_pickle=False) for f in files)
    except (OSError, ValueError) as e:
        missing = next((f for f in files if not (Path(folder) / f).is_file()), None)
        why = f"{missing} is not beside the artifact" if missing else f"its per-sample files are unreadable ({e})"
        return {**_interval_block(statistic, files, 0, exact),
                "note": f"no interval: {why} (prepared by an older testbed, or moved)"}
    return paired_interval(statistic, artifact, baseline, files, exact)
