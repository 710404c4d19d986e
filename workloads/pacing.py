"""Compute pacing: each inference takes as long as it would on a CPU of the host's share (stdlib only).

Why: a CPU quota (CFS bandwidth control) holds a host to its share over a period, but not each
request. A request that starts with quota left runs at full speed until the quota is spent,
then waits for the next period; the kernel also leaves each CPU up to 1 ms of unspent quota
from earlier periods and checks the quota only at its tick (4 ms at 250 Hz). Measured here
(README, ``benchmarks/bench_cpu.py``): with the kernel's 100 ms period EfficientNet-Lite0 on
0.25 cores computes at full speed for most requests, and even with the shortest period the
kernel allows (a 1 ms quota: 4 ms at 0.25 cores) an 11 ms CPU burst takes 0.86-0.89 of its due
44 ms, whatever the moment.

What pacing does: the server measures the CPU time its compute threads spend on one inference
(``c``), and when the inference ended sooner than ``c / share`` (the time that CPU work takes
on ``share`` cores) it waits out the rest before it answers.
The quota stays in force underneath (the kernel still holds the host to its share, and a
request slowed more than that by the quota is not shortened); pacing only removes the
head start of a request that finds quota unspent. A host with at least as many cores as
threads (1 core and 1 thread, 2 and 2) is not paced: nothing there is slower than the machine.
With more than one thread the pool's threads must not spin while they wait for work (ONNX
Runtime's ``allow_spinning``, turned off for paced sessions), or their spinning would count as
the inference's CPU time.

The CPU time of the calling thread comes from ``CLOCK_THREAD_CPUTIME_ID``; that of ONNX Runtime's
intra-op pool threads (hosts above one core) from ``/proc/self/task/<tid>/schedstat``.
"""
from __future__ import annotations

import os
import time


def pace_factor(share: float | None, threads: int) -> float | None:
    """Wall time per CPU time a paced inference takes (``1 / share``), or None when the host
    is not slower than the machine for that many threads (unlimited, or share >= threads)."""
    if share is None or share <= 0 or share >= threads:
        return None
    return 1.0 / share


def _task_cpu_ns(tid: int) -> int:
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0  # the thread is gone: its time no longer moves


class Pacer:
    """Run inferences paced to ``share`` cores (see the module docstring).

    ``pool_tids`` are the OS threads of the inference engine's pools besides the caller (for
    threads > 1): their CPU time counts with the caller's. ``last`` holds the latest call's
    (cpu_ns, run_ns, waited_ns) for the trace."""

    def __init__(self, share: float | None, threads: int = 1, pool_tids: list[int] | None = None):
        self.share = share
        self.threads = threads
        self.factor = pace_factor(share, threads)
        self.pool_tids = list(pool_tids or [])
        self.last: tuple[int, int, int] = (0, 0, 0)

    def _cpu_ns(self) -> int:
        return time.thread_time_ns() + sum(_task_cpu_ns(t) for t in self.pool_tids)

    def run(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, then wait until it has taken its paced time; returns its result."""
        c0, t0 = self._cpu_ns(), time.monotonic_ns()
        out = fn(*args, **kwargs)
        c1, t1 = self._cpu_ns(), time.monotonic_ns()
        waited = 0
        if self.factor is not None:
            due = t0 + int((c1 - c0) * self.factor)
            while True:
                left = due - time.monotonic_ns()
                if left <= 0:
                    break
                time.sleep(left / 1e9)
            waited = max(0, time.monotonic_ns() - t1)
        self.last = (c1 - c0, t1 - t0, waited)
        return out


def sharp_timers() -> None:
    """Ask the kernel for 1 ns timer slack (default 50 us) so paced waits end when due."""
    try:
        import ctypes

        PR_SET_TIMERSLACK = 29
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def new_threads(before: set[int]) -> list[int]:
    """OS threads of this process that are not in ``before`` (an engine's pool threads)."""
    try:
        return sorted(int(t) for t in os.listdir("/proc/self/task") if int(t) not in before)
    except OSError:
        return []


def thread_ids() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()
