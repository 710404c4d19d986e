"""A fine-grained scheduler tick for CPU quotas (stdlib only). Measured, and off by default.

Outcome first (``benchmarks/bench_cpu.py``, README): with servers pacing each inference
(:mod:`workloads.pacing`) this ticker made per-request compute no more faithful (every 2 ms) or
only slightly (every 0.5 ms), while it slowed every host's compute by 2-3 % and 10-12 %. So
:class:`emulation.network.EmulatedNetwork` starts it only when asked (``cpu_tick_us``), for
comparisons and for hosts whose work is not paced.

Why: the kernel charges a cgroup's CPU time against its quota (CFS bandwidth control) only
when the scheduler looks at the running task: at the periodic tick (``CONFIG_HZ``: 250 Hz here,
a 4 ms tick) or at a scheduling event on that CPU. A task that runs alone on a CPU therefore
overruns its quota by up to a whole tick before it is throttled, and pays the debt back in one
long throttle afterwards. With a quota of 1 ms per 4 ms period (0.25 cores) a host then runs
in ~4 ms bursts and ~12 ms stalls, so a 10 ms inference lands anywhere between 1x and 2x its
due slowdown depending on where the bursts fall. The kernel's own remedy, high-resolution
ticks (``HRTICK``), is a debugfs switch that is off by default and locked down on many
machines.

What this does instead: one thread per CPU, pinned to it, at real-time priority
(``SCHED_FIFO``, lowest priority 1), wakes every ``interval`` microseconds (default 2 ms, half
the 250 Hz tick) and goes straight back to sleep. Each wake-up preempts whatever runs on that
CPU, and the context switch makes the scheduler account the preempted task's runtime and
throttle its cgroup if the quota is spent. The quota is then enforced to within about one
interval instead of one tick. The threads do no work and are charged to no host (they live
outside every host's cgroup), but every wake-up disturbs the caches of what it preempts:
measured here on EfficientNet-Lite0, unconstrained compute +2-3 % at 2 ms and +10-12 % at
0.5 ms (README, ``benchmarks/bench_cpu.py``).

Command line (started by :class:`emulation.network.EmulatedNetwork` with ``cpu_tick_us``
while a host has a CPU quota)::

    python -m emulation.ticker [--interval-us 2000] [--priority 1]

Prints one JSON line when every thread runs at its priority:
``{"ready": true, "cpus": [...], "interval_us": N, "policy": "SCHED_FIFO", "priority": P,
"tids": [...]}``, or ``{"ready": false, "error": "..."}`` and exit status 1. Exits on EOF on
stdin (its parent closed it or died), SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

INTERVAL_US_DEFAULT = 2000
INTERVAL_US_RANGE = (100, 10_000)
PRIORITY_DEFAULT = 1


def _tick(cpu: int, interval_s: float, priority: int, ready: list, errors: list, stop: threading.Event) -> None:
    try:
        os.sched_setaffinity(0, {cpu})       # pid 0 = this thread on Linux
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        ready.append(threading.get_native_id())
    except OSError as e:
        errors.append(f"CPU {cpu}: {e.strerror or e}")
        return
    sleep = time.sleep
    while not stop.is_set():
        sleep(interval_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emulation.ticker", description=__doc__.split("\n\n")[0])
    ap.add_argument("--interval-us", type=int, default=INTERVAL_US_DEFAULT)
    ap.add_argument("--priority", type=int, default=PRIORITY_DEFAULT)
    a = ap.parse_args(argv)
    lo, hi = INTERVAL_US_RANGE
    if not lo <= a.interval_us <= hi:
        print(json.dumps({"ready": False, "error": f"--interval-us {a.interval_us}: allowed {lo}..{hi}"}), flush=True)
        return 1
    cpus = sorted(os.sched_getaffinity(0))
    stop = threading.Event()
    ready: list[int] = []
    errors: list[str] = []
    threads = [threading.Thread(target=_tick, args=(c, a.interval_us / 1e6, a.priority, ready, errors, stop),
                                daemon=True) for c in cpus]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5.0
    while len(ready) + len(errors) < len(threads) and time.monotonic() < deadline:
        time.sleep(0.005)
    if errors or len(ready) < len(threads):
        why = "; ".join(errors) or "threads did not start within 5 s"
        print(json.dumps({"ready": False, "error": f"cannot run the CPU ticker at SCHED_FIFO {a.priority}: {why}"}),
              flush=True)
        return 1
    print(json.dumps({"ready": True, "cpus": cpus, "interval_us": a.interval_us, "policy": "SCHED_FIFO",
                      "priority": a.priority, "tids": sorted(ready)}), flush=True)

    def on_signal(_signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # EOF on stdin ends it: the ticker never outlives the run that started it
    reader = threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True)
    reader.start()
    while not stop.wait(0.2):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
