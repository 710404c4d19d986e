"""Replay a link trace (:mod:`topologies.traces`) on a running network: each step applied at
its due time, relative to a start time, in a thread of its own.

What callers may rely on:

- every step of the schedule gets one :class:`StepRecord`, in order: when it was due, when its
  change was in force (monotonic ns, the clock every host of the machine shares), the lag
  between the two, the state applied, and what a read-back after it found;
- a step is **missed** when the driver reaches it only once the step after it is already due
  (an earlier change or the machine held it up): it is not applied, so the driver catches up
  instead of running ever later, and it is counted and reported, never silently merged into
  the next; a step applied more than ``late_ms`` after its due time counts as **late**;
- :meth:`Replay.state_at` says which state was in force at a moment (by when each change was
  in force, not when it was due): what a request crossing the link then met;
- the clock, the sleep and the apply and verify functions are injectable, so the timing
  logic is tested with a fake clock (tests/unit/test_replay.py);
- a change the network refuses (or a delay line that died) ends the replay; :meth:`Replay.stop`
  raises it.

The thread needs the GIL for each step: beside another thread of the process computing in
Python all the time, steps were 10 ms late at p50 and 21 ms at p99 (Python's 5 ms switch
interval), 1.4 / 2.5 ms with ``sys.setswitchinterval(0.0005)`` (docs/emulation.md#traces).

Timing: the thread sleeps until shortly before a step is due (timer slack 1 ns, optionally at
real-time priority) and spins the last fraction of a millisecond, as the delay line does, so a
step is never applied early and rarely late. Applying a bandwidth step takes 0.3-0.5 ms here
(:meth:`emulation.network.EmulatedNetwork.step_link`); reading it back takes longer, so it is
done after the step is stamped in force, and only when the next step is not due before it
could end.
"""
from __future__ import annotations

import bisect
import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from topologies.traces import Trace, TraceStep

from .errors import EmulationError

LATE_MS = 5.0             # the lag goal: a step applied later than this counts as late
# replay_link's SCHED_FIFO priority: below the delay lines' (10), whose answer a step waits for,
# and above every host's work. At the normal scheduler 6 of 61 steps were late (> 5 ms) beside a
# busy core; at SCHED_FIFO none (p99 0.7 ms)
RT_PRIORITY = 5
SPIN_NS = 300_000         # the last stretch before a due time is waited out spinning, not sleeping
CHECK_MARGIN = 2.0        # a read-back runs only if the next step is due in more than this x its cost


@dataclass(frozen=True)
class StepRecord:
    """What happened to one step of the schedule."""

    index: int                  # the step's place in the trace
    cycle: int                  # which pass of a looped trace (0: the first)
    due_ns: int
    state: TraceStep
    started_ns: int | None = None   # when the driver began to apply it
    applied_ns: int | None = None   # when its change was in force; None: missed
    path: str | None = None         # what the apply function said (the network's "fast", "full", "same")
    checked: bool = False           # whether a read-back followed it
    problems: tuple[str, ...] = ()  # what that read-back found different

    @property
    def missed(self) -> bool:
        return self.applied_ns is None

    @property
    def lag_ms(self) -> float | None:
        return None if self.applied_ns is None else (self.applied_ns - self.due_ns) / 1e6


def percentile(values: list[float], q: int) -> float | None:
    """The ``q``-th percentile (linear interpolation, numpy's default); None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)


class Replay:
    """Applies ``trace``'s steps with ``apply(step) -> str | None`` at their due times from a
    start; ``verify() -> list[str]`` (optional) reads the link back after a step."""

    def __init__(self, trace: Trace, apply: Callable[[TraceStep], str | None], *,
                 verify: Callable[[], list[str]] | None = None, clock: Callable[[], int] = time.monotonic_ns,
                 sleep: Callable[[float], None] | None = None, late_ms: float = LATE_MS,
                 check_every: int = 1, rt_priority: int = 0, name: str = "trace"):
        """``sleep``: None waits on the real clock (interruptible by :meth:`stop`, then a
        spin); a test gives its fake clock's sleep. ``check_every``: read back after every
        Nth applied step (0: never). ``rt_priority``: run the thread at SCHED_FIFO with this
        priority (0: the normal scheduler)."""
        if check_every < 0:
            raise ValueError("check_every must be 0 or more")
        self.trace = trace
        self.apply = apply
        self.verify = verify
        self.clock = clock
        self._sleep = sleep
        self.late_ms = late_ms
        self.check_every = check_every
        self.rt_priority = rt_priority
        self.name = name
        self.records: list[StepRecord] = []
        self.error: BaseException | None = None
        self.sched: dict | None = None      # the thread's scheduling, as the kernel holds it
        self.t0_ns: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._applied_ns: list[int] = []     # in force, in order (state_at)
        self._applied: list[TraceStep] = []
        self._check_cost_ns = 0

    # -- the schedule ---------------------------------------------------------------------
    def schedule(self, t0_ns: int, until_ns: int | None = None) -> Iterator[tuple[int, int, int, TraceStep]]:
        """(cycle, index, due ns, step) in order: one pass, or passes without end for a looped
        trace; only steps due before ``until_ns``."""
        period = self.trace.period_ms
        cycle = 0
        while True:
            for index, step in enumerate(self.trace.steps):
                due = t0_ns + round((cycle * (period or 0.0) + step.at_ms) * 1e6)
                if until_ns is not None and due >= until_ns:
                    return
                yield cycle, index, due, step
            if self.trace.mode != "loop":
                return
            cycle += 1

    # -- running ------------------------------------------------------------------------------
    def start(self, t0_ns: int | None = None, until_ns: int | None = None) -> "Replay":
        """Run the schedule from ``t0_ns`` (default now) in a thread; returns self."""
        if self._thread is not None:
            raise EmulationError(f"replay of {self.name} already started")
        t0 = self.clock() if t0_ns is None else t0_ns
        self._thread = threading.Thread(target=self._thread_main, args=(t0, until_ns),
                                        name=f"replay {self.name}", daemon=True)
        self._thread.start()
        return self

    def _thread_main(self, t0_ns: int, until_ns: int | None) -> None:
        try:
            self._sharpen()
            self.run(t0_ns, until_ns)
        except BaseException as e:  # noqa: BLE001 - kept for stop(), which raises it in the caller
            self.error = e

    def _sharpen(self) -> None:
        """Precise wake-ups for this thread: 1 ns timer slack, and SCHED_FIFO if asked (read back)."""
        try:
            with open("/proc/thread-self/timerslack_ns", "w") as f:
                f.write("1")
        except OSError:
            pass
        if self.rt_priority:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.rt_priority))   # 0: this thread
            except OSError as e:
                raise EmulationError(f"replay of {self.name}: cannot run at SCHED_FIFO {self.rt_priority}: "
                                     f"{e.strerror} (needs root, in a cgroup that allows real-time tasks)") from None
        policy = os.sched_getscheduler(0)
        self.sched = {"policy": "SCHED_FIFO" if policy == os.SCHED_FIFO else "SCHED_OTHER" if policy == os.SCHED_OTHER
                      else str(policy), "priority": os.sched_getparam(0).sched_priority}

    def run(self, t0_ns: int, until_ns: int | None = None) -> None:
        """Run the schedule in the calling thread until it ends, ``until_ns``, or :meth:`stop`."""
        self.t0_ns = t0_ns
        steps = self.schedule(t0_ns, until_ns)
        current = next(steps, None)
        applied = 0
        while current is not None and not self._stop.is_set():
            cycle, index, due, step = current
            upcoming = next(steps, None)
            if not self._wait_until(due):
                return
            now = self.clock()
            record = StepRecord(index, cycle, due, step)
            if upcoming is not None and now >= upcoming[2]:
                self._add(record)        # missed: its successor is due already
                current = upcoming
                continue
            path = self.apply(step)
            in_force = self.clock()
            record = replace(record, started_ns=now, applied_ns=in_force, path=path)
            with self._lock:        # in force now for state_at, before any read-back
                self._applied_ns.append(in_force)
                self._applied.append(step)
            applied += 1
            if self.verify is not None and self.check_every and applied % self.check_every == 0:
                slack = (upcoming[2] - in_force) if upcoming is not None else None
                if slack is None or slack > CHECK_MARGIN * self._check_cost_ns:
                    c0 = self.clock()
                    try:
                        problems = tuple(self.verify())
                    except EmulationError as e:
                        problems = (f"read-back failed: {e}",)
                    self._check_cost_ns = max(self._check_cost_ns, self.clock() - c0)
                    record = replace(record, checked=True, problems=problems)
            self._add(record)
            current = upcoming

    def _wait_until(self, due_ns: int) -> bool:
        """Wait until ``due_ns``; False when stopped first."""
        while not self._stop.is_set():
            left = due_ns - self.clock()
            if left <= 0:
                return True
            if self._sleep is not None:
                self._sleep(left / 1e9)
            elif left > SPIN_NS:
                self._stop.wait((left - SPIN_NS) / 1e9)
        return False

    def _add(self, record: StepRecord) -> None:
        with self._lock:
            self.records.append(record)

    def stop(self, timeout_s: float = 5.0) -> dict:
        """Stop the replay (a step being applied is finished first); returns :meth:`summary`.
        Raises what ended the replay early, if anything did (a change the network refused)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise EmulationError(f"replay of {self.name} did not stop within {timeout_s:g}s")
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.summary()

    def __enter__(self) -> "Replay":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.stop()
        else:               # already failing: stop, but do not hide the first error
            try:
                self.stop()
            except Exception:  # noqa: BLE001
                pass

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- what happened ------------------------------------------------------------------------
    def state_at(self, t_ns: int) -> TraceStep | None:
        """The step in force at ``t_ns``: the last one whose change was in force by then; None
        before the first (the link's own state)."""
        with self._lock:
            k = bisect.bisect_right(self._applied_ns, t_ns)
            return self._applied[k - 1] if k else None

    def summary(self) -> dict:
        """Steps due, applied, missed and late; apply lag p50 / p99 / max (ms), and of it the
        change's own cost (``apply_ms``); read-backs done
        and those that differed (with their first problem); the paths the changes took."""
        with self._lock:
            records = list(self.records)
        lags = [r.lag_ms for r in records if r.lag_ms is not None]
        costs = [(r.applied_ns - r.started_ns) / 1e6 for r in records if r.applied_ns is not None]
        mismatched = [r for r in records if r.problems]
        return {"name": self.name, "steps": len(records), "applied": len(lags),
                "missed": sum(r.missed for r in records), "late": sum(lag > self.late_ms for lag in lags),
                "late_ms": self.late_ms,
                "lag_ms": {"p50": percentile(lags, 50), "p99": percentile(lags, 99), "max": max(lags, default=None)},
                # of the lag, the change itself (the rest: waking up, and waiting for the GIL)
                "apply_ms": {"p50": percentile(costs, 50), "p99": percentile(costs, 99), "max": max(costs, default=None)},
                "checked": sum(r.checked for r in records), "mismatches": len(mismatched),
                "first_mismatch": mismatched[0].problems[0] if mismatched else None,
                "paths": dict(Counter(r.path for r in records if r.path is not None)), "sched": self.sched}


def replay_link(net, link: str, direction: str, trace: Trace, **kw) -> Replay:
    """A :class:`Replay` of ``trace`` on one direction of ``net``'s link (not started): each
    step through :meth:`~emulation.network.EmulatedNetwork.step_link`, read back with
    :meth:`~emulation.network.EmulatedNetwork.check_direction`. Every state of the trace is
    checked against the link first (a rate its tbf cannot shape, jitter above the link's
    delay) and its kernel request compiled, so that a step costs only its change. The thread runs
    at SCHED_FIFO :data:`RT_PRIORITY` unless ``rt_priority`` says otherwise."""
    if direction not in ("forward", "reverse"):
        raise EmulationError(f"direction must be forward or reverse, not {direction!r}")
    for step in trace.steps:
        try:
            net.prepare_step(link, direction, **step.changes())
        except EmulationError as e:
            raise EmulationError(f"{trace.source}:{step.line}: {e}") from None
    kw.setdefault("name", f"{link} {direction}")
    kw.setdefault("rt_priority", RT_PRIORITY)
    return Replay(trace, lambda step: net.step_link(link, direction, **step.changes()),
                  verify=lambda: net.check_direction(link, direction), **kw)
