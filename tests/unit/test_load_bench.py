"""The load generator benchmark's figures (benchmarks/bench_load.py): rates from stamps, the KS
test of the gaps, lateness, and the harness-capacity verdict. No processes."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_load import (CAPACITY_RATIO, LATE_GOAL_MS, capacity_every_rate_below, harness_capacity,
                                   ks_exponential, meets_capacity, rate_of, send_figures, why_missed)

MS = 1_000_000      # ns


def poisson_stamps(rate: float, n: int, seed: int = 0) -> np.ndarray:
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    return 10**12 + (np.cumsum(gaps) * 1e9).astype(np.int64)


def test_rate_is_n_minus_1_intervals_over_the_span_in_any_order():
    stamps = np.arange(1001) * MS                       # 1 ms apart: 1000/s
    assert rate_of(stamps) == pytest.approx(1000.0)
    assert rate_of(stamps[::-1]) == pytest.approx(1000.0)
    assert rate_of(stamps[:1]) is None and rate_of([5, 5]) is None


def test_ks_accepts_poisson_gaps_at_their_rate_and_rejects_a_floor_or_a_wrong_rate():
    due = poisson_stamps(1000, 5000)
    good = ks_exponential(due, 1000)
    assert good["p"] > 0.01 and good["n"] == 4999 and 0.05 < good["short"] < 0.15   # P(gap < 100 us) = 9.5 %
    assert ks_exponential(due, 1300)["p"] < 0.01
    # a sender that needs 200 us per send: no gap below it, every later send pushed back
    sent, t = [], 0
    for d in due:
        t = max(int(d), t + 200_000)
        sent.append(t)
    floored = ks_exponential(sent, 1000)
    assert floored["p"] < 0.01 and floored["short"] == 0.0 and floored["min_gap_us"] >= 200


def test_send_figures_compare_the_sends_with_the_schedule_and_the_target():
    due = poisson_stamps(100, 2000, seed=1)
    f = send_figures(due + 150_000, due, 100)           # every send 0.15 ms late: same rate
    assert f["achieved_over_scheduled"] == pytest.approx(1.0)
    assert f["achieved_over_target"] == pytest.approx(f["scheduled_over_target"])
    assert f["late_ms"]["p50"] == pytest.approx(0.15) and f["late_ms"]["max"] == pytest.approx(0.15)
    assert f["late_first_ms"] == pytest.approx(0.15)
    assert f["ks_actual"]["p"] == pytest.approx(f["ks_scheduled"]["p"])
    # a sender falling behind: the last send 10 % of the span late
    span = due[-1] - due[0]
    lag = (np.arange(len(due)) / (len(due) - 1) * 0.1 * span).astype(np.int64)
    slow = send_figures(due + lag, due, 100)
    assert slow["achieved_over_scheduled"] == pytest.approx(1 / 1.1, rel=1e-6)
    assert slow["late_ms"]["max"] == pytest.approx(0.1 * span / 1e6)


def _row(qps, ratio, p99, failed=0, **kw):
    return {"target_qps": qps, "achieved_over_target": ratio, "late_ms": {"p99": p99}, "failed": failed, **kw}


def test_the_capacity_is_the_highest_rate_meeting_rate_and_lateness():
    rows = [_row(1000, 0.99, 0.3), _row(2000, CAPACITY_RATIO, LATE_GOAL_MS), _row(4000, 0.99, 1.2),
            _row(8000, 0.90, 0.5)]
    assert [meets_capacity(r) for r in rows] == [True, True, False, False]
    assert harness_capacity(rows) == 2000 and capacity_every_rate_below(rows) == 2000
    # a lower rate that misses (lateness at the edge) while a higher one holds
    edge = [_row(500, 1.0, 0.4), _row(1000, 1.0, 1.04), _row(2000, 1.0, 0.95), _row(4000, 0.7, 900.0)]
    assert harness_capacity(edge) == 2000 and capacity_every_rate_below(edge) == 500
    assert capacity_every_rate_below(edge[1:]) is None
    assert not meets_capacity(_row(1000, 1.0, 0.1, failed=1))
    assert harness_capacity([_row(1000, 0.5, 9.0)]) is None


def test_a_missed_row_says_what_its_numbers_show():
    row = _row(8000, 0.7, 30.0, workers=512, generator_cores=0.97, server_cores=0.6, other_cores=0.1,
               achieved_rps=5600.0, answered_rps=5000.0, scheduled_over_target=1.01)
    why = " / ".join(why_missed(row, 512))
    assert "MAX_WORKERS (512)" in why and "generator used 0.97 core" in why and "5000/s, below the 5600/s" in why
    assert "server" not in why and "other processes" not in why and "schedule" not in why
    quiet = dict(workers=3, generator_cores=0.1, server_cores=0.1, other_cores=0.0, achieved_rps=990.0,
                 answered_rps=985.0, scheduled_over_target=0.99)
    assert why_missed(_row(1000, 0.99, 2.0, **quiet), 512) == []
    noisy = {**quiet, "other_cores": 1.2, "server_cores": 0.95, "scheduled_over_target": 0.975}
    why = " / ".join(why_missed(_row(1000, 0.975, 0.5, **noisy), 512))
    assert "server used 0.95 core" in why and "other processes used 1.20 core" in why and "0.975 of the target" in why
