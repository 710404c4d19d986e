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
import threading
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


# ---- quota stalls outside the inference ---------------------------------------------------------

def _cgroup_cpu_stat(proc: str = "/proc/self") -> str | None:
    """The ``cpu.stat`` of this process's CPU cgroup, or None at a hierarchy's root (nothing
    throttles there) or when it cannot be found. cgroup v1: the hierarchy with the ``cpu``
    controller; v2: the unified one."""
    try:
        with open(f"{proc}/cgroup") as f:
            lines = f.read().splitlines()
        with open(f"{proc}/mountinfo") as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    v1 = v2 = None
    for line in lines:
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hid == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    for m in mounts:
        left, _, right = m.partition(" - ")
        fields, super_fields = left.split(), right.split()
        if len(fields) < 5 or len(super_fields) < 3:
            continue
        root, point, fstype, options = fields[3], fields[4], super_fields[0], super_fields[2].split(",")
        path = v1 if fstype == "cgroup" and "cpu" in options else v2 if fstype == "cgroup2" and v1 is None else None
        if path is None or path == "/" or not path.startswith(root.rstrip("/") + "/"):
            continue
        stat = os.path.join(point, path[len(root.rstrip("/")):].lstrip("/"), "cpu.stat")
        return stat if os.path.exists(stat) else None
    return None


class _ThreadFile:
    """A file descriptor held in a thread-local slot: closed when the thread ends (its slot is
    cleared then), so a server that starts a thread per connection does not leak them."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDONLY)

    def __del__(self):
        try:
            os.close(self.fd)
        except OSError:
            pass


class QuotaStalls:
    """How long the calling thread waited for a CPU because its host's quota had run out.

    A server blocked in ``recv`` is woken when bytes arrive; if its cgroup is throttled then,
    it runs only when the next period begins, and the message's last byte is read that much
    later. That wait is the host's, not the link's. Two counters measure it, both read with a
    ``pread`` (under a microsecond):

    - the thread's run delay (``/proc/self/task/<tid>/schedstat``, field 2): time spent
      runnable but not running, whatever the cause (a throttled cgroup, or other processes on
      the machine's cores);
    - the cgroup's throttled time (``cpu.stat``: ``throttled_time`` in ns on v1,
      ``throttled_usec`` on v2), summed over the CPUs whose share of the cgroup was throttled.

    A stall is the smaller of the two over the same window: zero when the cgroup was not
    throttled (waiting for a core the other hosts use is the emulator's, not the host's).
    Measured on cgroup v1 (kernel 6.18): a thread sleeping 3 ms beside a busy loop under a
    2 ms / 8 ms quota woke 3.49 ms late at p50 and 12.82 ms at p90; its run delay grew by 3.38
    and 12.68 ms; the cgroup's throttled time by 15.6 and 25.0 ms (both CPUs' shares).
    Disabled (every reading 0) in a process at its hierarchy's root."""

    def __init__(self, cpu_stat: str | None = None, find: bool = True):
        path = cpu_stat if cpu_stat is not None else (_cgroup_cpu_stat() if find else None)
        self.path = path
        self._fd = None
        if path:
            try:
                self._fd = os.open(path, os.O_RDONLY)
            except OSError:
                self.path = None
        self._local = threading.local()

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def throttled_ns(self) -> int:
        if self._fd is None:
            return 0
        try:
            raw = os.pread(self._fd, 4096, 0)
        except OSError:
            return 0
        for line in raw.split(b"\n"):
            key, _, value = line.partition(b" ")
            if key in (b"throttled_time", b"throttled_usec"):
                return int(value) * (1000 if key == b"throttled_usec" else 1)
        return 0

    def wait_ns(self) -> int:
        """The calling thread's run delay so far (0 when disabled)."""
        if self._fd is None:
            return 0
        own = getattr(self._local, "schedstat", None)
        if own is None:
            try:
                own = self._local.schedstat = _ThreadFile(f"/proc/self/task/{threading.get_native_id()}/schedstat")
            except OSError:
                return 0
        try:
            return int(os.pread(own.fd, 128, 0).split()[1])
        except (OSError, ValueError, IndexError):
            return 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
