"""Recommendations in plain words: which strategy to deploy, per model and sweep point.

Pure functions over the store's cells and requests. Latency is the median end-to-end time
of a cell's ``ok`` requests (p50); accuracy loss is ``baseline_value - metric_value`` (every
metric of the registry is higher-is-better), with its 95 % interval (``loss_ci_low``,
``loss_ci_high``: a paired bootstrap over the evaluation samples, `workloads.quality`). A
strategy is within a loss tolerance only when its interval's upper bound is: when the
interval straddles the tolerance, or there is none, the data cannot tell and the strategy is
not recommended as within it (the wording says so). How a winner's latency compares with the
runner-up's is said in words: indistinguishable (not significant), not significantly different
though the effect looks large (more requests may tell), significantly but negligibly different
(Cliff's delta negligible), or nothing when the difference is significant and not negligible.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .experiment import point_label
from .load import UNSURE, capacities, curves, json_key, level_text, level_winners, qps_text, reach_text, saturation, \
    targets_text
from .stats import ALPHA, StudyComparison, ok_latencies, study_groups, study_statistics
from .summary import NO_INTERVAL, interval

TOLERANCE = 0.01
_EPS = 1e-12            # a loss bound equal to the tolerance, give or take a rounding, is within it
# a strategy's loss against the tolerance: its interval below it, above it, across it, or none
WITHIN, BEYOND, CANNOT_TELL, UNKNOWN = "within", "beyond", "cannot tell", "no interval"
# every recommendation has these keys (None where they do not apply), besides kind, model, point and text
RECOMMENDATION_FIELDS = ("strategy", "placement", "p50_ms", "metric", "metric_value", "baseline_value", "loss",
                         "loss_ci_low", "loss_ci_high", "metric_ci_low", "metric_ci_high", "tolerance_verdict",
                         "cannot_tell", "runner_up", "p", "delta", "indistinguishable", "difference")


def tolerance_verdict(loss: float | None, loss_ci, tolerance: float) -> str | None:
    """A quality loss against ``tolerance`` by its 95 % interval: WITHIN only when the whole
    interval is, BEYOND when all of it is above, else CANNOT_TELL; UNKNOWN without an
    interval, None without a metric (``testbed plan`` and the recommendations share it)."""
    if loss is None:
        return None
    if loss_ci is None:
        return UNKNOWN
    low, high = loss_ci
    return WITHIN if high <= tolerance + _EPS else BEYOND if low > tolerance + _EPS else CANNOT_TELL


@dataclass(frozen=True)
class _Candidate:
    label: str
    cell: dict
    p50: float

    @property
    def loss(self) -> float | None:
        v, b = self.cell["metric_value"], self.cell["baseline_value"]
        return None if v is None or b is None else b - v

    @property
    def loss_ci(self) -> list[float] | None:
        return interval(self.cell, "loss")

    def verdict(self, tolerance: float) -> str | None:
        """Its loss against ``tolerance`` by the loss's 95 % interval (None: no metric)."""
        return tolerance_verdict(self.loss, self.loss_ci, tolerance)


def _points(v: float) -> str:
    """A loss in points of the (fraction) metric: '0.63 %'."""
    return f"{v * 100:.2f} %"


def _loss(c: _Candidate) -> str:
    """'loss 0.63 % [-0.39 %, 1.72 %]': the loss and its 95 % interval, or that there is none."""
    ci = c.loss_ci
    return f"loss {_points(c.loss)} " + ("(no interval)" if ci is None else f"[{_points(ci[0])}, {_points(ci[1])}]")


def _undecided(c: _Candidate, pct: str) -> str:
    """Why a strategy is not counted within the tolerance though it may be."""
    if c.loss_ci is None:
        return f"{c.label} (loss {_points(c.loss)}, {NO_INTERVAL}): cannot tell whether it is within {pct}"
    return f"{c.label} ({_loss(c)}): cannot tell whether it is within {pct}; more evaluation samples would tell"


def _ms(v: float) -> str:
    return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"


def _tail(v: float | None) -> str:
    """A percentile under load: None is beyond the answers (it fell on a request without one)."""
    return "no answer" if v is None else _ms(v)


def _quality(c: _Candidate) -> str:
    cell = c.cell
    if c.loss is None:
        return "accuracy unknown"
    return f"{cell['metric']} {cell['metric_value']:.4g} vs baseline {cell['baseline_value']:.4g}, {_loss(c)}"


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


def _unanswered(c: _Candidate) -> str:
    """Under load, the requests a cell left without an answer, which its p50 of ok requests
    does not see (the load figures count them as slower than every answer)."""
    f = c.cell.get("load") or {}
    if not f.get("requests") or f.get("ok", 0) >= f["requests"]:
        return ""
    return (f"; under load {c.label} answered {f['ok']} of {f['requests']} requests (p50 counting the others as "
            f"slower: {_tail((f.get('latency_ms') or {}).get('p50'))})")


def _placement_phrase(placement: str) -> str:
    hosts = placement.split(">")
    return f"on {placement} only" if len(hosts) == 1 else f"split {' > '.join(hosts)}"


def _recommendations(model: str, point: dict, candidates: list[_Candidate], unmeasured: list[tuple[str, dict]],
                     tolerance: float, comparison: StudyComparison | None) -> list[dict]:
    base = dict.fromkeys(RECOMMENDATION_FIELDS)
    base.update(model=model, point=point, point_label=point_label(point))

    def rec(kind: str, c: _Candidate, ranked: list[_Candidate], text: str) -> dict:
        tie = _tie(c, ranked, comparison)
        note = tie.pop("note") + _unanswered(c)
        ci = c.loss_ci or (None, None)
        return {**base, "kind": kind, "strategy": c.label, "placement": c.cell["placement"], "p50_ms": c.p50,
                "metric": c.cell["metric"], "metric_value": c.cell["metric_value"],
                "baseline_value": c.cell["baseline_value"], "loss": c.loss, "loss_ci_low": ci[0],
                "loss_ci_high": ci[1], "metric_ci_low": c.cell.get("metric_ci_low"),
                "metric_ci_high": c.cell.get("metric_ci_high"), "tolerance_verdict": c.verdict(tolerance),
                **tie, "text": text + note}

    unranked = [{**base, "kind": "unmeasured", "strategy": label, "placement": cell["placement"],
                 "text": f"{label}: no ok request ({cell['requests']} sent), not ranked"} for label, cell in unmeasured]
    if not candidates:
        return [{**base, "kind": "none", "text": "no strategy has an ok request: nothing to recommend"}] + unranked
    by_latency = sorted(candidates, key=lambda c: c.p50)
    known = [c for c in by_latency if c.loss is not None]
    within = [c for c in known if c.verdict(tolerance) == WITHIN]
    pct = f"{tolerance * 100:g} %"
    out = []
    if known:
        head = f"lowest latency within {pct} accuracy loss"
        # faster than the winner (or any, without one), and possibly within: the data cannot tell
        undecided = [c for c in known if c.verdict(tolerance) in (CANNOT_TELL, UNKNOWN)
                     and (not within or c.p50 < within[0].p50)]
        said = "".join(f"; {_undecided(c, pct)}" for c in undecided)
        if within:
            w = within[0]
            r = rec("within_tolerance", w, within, f"{head}: {w.label} ({_ms(w.p50)}, {_quality(w)})")
            out.append({**r, "text": r["text"] + said, "cannot_tell": [c.label for c in undecided]})
        elif undecided:
            out.append({**base, "kind": "within_tolerance", "cannot_tell": [c.label for c in undecided],
                        "text": f"{head}: none known{said}"})
        else:
            out.append({**base, "kind": "within_tolerance", "cannot_tell": [],
                        "text": f"{head}: none, every strategy loses more"})
        by_loss = sorted(known, key=lambda c: (c.loss, c.p50))
        w = by_loss[0]
        out.append(rec("least_loss", w, by_loss, f"least accuracy loss: {w.label} ({_quality(w)}, {_ms(w.p50)})"))
    w = by_latency[0]
    quality = _quality(w) if known else "accuracy unknown: no quality metric, ranked by latency only"
    out.append(rec("fastest", w, by_latency, f"lowest latency overall: {w.label} ({_ms(w.p50)}, {quality})"))
    placements = sorted({c.cell["placement"] for c in candidates}, key=lambda p: (p.count(">"), p))
    for placement in placements:
        here = [c for c in by_latency if c.cell["placement"] == placement]
        here_within = [c for c in here if c.verdict(tolerance) == WITHIN]
        ranked = here_within or here
        w = ranked[0]
        rule = f"fastest within {pct} loss" if here_within else "fastest"
        out.append(rec("placement", w, ranked, f"{_placement_phrase(placement)}: {w.label} ({rule}: "
                                               f"{_ms(w.p50)}, {_quality(w)})"))
    return out + unranked


def recommend(cells: list[dict], requests: list[dict], tolerance: float = TOLERANCE,
              comparisons: list[StudyComparison] | None = None, alpha: float = ALPHA) -> list[dict]:
    """Recommendations per (model, sweep point), each a dict with ``kind``, ``strategy``,
    ``placement``, ``p50_ms``, metric fields, ``loss`` with its 95 % interval
    (``loss_ci_low``, ``loss_ci_high``; the metric's: ``metric_ci_low``, ``metric_ci_high``),
    ``tolerance_verdict`` (the loss against ``tolerance``: ``within``, ``beyond``, ``cannot
    tell`` when the interval straddles it, ``no interval``), ``runner_up``, ``p``, ``delta``,
    ``indistinguishable`` (the latency difference from the runner-up is not significant; None
    when untested), ``difference`` (``indistinguishable``, ``not significant``, ``negligible``
    or ``significant``: see :func:`_difference`) and a sentence in ``text``
    (:data:`RECOMMENDATION_FIELDS`, None where they do not apply). Kinds, in order:

    - ``within_tolerance``: the lowest p50 whose loss is within ``tolerance`` (an absolute
      amount of the metric: 0.01 = one percentage point of accuracy) by its interval: the
      interval's upper bound is at most ``tolerance``; strategy None if none is. Its
      ``cannot_tell`` lists the faster strategies (any, without a winner) whose interval
      straddles the tolerance or that have none, and its text says of each that the data
      cannot tell;
    - ``least_loss``: the smallest loss (ties: lower p50);
    - ``fastest``: the lowest p50 of all (the only latency ranking when no metric is known);
    - ``placement``: per placement, the fastest within tolerance there (else the fastest);
    - ``none``: no strategy of the group has an ok request;
    - ``unmeasured``: one per strategy without an ok request (it is not ranked).

    The first three are absent, but ``fastest``, when the model has no metric. ``comparisons``
    (from :func:`~testbed.stats.study_statistics`) are computed when not given.

    Under load, each load level (``load.qps``, ``load.concurrency``) is a point of its own,
    so the kinds above compare the strategies measured at the same offered load (p50 of their
    answered requests, with a note where some requests got no answer), never one rate against
    another; their recommendations carry ``scenario``. What holds across the levels follows
    them (:func:`load_recommendations`)."""
    if comparisons is None:
        comparisons = study_statistics(cells, requests, alpha=alpha)
    by_key = {(s.model, json.dumps(s.point, sort_keys=True)): s for s in comparisons}
    latencies = ok_latencies(requests)
    out = []
    groups = study_groups(cells)
    for g in groups:
        candidates = [_Candidate(label, c, float(np.median(latencies[c["cell"]])))
                      for label, c in zip(g.labels, g.cells) if latencies.get(c["cell"])]
        unmeasured = [(label, c) for label, c in zip(g.labels, g.cells) if not latencies.get(c["cell"])]
        recs = _recommendations(g.model, g.point, candidates, unmeasured, tolerance,
                                by_key.get((g.model, json.dumps(g.point, sort_keys=True))))
        scenarios = {(c.get("load") or {}).get("scenario") for c in g.cells}
        if None not in scenarios:           # every cell under load: tagged, for headlines to pass over
            recs = [{**r, "scenario": ", ".join(sorted(scenarios))} for r in recs]
        out += recs
    model_of = {c["cell"]: g.model for g in groups for c in g.cells}    # 'model (weights)' as the groups name it
    return out + load_recommendations([{**c, "model": model_of.get(c["cell"], c["model"])} for c in cells])


def headlines(recs: list[dict]) -> list[dict]:
    """The recommendations to read first, per group: the fastest within tolerance, and the
    fastest overall when that is another strategy (or the only one: no metric, none within
    tolerance), or that there is nothing to recommend. Under load, what holds across the
    load levels instead of each level's own ranking (a search tries a dozen rates): the
    statements of :func:`load_recommendations`, throughput only where nothing else is said."""
    out = []
    for key in dict.fromkeys((r["model"], r["point_label"]) for r in recs if not r.get("scenario")):
        mine = {r["kind"]: r for r in recs if (r["model"], r["point_label"]) == key and r["kind"] != "placement"
                and not r.get("scenario")}
        within, fastest = mine.get("within_tolerance"), mine.get("fastest")
        out += [r for r in (within, mine.get("none")) if r is not None]
        if fastest is not None and (within is None or within["strategy"] != fastest["strategy"]):
            out.append(fastest)
    loaded = [r for r in recs if r["kind"].startswith("load_")]
    for key in dict.fromkeys((r["model"], r["scenario"], r["point_label"]) for r in loaded):
        mine = [r for r in loaded if (r["model"], r["scenario"], r["point_label"]) == key]
        said = [r for r in mine if r["kind"] != "load_throughput"]
        out += said or mine
    return out


# --- under load -----------------------------------------------------------------------------

def _span(scenario: str, levels: list[float]) -> str:
    """'10–20 req/s', or one level as it is."""
    lo, hi = levels[0], levels[-1]
    if lo == hi:
        return level_text(scenario, lo)
    return f"{level_text(scenario, lo).split()[0]}–{level_text(scenario, hi)}"


def _tails(values: list[float | None]) -> str:
    """'42.0 ms', '41.0 ms to 48.0 ms', 'no answer' (a percentile beyond the answers)."""
    nums = sorted(v for v in values if v is not None)
    said = [] if not nums else [_ms(nums[0]) if nums[0] == nums[-1] else f"{_ms(nums[0])} to {_ms(nums[-1])}"]
    return " or ".join(said + (["no answer"] if None in values else []))


def _capacity_statements(base: dict, targets: str, caps: list[dict]) -> list[dict]:
    """Per strategy how far it met the targets (``testbed.load.capacities``), highest first;
    and the rates at which one strategy alone met them, when the others missed below its limit."""
    ranked = sorted(caps, key=lambda c: (c["best"] is None, -(c["best"] or 0.0), c["strategy"]))
    parts = [f"{c['strategy']} {reach_text(c, unsure=True)}" for c in ranked]
    top = ranked[0]
    out = [{**base, "kind": "load_capacity", "strategy": top["strategy"], "rate_qps": top["best"],
            "text": f"highest rate within {targets}: " + "; ".join(parts)}]
    others = ranked[1:]
    if top["best"] is None or not others or any(c["above"] is None for c in others):
        return out      # nobody met them, nobody to compare with, or another's limit is not known
    start = max(c["above"] for c in others)        # every other strategy has missed by this rate
    if start > top["best"]:
        return out      # no rate at which top is known to meet while all others are known to miss
    missed = ", ".join(f"{c['strategy']} missed at {qps_text(c['above'])}" for c in others)
    upto = (f"up to {qps_text(top['best'])} req/s, missed at {qps_text(top['above'])}" if top["above"] is not None
            else f"up to at least {qps_text(top['best'])} req/s, the highest rate tried")
    text = f"at ≥ {qps_text(start)} req/s {top['strategy']} is the only strategy within {targets} ({upto}; {missed})"
    if not all(c["sure"] for c in ranked):
        text += f"; some verdicts are {UNSURE}"
    return out + [{**base, "kind": "load_only", "strategy": top["strategy"], "rate_qps": start, "text": text}]


def _winner_statement(base: dict, curve: dict, targets: str) -> dict | None:
    """The lowest p99 (within the targets) per load level, where two or more strategies were
    measured at the same level, consecutive levels with the same answer in one stretch."""
    scenario = curve["scenario"]
    compared = [w for w in level_winners(curve) if len(w["measured"]) > 1]
    if not compared:
        return None
    def who(w: dict) -> tuple[str, ...]:
        return () if w["met"] is False else (w["winner"], *w["tied"])

    stretches: list[list[dict]] = []
    for w in compared:
        if stretches and who(stretches[-1][0]) == who(w):
            stretches[-1].append(w)
        else:
            stretches.append([w])
    said = []
    for ws in stretches:
        at = _span(scenario, [w["level"] for w in ws])
        p99 = f"p99 {_tails([w['p99_ms'] for w in ws])}"
        if ws[0]["met"] is False:
            said.append(f"none at {at} (lowest p99 there: {ws[-1]['winner']}, {_tail(ws[-1]['p99_ms'])})")
        else:
            tied = who(ws[0])
            said.append(f"{' and '.join(tied)} at {at} ({p99}{', tied' if len(tied) > 1 else ''})")
    head = f"lowest p99 within {targets}" if targets else "lowest p99"
    text = f"{head}, by load: " + ", ".join(said)
    if len(compared) == 1:
        text += " (the only load at which several strategies were measured)"
    unsure = [w for w in compared if w["met"] and not w["sure"]]
    if unsure:
        text += f"; at {', '.join(level_text(scenario, w['level']) for w in unsure)} {UNSURE}"
    return {**base, "kind": "load_winners", "strategy": compared[-1]["winner"], "text": text}


def _throughput_statement(base: dict, curve: dict) -> dict | None:
    """Each strategy's highest answered rate: where it saturates, or that it kept up with every
    rate offered (a server scenario answering 95 % of its highest rate, and of its requests, or
    more: the answered rate counts up to the last answer, so requests that go unanswered at the
    end of a run would not lower it)."""
    scenario, peaks = curve["scenario"], saturation(curve)
    if not peaks:
        return None
    said = []
    for s, (rps, at) in sorted(peaks.items(), key=lambda kv: -kv[1][0]):
        top, f = curve["strategies"][s][-1][0], curve["strategies"][s][-1][1]["load"]
        lost = 1 - f["ok"] / f["requests"] if f.get("requests") else 0.0
        if scenario == "server" and (f.get("throughput_rps") or 0.0) >= 0.95 * top and lost <= 0.05:
            said.append(f"{s} kept up with every rate offered (up to {level_text(scenario, top)})")
        else:
            lost_text = f", {lost:.0%} of requests unanswered at {level_text(scenario, top)}" if lost > 0.05 else ""
            said.append(f"{s} at most {qps_text(rps)} req/s (at {level_text(scenario, at)}){lost_text}")
    best = max(peaks, key=lambda s: peaks[s][0])
    return {**base, "kind": "load_throughput", "strategy": best, "text": "answered: " + "; ".join(said)}


def load_recommendations(rows: list[dict]) -> list[dict]:
    """What the cells under load say across their load levels, per model, scenario and point
    without the level (``testbed.load.curves``): ``load_capacity`` (server, with targets: how
    far each strategy met them, from ``testbed.load.capacities``), ``load_only`` (the rates at
    which one strategy alone met them), ``load_winners`` (the lowest p99 within the targets at
    each level where several strategies were measured) and ``load_throughput`` (where each
    strategy's answered rate saturates). Verdicts close to a target, and a single rate, are
    said so. ``rows``: the store's cells or summary rows; none under load, no statement."""
    caps = capacities(rows)
    base = dict.fromkeys(RECOMMENDATION_FIELDS)
    out = []
    for curve in curves(rows):
        here = {**base, "model": curve["model"], "point": curve["point"], "point_label": point_label(curve["point"]),
                "scenario": curve["scenario"]}
        targets = targets_text(curve["targets"])
        mine = [c for c in caps if curve["scenario"] == "server" and c["model"] == curve["model"]
                and json_key(c["point"]) == json_key(curve["point"])]
        said = _capacity_statements(here, targets_text(mine[0]["targets"]), mine) if mine else []
        said += [r for r in (_winner_statement(here, curve, targets), _throughput_statement(here, curve)) if r]
        out += said
    return out
