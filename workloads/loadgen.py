"""The load generator: many requests in flight from one source host, at the times a scenario
schedules them (ONNX Runtime is not needed: stdlib + numpy, like the client).

    python -m workloads.loadgen --target ADDR:PORT --inputs FILE.npz --host NAME
        --scenario server|multi-stream|offline [--qps Q] [--concurrency C] [--requests N | --duration S]
        [--stream I --streams K] [--seed S] [--warmup W] [--timeout S] [--codec ...] [--connection ...]
        [--wait-start]

The scenarios are MLPerf LoadGen's (``testbed.experiment.Load``). A cell with K sources runs K
generators, one per source host (in its namespace, outside its cgroup: the harness is not
charged to the host); generator ``I`` of ``K`` does its share:

- ``server`` (open loop): Poisson arrivals at ``qps / K`` requests/s, from a random stream
  seeded by ``(seed, I)`` (:func:`arrivals`): the same seed gives the same schedule.
- ``multi-stream`` (closed loop): its share of ``concurrency`` requests outstanding; each sends
  the next as soon as its answer is back.
- ``offline``: every request due at the start, its share of ``concurrency`` in flight.

Each request is sent on a connection of its own while it is in flight (a pool of
:class:`workloads.serving.Client`, one per worker thread; an open loop starts another worker
when none is idle, up to :data:`MAX_WORKERS`; :data:`PRESTART` are opened before the start), so the servers see as many concurrent
connections as there are requests in flight, and queue them (FIFO).

**No coordinated omission.** Every request's trace carries ``due``, the time its scenario
scheduled it, and its latency is measured from there (:func:`workloads.trace.breakdown`): a
request sent late because the generator or its workers were behind is charged for the wait.
``start - due`` is the generator's own lateness, kept apart in the trace (``late_ms``), so
that a late harness shows as such and not as a slow system.

Protocol on stdout (one JSON object a line): ``{"hello": ...}`` once warmed up (pinged the
first hop, sent ``warmup`` unmeasured requests one at a time); with ``--wait-start`` it then
reads ``start NS`` from stdin (a ``time.monotonic_ns()`` stamp shared by every generator of
the cell, so that their schedules line up); then one line per measured request, as the
client's (``seq``, ``input``, ``status``, ``error``, ``trace``, ``exit``, ``match``,
``max_diff``) with ``source`` and ``due_ms`` (ms after the start), and ``{"done": true, ...}``
with the generator's own figures (requests sent, workers started, lateness p50/p99).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from . import pacing
from .serving import Client, check_output, load_inputs, parse_address
from .wire import CODECS, CONNECTIONS, GENERATOR_CONNECTIONS

SCENARIOS = ("server", "multi-stream", "offline")
MAX_WORKERS = GENERATOR_CONNECTIONS   # connections one generator keeps in flight at most (open loop)
PRESTART = 4               # connections an open loop opens before the start
SWITCH_INTERVAL_S = 1e-4   # see Generator.run
CHUNK = 4096               # arrivals drawn at a time (a duration's schedule is drawn until it ends)


def share(total: int, stream: int, streams: int) -> int:
    """Stream ``stream``'s part of ``total`` split as evenly as whole numbers allow."""
    return total // streams + (1 if stream < total % streams else 0)


def arrivals(qps: float, *, seed: int, stream: int = 0, streams: int = 1, count: int | None = None,
             duration_s: float | None = None) -> np.ndarray:
    """The send times (seconds after the start) of generator ``stream`` of ``streams`` in the
    server scenario: a Poisson process of rate ``qps / streams`` (exponential gaps), drawn
    from ``numpy.random.default_rng((seed, stream))``. ``count``: this generator's number of
    requests (the first ``count`` arrivals); ``duration_s``: every arrival before it. The
    superposition of the streams is a Poisson process of rate ``qps``."""
    if (count is None) == (duration_s is None):
        raise ValueError("arrivals: give count or duration_s")
    rate = qps / streams
    rng = np.random.default_rng((seed, stream))
    if count is not None:
        return np.cumsum(rng.exponential(1.0 / rate, size=count))
    out: list[np.ndarray] = []
    last = 0.0
    while True:
        times = last + np.cumsum(rng.exponential(1.0 / rate, size=CHUNK))
        out.append(times[times < duration_s])
        if times[-1] >= duration_s:
            return np.concatenate(out)
        last = float(times[-1])


@dataclass(frozen=True)
class LoadConfig:
    scenario: str
    qps: float | None = None
    concurrency: int | None = None      # over all streams
    count: int | None = None            # measured requests over all streams
    duration_s: float | None = None
    seed: int = 0
    stream: int = 0
    streams: int = 1
    warmup: int = 0
    timeout_s: float = 120.0
    codec: str = "binary"
    connection: str = "persistent"

    def check(self) -> None:
        """ValueError for a combination the scenario cannot run (one line)."""
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario {self.scenario!r}: expected one of {', '.join(SCENARIOS)}")
        if (self.count is None) == (self.duration_s is None):
            raise ValueError("give --requests or --duration (one of them)")
        if self.scenario == "offline" and self.duration_s is not None:
            raise ValueError("offline sends a number of requests: give --requests, not --duration")
        if self.scenario == "server" and not (self.qps and self.qps > 0):
            raise ValueError("server needs --qps above 0")
        if self.scenario != "server" and not (self.concurrency and self.concurrency >= self.streams):
            raise ValueError(f"{self.scenario} needs --concurrency of at least --streams ({self.streams})")
        if not 0 <= self.stream < self.streams:
            raise ValueError(f"--stream {self.stream} is not in 0..{self.streams - 1}")

    @property
    def my_count(self) -> int | None:
        return None if self.count is None else share(self.count, self.stream, self.streams)

    @property
    def my_concurrency(self) -> int:
        return share(self.concurrency or 1, self.stream, self.streams)


class Generator:
    """One source's share of a scenario (see the module docstring)."""

    def __init__(self, target: tuple[str, int], host: str, inputs: str, cfg: LoadConfig, out=sys.stdout):
        cfg.check()
        self.target, self.host, self.cfg, self.out = target, host, cfg, out
        self.samples, self.refs = load_inputs(inputs)
        self.write_lock = threading.Lock()
        self.pool: queue.SimpleQueue[Client] = queue.SimpleQueue()    # idle clients (open connections)
        self.clients: list[Client] = []
        self.late_ns: list[int] = []
        self.sent = 0
        self.t0 = 0
        self.times: np.ndarray = np.zeros(0)      # the open loop's schedule (warm draws it)

    # -- connections ----------------------------------------------------------------------
    def _client(self) -> Client:
        c = Client(self.target, self.host, self.cfg.codec, self.cfg.connection, self.cfg.timeout_s)
        self.clients.append(c)
        return c

    def warm(self) -> dict:
        """Everything that can be done before the start, so that the first requests are not
        late for it: ping the first hop, send the warm-up requests one at a time, open the
        connections a closed loop keeps in flight (an open loop: ``PRESTART`` of them), draw
        the arrival schedule, sharpen the timers. Returns the first hop's pong."""
        first = self._client()
        pong = first.ping(wait_s=min(self.cfg.timeout_s, 30.0))
        for w in range(self.cfg.warmup):
            first.request(1_000_000_000 + w, self.samples[w % len(self.samples)])
        self.pool.put(first)
        more = self.cfg.my_concurrency - 1 if self.cfg.scenario != "server" else PRESTART - 1
        for _ in range(more):
            c = self._client()
            c.ping(wait_s=min(self.cfg.timeout_s, 30.0))
            self.pool.put(c)
        if self.cfg.scenario == "server":
            self.times = arrivals(self.cfg.qps, seed=self.cfg.seed, stream=self.cfg.stream, streams=self.cfg.streams,
                                  count=self.cfg.my_count, duration_s=self.cfg.duration_s)
        pacing.sharp_timers()
        # a woken worker waits for the GIL up to the switch interval (5 ms by default) while
        # others encode or check answers: that wait would be the generator's lateness
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        return pong

    def close(self) -> None:
        for c in self.clients:
            c.close()

    # -- one request --------------------------------------------------------------------------
    def _seq(self, k: int) -> int:
        return k * self.cfg.streams + self.cfg.stream

    def _send(self, client: Client, k: int, due_ns: int) -> None:
        seq = self._seq(k)
        i = seq % len(self.samples)
        r = client.request(seq + 1, self.samples[i], due=due_ns)
        match, diff = check_output(r.pop("output", None), self.refs[i])
        start = r["trace"][0]["start"]
        r.update({"seq": seq, "input": i, "match": match, "max_diff": diff, "source": self.host,
                  "due_ms": (due_ns - self.t0) / 1e6})
        line = json.dumps(r) + "\n"
        with self.write_lock:
            self.late_ns.append(start - due_ns)
            self.sent += 1
            self.out.write(line)
            self.out.flush()

    # -- the scenarios ------------------------------------------------------------------------
    def run(self, t0_ns: int) -> dict:
        """Run the scenario from ``t0_ns`` (a monotonic stamp, now or soon); returns the
        generator's figures (also printed as the ``done`` line)."""
        self.t0 = t0_ns
        cfg = self.cfg
        if cfg.scenario == "server":
            workers = self._open_loop()
        else:
            workers = self._closed_loop()
        late = np.array(self.late_ns, dtype=np.float64) / 1e6 if self.late_ns else np.zeros(1)
        return {"done": True, "source": self.host, "sent": self.sent, "workers": workers,
                "late_p50_ms": float(np.percentile(late, 50)), "late_p99_ms": float(np.percentile(late, 99)),
                "late_max_ms": float(late.max()), "span_ms": (time.monotonic_ns() - t0_ns) / 1e6}

    def _closed_loop(self) -> int:
        """multi-stream / offline: a fixed set of workers, each sending its next request when
        its answer is back (multi-stream: due then; offline: every request due at the start)."""
        cfg = self.cfg
        count = cfg.my_count
        end_ns = None if cfg.duration_s is None else self.t0 + int(cfg.duration_s * 1e9)
        counter = iter(range(count) if count is not None else _forever())
        lock = threading.Lock()
        _sleep_until(self.t0)

        def work() -> None:
            client = self.pool.get()
            while True:
                now = time.monotonic_ns()
                if end_ns is not None and now >= end_ns:
                    return
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                self._send(client, k, self.t0 if cfg.scenario == "offline" else now)

        threads = [threading.Thread(target=work, daemon=True) for _ in range(cfg.my_concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(threads)

    def _open_loop(self) -> int:
        """server: a dispatcher sleeps until each arrival and hands it to an idle worker,
        starting one more when none is idle (up to MAX_WORKERS; beyond that requests wait
        for a worker, and their lateness shows it)."""
        jobs: queue.Queue[tuple[int, int] | None] = queue.Queue()
        idle = threading.Semaphore(0)
        threads: list[threading.Thread] = []

        def work(client: Client) -> None:
            while True:
                job = jobs.get()
                if job is None:
                    return
                self._send(client, *job)
                idle.release()

        def start_worker() -> None:
            client = self.pool.get() if not self.pool.empty() else self._client()
            threads.append(threading.Thread(target=work, args=(client,), daemon=True))
            threads[-1].start()

        while not self.pool.empty():            # the connections warm() opened, idle from the start
            start_worker()
            idle.release()
        for k, at in enumerate(self.times):
            due = self.t0 + int(at * 1e9)
            _sleep_until(due)
            if not idle.acquire(blocking=False) and len(threads) < MAX_WORKERS:
                start_worker()
            jobs.put((k, due))
        for _ in threads:
            jobs.put(None)
        for t in threads:
            t.join()
        return len(threads)


def _forever() -> Iterator[int]:
    k = 0
    while True:
        yield k
        k += 1


def _sleep_until(ns: int) -> None:
    left = ns - time.monotonic_ns()
    if left > 0:
        time.sleep(left / 1e9)


# ---- entry point ----------------------------------------------------------------------------

def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workloads.loadgen")
    p.add_argument("--target", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--scenario", choices=SCENARIOS, required=True)
    p.add_argument("--qps", type=float)
    p.add_argument("--concurrency", type=int)
    p.add_argument("--requests", type=int)
    p.add_argument("--duration", type=float, help="seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stream", type=int, default=0)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--codec", choices=list(CODECS), default="binary")
    p.add_argument("--connection", choices=list(CONNECTIONS), default="persistent")
    p.add_argument("--wait-start", action="store_true", help="read 'start NS' from stdin before sending")
    return p.parse_args(argv)


def config_of(a: argparse.Namespace) -> LoadConfig:
    return LoadConfig(a.scenario, a.qps, a.concurrency, a.requests, a.duration, a.seed, a.stream, a.streams,
                      a.warmup, a.timeout, a.codec, a.connection)


def main(argv: list[str] | None = None) -> int:
    a = _args(sys.argv[1:] if argv is None else argv)
    try:
        gen = Generator(parse_address(a.target), a.host, a.inputs, config_of(a))
        pong = gen.warm()
    except (ValueError, OSError, ConnectionError) as e:
        sys.stderr.write(f"loadgen on {a.host}: {e}\n")
        return 2
    try:
        print(json.dumps({"hello": True, "pid": os.getpid(), "first_hop": pong}), flush=True)
        t0 = time.monotonic_ns()
        if a.wait_start:
            line = sys.stdin.readline().split()
            if len(line) != 2 or line[0] != "start" or not line[1].isdigit():
                sys.stderr.write(f"loadgen on {a.host}: expected 'start NS' on stdin, got {' '.join(line)!r}\n")
                return 2
            t0 = int(line[1])
        done = gen.run(max(t0, time.monotonic_ns()) if not a.wait_start else t0)
        print(json.dumps(done), flush=True)
        return 0
    finally:
        gen.close()


if __name__ == "__main__":
    sys.exit(main())
