"""Statistics for comparing deployment strategies: pure functions, no I/O.

Latencies are skewed, heavy-tailed and often multi-modal (retransmissions, exits firing
early), so every comparison here is rank-based: medians with bootstrap confidence
intervals, Kruskal-Wallis over all strategies, Conover's post-hoc test with Holm's
correction for each pair, and Cliff's delta as the effect size. Shapiro-Wilk is reported to
show *why* no t-test is used, not to pick a test.

Inputs are array-likes of numbers; ``None`` and NaN are dropped (the store keeps a timing
that was not measured as NULL).
"""
from __future__ import annotations

import itertools
import json
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scikit_posthocs
from scipy import stats

from workloads.quality import bootstrap_interval

from .experiment import point_label

ALPHA = 0.05
# Shapiro-Wilk is undefined below 3 values; above 5000 scipy's p-value is an approximation.
SHAPIRO_MIN_N, SHAPIRO_MAX_N = 3, 5000
# Kruskal-Wallis compares H with a chi-square distribution, which Kruskal & Wallis (1952) and
# the usual guidance trust from 5 values per group; Conover's test reuses the same ranks.
KRUSKAL_MIN_N = 5
# The smallest exact two-sided Wilcoxon p-value with n non-zero differences is 2 / 2**n:
# 0.0625 for n = 5, 0.031 for n = 6, so fewer than 6 can never reach alpha = 0.05.
# The exact McNemar test's is the same (2 / 2**n discordant pairs): one constant for both.
WILCOXON_MIN_N = 6
WILCOXON, MCNEMAR = "Wilcoxon signed-rank", "McNemar (exact)"
# Cliff's delta magnitudes, Romano et al. (2006): below each bound, that word.
CLIFF_BOUNDS = ((0.147, "negligible"), (0.33, "small"), (0.474, "medium"))


def _sample(x) -> np.ndarray:
    """A 1-D float array of ``x`` without None/NaN."""
    v = np.asarray(x if x is not None else [], dtype=float).ravel()
    return v[~np.isnan(v)]


def _float(v) -> float | None:
    """A plain float, or None for None/NaN (JSON and templates need no numpy NaN)."""
    return None if v is None or np.isnan(v) else float(v)


def shapiro(x, alpha: float = ALPHA) -> dict:
    """Shapiro-Wilk normality test: ``{"n", "W", "p", "normal", "warning"}``.

    ``normal`` is ``p >= alpha``. Below 3 values, or when all values are equal, there is no
    test: W, p and normal are None and ``warning`` says why. Above 5000 values the test runs
    but ``warning`` says the p-value is approximate. Otherwise ``warning`` is None."""
    v = _sample(x)
    n = int(v.size)
    out = {"n": n, "W": None, "p": None, "normal": None, "warning": None}
    if n < SHAPIRO_MIN_N:
        out["warning"] = f"Shapiro-Wilk needs at least {SHAPIRO_MIN_N} values, got {n}"
        return out
    if np.ptp(v) == 0:
        out["warning"] = f"all {n} values are equal: normality cannot be tested"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # the n > 5000 warning is reported below
        w, p = stats.shapiro(v)
    out.update(W=float(w), p=float(p), normal=bool(p >= alpha))
    if n > SHAPIRO_MAX_N:
        out["warning"] = f"{n} values: above {SHAPIRO_MAX_N} the Shapiro-Wilk p-value is approximate"
    return out


def cliff_magnitude(delta: float) -> str:
    """Romano et al. (2006): |d| < 0.147 negligible, < 0.33 small, < 0.474 medium, else large."""
    for bound, word in CLIFF_BOUNDS:
        if abs(delta) < bound:
            return word
    return "large"


def cliffs_delta(a, b) -> tuple[float, str]:
    """Cliff's delta ``P(a > b) - P(a < b)`` over all pairs, exactly, and its magnitude.

    Positive when values of ``a`` tend to be larger (for latency: ``a`` is slower). O((n + m)
    log m): ``b`` is sorted once and each value of ``a`` counts the values of ``b`` below and
    above it by binary search. Raises ValueError when either sample is empty."""
    a, b = _sample(a), _sample(b)
    if not a.size or not b.size:
        raise ValueError(f"Cliff's delta needs values in both samples, got {a.size} and {b.size}")
    b = np.sort(b)
    below = np.searchsorted(b, a, side="left").sum()
    above = (b.size - np.searchsorted(b, a, side="right")).sum()
    delta = float((below - above) / (a.size * b.size))
    return delta, cliff_magnitude(delta)


MANN_WHITNEY = "Mann-Whitney U"


def two_samples(a, b, alpha: float = ALPHA) -> dict:
    """Whether two independent samples differ (e.g. the per-request latencies of two strategies
    at one sweep point): the two-sided Mann-Whitney U test (exact for small samples without
    ties, scipy's choice) and Cliff's delta of ``a`` against ``b`` (positive: ``a`` slower).

    Returns ``{"test", "n", "p", "delta", "magnitude", "significant", "warning"}``; ``n`` is
    ``[len(a), len(b)]`` after None/NaN are dropped. With fewer than 5 values on a side
    nothing is tested (``p`` None, ``significant`` False, ``warning`` says why): the smallest
    two-sided p with 4 and 4 values is 0.029 and the test has next to no power there."""
    x, y = _sample(a), _sample(b)
    out = {"test": MANN_WHITNEY, "n": [int(x.size), int(y.size)], "p": None, "delta": None,
           "magnitude": None, "significant": False, "warning": None}
    if min(x.size, y.size) < KRUSKAL_MIN_N:
        out["warning"] = (f"{min(x.size, y.size)} values on a side: the {MANN_WHITNEY} test needs at least "
                          f"{KRUSKAL_MIN_N} on each")
        return out
    out["delta"], out["magnitude"] = cliffs_delta(x, y)
    out["p"] = _float(stats.mannwhitneyu(x, y, alternative="two-sided").pvalue)
    out["significant"] = bool(out["p"] is not None and out["p"] < alpha)
    return out


def bootstrap_median_ci(x, confidence: float = 0.95, n_resamples: int = 9999,
                        seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """``(median, low, high)``: the median and its bootstrap confidence interval.

    BCa (bias-corrected and accelerated) is used where it is defined. For the median of
    discrete or tied data its acceleration is often 0/0 and scipy returns NaN; the percentile
    interval is used then. All values equal gives ``(m, m, m)``; one value ``(m, None, None)``;
    none ``(None, None, None)``. The same seed gives the same interval."""
    v = _sample(x)
    if not v.size:
        return None, None, None
    median = float(np.median(v))
    if v.size < 2:
        return median, None, None
    if np.ptp(v) == 0:
        return median, median, median
    low, high, _ = bootstrap_interval((v,), np.median, confidence=confidence, n_resamples=n_resamples, seed=seed)
    return median, _float(low[0]), _float(high[0])


@dataclass(frozen=True)
class GroupSummary:
    name: str
    n: int
    median: float | None
    ci_low: float | None
    ci_high: float | None
    shapiro: dict


@dataclass(frozen=True)
class PairComparison:
    """Two groups: Holm-adjusted Conover p (None when not testable), Cliff's delta of ``a``
    against ``b`` and its magnitude, and whether the difference is significant."""
    a: str
    b: str
    p: float | None
    delta: float
    magnitude: str
    significant: bool


@dataclass(frozen=True)
class GroupComparison:
    """All groups compared: see :func:`compare_groups`."""
    groups: list[GroupSummary]
    kruskal_h: float | None
    kruskal_p: float | None
    conover: pd.DataFrame | None     # square, Holm-adjusted p-values, groups with data only
    pairs: list[PairComparison]
    warnings: list[str]
    alpha: float

    def pair(self, a: str, b: str) -> PairComparison | None:
        """The comparison of ``a`` with ``b`` (delta oriented ``a`` against ``b``), or None if
        either has no data."""
        for p in self.pairs:
            if (p.a, p.b) == (a, b):
                return p
            if (p.a, p.b) == (b, a):
                return PairComparison(a, b, p.p, -p.delta, p.magnitude, p.significant)
        return None


def _conover(samples: dict[str, np.ndarray]) -> pd.DataFrame | None:
    names = list(samples)
    frame = pd.DataFrame({"value": np.concatenate(list(samples.values())),
                          "group": np.repeat(names, [v.size for v in samples.values()])})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # all-tied data: NaN, turned into None below
        p = scikit_posthocs.posthoc_conover(frame, val_col="value", group_col="group", p_adjust="holm")
    p = p.reindex(index=names, columns=names)
    return None if p.isna().to_numpy().any() else p


def compare_groups(groups: dict[str, object], alpha: float = ALPHA, min_n: int = KRUSKAL_MIN_N,
                   seed: int = 0) -> GroupComparison:
    """Compare independent samples, e.g. one strategy's latencies per group.

    Per group: n, median, bootstrap CI of the median, Shapiro-Wilk. Over the groups that have
    data (at least two): Kruskal-Wallis H and p, and Conover's post-hoc test with Holm's
    correction as a square DataFrame. Per pair of groups with data: Cliff's delta, and
    ``significant`` = Kruskal-Wallis p < alpha and the pair's Conover p < alpha (the usual
    two-stage procedure: no post-hoc claim without the omnibus test).

    ``warnings`` names every group that is too small for a test it feeds: no values (left out
    of every test), fewer than ``min_n`` (default 5, see KRUSKAL_MIN_N: the tests run, their
    p-values are unreliable), fewer than 3 (no Shapiro-Wilk); and says when there is no
    omnibus test at all (fewer than two groups with data, or every value tied)."""
    samples = {name: _sample(v) for name, v in groups.items()}
    notes: list[str] = []
    summaries = []
    for name, v in samples.items():
        median, lo, hi = bootstrap_median_ci(v, confidence=1 - alpha, seed=seed)
        normality = shapiro(v, alpha)
        summaries.append(GroupSummary(name, int(v.size), median, lo, hi, normality))
        if not v.size:
            notes.append(f"{name}: no samples, left out of every test")
            continue
        if v.size < min_n:
            notes.append(f"{name}: {v.size} samples, fewer than {min_n}: its Kruskal-Wallis and Conover "
                         "p-values are unreliable")
        if normality["warning"]:
            notes.append(f"{name}: {normality['warning']}")
    tested = {name: v for name, v in samples.items() if v.size}
    h = p = conover = None
    if len(tested) < 2:
        notes.append(f"Kruskal-Wallis needs at least two groups with samples, got {len(tested)}: no test")
    elif np.ptp(np.concatenate(list(tested.values()))) == 0:
        notes.append("every value in every group is the same: no rank test is possible")
    else:
        h, p = (float(s) for s in stats.kruskal(*tested.values()))
        conover = _conover(tested)
        if conover is None:
            notes.append("Conover's test is not defined for these samples (too few values overall)")
    pairs = []
    for a, b in itertools.combinations(tested, 2):
        delta, magnitude = cliffs_delta(tested[a], tested[b])
        pair_p = None if conover is None else float(conover.loc[a, b])
        pairs.append(PairComparison(a, b, pair_p, delta, magnitude,
                                    bool(p is not None and p < alpha and pair_p is not None and pair_p < alpha)))
    return GroupComparison(summaries, h, p, conover, pairs, notes, alpha)


def _pairs(a, b, test: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """The paired samples with a None/NaN side dropped, and the result block every paired test
    fills (``warning`` set, statistic and p None, when there is nothing to test)."""
    x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if x.size != y.size:
        raise ValueError(f"paired samples need the same length, got {x.size} and {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    d = x - y
    nonzero = int(np.count_nonzero(d))
    out = {"test": test, "n": int(d.size), "nonzero": nonzero, "statistic": None, "p": None,
           "median_difference": float(np.median(d)) if d.size else None, "significant": False, "warning": None}
    if not d.size:
        out["warning"] = "no paired samples: nothing to test"
    elif not nonzero:
        out["warning"] = f"all {d.size} differences are zero: the two agree on every sample, nothing to test"
    elif nonzero < WILCOXON_MIN_N:
        out["warning"] = (f"only {nonzero} non-zero differences: the {test} test needs at least "
                          f"{WILCOXON_MIN_N} to reach p < 0.05")
    return x, y, out


def wilcoxon_paired(a, b, alpha: float = ALPHA) -> dict:
    """Wilcoxon signed-rank test of paired continuous scores, e.g. per-image pixel accuracy of
    the baseline (``a``) and of a strategy (``b``) on the same inputs.

    Returns ``{"test", "n", "nonzero", "statistic", "p", "median_difference", "significant",
    "warning"}``; differences are ``a - b``, pairs with a None/NaN side are dropped, zero
    differences are dropped by the test (Wilcoxon's method). With no pairs, or all
    differences zero, there is nothing to test: statistic and p are None, ``significant`` is
    False and ``warning`` says so. Fewer than 6 non-zero differences are tested with a
    warning (p can never fall below 0.05). Raises ValueError when the lengths differ."""
    x, y, out = _pairs(a, b, WILCOXON)
    if not out["nonzero"]:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # few values: scipy's normal-approximation notes
        res = stats.wilcoxon(x - y)
    out.update(statistic=_float(res.statistic), p=_float(res.pvalue))
    out["significant"] = bool(out["p"] is not None and out["p"] < alpha)
    return out


def mcnemar_paired(a, b, alpha: float = ALPHA) -> dict:
    """The exact McNemar test of paired binary scores (1/0: correct, or agreeing with the
    untransformed model) of the baseline (``a``) and a strategy (``b``): of the discordant
    pairs, those only ``a`` got right are Binomial(n discordant, 1/2) when the two are equally
    good; two-sided binomial test (scipy.stats.binomtest). ``statistic`` is that count (pairs
    only ``a`` got right); ``nonzero`` is the number of discordant pairs. Same result keys
    and warnings as :func:`wilcoxon_paired` (the smallest p with n discordant pairs is
    2 / 2**n too). Raises ValueError when the lengths differ or a score is not 0 or 1."""
    x, y, out = _pairs(a, b, MCNEMAR)
    if not (np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()):
        raise ValueError("the McNemar test needs binary scores (0 or 1); use the Wilcoxon test for others")
    if not out["nonzero"]:
        return out
    only_a = int(np.count_nonzero(x > y))
    res = stats.binomtest(only_a, out["nonzero"], 0.5, alternative="two-sided")
    out.update(statistic=float(only_a), p=_float(res.pvalue))
    out["significant"] = bool(out["p"] is not None and out["p"] < alpha)
    return out


def paired_test(a, b, alpha: float = ALPHA) -> dict:
    """The paired test that fits the scores: exact McNemar when every score is 0 or 1
    (per-sample correctness, agreement), Wilcoxon signed-rank otherwise (pixel accuracy);
    ``test`` in the result names it."""
    x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    binary = all(np.isin(v[~np.isnan(v)], (0.0, 1.0)).all() for v in (x, y))
    return (mcnemar_paired if binary else wilcoxon_paired)(a, b, alpha)


# --- a study: strategies compared per model and sweep point ----------------------------------

@dataclass(frozen=True)
class StudyGroup:
    """The done cells of one model at one sweep point, each with a unique strategy label."""
    model: str
    point: dict
    cells: tuple[dict, ...]
    labels: tuple[str, ...]


def study_groups(cells: list[dict]) -> list[StudyGroup]:
    """Done cells grouped by (model, sweep point), in stored order. Failed and interrupted
    cells are left out: their requests are a biased sample. A model stored with several
    weights is named ``model (weights)``; a strategy name that occurs twice in a group (an
    output folder reused with a changed experiment) is followed by its cell's digest."""
    done = [c for c in cells if c["status"] == "done"]
    weights = defaultdict(set)
    for c in done:
        weights[c["model"]].add(c["weights"])
    grouped: dict[tuple[str, str], list[dict]] = {}
    for c in done:
        model = c["model"] if len(weights[c["model"]]) == 1 else f"{c['model']} ({c['weights']})"
        grouped.setdefault((model, json.dumps(c["point"], sort_keys=True)), []).append(c)
    out = []
    for (model, _), members in grouped.items():
        names = [c["strategy"] for c in members]
        labels = tuple(s if names.count(s) == 1 else f"{s} ({c['cell'].rsplit('/', 1)[-1]})"
                       for s, c in zip(names, members))
        out.append(StudyGroup(model, members[0]["point"], tuple(members), labels))
    return out


def ok_latencies(requests: list[dict]) -> dict[str, list[float]]:
    """Cell key -> end-to-end ms of its ``ok`` requests."""
    out: dict[str, list[float]] = defaultdict(list)
    for r in requests:
        if r["status"] == "ok" and r["e2e_ms"] is not None:
            out[r["cell"]].append(r["e2e_ms"])
    return out


@dataclass(frozen=True)
class StudyComparison:
    """The strategies of one model at one sweep point, compared on end-to-end latency."""
    model: str
    point: dict
    placements: dict[str, str]       # strategy label -> placement
    comparison: GroupComparison

    def strategy_rows(self) -> list[dict]:
        """One row per strategy: n, median and its CI (ms), Shapiro-Wilk p and verdict."""
        return [{"model": self.model, "point": point_label(self.point), "strategy": g.name,
                 "placement": self.placements[g.name], "n": g.n, "median_ms": g.median, "ci_low_ms": g.ci_low,
                 "ci_high_ms": g.ci_high, "shapiro_p": g.shapiro["p"], "normal": g.shapiro["normal"]}
                for g in self.comparison.groups]

    def pair_rows(self) -> list[dict]:
        """One row per pair: Holm-adjusted Conover p, Cliff's delta (a vs b), magnitude, verdict."""
        return [{"model": self.model, "point": point_label(self.point), "a": p.a, "b": p.b, "p_holm": p.p,
                 "delta": p.delta, "magnitude": p.magnitude, "significant": p.significant}
                for p in self.comparison.pairs]


def study_statistics(cells: list[dict], requests: list[dict], alpha: float = ALPHA) -> list[StudyComparison]:
    """Per (model, sweep point) of :func:`study_groups`: the strategies' ``ok`` end-to-end
    latencies compared with :func:`compare_groups`. A strategy without ok requests is kept
    as an empty group (reported, left out of the tests)."""
    latencies = ok_latencies(requests)
    return [StudyComparison(g.model, g.point, {label: c["placement"] for label, c in zip(g.labels, g.cells)},
                            compare_groups({label: latencies.get(c["cell"], []) for label, c in zip(g.labels, g.cells)},
                                           alpha=alpha))
            for g in study_groups(cells)]
