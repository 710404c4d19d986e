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
from collections.abc import Sequence

import numpy as np

from .experiment import SLO_PERCENTILES, Load
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
        "throughput_rps": _rate(len(ok), max(ends)) if ends else 0.0,
        "latency_ms": {k: tail_percentile([r.e2e_ms if r.seq in answered else None for r in requests], q)
                       for k, q in PERCENTILES.items()},
        "queue_share": _share([r.queue_ms for r in ok], [r.e2e_ms for r in ok]),
        "late_p50_ms": _pct([r.late_ms for r in requests], 50), "late_p99_ms": _pct([r.late_ms for r in requests], 99),
        "workers": sum(g.get("workers", 0) for g in generators),
    }
    out["slo"] = {k: {"target_ms": ms, "measured_ms": out["latency_ms"][k],
                      "met": out["latency_ms"][k] is not None and out["latency_ms"][k] <= ms}
                  for k, ms in load.slo}
    return out


def _rate(count: int, window_ms: float) -> float | None:
    return count / (window_ms / 1000) if window_ms > 0 else None


def _share(part: Sequence[float | None], whole: Sequence[float | None]) -> float | None:
    p = sum(v for v in part if v is not None)
    w = sum(v for v in whole if v is not None)
    return p / w if w > 0 else None


def _pct(values: Sequence[float | None], q: float) -> float | None:
    got = [v for v in values if v is not None]
    return float(np.percentile(got, q)) if got else None
