"""The trace benchmark's figures (benchmarks/bench_trace.py) on synthetic arrivals: goodput per
window against the trace, which windows are judged, the time to a new rate, the RTT following
delay steps. No network."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_trace import (PAYLOAD_RATIO, changes_ms, new_rate_from, rate_over, rtt_follow, window_figures,
                                    windows)
from emulation.flows import UDP_PAYLOAD, UDP_WIRE
from topologies.traces import load_trace

MS = 1_000_000
T0 = 10**12
STEPS = load_trace("steps.csv", text="0s,50Mbit\n2s,5Mbit\n4s\n", mode="loop")


def udp_arrivals(trace, until_ms: float, late_ms: float = 0.0):
    """A link that delivers full datagrams back to back at the trace's rate, each rate change
    taking effect ``late_ms`` after it is due."""
    stamps, t = [], 0.0
    cuts = changes_ms(trace, until_ms)
    while t < until_ms:
        rate = [after for c, _, after in cuts if c + (late_ms if c else 0) <= t][-1]
        t += UDP_WIRE * 8 / rate * 1000
        stamps.append(t)
    return T0 + (np.array(stamps) * MS).astype(np.int64), np.full(len(stamps), UDP_PAYLOAD, dtype=np.int32)


def test_changes_and_the_rate_over_a_span_follow_a_looped_trace():
    assert changes_ms(STEPS, 8000) == [(0.0, None, 50_000_000), (2000.0, 50_000_000, 5_000_000),
                                       (4000.0, 5_000_000, 50_000_000), (6000.0, 50_000_000, 5_000_000)]
    assert rate_over(STEPS, 1950, 2050) == pytest.approx(27.5e6)
    assert rate_over(STEPS, 4000, 4100) == pytest.approx(50e6)


def test_a_link_that_follows_the_trace_is_within_5_percent_in_every_judged_window():
    stamps, sizes = udp_arrivals(STEPS, 8000)
    ws = windows(stamps, sizes, T0, STEPS, 8000, "udp")
    assert len(ws) == 80
    judged = [w for w in ws if w["judged"]]
    assert len(judged) == 4 * 18                   # each 2 s step: its windows from 200 ms on
    assert all(w["since_step_ms"] >= 200 for w in judged)
    figures = window_figures(ws)
    assert figures["within"] == figures["judged"] == 72
    assert figures["ratio_p50"] == pytest.approx(1.0, abs=0.02)
    assert ws[20]["want_bps"] == pytest.approx(5e6 * PAYLOAD_RATIO["udp"])


def test_a_link_late_to_change_shows_in_the_new_rate_and_the_first_windows():
    stamps, sizes = udp_arrivals(STEPS, 8000, late_ms=20.0)
    steps = new_rate_from(stamps, sizes, T0, STEPS, 8000, "udp")
    assert [(s["at_ms"], s["to_bps"]) for s in steps] == [(2000.0, 5_000_000), (4000.0, 50_000_000),
                                                          (6000.0, 5_000_000)]
    assert [s["new_rate_from_ms"] for s in steps] == pytest.approx([20.0, 20.0, 20.0], abs=2.5)
    ws = windows(stamps, sizes, T0, STEPS, 8000, "udp")
    assert ws[20]["ratio"] > 2.5 and not ws[20]["judged"]      # 20 ms of 50 Mbit/s in a 5 Mbit/s window
    on_time = new_rate_from(*udp_arrivals(STEPS, 8000), T0, STEPS, 8000, "udp")
    assert all(s["new_rate_from_ms"] < 3 for s in on_time)


def test_tcp_new_rate_is_the_first_sliding_window_at_the_payload_rate():
    # reads of 14480 bytes: at 5 Mbit/s x 1448/1514, every 24.2 ms; at 50 Mbit/s every 2.4 ms,
    # the faster reads starting 100 ms after the 4 s step (slow start)
    stamps, t = [], 0.0
    while t < 8000:
        slow = 2000 <= t < 4100 or t >= 6000
        t += 14480 * 8 / ((5e6 if slow else 50e6) * PAYLOAD_RATIO["tcp"]) * 1000
        stamps.append(t)
    stamps = T0 + (np.array(stamps) * MS).astype(np.int64)
    steps = new_rate_from(stamps, np.full(len(stamps), 14480), T0, STEPS, 8000, "tcp")
    assert steps[1]["to_bps"] == 50_000_000 and steps[1]["new_rate_from_ms"] == pytest.approx(100, abs=5)
    assert steps[0]["new_rate_from_ms"] == pytest.approx(0, abs=25)


def test_rtt_follows_an_increase_at_once_and_a_decrease_once_the_held_probes_are_out():
    trace = load_trace("d.csv", text="0s,50Mbit,10ms\n2s,50Mbit,50ms\n4s,50Mbit,10ms\n")
    base = 0.2
    sent = np.arange(0, 6000, 5.0)
    rtt, last_out = [], -1.0
    for s in sent:
        d = trace.step_at(s).delay_ms
        out = max(s + d, last_out)          # FIFO: a probe does not overtake the one before it
        last_out = out
        rtt.append(out - s + base)
    rtt = np.array(rtt)
    rtt[500] += 3.0                          # a lone probe held up by the machine
    res = rtt_follow(T0 + (sent * MS).astype(np.int64), (rtt * MS).astype(np.int64), T0, trace, 6000, base)
    follow = {(s["from_ms"], s["to_ms"]): s["followed_from_ms"] for s in res["steps"]}
    assert follow[(10.0, 50.0)] == 0.0
    assert follow[(50.0, 10.0)] == pytest.approx(40.0, abs=5.0)     # the 50 ms probes still held
    assert res["error_ms_p50"] == pytest.approx(0.0, abs=1e-6) and res["lost"] == 0
