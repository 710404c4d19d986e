"""The replay driver's timing, with a fake clock: steps applied at their due times, loops,
late and missed steps counted (never merged), the state in force at a moment, read-backs off
the critical path, errors and stop."""
from __future__ import annotations

import threading
import time

import pytest

from emulation.errors import EmulationError
from emulation.replay import Replay
from topologies.traces import load_trace

MS = 1_000_000
T0 = 1_000 * MS


class FakeClock:
    """A monotonic clock in ns that moves only when slept on or when a step's apply takes time."""

    def __init__(self, now: int = 0):
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += round(seconds * 1e9)


def trace(text: str, mode: str = "once"):
    return load_trace("steps.csv", text=text, mode=mode)


STEPS = "0ms,50Mbit\n100ms,5Mbit\n200ms,20Mbit\n300ms,1Mbit\n"


def driver(text: str = STEPS, mode: str = "once", costs_ms: dict | None = None, **kw):
    """A replay on a fake clock whose apply takes 0.2 ms, or ``costs_ms[rate]`` ms for a step of that rate."""
    clock = FakeClock()
    applied = []

    def apply(step):
        applied.append((clock.now, step.rate_bps))
        clock.now += round((costs_ms or {}).get(step.rate_bps, 0.2) * MS)
        return "fast"

    return Replay(trace(text, mode), apply, clock=clock, sleep=clock.sleep, **kw), clock, applied


def test_each_step_is_applied_at_its_due_time_never_early():
    rp, clock, applied = driver()
    rp.run(T0)
    assert applied == [(T0, 50_000_000), (T0 + 100 * MS, 5_000_000), (T0 + 200 * MS, 20_000_000),
                       (T0 + 300 * MS, 1_000_000)]
    assert [r.due_ns for r in rp.records] == [T0 + k * 100 * MS for k in range(4)]
    assert [r.lag_ms for r in rp.records] == pytest.approx([0.2] * 4)
    s = rp.summary()
    assert (s["steps"], s["applied"], s["missed"], s["late"]) == (4, 4, 0, 0)
    assert s["lag_ms"]["p50"] == pytest.approx(0.2) and s["paths"] == {"fast": 4}


def test_state_at_is_the_step_in_force_by_when_its_change_was_applied():
    rp, clock, _ = driver()
    rp.run(T0)
    assert rp.state_at(T0 - 1) is None                           # before the first change: the link's own
    assert rp.state_at(T0 + 100 * MS).rate_bps == 50_000_000     # due, but not yet in force (0.2 ms to apply)
    assert rp.state_at(T0 + 100 * MS + MS // 5).rate_bps == 5_000_000
    assert rp.state_at(T0 + 10_000 * MS).rate_bps == 1_000_000   # once: the last step holds


def test_a_looped_trace_repeats_with_its_period_until_the_end():
    rp, clock, applied = driver("0ms,50Mbit\n100ms,5Mbit\n250ms\n", mode="loop")
    rp.run(T0, until_ns=T0 + 600 * MS)
    assert [(r.cycle, r.index, (r.due_ns - T0) // MS) for r in rp.records] == [
        (0, 0, 0), (0, 1, 100), (1, 0, 250), (1, 1, 350), (2, 0, 500)]
    assert [rate for _, rate in applied] == [50_000_000, 5_000_000] * 2 + [50_000_000]


def test_a_slow_change_makes_the_next_step_late_and_one_overtaken_step_missed():
    # the first change takes 250 ms: when the driver reaches the 100 ms step, the 200 ms one is due
    # already, so the 100 ms step is missed (counted, not applied) and the 200 ms one goes out late
    rp, clock, applied = driver(costs_ms={50_000_000: 250.0})
    rp.run(T0)
    assert [rate for _, rate in applied] == [50_000_000, 20_000_000, 1_000_000]
    missed = [r for r in rp.records if r.missed]
    assert [(r.index, r.state.rate_bps) for r in missed] == [(1, 5_000_000)]
    assert missed[0].lag_ms is None
    late = rp.records[2]
    assert (late.started_ns - T0) // MS == 250 and late.lag_ms == pytest.approx(50.2)
    s = rp.summary()
    assert (s["steps"], s["applied"], s["missed"], s["late"]) == (4, 3, 1, 2)    # 250.0 and 50.2 ms late
    assert s["lag_ms"]["max"] == pytest.approx(250.0)


def test_read_back_runs_after_a_step_only_when_the_next_one_is_not_due_before_it_ends():
    clock = FakeClock()
    calls = []

    def verify():
        calls.append(clock.now)
        clock.now += 30 * MS            # a read-back that takes 30 ms
        return ["tbf rate reads 1 bit/s"] if len(calls) == 2 else []

    rp = Replay(trace("0ms,50Mbit\n100ms,5Mbit\n140ms,20Mbit\n300ms,1Mbit\n"), lambda step: None, verify=verify,
                clock=clock, sleep=clock.sleep)
    rp.run(T0)
    # after the 100 ms step the next is due 40 ms later: less than twice the 30 ms a read-back took
    assert [r.checked for r in rp.records] == [True, False, True, True]
    s = rp.summary()
    assert (s["checked"], s["mismatches"], s["first_mismatch"]) == (3, 1, "tbf rate reads 1 bit/s")
    assert [r.lag_ms for r in rp.records] == [0, 0, 0, 0]      # read-backs never delay a step


def test_check_every_spaces_the_read_backs_and_zero_turns_them_off():
    for every, expected in ((2, [False, True, False, True]), (0, [False] * 4)):
        rp, clock, _ = driver(verify=lambda: [], check_every=every)
        rp.run(T0)
        assert [r.checked for r in rp.records] == expected


def test_a_refused_change_ends_the_replay_and_stop_raises_it():
    def apply(step):
        if step.rate_bps == 20_000_000:
            raise EmulationError("link mobile-edge: delay line is gone")
        return "fast"

    rp = Replay(trace("0ms,50Mbit\n100ms,5Mbit\n200ms,20Mbit\n5s,1Mbit\n"), apply)
    rp.start(time.monotonic_ns() - 250 * MS)      # the first two steps are overtaken, the third refused
    deadline = time.monotonic() + 5
    while rp.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not rp.running                         # ended without waiting for the 5 s step
    with pytest.raises(EmulationError, match="delay line is gone"):
        rp.stop()
    assert [(r.index, r.missed) for r in rp.records] == [(0, True), (1, True)]


def test_stop_ends_a_real_clock_replay_between_steps_and_no_step_follows():
    seen = []
    done = threading.Event()

    def apply(step):
        seen.append(time.monotonic_ns())
        done.set()

    rp = Replay(trace("0s,50Mbit\n10s,5Mbit\n20s\n", mode="loop"), apply)
    t0 = time.monotonic()
    rp.start()
    assert done.wait(5)
    summary = rp.stop()
    assert time.monotonic() - t0 < 2          # did not wait for the 10 s step
    assert not rp.running and len(seen) == 1 and summary["applied"] == 1
    with pytest.raises(EmulationError, match="already started"):
        rp.start()


def test_the_thread_stamps_steps_on_the_real_clock_within_a_few_ms():
    stamps = []
    rp = Replay(trace("0ms,50Mbit\n30ms,5Mbit\n60ms,20Mbit\n"), lambda step: stamps.append(time.monotonic_ns()))
    t0 = time.monotonic_ns() + 20 * MS
    rp.start(t0)
    deadline = time.monotonic() + 5
    while rp.running and time.monotonic() < deadline:
        time.sleep(0.01)
    rp.stop()
    lateness = [(s - (t0 + k * 30 * MS)) / MS for k, s in enumerate(stamps)]
    assert len(stamps) == 3 and all(0 <= late < 20 for late in lateness), lateness   # never early


def test_a_step_is_in_force_for_state_at_while_its_read_back_runs():
    """A request that crossed the link just after a step must see that step even while the
    step's read-back (which may take milliseconds) has not finished: the runner looks states up
    as requests come in, while the replay runs."""
    seen = []
    rp = None

    def verify():
        seen.append(rp.state_at(rp.clock()))
        rp.clock.now += 3 * MS          # a slow read-back
        return []

    rp, clock, applied = driver(verify=verify)
    rp.run(T0)
    assert [s.rate_bps for s in seen] == [50_000_000, 5_000_000, 20_000_000, 1_000_000]
