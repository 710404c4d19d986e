"""What runs on an emulated host: the part server, and the request client.

Both start with ONNX Runtime + numpy only (no torch, no onnx) and are started by the runner
inside a host's network namespace (and, for servers, its cgroup):

    python -m workloads.serving serve  --artifact DIR --part K --host NAME --listen ADDR:PORT
                                       [--next ADDR:PORT] [--threads N] [--codec binary]
                                       [--connection persistent|per-request] [--timeout S]
                                       [--pace CORES] [--max-connections N]
    python -m workloads.serving client --target ADDR:PORT --inputs FILE.npz --host NAME
                                       [--warmup W] [--repeat R | --duration S] [--wait-start] [--timeout S] [--codec ...]
                                       [--connection ...]

**Server.** Loads the segments of one part of an artifact once (intra-op threads = the host's
core budget), listens only on the given emulated addresses, and for each request frame: runs
its part, answers when the part ends the model or an exit head fires, and otherwise forwards
the tensors the next part needs to ``--next`` over a connection it keeps open
(``per-request`` opens one per request, as the studies did), then relays the answer back.
Each connection has a thread of its own, but inferences take turns at one compute slot
(:class:`_Turns`, a FIFO): one inference at a time, in arrival order, run by the thread
whose turn it is; the host's ORT intra-op threads are its parallelism (with ``--pace CORES`` each inference takes its CPU time / CORES,
:mod:`workloads.pacing`). So under load a request waits honestly for those ahead of it (its
record's ``queued`` and ``comp0 - dec1``, :mod:`workloads.trace`) while other requests'
transfers and forwarding go on in their own threads. A ``ping`` is answered at once with
``pong`` and the server's state (health check; ``queued``: the requests waiting or computing
now). SIGTERM or SIGINT stops it promptly and cleanly, without computing the requests still
queued (each gets an error answer, or its connection closes as the process exits). When it is
ready it prints one JSON line on stdout (``{"ready": true, ...}``), and when it stops another
with its counters (``{"stopped": true, ...}``); its log goes to stderr.

**Bounds.** What a peer can make a server allocate and hold is bounded (docs/wire.md):

- *frame limits per artifact*: a request's payload may be at most :data:`LIMIT_MARGIN` times
  the largest its part legitimately gets (`ArtifactRunner.largest_request`: the declared
  inputs at batch 1), an answer from the next hop likewise (`largest_answer`); the codec
  checks them before it allocates anything (a json-base64 header may hold the base64 of that
  much), and a frame above them gets an error frame naming the limit;
- *a stall timeout*: the kernel's ``SO_RCVTIMEO`` / ``SO_SNDTIMEO`` of every upstream
  connection are ``--timeout`` (the request timeout): a frame that stops arriving, or an
  answer the peer stops taking, for that long closes the connection. A client has given up
  on any request by then, so no legitimate request is cut short, however slow its link;
  between frames a connection may idle as long as it likes (it lives for one cell);
- *a connection cap*: beyond ``--max-connections`` open upstream connections a new one gets
  an error frame and is closed; the refusals are counted.

The counters (``refused``, ``stalled``, ``bad_frames``, ``internal_errors``: a connection
closed by an unexpected exception, ``uncaught``: a thread that died) are in every ``pong``
and in the line printed at the stop.

**Trace.** Every process that receives a frame appends a record to the message's
``meta.trace`` and the answer carries the list home: :mod:`workloads.trace` defines the record
(its fields, stages and units) and reads a trace (:func:`workloads.trace.breakdown`).

**Client.** Runs on the source host: loads the inputs and reference outputs from an ``.npz``,
pings the first hop until it answers, sends ``warmup`` unmeasured and ``repeat`` measured
requests one at a time (closed loop), and prints one JSON line per measured request: ``seq``,
``input``, ``status`` (ok / timeout / error), ``error``, ``trace``, ``exit``, and the output
check against the reference model (``match``: same argmax at every position; ``max_diff``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from . import pacing
from . import trace as tr
from .codec import (CODECS, BufferedReceiver, CodecError, ConnectionClosed, IdleTimeout, Limits, Message,
                    StallTimeout, read_message, send_message)
from .wire import CONNECTIONS

PORT = 7070
LOG_LINES = 20
BACKLOG = max(socket.SOMAXCONN, 1024)   # connections not yet accepted; many clients connect at once
LIMIT_MARGIN = 2                 # a frame may carry up to this many times the largest legitimate payload
DEFAULT_MAX_CONNECTIONS = 1024   # open upstream connections (the runner sets serving.max_connections)
FILES_BESIDE_CONNECTIONS = 128   # listeners, logs, ONNX Runtime's own: open files a server needs anyway


def _now() -> int:
    return time.monotonic_ns()


def _log(text: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {text}\n")
    sys.stderr.flush()


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {text!r}: expected ADDRESS:PORT, e.g. 10.0.0.1:7070")
    return host, int(port)


def _connect(address: tuple[str, int], timeout_s: float) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


# ---- the server ---------------------------------------------------------------------------

@dataclass
class ServerConfig:
    artifact: str
    part: int
    host: str
    listen: list[tuple[str, int]]
    next_hop: tuple[str, int] | None = None
    threads: int = 1
    codec: str = "binary"
    connection: str = "persistent"
    timeout_s: float = 120.0
    limits: Limits = field(default_factory=Limits)   # the ceiling: a server takes less (its artifact's limits)
    pace: float | None = None       # pace each inference to this many cores (None: the quota alone)
    max_connections: int = DEFAULT_MAX_CONNECTIONS   # open upstream connections; more are refused

    def to_argv(self) -> list[str]:
        """The ``serve`` command line (after ``python -m workloads.serving``) that starts a server
        with this config: :meth:`from_args` of it parsed gives this config back."""
        if self.limits != Limits():
            raise ValueError(f"{self.host}: serve has no option for frame limits: a server uses the defaults")
        argv = ["serve", "--artifact", str(self.artifact), "--part", str(self.part), "--host", self.host,
                "--threads", str(self.threads), "--codec", self.codec, "--connection", self.connection,
                "--timeout", repr(float(self.timeout_s)), "--max-connections", str(self.max_connections)]
        for address, port in self.listen:
            argv += ["--listen", f"{address}:{port}"]
        if self.next_hop is not None:
            argv += ["--next", f"{self.next_hop[0]}:{self.next_hop[1]}"]
        if self.pace is not None:
            argv += ["--pace", repr(float(self.pace))]
        return argv

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> ServerConfig:
        """The config of a parsed ``serve`` command line (ValueError for a bad address)."""
        return cls(a.artifact, a.part, a.host, [parse_address(x) for x in a.listen],
                   parse_address(a.next) if a.next else None, a.threads, a.codec, a.connection, a.timeout,
                   pace=a.pace, max_connections=a.max_connections)


STOP_SETTLE_S = 0.2     # at a stop, how long closed connections get to be counted closed


@dataclass
class _Job:
    """One request's inference: its result, or why there is none."""
    result: object = None       # the runner's result, when the inference ran
    error: str | None = None    # why it did not


class _Turns:
    """Turns at the host's one compute slot, given in arrival order (a FIFO hand-over lock).

    The connection thread whose turn it is runs the inference itself: an idle server computes
    at once, with no hand-off to another thread (a compute thread cost ~90 µs per hop in
    harness overhead), and under load each waiter is woken by the one before it, in order.
    Pacer reads the CPU time of the thread that calls it, which is then always the one
    computing."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: deque[list] = deque()     # [event, admitted] per waiter, oldest first
        self.busy = False
        self.closed = False

    @property
    def pending(self) -> int:
        """Requests computing or waiting now."""
        return int(self.busy) + len(self.waiting)

    def take(self) -> int | None:
        """Wait for this thread's turn; returns how many were ahead when it arrived (None: the
        server is stopping and it gets no turn)."""
        with self.lock:
            if self.closed:
                return None
            if not self.busy:
                self.busy = True
                return 0
            ahead = self.pending
            waiter = [threading.Event(), False]
            self.waiting.append(waiter)
        waiter[0].wait()
        return ahead if waiter[1] else None

    def give(self) -> None:
        """End this turn: the next waiter's begins (the slot stays busy), else it is free."""
        with self.lock:
            if self.waiting and not self.closed:
                waiter = self.waiting.popleft()
                waiter[1] = True
                waiter[0].set()
            else:
                self.busy = False

    def close(self) -> None:
        """Stopping: no more turns; every waiter returns without one."""
        with self.lock:
            self.closed = True
            left, self.waiting = list(self.waiting), deque()
        for waiter in left:
            waiter[0].set()


class Server:
    """One part of an artifact, served on a host (see the module docstring)."""

    def __init__(self, cfg: ServerConfig):
        import onnxruntime  # noqa: F401  (its import starts threads of its own: count after it)

        from .runtime import ArtifactRunner

        self.cfg = cfg
        t0 = time.monotonic()
        before = pacing.thread_ids()
        paced = pacing.pace_factor(cfg.pace, cfg.threads) is not None
        self.runner = ArtifactRunner(cfg.artifact, parts=(cfg.part,), threads=cfg.threads, spin=not paced)
        # read back: each session's intra-op pool starts threads - 1 OS threads when it is made
        pool = pacing.new_threads(before)
        self.pool_threads = len(pool) if before else None      # None: /proc/self/task unreadable
        self.pacer = pacing.Pacer(cfg.pace, cfg.threads, pool)
        self.stalls = pacing.QuotaStalls()     # disabled outside a cgroup (nothing throttles there)
        pacing.sharp_timers()
        self.load_ms = (time.monotonic() - t0) * 1000
        if cfg.part not in {s.part for s in self.runner.segments}:
            raise ValueError(f"artifact {cfg.artifact} has no part {cfg.part}")
        last = max(s.part for s in self.runner.segments)
        if (cfg.part < last) != (cfg.next_hop is not None):
            raise ValueError(f"part {cfg.part} of {last + 1}: --next is needed exactly when a later part exists")
        self.needs = next(s for s in self.runner.segments if s.part == cfg.part).inputs
        if type(cfg.max_connections) is not int or cfg.max_connections < 1:
            raise ValueError(f"{cfg.host}: --max-connections {cfg.max_connections!r}: expected a whole number >= 1")
        if not 0 < cfg.timeout_s <= 3600 * 24:
            raise ValueError(f"{cfg.host}: --timeout {cfg.timeout_s!r}: expected seconds above 0, at most a day")
        self.request_limits, self.answer_limits, self.limits_note = self._frame_limits()
        self._files_for_connections()
        # the stall timeout of every upstream connection, as the kernel takes it (struct timeval)
        self.stall_timeval = struct.pack("@ll", *divmod(max(1, round(cfg.timeout_s * 1e6)), 1_000_000))
        self.turns = _Turns()       # one inference at a time, in arrival order
        self.stopping = threading.Event()
        self.served = 0
        self.listeners: list[socket.socket] = []
        self.lock = threading.Lock()    # the counters below
        self.connections = 0            # upstream connections open now
        self.refused = 0                # connections refused beyond max_connections
        self.stalled = 0                # connections closed: a frame stopped arriving (or an answer being taken)
        self.bad_frames = 0             # frames that broke the format or the limits (error frame, closed)
        self.internal_errors = 0        # connections closed by an unexpected exception (a bug)
        self.uncaught = 0               # threads that died of one (threading.excepthook)

    def _frame_limits(self) -> tuple[Limits, Limits | None, str]:
        """The limits on requests and (with a next hop) on its answers: LIMIT_MARGIN times the
        largest legitimate payload, no more than ``cfg.limits``; and why a bound could not be
        derived ('' when both were)."""
        cfg, notes = self.cfg, []

        def bounded(largest: tuple[int | None, str], what: str) -> Limits:
            n, why = largest
            if n is None:
                notes.append(f"{what}: {why}, so the default limit applies")
                return cfg.limits
            return replace(cfg.limits, max_payload_bytes=min(cfg.limits.max_payload_bytes, LIMIT_MARGIN * n))

        requests = bounded(self.runner.largest_request(cfg.part), "requests")
        answers = bounded(self.runner.largest_answer(cfg.part), "answers") if cfg.next_hop is not None else None
        return requests, answers, "; ".join(notes)

    def _files_for_connections(self) -> None:
        """Make room for max_connections open connections (two files each on a server with a
        next hop): raise the limit on open files (the hard one too where this process may, as
        root), or say why not."""
        need = self.cfg.max_connections * (2 if self.cfg.next_hop is not None else 1) + FILES_BESIDE_CONNECTIONS
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft >= need:
            return
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard if hard == resource.RLIM_INFINITY else max(hard, need)))
        except (ValueError, OSError):
            raise ValueError(f"{self.cfg.host}: {self.cfg.max_connections} connections (serving.max_connections) need "
                             f"{need} open files, but this process may open at most {hard} (ulimit -Hn) and "
                             "cannot raise that: lower serving.max_connections or raise the limit") from None

    # -- lifecycle ------------------------------------------------------------------------
    def bind(self) -> None:
        for addr in self.cfg.listen:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
            s.listen(BACKLOG)
            s.settimeout(0.2)
            self.listeners.append(s)

    def ready_line(self) -> dict:
        return {"ready": True, "host": self.cfg.host, "part": self.cfg.part, "pid": os.getpid(),
                "listen": [f"{a}:{p}" for a, p in self.cfg.listen], "threads": self.cfg.threads,
                "sessions": len(self.runner.sessions), "pool_threads": self.pool_threads,
                "pace": self.cfg.pace, "pace_factor": self.pacer.factor,
                "load_ms": round(self.load_ms, 2), "rss_bytes": _rss_bytes(), "queued": self.turns.pending,
                "payload_limit": self.request_limits.max_payload_bytes,
                "answer_limit": self.answer_limits.max_payload_bytes if self.answer_limits else None,
                "limits_note": self.limits_note, "stall_timeout_s": self.cfg.timeout_s,
                "max_connections": self.cfg.max_connections, **self.counters()}

    def counters(self) -> dict:
        """Upstream connections open now, and what was refused or closed, and why."""
        with self.lock:
            return {"connections": self.connections, "refused": self.refused, "stalled": self.stalled,
                    "bad_frames": self.bad_frames, "internal_errors": self.internal_errors,
                    "uncaught": self.uncaught}

    def _count(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)

    def uncaught_exception(self, args: threading.ExceptHookArgs) -> None:
        """threading.excepthook: a thread that died is counted (and logged as Python would)."""
        self._count("uncaught")
        threading.__excepthook__(args)

    def serve_forever(self) -> None:
        threads = [threading.Thread(target=self._accept_loop, args=(s,), daemon=True) for s in self.listeners]
        for t in threads:
            t.start()
        while not self.stopping.wait(0.2):
            pass
        for s in self.listeners:
            _close(s)
        self.turns.close()      # the requests still waiting get an error answer, not an inference
        # a peer that closed just before the stop: its thread counts it closed within
        # milliseconds; the counters then say what was still open, not who was slower
        deadline = time.monotonic() + STOP_SETTLE_S
        while self.connections and time.monotonic() < deadline:
            time.sleep(0.005)
        c = self.counters()
        bounds = [f"{c['refused']} connections refused beyond serving.max_connections "
                  f"({self.cfg.max_connections})" if c["refused"] else "",
                  f"{c['stalled']} closed stalled" if c["stalled"] else "",
                  f"{c['bad_frames']} bad frames" if c["bad_frames"] else "",
                  f"{c['internal_errors'] + c['uncaught']} internal errors"
                  if c["internal_errors"] + c["uncaught"] else ""]
        _log(f"{self.cfg.host}: stopped after {self.served} requests"
             + "".join(f"; {b}" for b in bounds if b))

    def stop(self, *_args) -> None:
        self.stopping.set()

    # -- compute: one inference at a time, in arrival order ------------------------------------
    def _compute(self, tensors: dict, rec: dict) -> _Job:
        """Wait for the compute slot (``rec`` gets ``queued``: the requests ahead at arrival),
        run the inference in this thread, stamp ``rec``, and hand the slot to the next."""
        ahead = self.turns.take()
        if ahead is None:
            return _Job(error=f"{self.cfg.host}: server stopping")
        rec["queued"] = ahead
        try:
            if self.stopping.is_set():
                return _Job(error=f"{self.cfg.host}: server stopping")
            rec["comp0"] = _now()
            result = self.pacer.run(self.runner.run_part, self.cfg.part, tensors)
            rec["comp1"] = _now()
            cpu, _, paced = self.pacer.last
            rec["cpu"], rec["paced"] = tr.fixed_ns(cpu), tr.fixed_ns(paced)
            self.served += 1
            return _Job(result=result)
        except Exception as e:  # noqa: BLE001 - ORT rejects bad shapes/dtypes at run time
            return _Job(error=f"{self.cfg.host}: inference failed: {str(e).splitlines()[0]}")
        finally:
            self.turns.give()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self.stopping.is_set():
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if self.stopping.is_set() or listener.fileno() < 0:
                    return
                _log(f"{self.cfg.host}: accept failed: {e}; listening on")   # e.g. out of files for a moment
                time.sleep(0.05)
                continue
            with self.lock:
                full = self.connections >= self.cfg.max_connections
                if full:
                    self.refused += 1
                else:
                    self.connections += 1
                refused = self.refused
            if full:
                self._refuse(conn, peer, refused)
                continue
            try:
                conn.settimeout(None)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self.stall_timeval)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self.stall_timeval)
                threading.Thread(target=self._connection, args=(conn, peer), daemon=True).start()
            except (OSError, RuntimeError) as e:      # RuntimeError: no new thread could be started
                _log(f"{self.cfg.host}: connection from {peer[0]} dropped: {e}")
                _close(conn)
                with self.lock:
                    self.connections -= 1

    def _refuse(self, conn: socket.socket, peer, refused: int) -> None:
        """One connection too many: an error frame if it fits the socket's buffer, then close."""
        cap = self.cfg.max_connections
        text = (f"{self.cfg.host}: refused: {cap} connections are open, the most serving.max_connections "
                "allows")
        if refused & (refused - 1) == 0:        # the 1st, 2nd, 4th, ...: a flood is not spelled out
            _log(f"{text}; {refused} refused so far (the last from {peer[0]})")
        try:
            conn.setblocking(False)
            send_message(conn, Message("error", 0, meta={"error": text}), self.cfg.codec)
        except (OSError, CodecError):
            pass
        _close(conn)

    # -- one upstream connection ------------------------------------------------------------
    def _connection(self, conn: socket.socket, peer) -> None:
        down: list = [None, None]      # the persistent connection to the next hop, and its reader
        reader = BufferedReceiver(conn, stalls=self.stalls)
        try:
            while not self.stopping.is_set():
                try:
                    msg = read_message(reader, self.request_limits, self.cfg.codec)
                except IdleTimeout:
                    continue       # between frames a connection may idle as long as it likes
                except ConnectionClosed:
                    return
                except CodecError as e:
                    self._count("bad_frames")
                    _log(f"{self.cfg.host}: bad frame from {peer[0]}: {e}; closing that connection")
                    self._reply_error(conn, 0, f"{self.cfg.host}: bad frame: {e}", [])
                    return
                if msg.kind == "ping":
                    send_message(conn, Message("pong", msg.id, meta=self.ready_line()), self.cfg.codec)
                elif msg.kind == "request":
                    if not self._request(conn, msg, down):
                        return
                else:
                    self._reply_error(conn, msg.id, f"{self.cfg.host}: unexpected {msg.kind!r} frame", [])
                    return
        except StallTimeout as e:     # SO_RCVTIMEO / SO_SNDTIMEO passed mid-frame
            self._count("stalled")
            _log(f"{self.cfg.host}: connection from {peer[0]} closed: {e} ({self.cfg.timeout_s:g} s)")
        except OSError as e:   # the upstream side went away mid-frame or mid-answer
            _log(f"{self.cfg.host}: connection from {peer[0]} ended: {e}")
        except Exception as e:  # noqa: BLE001 - a bug must cost one connection, never the thread silently
            self._count("internal_errors")
            _log(f"{self.cfg.host}: connection from {peer[0]} closed after an internal error: "
                 f"{type(e).__name__}: {e}")
        finally:
            # counted closed before it is: a peer that sees the close and then asks (a ping)
            # must not find it still counted (the slow-loris test met that race)
            with self.lock:
                self.connections -= 1
            _close(conn)
            _close(down[0])

    def _reply_error(self, conn: socket.socket, rid: int, text: str, trace: list) -> None:
        try:
            send_message(conn, Message("error", rid, meta={"error": text, "trace": trace}), self.cfg.codec)
        except (OSError, CodecError):
            pass

    def _answer(self, conn: socket.socket, msg: Message) -> None:
        """Send an answer upstream; one that cannot be framed (e.g. its trace makes the header
        exceed the limit) goes back as an error frame saying so, without the trace."""
        try:
            send_message(conn, msg, self.cfg.codec, self.cfg.limits)
        except CodecError as e:
            self._reply_error(conn, msg.id, f"{self.cfg.host}: the answer cannot be sent: {e}", [])

    def _request(self, conn: socket.socket, msg: Message, down: list) -> bool:
        """Handle one request; False when the upstream connection must be closed."""
        cfg = self.cfg
        trace = msg.meta.get("trace", [])
        if not isinstance(trace, list):
            self._reply_error(conn, msg.id, f"{cfg.host}: meta.trace must be a list", [])
            return False
        rec = tr.record(cfg.host, "request", msg, part=cfg.part)
        missing = [n for n in self.needs if n not in msg.tensors]
        if missing:
            self._reply_error(conn, msg.id, f"{cfg.host}: request lacks tensors {missing}", trace + [rec])
            return True
        job = self._compute(msg.tensors, rec)
        if job.error is not None:
            self._reply_error(conn, msg.id, job.error, trace + [rec])
            return True
        res = job.result
        rec["exit"] = res.exited_at
        if res.done:
            rec["enc0"] = _now()
            self._answer(conn, Message("response", msg.id, res.tensors, {"trace": trace + [rec], "exit": res.exited_at}))
            return True
        answer = self._forward(msg.id, res.tensors, trace, rec, down)
        meta = dict(answer.meta)
        if answer.nbytes:       # received from the next hop (not a failure of ours to reach it)
            rrec = tr.record(cfg.host, "response", answer)
            meta["trace"] = list(meta.get("trace", [])) + [rrec]
            rrec["enc0"] = _now()
        self._answer(conn, Message(answer.kind, msg.id, answer.tensors, meta))
        return True

    def _forward(self, rid: int, tensors: dict, trace: list, rec: dict, down: list) -> Message:
        """Send the next part its tensors and wait for the answer; a failure downstream comes
        back as an error message (with the trace so far), never as an exception."""
        cfg = self.cfg
        try:
            if down[0] is None:
                rec["conn0"] = _now()
                down[0] = _connect(cfg.next_hop, cfg.timeout_s)
                down[1] = BufferedReceiver(down[0], stalls=self.stalls)
                rec["conn1"] = _now()
            down[0].settimeout(cfg.timeout_s)
            rec["enc0"] = _now()
            send_message(down[0], Message("request", rid, tensors, {"trace": trace + [rec]}), cfg.codec, cfg.limits)
            answer = read_message(down[1], self.answer_limits, cfg.codec)
            if answer.id != rid:
                raise CodecError(f"answer for request {answer.id}, expected {rid}")
        except (OSError, CodecError) as e:
            _close(down[0])
            down[0] = down[1] = None
            what = "timed out" if isinstance(e, TimeoutError) else (str(e) or type(e).__name__)
            where = f"{cfg.next_hop[0]}:{cfg.next_hop[1]}"
            return Message("error", rid, meta={"error": f"{cfg.host}: next hop {where}: {what}", "trace": trace + [rec]})
        if cfg.connection == "per-request":
            _close(down[0])
            down[0] = down[1] = None
        return answer


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


# ---- the client ---------------------------------------------------------------------------

def save_inputs(path, samples: list[dict[str, np.ndarray]], references: list[np.ndarray | None]) -> None:
    """Write what the client sends (and the reference outputs it checks answers against) to
    ``path`` (a file name or an open binary file)."""
    names = list(samples[0])
    arrays = {"names": np.array(names)}
    for i, s in enumerate(samples):
        for j, n in enumerate(names):
            arrays[f"x{i}_{j}"] = s[n]
        if references[i] is not None:
            arrays[f"ref{i}"] = references[i]
    np.savez(path, **arrays)


def load_inputs(path: str) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray | None]]:
    with np.load(path, allow_pickle=False) as z:
        names = [str(n) for n in z["names"]]
        samples, refs = [], []
        i = 0
        while f"x{i}_0" in z:
            samples.append({n: z[f"x{i}_{j}"] for j, n in enumerate(names)})
            refs.append(z[f"ref{i}"] if f"ref{i}" in z else None)
            i += 1
    return samples, refs


def check_output(out: np.ndarray | None, ref: np.ndarray | None) -> tuple[bool | None, float | None]:
    """(same argmax along the class axis at every position, max |out - ref|) — None when
    there is nothing to compare."""
    if out is None or ref is None:
        return None, None
    if out.shape != ref.shape:
        return False, None
    diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64)))) if out.size else 0.0
    if out.ndim >= 2:
        match = bool(np.array_equal(out.argmax(axis=1), ref.argmax(axis=1)))
    else:
        match = bool(np.array_equal(out, ref))
    return match, diff


class Client:
    def __init__(self, target: tuple[str, int], host: str, codec: str = "binary",
                 connection: str = "persistent", timeout_s: float = 120.0, limits: Limits = Limits()):
        self.target, self.host, self.codec = target, host, codec
        self.connection, self.timeout_s, self.limits = connection, timeout_s, limits
        self.sock: socket.socket | None = None
        self.reader: BufferedReceiver | None = None
        self.stalls = pacing.QuotaStalls()     # the client runs outside the host's cgroup: disabled

    def _open(self, timeout_s: float) -> None:
        self.sock = _connect(self.target, timeout_s)
        self.reader = BufferedReceiver(self.sock, stalls=self.stalls)

    def close(self) -> None:
        _close(self.sock)
        self.sock = self.reader = None

    def ping(self, wait_s: float) -> dict:
        """Ask the first hop for its state, retrying until ``wait_s`` has passed."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                if self.sock is None:
                    self._open(max(0.1, deadline - time.monotonic()))
                self.sock.settimeout(max(0.1, deadline - time.monotonic()))
                send_message(self.sock, Message("ping", 0), self.codec)
                reply = read_message(self.reader, self.limits, self.codec)
                if self.connection == "per-request":
                    self.close()
                return reply.meta
            except (OSError, CodecError) as e:
                self.close()
                if time.monotonic() >= deadline:
                    raise ConnectionError(f"first hop {self.target[0]}:{self.target[1]} did not answer a ping: {e}") from None
                time.sleep(0.05)

    def request(self, rid: int, tensors: dict[str, np.ndarray], due: int | None = None) -> dict:
        """One request; a dict with status, trace, output or error (never raises for I/O).
        ``due``: the stamp a load scenario scheduled it for (its latency counts from there)."""
        rec = tr.client_record(self.host, due)
        deadline = time.monotonic() + self.timeout_s
        try:
            if self.sock is None:
                rec["conn0"] = _now()
                self._open(self.timeout_s)
                rec["conn1"] = _now()
            self.sock.settimeout(max(1e-3, deadline - time.monotonic()))
            rec["enc0"] = _now()
            send_message(self.sock, Message("request", rid, tensors, {"trace": [rec]}), self.codec, self.limits)
            while True:
                self.sock.settimeout(max(1e-3, deadline - time.monotonic()))
                answer = read_message(self.reader, self.limits, self.codec)
                if answer.id == rid or answer.kind == "error" and answer.id == 0:
                    break      # an older request's late answer (after a timeout) is skipped
        except TimeoutError:
            self.close()
            return {"status": "timeout", "error": f"no answer within {self.timeout_s:g}s", "trace": [rec]}
        except (OSError, CodecError) as e:
            self.close()
            return {"status": "error", "error": f"{self.target[0]}:{self.target[1]}: {e or type(e).__name__}",
                    "trace": [rec]}
        if self.connection == "per-request":
            self.close()
        trace = list(answer.meta.get("trace", []))
        trace.append(tr.record(self.host, "response", answer))
        if answer.kind == "error":
            return {"status": "error", "error": str(answer.meta.get("error", "error"))[:500], "trace": trace}
        out = next(iter(answer.tensors.values()), None)
        return {"status": "ok", "trace": trace, "exit": answer.meta.get("exit"), "output": out}


def run_client(target: tuple[str, int], inputs: str, host: str, warmup: int, repeat: int,
               timeout_s: float, codec: str, connection: str, out=sys.stdout, *, duration_s: float | None = None,
               wait_start: bool = False, stdin=sys.stdin) -> None:
    """``duration_s``: send measured requests until that long has passed since the start
    instead of ``repeat`` of them. ``wait_start``: once warmed up, write ``{"warm": true}`` and
    read ``start NS`` (a ``time.monotonic_ns()`` stamp) from ``stdin``; the measured requests
    start then (the runner starts a link trace's replay on the same stamp)."""
    samples, refs = load_inputs(inputs)
    client = Client(target, host, codec, connection, timeout_s)
    try:
        pong = client.ping(wait_s=min(timeout_s, 30.0))
        out.write(json.dumps({"hello": True, "pid": os.getpid(), "first_hop": pong}) + "\n")
        out.flush()
        for w in range(warmup):
            client.request(1_000_000 + w, samples[w % len(samples)])
        t0 = time.monotonic_ns()
        if wait_start:
            out.write(json.dumps({"warm": True}) + "\n")
            out.flush()
            line = stdin.readline().split()
            if len(line) != 2 or line[0] != "start" or not line[1].isdigit():
                raise ValueError(f"expected 'start NS' on stdin, got {' '.join(line)[:80]!r}")
            t0 = int(line[1])
            left = t0 - time.monotonic_ns()
            if left > 0:
                time.sleep(left / 1e9)
        end = None if duration_s is None else t0 + int(duration_s * 1e9)
        for seq in itertools.count() if end is not None else range(repeat):
            if end is not None and time.monotonic_ns() >= end:
                break
            k = seq % len(samples)
            r = client.request(seq + 1, samples[k])
            match, diff = check_output(r.pop("output", None), refs[k])
            r.update({"seq": seq, "input": k, "match": match, "max_diff": diff})
            out.write(json.dumps(r) + "\n")
            out.flush()
        out.write(json.dumps({"done": True}) + "\n")
        out.flush()
    finally:
        client.close()


# ---- entry point ----------------------------------------------------------------------------

def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workloads.serving")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--artifact", required=True)
    s.add_argument("--part", type=int, required=True)
    s.add_argument("--host", required=True)
    s.add_argument("--listen", action="append", required=True)
    s.add_argument("--next")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--pace", type=float, default=None)
    s.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--inputs", required=True)
    c.add_argument("--host", required=True)
    c.add_argument("--warmup", type=int, default=3)
    c.add_argument("--repeat", type=int, default=30)
    c.add_argument("--duration", type=float, default=None, help="seconds (instead of --repeat)")
    c.add_argument("--wait-start", action="store_true", help="once warmed up, read 'start NS' from stdin")
    for q in (s, c):
        q.add_argument("--codec", choices=list(CODECS), default="binary")
        q.add_argument("--connection", choices=list(CONNECTIONS), default="persistent")
        q.add_argument("--timeout", type=float, default=120.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = _args(sys.argv[1:] if argv is None else argv)
    try:
        if a.cmd == "client":
            run_client(parse_address(a.target), a.inputs, a.host, a.warmup, a.repeat, a.timeout,
                       a.codec, a.connection, duration_s=a.duration, wait_start=a.wait_start)
            return 0
        server = Server(ServerConfig.from_args(a))
        server.bind()
    except (ValueError, OSError, ConnectionError) as e:
        _log(f"error: {e}")
        return 2
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    threading.excepthook = server.uncaught_exception
    sys.stdout.write(json.dumps(server.ready_line()) + "\n")
    sys.stdout.flush()
    server.serve_forever()
    sys.stdout.write(json.dumps({"stopped": True, "served": server.served, **server.counters()}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
