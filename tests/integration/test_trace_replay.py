"""Trace replay on a real link: a step trace 50 -> 5 -> 50 Mbit/s every 2 s replayed on
three_tier's mobile-edge link while traffic crosses it. Every step is applied within the lag
goal and read back; a UDP flood (the link's capacity) and one TCP flow follow the steps."""
from __future__ import annotations

import time

import numpy as np
import pytest

from benchmarks.bench_trace import GOODPUT_TOL, LAG_GOAL_MS, new_rate_from, window_figures, windows
from emulation import flows
from emulation.network import EmulatedNetwork, EmulationError
from emulation.replay import replay_link
from topologies import apply_overrides, load_topology
from topologies.traces import load_trace

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

GiB = 1 << 30
STEPS = load_trace("steps.csv", text="0s,50Mbit\n2s,5Mbit\n4s\n", mode="loop")
CYCLES = 2
LEAD_S = 2.0        # the flow's programs start and the flow settles before the trace starts


def spec():
    s = load_topology("three_tier", cores=2.0, memory_bytes=24 * GiB)
    return apply_overrides(s, {"links.mobile-edge.bandwidth": "50Mbit"})


def replayed(net, proto: str, **flow_kw):
    """Replay the step trace on mobile->edge while a flow crosses it; (summary, records, stamps, sizes, t0)."""
    until_s = CYCLES * STEPS.period_ms / 1000
    rp = replay_link(net, "mobile-edge", "forward", STEPS)
    t0 = time.monotonic_ns() + int(LEAD_S * 1e9)
    rp.start(t0, until_ns=t0 + int(until_s * 1e9))
    try:
        stamps, sizes = flows.flow(net, "mobile", "edge", LEAD_S + until_s, proto, **flow_kw)
    finally:
        summary = rp.stop()
    return summary, rp, stamps, sizes, t0


def test_a_step_trace_is_applied_on_time_read_back_and_the_link_follows_it(caps):
    with EmulatedNetwork(spec(), caps=caps) as net:
        summary, rp, stamps, sizes, t0 = replayed(net, "udp", rate_bps=60e6)
        assert net.verify() == []
        assert net.links["mobile-edge"].forward.rate_bps == 5_000_000      # the last step's (at 6 s)
    until_ms = CYCLES * STEPS.period_ms
    assert summary["steps"] == 2 * CYCLES and summary["missed"] == 0
    assert summary["lag_ms"]["p99"] <= LAG_GOAL_MS, summary
    assert summary["checked"] == summary["steps"] and summary["mismatches"] == 0, summary
    assert summary["sched"] == {"policy": "SCHED_FIFO", "priority": 5}
    # what a request crossing the link at a moment met: the step in force then
    first_down = next(r for r in rp.records if r.state.rate_bps == 5_000_000)
    assert rp.state_at(first_down.applied_ns - 1).rate_bps == 50_000_000
    assert rp.state_at(first_down.applied_ns).rate_bps == 5_000_000
    # the link's capacity follows every step: each 100 ms window from 200 ms after a step within 5 %
    figures = window_figures(windows(stamps, sizes, t0, STEPS, until_ms, "udp"))
    assert figures["judged"] == 2 * CYCLES * 18 and figures["within"] == figures["judged"], figures
    # ... and the new rate shows at once: the packets queued at a step leave at the new rate
    steps = new_rate_from(stamps, sizes, t0, STEPS, until_ms, "udp")
    assert len(steps) == 2 * CYCLES - 1
    assert all(s["new_rate_from_ms"] is not None and s["new_rate_from_ms"] <= 10.0 for s in steps), steps


def test_tcp_goodput_follows_the_steps(caps):
    with EmulatedNetwork(spec(), caps=caps) as net:
        summary, _, stamps, sizes, t0 = replayed(net, "tcp", congestion="cubic")
    assert summary["missed"] == 0 and summary["lag_ms"]["p99"] <= LAG_GOAL_MS
    ws = [w for w in windows(stamps, sizes, t0, STEPS, CYCLES * STEPS.period_ms, "tcp") if w["judged"]]
    # per step: the mean goodput of its judged windows is the step's rate x the payload share
    for start in range(0, int(CYCLES * STEPS.period_ms), 2000):
        step = [w for w in ws if start <= w["start_ms"] < start + 2000]
        got = np.mean([w["got_bps"] for w in step]) / step[0]["want_bps"]
        assert abs(got - 1) <= GOODPUT_TOL, (start, got)


def test_fast_steps_read_back_and_other_changes_take_the_full_path(caps):
    with EmulatedNetwork(spec(), caps=caps) as net:
        assert net.step_link("mobile-edge", "forward", rate_bps=5_000_000, delay_ms=10.0) == "fast"
        assert net.check_direction("mobile-edge", "forward") == []
        assert net.links["mobile-edge"].forward.delay_ms == 10.0
        assert net.step_link("mobile-edge", "forward", rate_bps=5_000_000) == "same"
        if caps["delay_mechanism"] == "nfqueue":       # loss is an iptables rule there: a new rule, the full path
            assert net.step_link("mobile-edge", "forward", loss=0.01) == "full"
        assert net.verify() == []
        with pytest.raises(EmulationError, match="jitter 20.0ms exceeds delay 10.0ms"):
            net.step_link("mobile-edge", "forward", jitter_ms=20.0)
        with pytest.raises(EmulationError, match="unknown link setting"):
            net.step_link("mobile-edge", "forward", bandwidth=1)


def test_a_trace_the_link_cannot_take_is_refused_before_it_starts_naming_its_line(caps):
    trace = load_trace("big.csv", text="0s,50Mbit\n1s,50Gbit\n")
    with EmulatedNetwork(spec(), caps=caps) as net:
        with pytest.raises(EmulationError, match=r"^big.csv:2: link mobile-edge: bandwidth 50.0 Gbit/s is above what tbf"):
            replay_link(net, "mobile-edge", "forward", trace)
        assert net.links["mobile-edge"].forward.rate_bps == 50_000_000
