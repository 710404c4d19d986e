"""Recommendations from hand-built cells: tolerance, metric-less models, placements, ties."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from testbed.recommend import headlines, recommend
from testbed.stats import ALPHA, cliff_magnitude, compare_groups

POINT = {"links.edge-cloud.bandwidth": "5Mbit"}


BASELINE = 0.80
HALF_WIDTH = 0.002      # of the loss's interval, when a strategy loses anything (none: zero width)


def _study(strategies, seed=0, n=20, point=POINT, model="cnn", metric="accuracy"):
    """strategies: (name, placement, p50 ms or None for all-timeout, metric value[, the loss's
    95 % interval, or None for none]); without one, the loss ± HALF_WIDTH (0 ± 0 for no loss)."""
    rng = np.random.default_rng(seed)
    cells, requests = [], []
    for name, placement, p50, value, *ci in strategies:
        key = f"{model}/{name}/{point}"
        loss = BASELINE - value
        low, high = (ci[0] or (None, None)) if ci else (loss - HALF_WIDTH, loss + HALF_WIDTH) if loss else (0.0, 0.0)
        cells.append({"cell": key, "model": model, "weights": "pretrained", "strategy": name,
                      "placement": placement, "point": point, "status": "done", "requests": n,
                      "metric": metric, "metric_value": value if metric else None,
                      "baseline_value": BASELINE if metric else None,
                      "loss_ci_low": low if metric else None, "loss_ci_high": high if metric else None})
        for v in (p50 * rng.lognormal(0, 0.05, n) if p50 else [None] * n):
            requests.append({"cell": key, "status": "ok" if v is not None else "timeout", "e2e_ms": v})
    return cells, requests


def _by_kind(recs):
    out = {}
    for r in recs:
        out.setdefault(r["kind"], []).append(r)
    return out


STRATEGIES = [("mobile", "mobile", 120.0, 0.80), ("edge", "edge", 40.0, 0.80),
              ("edge-int8", "edge", 20.0, 0.795), ("edge-exit", "edge", 8.0, 0.70),
              ("split", "mobile>edge", 30.0, 0.80)]


def test_within_tolerance_skips_a_faster_strategy_that_loses_too_much():
    kinds = _by_kind(recommend(*_study(STRATEGIES)))
    (within,) = kinds["within_tolerance"]
    assert within["strategy"] == "edge-int8" and abs(within["loss"] - 0.005) < 1e-9
    assert (within["loss_ci_low"], within["loss_ci_high"]) == pytest.approx((0.003, 0.007))
    assert within["tolerance_verdict"] == "within" and within["cannot_tell"] == []
    assert within["text"].startswith("lowest latency within 1 % accuracy loss: edge-int8 (")
    assert "accuracy 0.795 vs baseline 0.8, loss 0.50 % [0.30 %, 0.70 %]" in within["text"]
    assert kinds["fastest"][0]["strategy"] == "edge-exit" and kinds["fastest"][0]["tolerance_verdict"] == "beyond"
    assert kinds["least_loss"][0]["strategy"] == "split"       # loss 0 like mobile and edge, and fastest of them
    assert "loss 0.00 % [0.00 %, 0.00 %]" in kinds["least_loss"][0]["text"]


def test_a_loss_whose_interval_straddles_the_tolerance_is_not_within_it_and_the_text_says_so():
    # edge-q's point loss (0.6 %) is within 1 %, but its interval reaches 1.7 %: the point
    # rule would recommend it; the interval rule recommends the slower edge-int8, whose whole
    # interval is within, and says that the data cannot tell for edge-q
    recs = recommend(*_study([("edge-q", "edge", 10.0, 0.794, (-0.004, 0.017)),
                              ("edge-int8", "edge", 20.0, 0.796, (0.001, 0.008)),
                              ("edge", "edge", 40.0, 0.80)]))
    kinds = _by_kind(recs)
    (within,) = kinds["within_tolerance"]
    assert within["strategy"] == "edge-int8" and within["cannot_tell"] == ["edge-q"]
    assert ("; edge-q (loss 0.60 % [-0.40 %, 1.70 %]): cannot tell whether it is within 1 %; more evaluation "
            "samples would tell") in within["text"]
    (fastest,) = kinds["fastest"]
    assert fastest["strategy"] == "edge-q" and fastest["tolerance_verdict"] == "cannot tell"
    (edge,) = kinds["placement"]
    assert edge["strategy"] == "edge-int8" and "(fastest within 1 % loss" in edge["text"]
    assert [r["strategy"] for r in headlines(recs)] == ["edge-int8", "edge-q"]
    # with only edge-q and a lossless but slow strategy, nothing faster is known within
    alone = _by_kind(recommend(*_study([("edge-q", "edge", 10.0, 0.794, (0.004, 0.0101)),
                                        ("edge", "edge", 40.0, 0.80)], seed=1), tolerance=0.0))
    assert alone["within_tolerance"][0]["strategy"] == "edge"          # 0 [0, 0] is within a tolerance of 0
    assert alone["within_tolerance"][0]["cannot_tell"] == []            # edge-q's interval is wholly above 0


def test_only_strategies_the_data_cannot_judge_give_no_winner_and_say_why():
    recs = recommend(*_study([("edge-q", "edge", 10.0, 0.794, (-0.004, 0.017)),
                              ("old", "edge", 20.0, 0.797, None),           # a cell stored without an interval
                              ("edge-exit", "edge", 5.0, 0.70)]))
    (within,) = _by_kind(recs)["within_tolerance"]
    assert within["strategy"] is None and within["cannot_tell"] == ["edge-q", "old"]
    assert within["text"].startswith("lowest latency within 1 % accuracy loss: none known; edge-q (loss 0.60 % "
                                     "[-0.40 %, 1.70 %]): cannot tell whether it is within 1 %; more evaluation "
                                     "samples would tell; old (loss 0.30 %, no interval (stored before intervals, "
                                     "or too few evaluation samples)): cannot tell whether it is within 1 %")
    assert "edge-exit" not in within["text"]                          # lost 10 % [9.8 %, 10.2 %]: beyond
    old = next(r for r in recs if r["kind"] == "placement")
    assert old["strategy"] == "edge-exit" and "(fastest: " in old["text"]     # no strategy of edge is within


def test_tolerance_is_a_parameter():
    assert _by_kind(recommend(*_study(STRATEGIES), tolerance=0.2))["within_tolerance"][0]["strategy"] == "edge-exit"
    assert _by_kind(recommend(*_study(STRATEGIES), tolerance=0.0))["within_tolerance"][0]["strategy"] == "split"


def test_no_strategy_within_tolerance_is_said_plainly():
    recs = recommend(*_study([("a", "edge", 10.0, 0.5), ("b", "edge", 20.0, 0.6)]))
    (within,) = _by_kind(recs)["within_tolerance"]
    assert within["strategy"] is None and "none, every strategy loses more" in within["text"]


def test_one_recommendation_per_placement_with_splits_named():
    placements = _by_kind(recommend(*_study(STRATEGIES)))["placement"]
    assert [(r["placement"], r["strategy"]) for r in placements] == [
        ("edge", "edge-int8"), ("mobile", "mobile"), ("mobile>edge", "split")]
    assert placements[0]["text"].startswith("on edge only: edge-int8 (fastest within 1 % loss")
    assert placements[2]["text"].startswith("split mobile > edge: split")


def test_a_placement_with_nothing_within_tolerance_falls_back_to_its_fastest():
    recs = recommend(*_study([("cloud-exit", "cloud", 5.0, 0.5), ("edge", "edge", 30.0, 0.8)]))
    (cloud,) = [r for r in recs if r["kind"] == "placement" and r["placement"] == "cloud"]
    assert cloud["strategy"] == "cloud-exit" and "(fastest: " in cloud["text"]


def test_model_without_metric_is_ranked_by_latency_only():
    recs = recommend(*_study(STRATEGIES, metric=None))
    assert {r["kind"] for r in recs} == {"fastest", "placement"}
    (fastest,) = _by_kind(recs)["fastest"]
    assert fastest["strategy"] == "edge-exit" and "accuracy unknown" in fastest["text"]
    assert fastest["loss"] is None


def _exact(groups: dict[str, tuple[str, list[float], float]]):
    """Cells and ok requests with exactly these latencies: name -> (placement, ms, metric value)."""
    cells, requests = [], []
    for name, (placement, latencies, value) in groups.items():
        key = f"cnn/{name}"
        cells.append({"cell": key, "model": "cnn", "weights": "pretrained", "strategy": name, "placement": placement,
                      "point": POINT, "status": "done", "requests": len(latencies), "metric": "accuracy",
                      "metric_value": value, "baseline_value": 0.80})
        requests += [{"cell": key, "status": "ok", "e2e_ms": float(v)} for v in latencies]
    return cells, requests


def _the_pair(cells, requests, a, b):
    """The statistics the recommendation must agree with: the pair (a, b) of all groups."""
    groups = {c["strategy"]: [r["e2e_ms"] for r in requests if r["cell"] == c["cell"]] for c in cells}
    return compare_groups(groups).pair(a, b)


def _quantiles(n: int, median: float, factor: float = 1.0) -> list[float]:
    """n evenly spaced quantiles of a log-normal latency (sigma 0.05) around ``median``, times ``factor``."""
    return list(median * factor * np.exp(0.05 * norm.ppf((np.arange(n) + 0.5) / n)))


def test_indistinguishable_winner_and_runner_up_are_reported():
    # same latency distribution for a and b (different seeds of noise), c far behind
    cells, requests = _study([("a", "edge", 50.0, 0.8), ("b", "edge", 50.0, 0.8), ("c", "cloud", 200.0, 0.8)],
                             seed=4, n=30)
    (fastest,) = _by_kind(recommend(cells, requests))["fastest"]
    pair = _the_pair(cells, requests, fastest["strategy"], fastest["runner_up"])
    assert not pair.significant and pair.magnitude in ("negligible", "small")
    assert fastest["runner_up"] in ("a", "b") and fastest["indistinguishable"] is True
    assert fastest["difference"] == "indistinguishable"
    assert (f"; {fastest['strategy']} and {fastest['runner_up']} are indistinguishable "
            f"(p={pair.p:.2g}, δ={pair.delta:+.2f} {pair.magnitude})") in fastest["text"]


def test_a_clearly_faster_winner_is_not_called_indistinguishable():
    (fastest,) = _by_kind(recommend(*_study([("a", "edge", 10.0, 0.8), ("b", "edge", 50.0, 0.8)])))["fastest"]
    assert (fastest["strategy"], fastest["runner_up"], fastest["indistinguishable"]) == ("a", "b", False)
    assert fastest["p"] < 0.05 and fastest["delta"] == -1.0 and "indistinguishable" not in fastest["text"]
    assert fastest["difference"] == "significant" and "significant" not in fastest["text"]


def test_a_significant_but_negligible_difference_is_called_so_not_indistinguishable():
    # 1000 requests each, b 0.5 % slower throughout: the test sees it, Cliff's delta says it is tiny
    cells, requests = _exact({"a": ("edge", _quantiles(1000, 50.0), 0.8),
                              "b": ("edge", _quantiles(1000, 50.0, 1.005), 0.8)})
    pair = _the_pair(cells, requests, "a", "b")
    assert pair.significant and pair.p < ALPHA and cliff_magnitude(pair.delta) == "negligible"
    (fastest,) = _by_kind(recommend(cells, requests))["fastest"]
    assert (fastest["strategy"], fastest["runner_up"]) == ("a", "b")
    assert fastest["indistinguishable"] is False and fastest["difference"] == "negligible"
    assert "indistinguishable" not in fastest["text"]
    assert fastest["text"].endswith(f"; a and b differ significantly but negligibly (p={pair.p:.2g}, "
                                    f"δ={pair.delta:+.2f}): a real difference too small to matter")


def test_a_large_but_untested_difference_asks_for_more_requests():
    # two requests each, fully separated: Cliff's delta is -1, but two values cannot make it significant
    cells, requests = _exact({"a": ("edge", [10.0, 11.0], 0.8), "b": ("edge", [13.0, 14.0], 0.8)})
    pair = _the_pair(cells, requests, "a", "b")
    assert not pair.significant and pair.p >= ALPHA and pair.magnitude == "large"
    (fastest,) = _by_kind(recommend(cells, requests))["fastest"]
    assert fastest["indistinguishable"] is True and fastest["difference"] == "not significant"
    assert fastest["text"].endswith(f"; a and b are not significantly different (p={pair.p:.2g}, δ=-1.00 large): "
                                    "more requests may tell them apart")


def test_a_pair_the_omnibus_test_does_not_back_is_not_significant_and_says_why():
    # b vs c alone has Conover p < alpha, but Kruskal-Wallis over a, b, c does not reach alpha
    base = [10.0, 11.0, 12.0, 13.0, 14.0]
    cells, requests = _exact({"c": ("edge", base, 0.799), "a": ("edge", [x + 1 for x in base], 0.795),
                              "b": ("cloud", [x + 3 for x in base], 0.80)})
    pair = _the_pair(cells, requests, "b", "c")
    kruskal = compare_groups({"a": [x + 1 for x in base], "b": [x + 3 for x in base], "c": base}).kruskal_p
    assert pair.p < ALPHA <= kruskal and not pair.significant and pair.magnitude == "large"
    (least,) = _by_kind(recommend(cells, requests))["least_loss"]             # b: no loss; c: the next least
    assert (least["strategy"], least["runner_up"], least["difference"]) == ("b", "c", "not significant")
    assert least["indistinguishable"] is True
    assert (f"; b and c are not significantly different (p={pair.p:.2g}, Kruskal-Wallis p={kruskal:.2g}, "
            f"δ={pair.delta:+.2f} large): more requests may tell them apart") in least["text"]


def test_too_few_samples_to_compare_is_said():
    (fastest,) = _by_kind(recommend(*_study([("a", "edge", 10.0, 0.8), ("b", "edge", 50.0, 0.8)], n=1)))["fastest"]
    assert fastest["indistinguishable"] is None and "too few samples to test" in fastest["text"]


def test_strategies_without_ok_requests_are_listed_not_ranked():
    recs = recommend(*_study([("a", "edge", 10.0, 0.8), ("dead", "cloud", None, 0.8)]))
    kinds = _by_kind(recs)
    assert kinds["fastest"][0]["strategy"] == "a" and [r["strategy"] for r in kinds["unmeasured"]] == ["dead"]
    assert "dead: no ok request (20 sent), not ranked" == kinds["unmeasured"][0]["text"]
    assert "cloud" not in {r["placement"] for r in kinds["placement"]}
    only_dead = recommend(*_study([("dead", "cloud", None, 0.8)]))
    assert [r["kind"] for r in only_dead] == ["none", "unmeasured"]


def test_failed_cells_are_not_recommended_and_groups_are_per_point():
    cells, requests = _study(STRATEGIES)
    cells[3]["status"] = "failed"            # edge-exit, the fastest
    other_cells, other_requests = _study([("mobile", "mobile", 5.0, 0.8)],
                                         point={"links.edge-cloud.bandwidth": "50Mbit"})
    recs = recommend(cells + other_cells, requests + other_requests)
    fastest = {r["point_label"]: r["strategy"] for r in recs if r["kind"] == "fastest"}
    assert fastest == {"links.edge-cloud.bandwidth=5Mbit": "edge-int8", "links.edge-cloud.bandwidth=50Mbit": "mobile"}


def test_headlines_pick_the_within_tolerance_winner_and_a_different_fastest():
    recs = recommend(*_study(STRATEGIES))
    assert [(r["kind"], r["strategy"]) for r in headlines(recs)] == [("within_tolerance", "edge-int8"),
                                                                    ("fastest", "edge-exit")]
    same = recommend(*_study([("a", "edge", 10.0, 0.8), ("b", "edge", 50.0, 0.8)]))
    assert [r["kind"] for r in headlines(same)] == ["within_tolerance"]
