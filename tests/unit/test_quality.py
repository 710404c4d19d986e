"""Quality intervals: the paired bootstrap against known answers, F1 and mIoU from per-sample
class counts, and the files beside an artifact they are recomputed from."""
from __future__ import annotations

import numpy as np
import pytest

from workloads.data import Dataset
from workloads.metrics import binary_f1, class_counts, count_metric, evaluate, macro_f1, miou
from workloads.quality import (BASELINE_COUNTS_FILE, COUNTS_FILE, SCORES_FILE, measure, metric_of, paired_interval,
                               save_samples, unseen_share)


def _pairs(n: int, rng, lost: float = 0.05, gained: float = 0.02, both: float = 0.80) -> tuple:
    """Per-sample correctness of a baseline and an artifact on the same ``n`` samples: the
    artifact loses a sample the baseline gets right with probability ``lost``, gains one it
    gets wrong with ``gained``: the true loss is ``lost - gained``."""
    u = rng.random(n)
    base = (u < both + lost).astype(float)                      # both right, or only the baseline
    art = ((u < both) | (u >= both + lost) & (u < both + lost + gained)).astype(float)
    return art, base


# --- the paired bootstrap ---------------------------------------------------------------------

def test_identical_scores_are_an_exact_zero_only_for_a_partition_else_the_unseen_share_bounds_the_loss():
    scores = (np.random.default_rng(0).random(300) < 0.8).astype(float)
    # the parts of a partition compute the untransformed graph: the loss is 0, nothing to estimate
    exact = paired_interval("mean", scores, scores.copy(), exact=True)
    assert exact["loss"] == [0.0, 0.0] and exact["method"]["loss"] == "percentile"     # BCa is 0/0 here
    assert exact["value"] == exact["baseline"] and exact["value"][0] < scores.mean() < exact["value"][1]
    assert exact["note"] is None and exact["samples"] == 300 and exact["exact"]
    # any other artifact that no sample tells apart may still differ on up to 1 - 0.025^(1/n) of
    # its inputs (0 of 300: 1.22 %): the loss interval says so, and is not within a 1 % tolerance
    ci = paired_interval("mean", scores, scores.copy())
    assert ci["loss"] == pytest.approx([-0.012221, 0.012221], abs=1e-6) and not ci["exact"]
    assert ci["method"]["loss"] == "Clopper-Pearson: no sample differs" and ci["value"] == exact["value"]
    # 500 samples all agreeing: within 1 % (0.74 %); a perfect score's lower bound is 1 - that share
    ones = np.ones(500)
    agree = paired_interval("mean", ones, ones.copy())
    assert agree["loss"][1] == pytest.approx(unseen_share(500)) and 0.0073 < agree["loss"][1] < 0.0074
    assert agree["value"] == pytest.approx([1 - unseen_share(500), 1.0]) and agree["baseline"] == [1.0, 1.0]
    # one sample differing is the bootstrap's to judge again
    flipped = ones.copy()
    flipped[7] = 0.0
    assert paired_interval("mean", flipped, ones)["method"]["loss"] != "Clopper-Pearson: no sample differs"


def test_the_loss_interval_covers_the_true_loss_at_its_confidence_and_shrinks_with_the_square_root_of_n():
    rng = np.random.default_rng(1)
    true_loss, covered, widths = 0.05 - 0.02, 0, {400: [], 1600: []}
    for n in widths:
        for _ in range(20):
            art, base = _pairs(n, rng)
            low, high = paired_interval("mean", art, base)["loss"]
            covered += low <= true_loss <= high
            widths[n].append(high - low)
            # the normal approximation of a mean's interval: 2 x 1.96 standard errors of the differences
            assert high - low == pytest.approx(2 * 1.96 * np.std(base - art, ddof=1) / np.sqrt(n), rel=0.15)
    assert covered >= 36                                  # of 40 intervals at 95 %: 38 expected
    assert np.mean(widths[1600]) / np.mean(widths[400]) == pytest.approx(0.5, abs=0.06)   # 4x the samples


def test_the_bootstrap_pairs_the_samples():
    # the artifact is the baseline with 3 % of the samples flipped to wrong: apart, each metric
    # varies by several points; paired, their difference varies far less
    rng = np.random.default_rng(2)
    base = (rng.random(1000) < 0.7).astype(float)
    art = base.copy()
    art[np.flatnonzero(base)[:30]] = 0.0
    ci = paired_interval("mean", art, base)
    assert ci["loss"][0] > 0 and ci["loss"][0] <= 0.03 <= ci["loss"][1]
    assert ci["loss"][1] - ci["loss"][0] < 0.5 * (ci["value"][1] - ci["value"][0])


def test_the_same_data_give_the_same_interval():
    art, base = _pairs(500, np.random.default_rng(3))
    assert paired_interval("mean", art, base) == paired_interval("mean", art, base)


def test_too_few_or_unpaired_samples_give_no_interval_and_say_why():
    one = paired_interval("mean", np.ones(1), np.ones(1))
    assert one["loss"] is None and one["note"].startswith("no interval: 1 evaluation sample(s)")
    odd = paired_interval("mean", np.ones(5), np.ones(6))
    assert odd["value"] is None and "5 artifact samples against 6" in odd["note"]


# --- F1 and mIoU from per-sample class counts ----------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_f1_and_miou_from_summed_class_counts_equal_the_metrics(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 5, 300))          # class 4 only predicted
    counts = class_counts(p, y, 5)
    assert counts.shape == (300, 5, 2) and metric_of("macro_f1", counts) == pytest.approx(macro_f1(p, y))
    yb, pb = y % 2, p % 2
    assert metric_of("binary_f1", class_counts(pb, yb, 2)) == pytest.approx(binary_f1(pb, yb))
    masks, preds = rng.integers(0, 6, (40, 8, 8)), rng.integers(0, 5, (40, 8, 8))
    preds = np.where(rng.random(masks.shape) < 0.5, np.minimum(masks, 4), preds)
    for ignore in (None, 5):                     # 5: a label that counts nowhere
        seg = class_counts(preds, masks, 6, ignore)
        assert metric_of("miou", seg) == pytest.approx(miou(preds, masks, 6, ignore))
    # and any subset: what a bootstrap replicate recomputes
    rows = rng.integers(0, 40, 40)
    assert metric_of("miou", seg[rows]) == pytest.approx(miou(preds[rows], masks[rows], 6, 5))


def test_count_metric_is_vectorized_over_replicates_and_undefined_without_classes():
    # (C=2, intersection / union, replicates=2): class 0 is absent from the second replicate
    totals = np.array([[[2, 0], [5, 0]], [[3, 1], [4, 2]]], dtype=float)
    assert count_metric("miou", totals).tolist() == pytest.approx([(2 / 5 + 3 / 4) / 2, (1 / 2) / 1])
    assert np.isnan(count_metric("miou", np.zeros((3, 2))))


class _Model:
    """A real classifier of the test's data: logits from a fixed linear map of the input."""

    def __init__(self, weights: np.ndarray):
        self.weights = weights

    def __call__(self, feeds: dict) -> np.ndarray:
        x = feeds["x"]
        return np.einsum("nc...,ck->nk...", x, self.weights) if x.ndim > 2 else x @ self.weights


@pytest.mark.parametrize("task, classes", [("text_classification", 2), ("text_classification", 3),
                                           ("segmentation", 3)])
def test_intervals_recomputed_from_the_files_beside_an_artifact_match_its_metric(tmp_path, task, classes):
    rng = np.random.default_rng(4)
    n = 120
    shape = (n, classes) if task == "text_classification" else (n, classes, 6, 6)
    labels = rng.integers(0, classes, shape[:1] + shape[2:])
    x = rng.normal(0, 1, shape).astype(np.float32) + 1.5 * np.moveaxis(np.eye(classes)[labels], -1, 1)
    extra = {"ignore_index": 255} if task == "segmentation" else {}
    if extra:
        labels[:, 0, 0] = 255                                    # a border that counts nowhere
    data = Dataset("toy", task, {"x": x}, labels, tuple("abc"[:classes]), extra=extra)
    baseline, artifact = _Model(np.eye(classes)), _Model(np.eye(classes) + rng.normal(0, 0.4, (classes, classes)))
    q = evaluate(artifact, data, with_scores=True)
    base = evaluate(baseline, data)
    statistic = {"segmentation": "miou", "text_classification": "binary_f1" if classes == 2 else "macro_f1"}[task]
    assert q["statistic"] == statistic and q["counts"].shape == (n, classes, 2)
    base_predictions = np.argmax(baseline({"x": x}), axis=1)
    out = save_samples(tmp_path, q, base_predictions, data)
    assert {"scores", "counts", "classes", "statistic"}.isdisjoint(q)        # taken out of the manifest's block
    ci = out["interval"]
    assert ci["statistic"] == statistic and ci["files"] == [COUNTS_FILE, BASELINE_COUNTS_FILE] and ci["note"] is None
    # from the saved files alone, at the full sample: exactly the evaluated metrics
    counts, base_counts = np.load(tmp_path / COUNTS_FILE), np.load(tmp_path / BASELINE_COUNTS_FILE)
    assert metric_of(statistic, counts) == pytest.approx(q["value"])
    assert metric_of(statistic, base_counts) == pytest.approx(base["value"])
    assert ci["value"][0] <= q["value"] <= ci["value"][1] and ci["baseline"][0] <= base["value"] <= ci["baseline"][1]
    assert ci["loss"][0] <= base["value"] - q["value"] <= ci["loss"][1]
    assert measure(tmp_path, statistic) == ci                     # recomputable, the same seeded interval
    assert (tmp_path / SCORES_FILE).is_file()                     # Wilcoxon's per-sample scores stay


def test_an_artifact_without_the_files_has_no_interval_and_says_why(tmp_path):
    ci = measure(tmp_path, "miou")
    assert ci["value"] is None and ci["loss"] is None
    assert ci["note"] == ("no interval: class_counts.npy is not beside the artifact (prepared by an older testbed, "
                          "or moved)")
    (tmp_path / SCORES_FILE).write_bytes(b"not numpy")
    np.save(tmp_path / "baseline_scores.npy", np.ones(3))
    assert "unreadable" in measure(tmp_path, "mean")["note"]
    assert "statistic 'median' unknown" in measure(tmp_path, "median")["note"]
