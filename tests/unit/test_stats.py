"""Statistics: known values, brute-force references, and every degenerate input handled."""
from __future__ import annotations

import numpy as np
import pytest
import scikit_posthocs
from scipy import stats as sps

from testbed.stats import (KRUSKAL_MIN_N, bootstrap_median_ci, cliff_magnitude, cliffs_delta, compare_groups,
                           mcnemar_paired, paired_test, shapiro, study_statistics, wilcoxon_paired)


def brute_cliffs_delta(a, b) -> float:
    return sum((x > y) - (x < y) for x in a for y in b) / (len(a) * len(b))


# --- Cliff's delta ------------------------------------------------------------------------------

def test_cliffs_delta_of_separated_samples_is_plus_or_minus_one_large():
    assert cliffs_delta([10, 11, 12], [1, 2, 3]) == (1.0, "large")
    assert cliffs_delta([1, 2, 3], [10, 11, 12]) == (-1.0, "large")


def test_cliffs_delta_of_identical_samples_is_zero_negligible():
    assert cliffs_delta([5, 1, 3, 3], [3, 5, 3, 1]) == (0.0, "negligible")


@pytest.mark.parametrize("seed", range(5))
def test_cliffs_delta_matches_the_brute_force_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 15, size=rng.integers(1, 60))      # small integers: many ties
    b = rng.integers(3, 18, size=rng.integers(1, 60))
    delta, magnitude = cliffs_delta(a, b)
    assert delta == pytest.approx(brute_cliffs_delta(a.tolist(), b.tolist()), abs=1e-12)
    assert magnitude == cliff_magnitude(delta)


def test_cliffs_delta_drops_missing_values_and_refuses_an_empty_sample():
    assert cliffs_delta([1.0, None, float("nan")], [0.0]) == (1.0, "large")
    with pytest.raises(ValueError, match="values in both samples"):
        cliffs_delta([], [1.0])


@pytest.mark.parametrize("delta, word", [(0.0, "negligible"), (0.1469, "negligible"), (-0.147, "small"),
                                         (0.3299, "small"), (0.33, "medium"), (-0.4739, "medium"),
                                         (0.474, "large"), (-1.0, "large")])
def test_cliff_magnitude_uses_romano_thresholds(delta, word):
    assert cliff_magnitude(delta) == word


# --- Shapiro-Wilk -------------------------------------------------------------------------------

def test_shapiro_on_normal_and_on_skewed_data():
    rng = np.random.default_rng(0)
    normal = shapiro(rng.normal(50, 5, 200))
    skewed = shapiro(rng.exponential(10, 200))
    assert normal["normal"] is True and normal["warning"] is None and normal["n"] == 200
    assert skewed["normal"] is False and skewed["p"] < 0.001 and 0 < skewed["W"] < 1


def test_shapiro_below_three_values_or_all_equal_has_no_test_and_a_warning():
    for values in ([], [1.0], [1.0, 2.0]):
        r = shapiro(values)
        assert (r["W"], r["p"], r["normal"]) == (None, None, None) and "at least 3" in r["warning"]
    r = shapiro([4.0] * 10)
    assert r["p"] is None and "equal" in r["warning"]


def test_shapiro_above_5000_values_warns_the_p_value_is_approximate():
    r = shapiro(np.random.default_rng(1).normal(size=5001))
    assert r["p"] is not None and "approximate" in r["warning"]


# --- bootstrap CI of the median -----------------------------------------------------------------

def test_bootstrap_ci_contains_the_median_and_is_reproducible():
    x = np.random.default_rng(2).lognormal(3, 0.5, 60)
    median, lo, hi = bootstrap_median_ci(x, n_resamples=2000)
    assert median == pytest.approx(np.median(x)) and lo < median < hi
    assert bootstrap_median_ci(x, n_resamples=2000) == (median, lo, hi)
    _, lo90, hi90 = bootstrap_median_ci(x, confidence=0.5, n_resamples=2000)
    assert lo <= lo90 and hi90 <= hi


def test_bootstrap_ci_falls_back_to_percentile_when_bca_is_degenerate():
    # ties make the jackknife medians all equal: BCa's acceleration is 0/0, scipy gives NaN
    data = [1.0, 1.0, 1.0, 1.0, 2.0]
    with pytest.warns(sps.DegenerateDataWarning), np.errstate(all="ignore"):
        bca = sps.bootstrap((np.array(data),), np.median, method="BCa", n_resamples=999,
                            rng=np.random.default_rng(0)).confidence_interval
    assert np.isnan(bca.low)
    median, lo, hi = bootstrap_median_ci(data)
    assert median == 1.0 and lo == 1.0 and hi in (1.0, 2.0)


def test_bootstrap_ci_of_constant_single_and_empty_samples():
    assert bootstrap_median_ci([7.0] * 5) == (7.0, 7.0, 7.0)
    assert bootstrap_median_ci([7.0]) == (7.0, None, None)
    assert bootstrap_median_ci([]) == (None, None, None)


# --- comparing groups ---------------------------------------------------------------------------

def test_kruskal_separates_clearly_different_groups():
    rng = np.random.default_rng(10)
    r = compare_groups({"fast": rng.lognormal(2, 0.2, 30), "slow": rng.lognormal(3, 0.2, 30),
                        "slower": rng.lognormal(4, 0.2, 30)})
    assert r.kruskal_p < 0.001 and r.warnings == []
    assert all(p.significant and p.magnitude == "large" for p in r.pairs)
    assert r.pair("fast", "slow").delta < 0 < r.pair("slow", "fast").delta


def test_kruskal_does_not_separate_groups_from_one_distribution():
    rng = np.random.default_rng(11)
    r = compare_groups({name: rng.lognormal(3, 0.3, 40) for name in "abc"})
    assert r.kruskal_p > 0.05
    assert not any(p.significant for p in r.pairs)


def test_conover_is_square_holm_adjusted_and_at_least_the_raw_p():
    rng = np.random.default_rng(12)
    groups = {name: rng.normal(mean, 2, 15) for name, mean in (("x", 10), ("y", 11), ("z", 13), ("w", 10.5))}
    r = compare_groups(groups)
    assert list(r.conover.index) == list(r.conover.columns) == list(groups)
    raw = scikit_posthocs.posthoc_conover(list(groups.values()))
    raw.index = raw.columns = list(groups)
    adjusted, unadjusted = r.conover.to_numpy(), raw.to_numpy()
    assert (adjusted >= unadjusted - 1e-12).all() and (adjusted > unadjusted + 1e-12).any()
    assert (adjusted <= 1).all()
    for p in r.pairs:
        assert p.p == pytest.approx(r.conover.loc[p.a, p.b])


def test_small_and_empty_groups_are_warned_about_and_never_crash():
    rng = np.random.default_rng(13)
    r = compare_groups({"big": rng.normal(10, 1, 20), "two": [9.0, 11.0], "none": [], "nan": [None, float("nan")]})
    text = "\n".join(r.warnings)
    assert f"two: 2 samples, fewer than {KRUSKAL_MIN_N}" in text and "two: Shapiro-Wilk needs at least 3" in text
    assert "none: no samples" in text and "nan: no samples" in text
    assert r.kruskal_p is not None and [(p.a, p.b) for p in r.pairs] == [("big", "two")]
    assert {g.name: g.n for g in r.groups} == {"big": 20, "two": 2, "none": 0, "nan": 0}
    assert r.pair("big", "none") is None


def test_one_group_with_data_or_all_values_tied_gives_no_test():
    one = compare_groups({"a": [1.0, 2.0, 3.0, 4.0, 5.0], "b": []})
    assert one.kruskal_p is None and one.conover is None and one.pairs == []
    assert any("at least two groups" in w for w in one.warnings)
    tied = compare_groups({"a": [3.0] * 6, "b": [3.0] * 6})
    assert tied.kruskal_p is None and tied.pairs[0].p is None and not tied.pairs[0].significant
    assert tied.pairs[0].delta == 0.0 and any("same" in w for w in tied.warnings)


# --- Wilcoxon signed-rank -----------------------------------------------------------------------

def test_wilcoxon_finds_a_consistent_paired_difference():
    rng = np.random.default_rng(20)
    baseline = rng.normal(0.8, 0.05, 40)
    r = wilcoxon_paired(baseline, baseline - 0.05 + rng.normal(0, 0.01, 40))
    assert r["significant"] and r["p"] < 0.001 and r["median_difference"] == pytest.approx(0.05, abs=0.01)
    assert r["warning"] is None and r["n"] == r["nonzero"] == 40


def test_wilcoxon_all_zero_differences_is_a_clear_result_not_an_exception():
    correct = [1, 0, 1, 1, 0, 1]
    r = wilcoxon_paired(correct, correct)
    assert (r["statistic"], r["p"], r["significant"]) == (None, None, False)
    assert r["median_difference"] == 0.0 and "all 6 differences are zero" in r["warning"]


def test_wilcoxon_few_differences_warns_and_empty_or_mismatched_input():
    r = wilcoxon_paired([1, 1, 1, 0], [0, 0, 0, 0])
    assert r["nonzero"] == 3 and r["p"] >= 0.05 and "at least 6" in r["warning"]
    assert "no paired samples" in wilcoxon_paired([], [])["warning"]
    with pytest.raises(ValueError, match="same length"):
        wilcoxon_paired([1, 2], [1])


# --- McNemar, and which test fits ---------------------------------------------------------------

def _binary_pairs(only_a: int, only_b: int, both: int = 70, neither: int = 20):
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    return a, b


def test_mcnemar_exact_known_answers():
    # 8 pairs only the baseline got right, 2 only the strategy: P(X >= 8 or X <= 2), X ~ B(10, 1/2)
    r = mcnemar_paired(*_binary_pairs(8, 2))
    assert r["test"] == "McNemar (exact)" and r["n"] == 100 and r["nonzero"] == 10 and r["statistic"] == 8
    assert r["p"] == pytest.approx(2 * (45 + 10 + 1) / 1024) and not r["significant"]
    # 10 lost, none gained: 2 / 2**10; the concordant pairs do not change p
    r = mcnemar_paired(*_binary_pairs(10, 0, both=500, neither=3))
    assert r["p"] == pytest.approx(2 / 1024) and r["significant"] and r["warning"] is None
    assert mcnemar_paired(*_binary_pairs(3, 7))["p"] == pytest.approx(mcnemar_paired(*_binary_pairs(7, 3))["p"])


def test_mcnemar_degenerate_inputs_say_so():
    r = mcnemar_paired([1, 0, 1], [1, 0, 1])
    assert (r["p"], r["significant"]) == (None, False) and "all 3 differences are zero" in r["warning"]
    r = mcnemar_paired(*_binary_pairs(5, 0))
    assert r["p"] == pytest.approx(0.0625) and "at least 6" in r["warning"]
    with pytest.raises(ValueError, match="binary scores"):
        mcnemar_paired([1.0, 0.5], [1.0, 1.0])


def test_paired_test_picks_mcnemar_for_binary_scores_and_wilcoxon_for_continuous_ones():
    a, b = _binary_pairs(12, 3)
    r = paired_test(a, b)
    assert r["test"] == "McNemar (exact)" and r["p"] == pytest.approx(sps.binomtest(12, 15).pvalue)
    assert r["p"] != pytest.approx(wilcoxon_paired(a, b)["p"])             # the choice matters
    rng = np.random.default_rng(3)
    pixels = rng.uniform(0.6, 1.0, 50)
    r = paired_test(pixels, pixels - 0.02)
    assert r["test"] == "Wilcoxon signed-rank" and r == wilcoxon_paired(pixels, pixels - 0.02)
    assert paired_test([1.0, np.nan, 0.0], [1.0, 1.0, 0.0])["test"] == "McNemar (exact)"     # NaN pairs dropped


# --- a study ------------------------------------------------------------------------------------

def _cell(key, strategy, placement, point, status="done", model="m"):
    return {"cell": key, "model": model, "weights": "pretrained", "strategy": strategy, "placement": placement,
            "point": point, "status": status}


def test_study_statistics_compares_strategies_per_model_and_point():
    rng = np.random.default_rng(30)
    cells, requests = [], []
    for bw in ("5Mbit", "50Mbit"):
        for strategy, placement, median in (("mobile", "mobile", 80.0), ("split", "mobile>edge", 20.0)):
            key = f"{strategy}/{bw}"
            cells.append(_cell(key, strategy, placement, {"links.edge-cloud.bandwidth": bw}))
            requests += [{"cell": key, "status": "ok", "e2e_ms": v} for v in median * rng.lognormal(0, 0.1, 12)]
            requests.append({"cell": key, "status": "timeout", "e2e_ms": None})
    cells.append(_cell("edge/5Mbit", "edge", "edge", {"links.edge-cloud.bandwidth": "5Mbit"}, status="failed"))
    requests.append({"cell": "edge/5Mbit", "status": "ok", "e2e_ms": 1.0})
    out = study_statistics(cells, requests)
    assert [(s.model, s.point["links.edge-cloud.bandwidth"]) for s in out] == [("m", "5Mbit"), ("m", "50Mbit")]
    rows = out[0].strategy_rows()
    assert [(r["strategy"], r["placement"], r["n"]) for r in rows] == [("mobile", "mobile", 12),
                                                                      ("split", "mobile>edge", 12)]
    assert rows[0]["ci_low_ms"] < rows[0]["median_ms"] < rows[0]["ci_high_ms"]
    (pair,) = out[0].pair_rows()
    assert (pair["a"], pair["b"], pair["magnitude"], pair["significant"]) == ("mobile", "split", "large", True)
    assert pair["delta"] == 1.0 and pair["p_holm"] < 0.001


def test_study_statistics_labels_repeated_strategy_names_and_models_with_several_weights():
    point = {}
    cells = [_cell("m/a/111", "a", "edge", point), _cell("m/a/222", "a", "edge", point),
             {**_cell("m/b/333", "b", "edge", point), "weights": "random"}]
    requests = [{"cell": c["cell"], "status": "ok", "e2e_ms": float(i)} for c in cells for i in range(1, 6)]
    out = study_statistics(cells, requests)
    assert [(s.model, list(s.placements)) for s in out] == [("m (pretrained)", ["a (111)", "a (222)"]),
                                                            ("m (random)", ["b"])]
