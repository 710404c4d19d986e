"""What a load scenario's cell achieved: offered and achieved rate, throughput, latency
percentiles with failures counted, the share of time spent queueing, the generators' own
lateness, and whether the latency targets (``load.slo``) were met.

Latency percentiles here count every measured request: one that timed out, failed or was
OOM-killed has no latency and ranks above every answered one, so a percentile that lands
on it is ``None`` ("beyond the timeout"), never the percentile of the answered ones alone.
An SLO is met only when its percentile is a number within the target.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .experiment import MAX_QPS, SLO_PERCENTILES, Load
from .store import RequestRow

PERCENTILES = SLO_PERCENTILES        # p50, p90, p99, p99.9


def tail_percentile(latencies: Sequence[float | None], q: float) -> float | None:
    """The ``q``-th percentile (0-100, the nearest rank at or above it) of ``latencies``,
    where ``None`` (no answer) ranks above every number; ``None`` if the rank lands there."""
    if not latencies:
        return None
    ranked = sorted(latencies, key=lambda v: math.inf if v is None else v)
    rank = max(1, math.ceil(q / 100 * len(ranked)))
    return ranked[rank - 1]


def figures(load: Load, requests: Sequence[RequestRow], generators: Sequence[dict]) -> dict:
    """The cell's load figures (stored as ``cells.load_json``) from its request rows and the
    generators' ``done`` lines."""
    n = len(requests)
    ok = [r for r in requests if r.status == "ok" and r.e2e_ms is not None]
    dues = [r.due_ms for r in requests if r.due_ms is not None]
    # the window requests were offered in: the scenario's duration, else up to the last due time
    window_ms = load.duration_ms if load.duration_ms is not None else (max(dues) if dues else 0.0)
    ends = [r.due_ms + r.e2e_ms for r in ok if r.due_ms is not None]
    answered = {r.seq for r in ok}
    out: dict = {
        "scenario": load.scenario, "sources": len(generators), "requests": n, "ok": len(ok),
        "target_qps": load.qps, "concurrency": load.in_flight(),
        # offered: requests sent per second of the window; a closed loop offers what it gets back
        "offered_qps": _rate(n, window_ms) if load.scenario != "offline" else None,
        # answers per second over the whole cell: until the last answer, and at least the
        # window requests were offered in (a cell whose late requests all failed is not fast)
        "throughput_rps": _rate(len(ok), max(ends + [window_ms])) if ends else 0.0,
        "latency_ms": {k: tail_percentile([r.e2e_ms if r.seq in answered else None for r in requests], q)
                       for k, q in PERCENTILES.items()},
        "queue_share": _share([r.queue_ms for r in ok], [r.e2e_ms for r in ok]),
        "late_p50_ms": _pct([r.late_ms for r in requests], 50), "late_p99_ms": _pct([r.late_ms for r in requests], 99),
        "workers": sum(g.get("workers", 0) for g in generators),
    }
    lat = [r.e2e_ms if r.seq in answered else None for r in requests]
    out["slo"] = {k: slo_verdict(lat, PERCENTILES[k], ms) for k, ms in load.slo}
    return out


def percentile_ci(latencies: Sequence[float | None], q: float, confidence: float = 0.95) -> tuple:
    """A distribution-free interval for the ``q``-th percentile (0-100) of the process the
    latencies were drawn from: the order statistics whose ranks a binomial(n, q/100) puts
    ``confidence`` between. ``None`` at an end that lands on a request without an answer, or
    (upper end) beyond the sample: too few requests to bound that percentile from above; a
    lower rank below the sample is its smallest value."""
    from scipy.stats import binom

    n = len(latencies)
    if n == 0:
        return None, None
    ranked = sorted(latencies, key=lambda v: math.inf if v is None else v)
    p, tail = q / 100, (1 - confidence) / 2
    lo_rank = max(1, int(binom.ppf(tail, n, p)))
    hi_rank = int(binom.ppf(1 - tail, n, p)) + 1
    hi = ranked[hi_rank - 1] if hi_rank <= n else None
    return _num(ranked[lo_rank - 1]), _num(hi)


def _num(v: float | None) -> float | None:
    return None if v is None else float(v)


def slo_verdict(latencies: Sequence[float | None], q: float, target_ms: float) -> dict:
    """One latency target judged on a cell: the percentile measured, its 95% interval, and
    ``met`` (the percentile within the target) with ``sure`` (the whole interval on the same
    side of the target: another run of the same length would most likely judge alike)."""
    measured = tail_percentile(latencies, q)
    lo, hi = percentile_ci(latencies, q)
    met = measured is not None and measured <= target_ms
    sure = (hi is not None and hi <= target_ms) if met else (lo is None or lo > target_ms)
    return {"target_ms": target_ms, "measured_ms": measured, "ci_ms": [lo, hi], "met": met, "sure": sure}


def _rate(count: int, window_ms: float) -> float | None:
    return count / (window_ms / 1000) if window_ms > 0 else None


def _share(part: Sequence[float | None], whole: Sequence[float | None]) -> float | None:
    p = sum(v for v in part if v is not None)
    w = sum(v for v in whole if v is not None)
    return p / w if w > 0 else None


def _pct(values: Sequence[float | None], q: float) -> float | None:
    got = [v for v in values if v is not None]
    return float(np.percentile(got, q)) if got else None


# ---- the highest rate that meets the targets ------------------------------------------------

SEARCH_PRECISION = 0.05     # bisect until the bracket's ends are within 5% of each other
SEARCH_STEPS = 12           # short runs per search at most
SEARCH_MIN_QPS = 0.1


@dataclass(frozen=True)
class Search:
    """A search's outcome: ``best`` is the highest rate measured that met every target (None:
    even ``SEARCH_MIN_QPS`` missed), ``above`` the lowest rate above it that missed (None: the
    search stopped at ``MAX_QPS`` or ran out of steps while still meeting), and ``steps`` the
    rates measured in order with their verdicts."""

    best: float | None
    above: float | None
    steps: tuple[tuple[float, bool], ...]


def start_rate(load: Load) -> float:
    """Where a search starts: one request per tightest target (100 ms: 10 req/s)."""
    return min(MAX_QPS, max(SEARCH_MIN_QPS, 1000.0 / min(ms for _, ms in load.slo)))


def search_rate(meets: Callable[[float], bool], start: float, *, precision: float = SEARCH_PRECISION,
                max_steps: int = SEARCH_STEPS) -> Search:
    """LoadGen's way to the highest rate meeting a latency target: from ``start``, double
    while the rate meets it (halve while it misses) to bracket the answer, then bisect the
    bracket (geometric middle) until its ends are within ``precision``, with at most
    ``max_steps`` calls of ``meets(rate)`` (one short run each). Assumes a rate that meets the
    target is not above one that misses it; noise that breaks this only narrows the bracket
    on the side the last run fell."""
    steps: list[tuple[float, bool]] = []

    def run(q: float) -> bool:
        ok = meets(q)
        steps.append((q, ok))
        return ok

    q = _nice(min(max(start, SEARCH_MIN_QPS), MAX_QPS))
    lo = hi = None
    if run(q):
        lo = q
        while hi is None and len(steps) < max_steps and lo < MAX_QPS:
            q = _nice(min(2 * lo, MAX_QPS))
            if run(q):
                lo = q
            else:
                hi = q
    else:
        hi = q
        while lo is None and len(steps) < max_steps and hi > SEARCH_MIN_QPS:
            q = _nice(max(hi / 2, SEARCH_MIN_QPS))
            if run(q):
                lo = q
            else:
                hi = q
    while lo is not None and hi is not None and hi / lo > 1 + precision and len(steps) < max_steps:
        q = _nice(math.sqrt(lo * hi))              # a rate that reads well in labels ...
        if not lo < q < hi:
            q = math.sqrt(lo * hi)                  # ... unless rounding leaves the bracket
        if run(q):
            lo = q
        else:
            hi = q
    return Search(lo, hi, tuple(steps))


def _nice(q: float) -> float:
    """``q`` to 3 significant digits (33.3, not 33.333333: rates are labels of points)."""
    return float(f"{q:.3g}")


def capacities(rows: Sequence[dict]) -> list[dict]:
    """The highest rate meeting the latency targets, per model, strategy and sweep point (the
    point without ``load.qps``), from the summary rows (``testbed.summary.summarize``) of
    server-scenario cells with targets: a search's runs, or a sweep over ``load.qps``.
    ``best``: the highest rate that met every target (None: none did); ``above``: the lowest
    rate above it that missed one (None: none did: the limit is higher); ``sure``: every
    verdict at those two rates is sure (``slo_verdict``); ``targets``: {percentile: ms}."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        f = r.get("load") or {}
        if f.get("scenario") != "server" or not f.get("slo") or f.get("target_qps") is None:
            continue
        point = {k: v for k, v in r["point"].items() if k != "load.qps"}
        key = (r["model"], r["strategy"], json_key(point))
        g = groups.setdefault(key, {"model": r["model"], "strategy": r["strategy"], "point": point,
                                    "targets": {k: v["target_ms"] for k, v in f["slo"].items()}, "runs": []})
        met, sure = bool(met_all(r)), sure_all(r)
        g["runs"].append((f["target_qps"], met, sure))
    out = []
    for g in groups.values():
        runs = sorted(g.pop("runs"))
        best = max((q for q, met, _ in runs if met), default=None)
        above = min((q for q, met, _ in runs if not met and (best is None or q > best)), default=None)
        sure = all(s for q, _, s in runs if q in (best, above))
        out.append({**g, "best": best, "above": above, "sure": sure, "rates": len(runs)})
    return out


def json_key(point: dict) -> str:
    import json

    return json.dumps(point, sort_keys=True, default=str)


def met_all(row: dict) -> bool | None:
    """Whether a summary row's cell met every latency target (a cell that did not finish met
    none); None without targets."""
    slo = (row.get("load") or {}).get("slo") or {}
    return (row["status"] == "done" and all(v["met"] for v in slo.values())) if slo else None


def sure_all(row: dict) -> bool:
    """Whether every latency verdict of a summary row's cell is sure (``slo_verdict``)."""
    return all(v.get("sure", False) for v in ((row.get("load") or {}).get("slo") or {}).values())


# ---- curves: a strategy's cells in rising load, and what they say ---------------------------
# Shared by the report (figures, tables), the recommendations and the terminal: the logic here,
# the rendering there.

LEVEL_AXES = ("load.qps", "load.concurrency")   # the load offered: the x of a curve, not a point
UNSURE = "close to the target: another run may judge otherwise"


def level(f: dict) -> float | None:
    """The load a cell was offered, to order and draw by: a server cell's target rate, a
    closed loop's requests in flight (multi-stream, offline)."""
    v = f.get("target_qps") if f.get("scenario") == "server" else f.get("concurrency")
    return None if v is None else float(v)


def level_text(scenario: str, v: float | None) -> str:
    """'20 req/s' (server) or '8 in flight' (a closed loop)."""
    if v is None:
        return "-"
    return f"{qps_text(v)} req/s" if scenario == "server" else f"{v:g} in flight"


def level_axis(scenario: str) -> str:
    """What a curve's x is, for an axis label."""
    return ("offered load: target rate (req/s)" if scenario == "server"
            else "offered load: requests in flight (concurrency)")


def qps_text(v: float | None) -> str:
    """A rate as it reads in a sentence or a table: 3 significant digits below 100."""
    return "-" if v is None else f"{v:.3g}" if v < 100 else f"{v:.0f}"


def targets_text(targets: Mapping[str, float]) -> str:
    """'p99 ≤ 100 ms, p50 ≤ 20 ms'."""
    return ", ".join(f"{k} ≤ {v:g} ms" for k, v in targets.items())


def reach_text(c: dict, unsure: bool = False) -> str:
    """How far a strategy met its targets, from one of :func:`capacities`: 'up to 20 req/s,
    missed at 25 (4 rates tried)'; said plainly when only one rate was tried (its limit is
    then not known) or when every rate tried missed. ``unsure``: say so in the parentheses
    when a verdict at those rates was close to the target."""
    note = f"; {UNSURE}" if unsure and not c["sure"] else ""
    if c["rates"] == 1:
        met = c["best"] is not None
        return (f"{'met' if met else 'missed'} at {qps_text(c['best'] if met else c['above'])} req/s, the only rate "
                f"tried" + (f" ({note[2:]})" if note else ""))
    if c["best"] is None:
        return f"missed at every rate tried (from {qps_text(c['above'])} req/s, {c['rates']} rates{note})"
    above = f", missed at {qps_text(c['above'])}" if c["above"] is not None else ", the highest rate tried"
    return f"up to {qps_text(c['best'])} req/s{above} ({c['rates']} rates tried{note})"


def curves(rows: Sequence[dict]) -> list[dict]:
    """The done cells under load as curves, per model, scenario and point without its load
    level (``LEVEL_AXES``; ``load.sources`` stays in the point: it changes who sends, not how
    much is offered), in stored order: ``{"model", "scenario", "point", "targets": {percentile:
    ms}, "strategies": {strategy: [(level, row), ...] in rising level}}``. ``rows``: summary
    rows (``testbed.summary.summarize``) or the store's cells (both carry ``load``)."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        f = r.get("load") or {}
        if r["status"] != "done" or level(f) is None:
            continue
        point = {k: v for k, v in r["point"].items() if k not in LEVEL_AXES}
        g = groups.setdefault((r["model"], f["scenario"], json_key(point)), {
            "model": r["model"], "scenario": f["scenario"], "point": point, "targets": {}, "strategies": {}})
        g["targets"].update({k: v["target_ms"] for k, v in (f.get("slo") or {}).items()})
        g["strategies"].setdefault(r["strategy"], []).append((level(f), r))
    for g in groups.values():
        for cells in g["strategies"].values():
            cells.sort(key=lambda c: c[0])
    return list(groups.values())


def _tail_rank(row: dict) -> tuple:
    """Lower p99 first, then lower p50; a percentile without an answer after every number."""
    lat = row["load"]["latency_ms"]
    return tuple((lat.get(k) is None, lat.get(k) or 0.0) for k in ("p99", "p50")) + (row["strategy"],)


def level_winners(curve: dict) -> list[dict]:
    """Per load level of a curve (:func:`curves`), rising: ``winner``, the strategy with the
    lowest p99 among those that met every target (the lowest p99 of all when none did or
    there are no targets: ``met`` says which, None without targets), its ``p99_ms`` and
    ``p50_ms`` (None: beyond the answers), ``sure`` (its verdicts; None without targets),
    ``tied`` (others of the same p99 and p50: the winner is then first by name), ``meeting``
    (the strategies that met every target) and ``measured`` (all at that level)."""
    by_level: dict[float, list[dict]] = {}
    for cells in curve["strategies"].values():
        for x, r in cells:
            by_level.setdefault(x, []).append(r)
    out = []
    for x in sorted(by_level):
        here = by_level[x]
        meeting = [r for r in here if met_all(r)]
        pool = meeting or here
        w = min(pool, key=_tail_rank)
        lat = w["load"]["latency_ms"]
        out.append({"model": curve["model"], "scenario": curve["scenario"], "point": curve["point"], "level": x,
                    "winner": w["strategy"], "p99_ms": lat.get("p99"), "p50_ms": lat.get("p50"), "met": met_all(w),
                    "sure": sure_all(w) if w["load"].get("slo") else None,
                    "tied": [r["strategy"] for r in pool if r is not w and _tail_rank(r)[:2] == _tail_rank(w)[:2]],
                    "meeting": [r["strategy"] for r in meeting], "measured": [r["strategy"] for r in here]})
    return out


def saturation(curve: dict) -> dict[str, tuple[float, float]]:
    """Strategy -> (the highest answered rate measured in req/s, the lowest level it was
    measured at): where its throughput saturates, or the most it was asked for when it never did."""
    out = {}
    for s, cells in curve["strategies"].items():
        got = [(r["load"]["throughput_rps"], x) for x, r in cells if r["load"].get("throughput_rps") is not None]
        if got:
            out[s] = max(got, key=lambda g: (g[0], -g[1]))
    return out
