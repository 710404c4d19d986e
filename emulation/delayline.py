"""Packet delay line for links on kernels without netem (stdlib only).

A delayed link A--B is realised as A -- D -- B, where D is a forwarding network namespace.
In D, iptables sends forwarded packets to NFQUEUE, one queue per direction::

    iptables -A FORWARD -i <ifA> -j NFQUEUE --queue-num <qAB>
    iptables -A FORWARD -i <ifB> -j NFQUEUE --queue-num <qBA>

This daemon runs inside D, holds each queued packet for the configured delay (+ jitter) and
then ACCEPTs it. It talks nfnetlink_queue directly (:mod:`emulation.nfqueue`): copy mode
META (no payload copied to userspace), ``NFQA_CFG_F_GSO`` (GSO super-packets are queued
whole, which is what lets a Python process keep up with ~Gbit/s), and
``NFQNL_MSG_VERDICT_BATCH`` to release a run of due packets with one message.

Scheduling (per queue, FIFO -- never reorders)::

    sent    = max(arrival, previous sent) + wire bytes / rate        (only with a rate)
    release = max(sent + max(0, delay + U(-jitter, +jitter)), previous release on that queue)

With a rate, the queue is the link's transmitter: each packet is serialized after the one
before it (``sent``), then propagates for the delay, as on a real link (netem's ``rate``
does the same). A packet that finds more than ``queue_bytes`` still to serialize ahead of
it is dropped (drop-tail), as the bottleneck queue of a real link drops it. The wire bytes
are those the egress interface would send: the IP length from the kernel (``NFQA_CAP_LEN``)
plus the Ethernet header, and for a GSO super-packet (queued whole) the headers of every
segment it will be cut into (its IP and TCP header lengths are read from the first bytes of
the packet, which is why the queues copy ``COPY_RANGE`` bytes of each packet to userspace).
GSO super-packets stay whole (one verdict each) and go out once their last frame is due;
the network keeps them to half a millisecond of frames at the link's rate (``gso_max_segs`` on
each sender's interface), so TCP's ACK clock does not come in lumps. A token bucket (the
wire's tbf) cannot do this: its burst lets the first frames of a message through at full
speed, so that a 4.5 kB reply crossed a 1 Mbit/s link in 14 ms instead of 36.

i.e. jitter samples are uniform in [-jitter_ms, +jitter_ms], the total is clamped to >= 0,
and a packet never overtakes the one before it. With jitter and densely spaced packets the
FIFO constraint makes the mean delay somewhat larger than ``delay_ms`` (as on a real link
whose delay varies but which does not reorder). Changing the delay affects packets that
arrive afterwards; packets already held keep their release time (and, FIFO, new packets
wait for them). Changing the rate applies to the packets not yet serialized, as a real link
serves its queue at the rate it has now: the packet on the transmitter sends its remaining
bytes at the new rate and those waiting behind it follow at the new rate (netem and a
schedule fixed on arrival would keep the old rate for the whole queue: ~20 ms of the old rate
after each step of a trace, measured in benchmarks/bench_trace.py).

Command line::

    python -m emulation.delayline --queue NUM:DELAY_MS[:JITTER_MS[:RATE_BPS[:QUEUE_BYTES]]]
                                  [--queue ...] [--mtu BYTES] [--maxlen N] [--seed S]
                                  [--rcvbuf BYTES] [--no-gso] [--fail-open] [--rt-priority P]

Control: JSON lines. On stdout, once all queues are bound:
``{"ready": true, "queues": [..], "copy_mode": {...}, "gso": {...}, "notes": [...],
"sched": {"policy": "SCHED_FIFO", "priority": P}}``
(or ``{"ready": false, "error": "..."}`` and exit status 1). Requests on stdin, one reply
line each on stdout:

* ``{"op": "set", "queue": N, "delay_ms": X, "jitter_ms": Y, "rate_bps": R, "queue_bytes": B}``
  (any value may be omitted = unchanged; ``rate_bps``/``queue_bytes`` null = no serialization /
  no queue limit) -> ``{"ok": true, "queue": N, "delay_ms": X, "jitter_ms": Y, "rate_bps": R,
  "queue_bytes": B}``
* ``{"op": "stats"}`` -> ``{"ok": true, "stats": {"N": {...}, ...}, "wakeup_lead_us": x}``
  with, per queue (keys are strings): ``packets`` (queued to us so far), ``held`` (now),
  ``released``, ``dropped_enobufs`` (ENOBUFS reports on the queue's socket: the kernel could
  not deliver, each report stands for >= 1 packet it dropped), ``verdict_errors``,
  ``delay_ms``, ``jitter_ms``, ``rate_bps``, ``queue_bytes``, ``bytes`` (wire bytes counted),
  ``dropped_queue`` (drop-tail: the serialization queue was full), ``unsized`` (packets whose
  length the kernel did not report: serialized as 0 bytes; should stay 0), ``release_batches`` (batch verdicts sent), ``late_us_mean`` /
  ``late_us_max`` (how late the oldest packet of each batch left, vs. its due time; null
  before the first batch) and, read from /proc/net/netfilter/nfnetlink_queue of the
  namespace, ``kernel_queued``, ``kernel_queue_dropped`` (queue full) and
  ``kernel_user_dropped`` (exact count of packets lost to a full netlink socket).
* ``{"op": "quit"}`` -> ``{"ok": true}``, then shut down as on EOF.
* anything else -> ``{"ok": false, "error": "..."}`` (the daemon keeps running).

Timing: the loop waits in ``select`` until the next release; timer slack is set to 1 ns and
the average wake-up overshoot of past timer wake-ups (``wakeup_lead_us``, at most 0.5 ms) is
subtracted from the wait, and the loop spins the remaining few tens of microseconds, so a
packet leaves at its due time: not systematically ~0.1 ms late, and never early.

Each queue has its own netlink socket (the kernel only takes verdicts from the socket that
bound the queue, and ENOBUFS is then attributable to a queue).

EOF on stdin (parent closed it or died), SIGTERM or SIGINT: every held packet is accepted,
the queues are unbound and the process exits 0 -- the daemon never outlives its parent.
Consequently, started with stdin at /dev/null it exits at once.
"""

from __future__ import annotations

import argparse
import collections
import errno
import gc
import json
import math
import os
import random
import select
import signal
import sys
import time

from emulation import nfqueue

MAX_DELAY_MS = 3_600_000.0  # one hour; anything above is surely a unit mistake
MAX_LEAD_S = 0.0005  # cap of the wake-up latency compensation
_MAX_LINE = 1 << 20


# --- pure scheduling ---------------------------------------------------------------------
class DelaySchedule:
    """FIFO schedule of one queue -- serialization at a rate, then delay -- arrival times in,
    release times out (no I/O).

    ``push(arrival, item, nbytes)`` returns the release time, or None when the packet is
    dropped (its serialization queue is full); ``pop_due(now)`` returns the items due by
    ``now`` in arrival order. Times are seconds (any monotonic clock); delays are ms, the
    rate bit/s, the queue bytes.
    """

    __slots__ = ("delay_ms", "jitter_ms", "rate_bps", "queue_bytes", "_delay", "_jitter", "_rate", "_rng",
                 "_last", "_sent", "_q")

    def __init__(self, delay_ms: float = 0.0, jitter_ms: float = 0.0, rng: random.Random | None = None,
                 rate_bps: int | None = None, queue_bytes: int | None = None):
        self._rng = rng if rng is not None else random.Random()
        self._last = -math.inf
        self._sent = -math.inf  # when the transmitter finishes the last packet given to it
        self._q: collections.deque = collections.deque()
        self.rate_bps = self.queue_bytes = None
        self._rate = 0.0
        self.set(delay_ms, jitter_ms)
        self.set_rate(rate_bps, queue_bytes)

    def set(self, delay_ms: float, jitter_ms: float = 0.0) -> None:
        delay_ms, jitter_ms = float(delay_ms), float(jitter_ms)
        if not (math.isfinite(delay_ms) and math.isfinite(jitter_ms)) or delay_ms < 0 or jitter_ms < 0:
            raise ValueError(f"delay/jitter must be finite and >= 0, got {delay_ms}/{jitter_ms}")
        self.delay_ms, self.jitter_ms = delay_ms, jitter_ms
        self._delay, self._jitter = delay_ms / 1000.0, jitter_ms / 1000.0

    def set_rate(self, rate_bps: int | None, queue_bytes: int | None = None, now: float | None = None) -> None:
        """Serialize at ``rate_bps`` (None: do not) with a drop-tail queue of ``queue_bytes``
        (None: unlimited). Given ``now``, a new rate applies to the packets held, as a real
        link serves its queue at the rate it has now: the one on the transmitter sends its
        remaining bytes at the new rate, those waiting behind it are serialized at the new
        rate, and each keeps its delay sample (:meth:`retime`). Without ``now`` packets
        already scheduled keep their times."""
        for v, name in ((rate_bps, "rate_bps"), (queue_bytes, "queue_bytes")):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or null, got {v!r}")
        old = self._rate
        self.rate_bps, self.queue_bytes = rate_bps, queue_bytes
        self._rate = rate_bps / 8.0 if rate_bps else 0.0  # bytes/s
        if now is not None and self._rate != old:
            self.retime(now, old)

    def retime(self, now: float, old_rate: float) -> int:
        """Re-time the packets not yet serialized at ``now`` for the current rate, which was
        ``old_rate`` (bytes/s) when they were scheduled; returns how many were re-timed.
        Packets already sent keep their release (they propagate); FIFO order holds."""
        q = self._q
        rate = self._rate
        out: collections.deque = collections.deque()
        prev_sent = prev_release = -math.inf
        retimed = 0
        for entry in q:
            release, item, arrival, nbytes, sent, d = entry
            if sent <= now:                 # serialized already: only propagating
                out.append(entry)
                prev_sent, prev_release = sent, release
                continue
            if not retimed:                 # on the transmitter: its remaining bytes at the new rate
                left = (sent - now) * old_rate
                sent = now + (left / rate if rate else 0.0)
            else:
                start = prev_sent if prev_sent > arrival else arrival
                sent = start + (nbytes / rate if rate else 0.0)
            release = sent + d
            if release < prev_release:
                release = prev_release
            out.append((release, item, arrival, nbytes, sent, d))
            prev_sent, prev_release = sent, release
            retimed += 1
        if retimed:
            self._q = out
            self._sent, self._last = prev_sent, prev_release
        return retimed

    def sample_delay(self) -> float:
        """One delay sample in seconds: delay + U(-jitter, +jitter), clamped to >= 0."""
        if not self._jitter:
            return self._delay
        d = self._delay + self._rng.uniform(-self._jitter, self._jitter)
        return d if d > 0.0 else 0.0

    def release_time(self, arrival: float, nbytes: int = 0) -> float | None:
        """Release time for a packet of ``nbytes`` wire bytes arriving now (advances the
        transmitter and FIFO state, holds nothing); None: dropped, the queue is full."""
        r = self._schedule(arrival, nbytes)
        return None if r is None else r[0]

    def _schedule(self, arrival: float, nbytes: int) -> tuple[float, float, float] | None:
        """(release, end of its serialization, its delay sample) of a packet arriving now."""
        rate = self._rate
        if rate:
            start = self._sent if self._sent > arrival else arrival
            if self.queue_bytes is not None and (start - arrival) * rate + nbytes > self.queue_bytes:
                return None
            sent = self._sent = start + nbytes / rate
        else:
            sent = arrival
        j = self._jitter
        if j:
            d = self._delay + self._rng.uniform(-j, j)
            if d < 0.0:
                d = 0.0
        else:
            d = self._delay
        t = sent + d
        if t < self._last:
            t = self._last
        self._last = t
        return t, sent, d

    def push(self, arrival: float, item=None, nbytes: int = 0) -> float | None:
        r = self._schedule(arrival, nbytes)
        if r is None:
            return None
        t, sent, d = r
        self._q.append((t, item, arrival, nbytes, sent, d))
        return t

    def next_due(self) -> float | None:
        return self._q[0][0] if self._q else None

    def pop_due(self, now: float) -> list:
        q = self._q
        out = []
        while q and q[0][0] <= now:
            out.append(q.popleft()[1])
        return out

    def pop_all(self) -> list:
        out = [entry[1] for entry in self._q]
        self._q.clear()
        return out

    def __len__(self) -> int:
        return len(self._q)


class QueueStats:
    __slots__ = ("packets", "released", "dropped_enobufs", "dropped_queue", "unsized", "bytes", "verdict_errors",
                 "batches", "late_sum", "late_max")

    def __init__(self):
        self.packets = self.released = self.dropped_enobufs = self.dropped_queue = self.unsized = self.bytes = 0
        self.verdict_errors = self.batches = 0
        self.late_sum = 0.0
        self.late_max = -math.inf


# --- the daemon ----------------------------------------------------------------------------
MAX_AGE_S = 0.05  # older stamps mean a clock step, not a slow wake-up: ignore them
ETH_HEADER = 14
COPY_RANGE = 128  # bytes of each packet copied to us: an IPv4 (<= 60) and a TCP (<= 60) header
DEFAULT_MTU = 1500


def wire_bytes(buf, off: int, avail: int, length: int, mtu: int = DEFAULT_MTU) -> int:
    """Bytes an Ethernet interface of ``mtu`` sends for an IP packet of ``length`` bytes whose
    first ``avail`` bytes are ``buf[off:off + avail]``.

    A packet that fits the MTU is one frame: ``length`` + the Ethernet header. A bigger one is
    a TCP GSO super-packet (queued whole): the interface cuts it into segments of
    ``mtu`` - headers payload bytes, each with its own IP + TCP + Ethernet headers. Anything
    else bigger than the MTU (no TCP header to read) counts as one frame, which undercounts:
    the wire's tbf, behind the delay line, still holds such traffic to the rate."""
    if length <= mtu or avail < 20:
        return length + ETH_HEADER
    v = buf[off] >> 4
    if v == 4:
        ihl, proto = (buf[off] & 15) * 4, buf[off + 9]
    elif v == 6:
        ihl, proto = 40, buf[off + 6]
    else:
        return length + ETH_HEADER
    if proto != 6 or avail < ihl + 13:
        return length + ETH_HEADER
    hdr = ihl + (buf[off + ihl + 12] >> 4) * 4
    mss = mtu - hdr
    if mss <= 0 or length <= hdr:
        return length + ETH_HEADER
    segs = -(-(length - hdr) // mss)
    return length + segs * ETH_HEADER + (segs - 1) * hdr


def packet_info(buf, n: int, now_real: float, mtu: int = DEFAULT_MTU) -> tuple[float, int | None]:
    """(seconds since the kernel stamped the packet, its wire bytes) from one packet message.

    The age comes from NFQA_TIMESTAMP (0 when absent): our wake-up on a queued packet takes
    ~20-100 us, and dating the packet from the kernel's own receive stamp keeps that wake-up
    out of the delay the link adds. The length is NFQA_CAP_LEN (the whole packet, sent when
    the copy is shorter) or else the copied payload's length; None when neither came."""
    stamp, length, poff, plen = nfqueue.packet_fields(buf, n)
    age = 0.0
    if stamp is not None:
        a = now_real - stamp
        age = a if 0.0 <= a <= MAX_AGE_S else 0.0
    if length is None:
        if not plen:
            return age, None
        length = plen
    return age, wire_bytes(buf, poff, plen, length, mtu)


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or v > MAX_DELAY_MS:
        raise ValueError(f"{name} must be within 0..{MAX_DELAY_MS:g}, got {value!r}")
    return v


class DelayLine:
    """Holds the per-queue schedules and statistics; :meth:`open` binds the netlink queues,
    :meth:`run` is the event loop. Without :meth:`open` it is a pure object whose control
    handling (:meth:`handle_line`) can be unit-tested."""

    def __init__(self, queues: dict[int, tuple], *, seed: int | None = None, maxlen: int = 65536,
                 rcvbuf: int = 8 << 20, gso: bool = True, fail_open: bool = False, mtu: int = DEFAULT_MTU):
        """``queues``: number -> (delay_ms, jitter_ms[, rate_bps[, queue_bytes]])."""
        if not queues:
            raise ValueError("at least one queue is needed")
        if not 68 <= mtu <= 65535:
            raise ValueError(f"mtu {mtu} out of range 68..65535")
        self.schedules: dict[int, DelaySchedule] = {}
        self.stats_: dict[int, QueueStats] = {}
        for q, spec in sorted(queues.items()):
            if not 0 <= q <= 0xFFFF:
                raise ValueError(f"queue number {q} out of range 0..65535")
            delay, jitter, rate, qbytes = (tuple(spec) + (None, None))[:4]
            rng = random.Random(None if seed is None else seed * 65537 + q)
            self.schedules[q] = DelaySchedule(_number(delay, "delay_ms"), _number(jitter, "jitter_ms"), rng,
                                              rate, qbytes)
            self.stats_[q] = QueueStats()
        self.maxlen, self.rcvbuf, self.gso, self.fail_open, self.mtu = maxlen, rcvbuf, gso, fail_open, mtu
        self.socks: dict[int, nfqueue.QueueSocket] = {}
        self.stopping = False
        self.lead = 0.0  # learnt timer wake-up overshoot (s), see run()
        self._buf = bytearray(1 << 16)
        self._inbuf = b""

    # -- control ------------------------------------------------------------------------
    def handle_line(self, line) -> dict:
        """Handle one control line (str or bytes); return the reply object. Never raises."""
        try:
            if isinstance(line, (bytes, bytearray)):
                line = bytes(line).decode("utf-8")
            try:
                msg = json.loads(line)
            except ValueError as e:
                return {"ok": False, "error": f"not JSON: {e}"}
            if not isinstance(msg, dict):
                return {"ok": False, "error": "request must be a JSON object"}
            op = msg.get("op")
            if op == "set":
                return self._op_set(msg)
            if op == "stats":
                return {"ok": True, "stats": self.stats(), "wakeup_lead_us": round(self.lead * 1e6, 1)}
            if op == "quit":
                self.stopping = True
                return {"ok": True}
            return {"ok": False, "error": f"unknown op {op!r} (expected set, stats or quit)"}
        except Exception as e:  # never let a control line kill the delay line
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}

    def _op_set(self, msg: dict) -> dict:
        q = msg.get("queue")
        if isinstance(q, str) and q.strip().isdigit():
            q = int(q)
        if isinstance(q, bool) or not isinstance(q, int):
            return {"ok": False, "error": f"queue must be an integer, got {q!r}"}
        sched = self.schedules.get(q)
        if sched is None:
            return {"ok": False, "error": f"unknown queue {q}; this delay line serves {sorted(self.schedules)}"}
        unknown = set(msg) - {"op", "queue", "delay_ms", "jitter_ms", "rate_bps", "queue_bytes"}
        if unknown:
            return {"ok": False, "error": f"unknown field(s) {sorted(unknown)}"}
        try:
            delay = _number(msg["delay_ms"], "delay_ms") if "delay_ms" in msg else sched.delay_ms
            jitter = _number(msg["jitter_ms"], "jitter_ms") if "jitter_ms" in msg else sched.jitter_ms
            rate = msg.get("rate_bps", sched.rate_bps)
            qbytes = msg.get("queue_bytes", sched.queue_bytes)
            sched.set_rate(rate, qbytes, now=time.monotonic())  # validates both before anything changes
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        sched.set(delay, jitter)
        return {"ok": True, "queue": q, "delay_ms": sched.delay_ms, "jitter_ms": sched.jitter_ms,
                "rate_bps": sched.rate_bps, "queue_bytes": sched.queue_bytes}

    def stats(self) -> dict:
        kernel = nfqueue.read_proc_stats() if self.socks else {}
        out = {}
        for q, sched in self.schedules.items():
            st = self.stats_[q]
            d = {"packets": st.packets, "held": len(sched), "released": st.released,
                 "dropped_enobufs": st.dropped_enobufs, "dropped_queue": st.dropped_queue,
                 "verdict_errors": st.verdict_errors, "delay_ms": sched.delay_ms, "jitter_ms": sched.jitter_ms,
                 "rate_bps": sched.rate_bps, "queue_bytes": sched.queue_bytes, "bytes": st.bytes,
                 "unsized": st.unsized,
                 "release_batches": st.batches,
                 "late_us_mean": round(st.late_sum / st.batches * 1e6, 1) if st.batches else None,
                 "late_us_max": round(st.late_max * 1e6, 1) if st.batches else None}
            k = kernel.get(q)
            s = self.socks.get(q)
            if k is not None and s is not None and k["portid"] == s.portid:
                d.update(kernel_queued=k["kernel_queued"], kernel_queue_dropped=k["kernel_queue_dropped"],
                         kernel_user_dropped=k["kernel_user_dropped"])
            out[str(q)] = d
        return out

    # -- netlink ------------------------------------------------------------------------
    def open(self) -> dict:
        """Bind and configure every queue; returns the ready message (not yet printed)."""
        now = time.monotonic()
        for q in self.schedules:
            s = nfqueue.QueueSocket(q, rcvbuf=self.rcvbuf)
            self.socks[q] = s
            s.setup(maxlen=self.maxlen, gso=self.gso, fail_open=self.fail_open, copy_range=COPY_RANGE)
            self._take_pending(q, now)
        return {"ready": True, "queues": sorted(self.schedules),
                "copy_mode": {str(q): s.copy_mode for q, s in self.socks.items()},
                "gso": {str(q): bool(s.flags & nfqueue.NFQA_CFG_F_GSO) for q, s in self.socks.items()},
                "mtu": self.mtu,
                "notes": [f"queue {q}: {n}" for q, s in self.socks.items() for n in s.notes]}

    def _drain(self, q: int, budget: int = 512) -> None:
        """Read up to ``budget`` netlink messages of queue ``q`` without blocking."""
        sock = self.socks[q].sock
        recv = sock.recv_into
        buf = self._buf
        push = self.schedules[q].push
        st = self.stats_[q]
        mtu = self.mtu
        monotonic = time.monotonic
        realtime = time.time
        single_packet_id = nfqueue.single_packet_id
        for _ in range(budget):
            try:
                n = recv(buf)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # kernel could not deliver: it dropped packets
                    st.dropped_enobufs += 1
                    continue
                raise
            now = monotonic()
            pid = single_packet_id(buf, n)
            if pid is not None:  # fast path: exactly one packet message, as the kernel mostly sends
                age, nbytes = packet_info(buf, n, realtime(), mtu)
                self._queue_packet(q, push, st, now - age, pid, nbytes)
                continue

            def on_packet(pid, now=now):
                self._queue_packet(q, push, st, now, pid, None)

            def on_error(_err):
                st.verdict_errors += 1

            nfqueue.scan_packets(buf, n, on_packet, on_error)

    def _take_pending(self, q: int, now: float) -> None:
        """Schedule the packets that arrived while the queue was being configured (their
        length unknown: they count as ``unsized``)."""
        s = self.socks[q]
        for pid in s.pending:
            self._queue_packet(q, self.schedules[q].push, self.stats_[q], now, pid, None)
        s.pending.clear()

    def _queue_packet(self, q: int, push, st: QueueStats, arrival: float, pid: int, nbytes: int | None) -> None:
        st.packets += 1
        if nbytes is None:
            st.unsized += 1
            nbytes = 0
        st.bytes += nbytes
        if push(arrival, pid, nbytes) is None:  # drop-tail: the link's queue is full
            st.dropped_queue += 1
            try:
                self.socks[q].send(nfqueue.build_verdict(q, pid, nfqueue.NF_DROP))
            except OSError:
                st.verdict_errors += 1

    def _release_due(self, now: float) -> None:
        for q, sched in self.schedules.items():
            first = sched.next_due()
            if first is not None and first <= now:
                self._verdict(q, sched.pop_due(now), first)

    def _verdict(self, q: int, ids: list, first_due: float | None = None) -> None:
        # ids are in FIFO (= packet id) order, so one batch verdict for the last id covers all
        st = self.stats_[q]
        # how late the oldest packet of the batch goes out (measured before the send: the
        # kernel forwards the released packets synchronously inside it)
        late = time.monotonic() - first_due if first_due is not None else None
        try:
            self.socks[q].send(nfqueue.build_verdict_batch(q, ids[-1], nfqueue.NF_ACCEPT))
            st.released += len(ids)
        except OSError:
            st.verdict_errors += 1
            return
        if late is not None:
            st.batches += 1
            st.late_sum += late
            if late > st.late_max:
                st.late_max = late

    # -- event loop -----------------------------------------------------------------------
    def _emit(self, obj: dict) -> None:
        data = (json.dumps(obj) + "\n").encode()
        try:
            while data:
                data = data[os.write(1, data):]
        except OSError:  # parent gone (EPIPE): nobody to serve any more
            self.stopping = True

    def _read_control(self) -> None:
        try:
            chunk = os.read(0, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            if self._inbuf.strip():
                self._emit(self.handle_line(self._inbuf))
            self._inbuf = b""
            self.stopping = True
            return
        self._inbuf += chunk
        *lines, self._inbuf = self._inbuf.split(b"\n")
        for line in lines:
            if line.strip():
                self._emit(self.handle_line(line))
        if len(self._inbuf) > _MAX_LINE:
            self._inbuf = b""
            self._emit({"ok": False, "error": f"control line longer than {_MAX_LINE} bytes"})

    def run(self) -> None:
        try:  # precise timer wake-ups: 1 ns timer slack instead of the default 50 us
            with open("/proc/self/timerslack_ns", "w") as f:
                f.write("1")
        except OSError:
            pass
        gc.freeze()  # startup objects never need scanning again
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        old_handlers = {}

        def on_signal(_signum, _frame):
            self.stopping = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            old_handlers[sig] = signal.signal(sig, on_signal)
        try:
            try:
                os.fstat(0)
                stdin_ok = True
            except OSError:
                stdin_ok = False
                self.stopping = True
            by_fd = {s.fileno(): q for q, s in self.socks.items()}
            rlist = list(by_fd) + [wake_r] + ([0] if stdin_ok else [])
            monotonic = time.monotonic
            schedules = list(self.schedules.values())
            while not self.stopping:
                # ``lead``: the timer wakes us this much late on average, so we ask to be woken
                # lead before the next packet is due and wait out the rest (below): packets leave
                # on time and never early
                lead = self.lead
                now = monotonic()
                self._release_due(now)
                nxt = None
                for sched in schedules:
                    t = sched.next_due()
                    if t is not None and (nxt is None or t < nxt):
                        nxt = t
                if nxt is None:
                    timeout = None
                else:
                    now = monotonic()
                    timeout = nxt - lead - now
                    if timeout < 0.0:
                        timeout = 0.0
                ready, _, _ = select.select(rlist, [], [], timeout)
                if not ready:
                    if timeout:  # a timer wake-up: learn its overshoot
                        over = monotonic() - (now + timeout)
                        lead = 0.95 * lead + 0.05 * (over if over < MAX_LEAD_S else MAX_LEAD_S)
                        self.lead = lead if lead > 0.0 else 0.0
                    while monotonic() < nxt:  # at most ``lead`` (<= MAX_LEAD_S): spin to the due time
                        pass
                    continue
                for fd in ready:
                    q = by_fd.get(fd)
                    if q is not None:
                        self._drain(q)
                self._release_due(monotonic())
                if 0 in ready:
                    self._read_control()
                if wake_r in ready:
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            os.close(wake_r)
            os.close(wake_w)

    def close(self) -> None:
        """Accept every held packet, unbind the queues, close the sockets."""
        for q, s in self.socks.items():
            try:
                if s.bound:
                    self._drain(q, budget=1 << 16)
                    ids = self.schedules[q].pop_all()
                    if ids:
                        self._verdict(q, ids)
                    s.unbind()
            except OSError:
                pass
            s.close()
        self.socks.clear()


# --- command line --------------------------------------------------------------------------
QUEUE_SPEC = "NUM:DELAY_MS[:JITTER_MS[:RATE_BPS[:QUEUE_BYTES]]]"


def parse_queue_spec(spec: str) -> tuple:
    """``NUM:DELAY_MS[:JITTER_MS[:RATE_BPS[:QUEUE_BYTES]]]`` -> (queue, delay_ms, jitter_ms,
    rate_bps, queue_bytes); an empty or missing rate/queue is None (no serialization/limit)."""
    parts = spec.split(":")
    if not 1 <= len(parts) <= 5:
        raise argparse.ArgumentTypeError(f"bad queue spec {spec!r}: expected {QUEUE_SPEC}")
    parts += [""] * (5 - len(parts))
    try:
        q = int(parts[0])
        delay = float(parts[1]) if parts[1] else 0.0
        jitter = float(parts[2]) if parts[2] else 0.0
        rate = int(parts[3]) if parts[3] else None
        qbytes = int(parts[4]) if parts[4] else None
        if not 0 <= q <= 0xFFFF:
            raise ValueError(f"queue {q} out of range 0..65535")
        _number(delay, "delay_ms")
        _number(jitter, "jitter_ms")
        DelaySchedule(rate_bps=rate, queue_bytes=qbytes)  # validates them
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"bad queue spec {spec!r}: {e}") from None
    return q, delay, jitter, rate, qbytes


def realtime(priority: int) -> dict:
    """Switch this process to SCHED_FIFO at ``priority`` (0: leave it as it is); returns the
    policy and priority as the kernel now holds them. An error says why it was refused."""
    if priority:
        if not 1 <= priority <= 99:
            raise ValueError(f"--rt-priority {priority}: allowed 1..99, or 0 for the normal scheduler")
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        except OSError as e:
            raise OSError(e.errno, f"cannot run at SCHED_FIFO {priority}: {e.strerror} (needs root, in a cgroup "
                                   "that allows real-time tasks)") from None
    policy = os.sched_getscheduler(0)
    names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}
    return {"policy": names.get(policy, str(policy)), "priority": os.sched_getparam(0).sched_priority}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m emulation.delayline",
                                description="NFQUEUE packet delay line (holds packets, then accepts them).")
    p.add_argument("--queue", action="append", type=parse_queue_spec, required=True,
                   metavar=QUEUE_SPEC, help="queue to serve (repeatable); with RATE_BPS it serializes each "
                                            "packet at that rate, dropping beyond QUEUE_BYTES waiting")
    p.add_argument("--mtu", type=int, default=DEFAULT_MTU,
                   help=f"MTU of the interfaces the packets leave by (default {DEFAULT_MTU}): how GSO "
                        "super-packets are cut into frames")
    p.add_argument("--maxlen", type=int, default=65536, help="kernel queue length per queue (default 65536)")
    p.add_argument("--seed", type=int, default=None, help="seed of the jitter samples")
    p.add_argument("--rcvbuf", type=int, default=8 << 20, help="netlink receive buffer bytes (default 8 MiB)")
    p.add_argument("--no-gso", action="store_true", help="do not set NFQA_CFG_F_GSO (kernel segments GSO packets)")
    p.add_argument("--fail-open", action="store_true",
                   help="NFQA_CFG_F_FAIL_OPEN: accept (undelayed) instead of drop when the queue is full")
    p.add_argument("--rt-priority", type=int, default=0,
                   help="run at SCHED_FIFO with this priority (1..99; 0: the normal scheduler), so that "
                        "hosts computing at their full quota beside it cannot delay a release")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.maxlen <= 0xFFFFFFFF or args.rcvbuf < 1:
        build_parser().error("--maxlen must be within 1..4294967295 and --rcvbuf >= 1")
    if not 68 <= args.mtu <= 65535:
        build_parser().error("--mtu must be within 68..65535")
    queues: dict[int, tuple] = {}
    for q, *spec in args.queue:
        if q in queues:
            build_parser().error(f"queue {q} given twice")
        queues[q] = tuple(spec)
    dl = DelayLine(queues, seed=args.seed, maxlen=args.maxlen, rcvbuf=args.rcvbuf,
                   gso=not args.no_gso, fail_open=args.fail_open, mtu=args.mtu)
    # a SIGTERM while binding must not kill the process half-configured: just note it
    # (run() installs the same handler together with its wake-up pipe)
    def on_signal(_signum, _frame):
        dl.stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        ready = dl.open()
        ready["sched"] = realtime(args.rt_priority)
    except Exception as e:
        dl.close()
        dl._emit({"ready": False, "error": str(e)})
        print(f"delayline: {e}", file=sys.stderr)
        return 1
    dl._emit(ready)
    try:
        dl.run()
    finally:
        dl.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
