"""Recommendations in plain words: which strategy to deploy, per model and sweep point.

Pure functions over the store's cells and requests. Latency is the median end-to-end time
of a cell's ``ok`` requests (p50); accuracy loss is ``baseline_value - metric_value`` (every
metric of the registry is higher-is-better). How a winner's latency compares with the
runner-up's is said in words: indistinguishable (not significant), not significantly different
though the effect looks large (more requests may tell), significantly but negligibly different
(Cliff's delta negligible), or nothing when the difference is significant and not negligible.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .experiment import point_label
from .stats import ALPHA, StudyComparison, ok_latencies, study_groups, study_statistics

TOLERANCE = 0.01


@dataclass(frozen=True)
class _Candidate:
    label: str
    cell: dict
    p50: float

    @property
    def loss(self) -> float | None:
        v, b = self.cell["metric_value"], self.cell["baseline_value"]
        return None if v is None or b is None else b - v


def _ms(v: float) -> str:
    return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"


def _quality(c: _Candidate) -> str:
    cell = c.cell
    if c.loss is None:
        return "accuracy unknown"
    return f"{cell['metric']} {cell['metric_value']:.4g} vs baseline {cell['baseline_value']:.4g}"


def _difference(winner: str, runner: str, pair, alpha: float, kruskal_p: float | None) -> tuple[str, str]:
    """(verdict, note) of the winner's latency against the runner-up's, by the two tests the
    report's statistics use: significant (Kruskal-Wallis p < alpha and the pair's
    Holm-adjusted Conover p < alpha) or not, and Cliff's delta's magnitude.

    - not significant, negligible or small delta: ``indistinguishable``;
    - not significant, medium or large delta: ``not significant`` (too few requests to tell
      a difference that may well be there);
    - significant, negligible delta: ``negligible`` (a real difference too small to matter);
    - significant, larger delta: ``significant`` (no note: the ranking says it)."""
    stats = f"p={pair.p:.2g}"
    if pair.p < alpha and not pair.significant and kruskal_p is not None:   # the omnibus test said no
        stats += f", Kruskal-Wallis p={kruskal_p:.2g}"
    stats += f", δ={pair.delta:+.2f}"
    if not pair.significant:
        if pair.magnitude in ("negligible", "small"):
            return "indistinguishable", f"; {winner} and {runner} are indistinguishable ({stats} {pair.magnitude})"
        return "not significant", (f"; {winner} and {runner} are not significantly different ({stats} "
                                   f"{pair.magnitude}): more requests may tell them apart")
    if pair.magnitude == "negligible":
        return "negligible", (f"; {winner} and {runner} differ significantly but negligibly ({stats}): a real "
                              "difference too small to matter")
    return "significant", ""


def _tie(winner: _Candidate, ranked: list[_Candidate], comparison: StudyComparison | None) -> dict:
    """How the winner compares with the runner-up of the same ranking (the next in ``ranked``)."""
    runner = next((c for c in ranked if c is not winner), None)
    out = {"runner_up": None, "p": None, "delta": None, "indistinguishable": None, "difference": None, "note": ""}
    if runner is None:
        return out
    out["runner_up"] = runner.label
    pair = comparison.comparison.pair(winner.label, runner.label) if comparison else None
    if pair is None or pair.p is None:
        out["note"] = f"; {winner.label} vs {runner.label}: too few samples to test the difference"
        return out
    verdict, note = _difference(winner.label, runner.label, pair, comparison.comparison.alpha,
                                comparison.comparison.kruskal_p)
    out.update(p=pair.p, delta=pair.delta, indistinguishable=not pair.significant, difference=verdict, note=note)
    return out


def _placement_phrase(placement: str) -> str:
    hosts = placement.split(">")
    return f"on {placement} only" if len(hosts) == 1 else f"split {' > '.join(hosts)}"


def _recommendations(model: str, point: dict, candidates: list[_Candidate], unmeasured: list[tuple[str, dict]],
                     tolerance: float, comparison: StudyComparison | None) -> list[dict]:
    base = dict.fromkeys(("strategy", "placement", "p50_ms", "metric", "metric_value", "baseline_value", "loss",
                          "runner_up", "p", "delta", "indistinguishable", "difference"))
    base.update(model=model, point=point, point_label=point_label(point))

    def rec(kind: str, c: _Candidate, ranked: list[_Candidate], text: str) -> dict:
        tie = _tie(c, ranked, comparison)
        note = tie.pop("note")
        return {**base, "kind": kind, "strategy": c.label, "placement": c.cell["placement"], "p50_ms": c.p50,
                "metric": c.cell["metric"], "metric_value": c.cell["metric_value"],
                "baseline_value": c.cell["baseline_value"], "loss": c.loss, **tie, "text": text + note}

    unranked = [{**base, "kind": "unmeasured", "strategy": label, "placement": cell["placement"],
                 "text": f"{label}: no ok request ({cell['requests']} sent), not ranked"} for label, cell in unmeasured]
    if not candidates:
        return [{**base, "kind": "none", "text": "no strategy has an ok request: nothing to recommend"}] + unranked
    by_latency = sorted(candidates, key=lambda c: c.p50)
    known = [c for c in by_latency if c.loss is not None]
    within = [c for c in known if c.loss <= tolerance + 1e-12]
    pct = f"{tolerance * 100:g} %"
    out = []
    if known:
        if within:
            w = within[0]
            out.append(rec("within_tolerance", w, within, f"lowest latency within {pct} accuracy loss: "
                                                          f"{w.label} ({_ms(w.p50)}, {_quality(w)})"))
        else:
            out.append({**base, "kind": "within_tolerance",
                        "text": f"lowest latency within {pct} accuracy loss: none, every strategy loses more"})
        by_loss = sorted(known, key=lambda c: (c.loss, c.p50))
        w = by_loss[0]
        out.append(rec("least_loss", w, by_loss, f"least accuracy loss: {w.label} (loss {w.loss:.4g}: "
                                                 f"{_quality(w)}, {_ms(w.p50)})"))
    w = by_latency[0]
    quality = _quality(w) if known else "accuracy unknown: no quality metric, ranked by latency only"
    out.append(rec("fastest", w, by_latency, f"lowest latency overall: {w.label} ({_ms(w.p50)}, {quality})"))
    placements = sorted({c.cell["placement"] for c in candidates}, key=lambda p: (p.count(">"), p))
    for placement in placements:
        here = [c for c in by_latency if c.cell["placement"] == placement]
        here_within = [c for c in here if c.loss is not None and c.loss <= tolerance + 1e-12]
        ranked = here_within or here
        w = ranked[0]
        rule = f"fastest within {pct} loss" if here_within else "fastest"
        out.append(rec("placement", w, ranked, f"{_placement_phrase(placement)}: {w.label} ({rule}: "
                                               f"{_ms(w.p50)}, {_quality(w)})"))
    return out + unranked


def recommend(cells: list[dict], requests: list[dict], tolerance: float = TOLERANCE,
              comparisons: list[StudyComparison] | None = None, alpha: float = ALPHA) -> list[dict]:
    """Recommendations per (model, sweep point), each a dict with ``kind``, ``strategy``,
    ``placement``, ``p50_ms``, metric fields, ``loss``, ``runner_up``, ``p``, ``delta``,
    ``indistinguishable`` (the latency difference from the runner-up is not significant; None
    when untested), ``difference`` (``indistinguishable``, ``not significant``, ``negligible``
    or ``significant``: see :func:`_difference`) and a sentence in ``text``. Kinds, in order:

    - ``within_tolerance``: the lowest p50 whose loss is at most ``tolerance`` (an absolute
      amount of the metric: 0.01 = one percentage point of accuracy); strategy None if none is;
    - ``least_loss``: the smallest loss (ties: lower p50);
    - ``fastest``: the lowest p50 of all (the only latency ranking when no metric is known);
    - ``placement``: per placement, the fastest within tolerance there (else the fastest);
    - ``none``: no strategy of the group has an ok request;
    - ``unmeasured``: one per strategy without an ok request (it is not ranked).

    The first three are absent, but ``fastest``, when the model has no metric. ``comparisons``
    (from :func:`~testbed.stats.study_statistics`) are computed when not given."""
    if comparisons is None:
        comparisons = study_statistics(cells, requests, alpha=alpha)
    by_key = {(s.model, json.dumps(s.point, sort_keys=True)): s for s in comparisons}
    latencies = ok_latencies(requests)
    out = []
    for g in study_groups(cells):
        candidates = [_Candidate(label, c, float(np.median(latencies[c["cell"]])))
                      for label, c in zip(g.labels, g.cells) if latencies.get(c["cell"])]
        unmeasured = [(label, c) for label, c in zip(g.labels, g.cells) if not latencies.get(c["cell"])]
        out += _recommendations(g.model, g.point, candidates, unmeasured, tolerance,
                                by_key.get((g.model, json.dumps(g.point, sort_keys=True))))
    return out


def headlines(recs: list[dict]) -> list[dict]:
    """The recommendations to read first, per group: the fastest within tolerance, and the
    fastest overall when that is another strategy (or the only one: no metric, none within
    tolerance), or that there is nothing to recommend."""
    out = []
    for key in dict.fromkeys((r["model"], r["point_label"]) for r in recs):
        mine = {r["kind"]: r for r in recs if (r["model"], r["point_label"]) == key and r["kind"] != "placement"}
        within, fastest = mine.get("within_tolerance"), mine.get("fastest")
        out += [r for r in (within, mine.get("none")) if r is not None]
        if fastest is not None and (within is None or within["strategy"] != fastest["strategy"]):
            out.append(fastest)
    return out
