"""Quality metrics: hand-computed examples, scikit-learn as a cross-check, the evaluation loop."""
from __future__ import annotations

import numpy as np
import pytest

from workloads.data import Dataset
from workloads.errors import WorkloadError
from workloads.metrics import (accuracy, agreement, binary_f1, confusion, evaluate, macro_f1, miou,
                               top1)

sk = pytest.importorskip("sklearn.metrics")

LOGITS = np.array([[2.0, 1.0, 0.0],     # 0
                   [0.1, 0.3, 0.2],     # 1
                   [0.0, 0.0, 5.0],     # 2
                   [1.0, 3.0, 2.0]])    # 1
LABELS = np.array([0, 2, 2, 1])


def test_top1_and_accuracy():
    assert top1(LOGITS).tolist() == [0, 1, 2, 1]
    assert accuracy(LOGITS, LABELS) == 0.75                     # logits: argmax first
    assert accuracy(np.array([0, 1, 2, 1]), LABELS) == 0.75     # predictions as they are
    with pytest.raises(WorkloadError, match=r"^accuracy: predictions have shape \(3,\) but labels \(4,\)"):
        accuracy(np.array([0, 1, 2]), LABELS)


def test_confusion():
    cm = confusion(np.array([0, 1, 2, 1]), LABELS, 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]     # rows: label, columns: prediction
    assert (cm == sk.confusion_matrix(LABELS, [0, 1, 2, 1], labels=[0, 1, 2])).all()
    with pytest.raises(WorkloadError, match="^confusion: labels hold class ids 0..3 outside 0..2"):
        confusion(np.array([0, 0]), np.array([0, 3]), 3)


def test_f1_hand_computed():
    pred = np.array([1, 1, 0, 1, 0, 0, 1])
    true = np.array([1, 0, 0, 1, 1, 0, 1])
    # class 1: TP 3, FP 1, FN 1 -> 6/8; class 0: TP 2, FP 1, FN 1 -> 4/6
    assert binary_f1(pred, true) == pytest.approx(0.75)
    assert macro_f1(pred, true) == pytest.approx((0.75 + 4 / 6) / 2)
    # three classes: 0: TP1 FP0 FN0 -> 1; 1: TP1 FP1 FN0 -> 2/3; 2: TP1 FP0 FN1 -> 2/3
    assert macro_f1(LOGITS, LABELS) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert binary_f1(np.zeros(4, int), np.zeros(4, int)) == 0.0  # no positives anywhere


@pytest.mark.parametrize("seed", range(5))
def test_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y, p = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    right = rng.random(200) < 0.5                  # half right, half random
    p[right] = y[right]
    assert macro_f1(p, y) == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0))
    y[y == 4] = 3                                  # class 4 only predicted: still averaged, F1 0
    assert macro_f1(p, y) == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0))
    assert macro_f1(p, y, classes=6) == pytest.approx(
        sk.f1_score(y, p, labels=range(6), average="macro", zero_division=0))
    yb, pb = y % 2, p % 2
    assert binary_f1(pb, yb) == pytest.approx(sk.f1_score(yb, pb, zero_division=0))


def test_miou_hand_computed():
    label = np.array([[[0, 0, 1],
                       [0, 1, 1],
                       [2, 2, 255]]])
    pred = np.array([[[0, 1, 1],
                      [0, 1, 1],
                      [2, 0, 3]]])
    # ignoring 255: class 0: TP 2, FP 1 (pixel 2,1), FN 1 (pixel 0,1) -> 2/4
    #   class 1: TP 3, FP 1, FN 0 -> 3/4; class 2: TP 1, FN 1 -> 1/2; class 3: absent everywhere else
    assert miou(pred, label, 4, ignore_index=255) == pytest.approx((2 / 4 + 3 / 4 + 1 / 2) / 3)
    # without ignoring, 255 is out of range
    with pytest.raises(WorkloadError, match="^confusion: labels hold class ids 0..255 outside 0..3"):
        miou(pred, label, 4)
    # a class that is only predicted counts with IoU 0; classes absent from both are left out
    assert miou(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]), 5) == pytest.approx((2 / 4 + 0) / 2)
    assert miou(np.array([1, 1]), np.array([1, 1]), 3) == 1.0


def test_miou_matches_sklearn_jaccard():
    rng = np.random.default_rng(7)
    y, p = rng.integers(0, 4, (3, 8, 8)), rng.integers(0, 4, (3, 8, 8))
    ref = sk.jaccard_score(y.ravel(), p.ravel(), average="macro")
    assert miou(p, y, 4) == pytest.approx(ref)


def test_agreement():
    assert agreement(np.array([0, 1, 2, 1]), np.array([0, 1, 1, 1])) == 0.75
    assert agreement(LOGITS, np.array([0, 1, 2, 0])) == 0.75        # logits vs ids
    assert agreement(LOGITS, LOGITS * 2) == 1.0                     # logits vs logits
    seg = np.zeros((2, 3, 4, 4), np.float32)
    seg[:, 1] = 1.0
    assert agreement(seg, np.ones((2, 4, 4), np.int64)) == 1.0      # per-pixel, class axis 1


# ---- evaluate ---------------------------------------------------------------------------------

def _classifier(weights):
    """A fake runner: logits = x @ weights; records the batch sizes it saw."""
    seen = []

    def run(feeds):
        seen.append(len(feeds["x"]))
        return feeds["x"] @ weights
    run.seen = seen
    return run


def test_evaluate_classification_batches():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    w = np.eye(3, dtype=np.float32)
    labels = x.argmax(1)
    labels[:2] = (labels[:2] + 1) % 3                   # two wrong
    ds = Dataset("d", "classification", {"x": x}, labels)
    run = _classifier(w)
    assert evaluate(run, ds, "classification", batch=4) == {"metric": "accuracy", "value": 0.8, "samples": 10}
    assert run.seen == [4, 4, 2]
    res = evaluate(_classifier(w), ds, "classification", reference=x.argmax(1))
    assert res == {"metric": "accuracy", "value": 0.8, "samples": 10, "agreement": 1.0}


def test_evaluate_unlabelled_uses_reference():
    x = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32)
    ds = Dataset("u", "classification", {"x": x}, None)
    swap = _classifier(np.array([[0, 1], [1, 0]], np.float32))
    # reference as an array of predictions, or as another runner
    assert evaluate(swap, ds, "classification", reference=np.array([1, 0, 0, 0])) == \
        {"metric": "agreement", "value": 0.75, "samples": 4}
    assert evaluate(swap, ds, "classification", reference=_classifier(np.eye(2, dtype=np.float32)),
                    batch=3)["value"] == 0.0
    with pytest.raises(WorkloadError) as e:
        evaluate(swap, ds, "classification")
    assert str(e.value) == ("evaluate: data set u has no labels; give the reference model's predictions "
                            "(or runner) to measure agreement instead")
    with pytest.raises(WorkloadError, match="^evaluate: 3 reference predictions for 4 samples of u$"):
        evaluate(swap, ds, "classification", reference=np.array([0, 1, 0]))


def test_evaluate_segmentation_and_text():
    masks = np.array([[[0, 1], [1, 255]], [[0, 0], [1, 1]]])
    onehot = np.zeros((2, 2, 2, 2), np.float32)             # (N, C, H, W) predicting class 1 everywhere
    onehot[:, 1] = 1
    ds = Dataset("s", "segmentation", {"x": np.zeros((2, 1), np.float32)}, masks, classes=("bg", "fg"),
                 extra={"ignore_index": 255})
    res = evaluate(lambda f: onehot[:len(f["x"])], ds, "segmentation", batch=2)
    # class 0: TP 0, FN 3 -> 0; class 1: TP 4, FP 3 -> 4/7
    assert res == {"metric": "miou", "value": pytest.approx((0 + 4 / 7) / 2), "samples": 2}

    ids = np.arange(6).reshape(6, 1)
    labels = np.array([1, 0, 1, 1, 0, 0])
    logits = np.array([[0, 1], [1, 0], [0, 1], [1, 0], [0, 1], [1, 0]], np.float32)
    text = Dataset("t", "text_classification", {"ids": ids}, labels)
    res = evaluate(lambda f: logits[f["ids"][:, 0]], text, "text_classification", batch=4)
    assert res["metric"] == "f1"                             # binary, positive class 1: TP 2, FP 1, FN 1
    assert res["value"] == pytest.approx(sk.f1_score(labels, logits.argmax(1)))
    three = Dataset("t3", "text_classification", {"ids": ids}, np.array([0, 1, 2, 2, 1, 0]))
    l3 = np.eye(3, dtype=np.float32)[[0, 1, 2, 1, 1, 0]]
    res = evaluate(lambda f: l3[f["ids"][:, 0]], three, "text_classification")
    assert res["value"] == pytest.approx(sk.f1_score([0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 0], average="macro"))


def test_sample_scores_per_sample_and_per_pixel_with_ignored_pixels():
    from workloads.metrics import sample_scores

    assert sample_scores(np.array([1, 2, 3]), np.array([1, 0, 3])).tolist() == [1.0, 0.0, 1.0]
    pred = np.array([[[0, 1], [1, 1]], [[2, 2], [2, 2]]])
    label = np.array([[[0, 1], [0, 255]], [[255, 255], [255, 255]]])
    got = sample_scores(pred, label, ignore_index=255)
    assert got[0] == pytest.approx(2 / 3) and np.isnan(got[1])       # an all-ignored image has no score
    with pytest.raises(WorkloadError, match="differ in shape"):
        sample_scores(np.zeros(3), np.zeros(4))
