"""The per-hop trace of one request: what a record holds, how one is made, and where the
request's time went (:func:`breakdown`).

Stdlib only: the servers and the client (:mod:`workloads.serving`, ONNX Runtime + numpy) write
records, and the runner, the reports and the benchmarks read them; neither side needs the
other's dependencies to do so.

Every process that receives a frame appends a record to the message's ``meta.trace``, and the
answer carries the list home. The client starts the list with a ``client`` record; each server
adds a ``request`` record for the frame it was sent, and a forwarding server adds a
``response`` record for the answer it relays back; the client ends the list with the
``response`` record of the answer it got. Stamps are ``time.monotonic_ns()`` values: one
clock, since every emulated host is a process on this machine. Fields that depend on how long
something took, rather than on when it happened, are 13-digit strings of ns (:func:`fixed_ns`),
so that a frame's size never depends on them. A record holds only the fields its process
measured: ``conn0``/``conn1`` only when a connection was opened for the request, the compute
fields only on a server that ran its part, ``due`` only when a load scenario scheduled the
request.

A server computes one request at a time, in arrival order (:mod:`workloads.serving`), so a
request that arrives while others wait or compute there waits its turn: ``queued`` counts the
requests ahead of it, and ``comp0 - dec1`` (frame decoded to compute started) is its queue wait.

:data:`FIELDS` and :data:`STAGES` are the schema (name, meaning, unit), :func:`markdown` renders
them. To add a field: add it to :data:`FIELDS`, then stamp it where it is measured (in
:func:`record` when it comes with every received frame). :func:`breakdown` turns a trace into
compute and queue wait per host, transmission per link direction, serialisation and the
lateness of a scheduled send; nothing is inferred from end-to-end time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .codec import Message


@dataclass(frozen=True)
class Field:
    name: str
    meaning: str
    unit: str       # "ns": a monotonic stamp; "ns, 13 digits": a duration as a fixed-width string


STAGES: dict[str, str] = {
    "client": "the client, as it sends a request (the first record)",
    "request": "a server, on the request frame it received",
    "response": "a forwarding server or the client, on the answer frame it received",
}

FIELDS: tuple[Field, ...] = (
    Field("host", "the host of the process that wrote the record", "name"),
    Field("stage", "which frame the record is about: " + ", ".join(STAGES), "name"),
    Field("part", "the part of the model this server runs (request records)", "index"),
    Field("start", "the client's stamp before anything else for this request (client record)", "ns"),
    Field("due", "the time a load scenario scheduled the request (client record); end-to-end latency is "
                 "measured from it, so a late send counts", "ns"),
    Field("sent", "the sender's stamp just before the frame's first byte (from the frame prefix)", "ns"),
    Field("recv0", "the frame's first bytes read", "ns"),
    Field("recv1", "the frame's last byte read", "ns"),
    Field("dec1", "the frame's tensors built", "ns"),
    Field("bytes", "the frame's size on the wire: prefix + header + payload", "bytes"),
    Field("stall", "the receiver's CPU-quota stall on the frame's last bytes "
                   "(workloads.pacing.QuotaStalls)", "ns, 13 digits"),
    Field("queued", "the requests waiting or computing on this server when this one joined its compute "
                    "queue: requests ahead at arrival (request records)", "count"),
    Field("comp0", "inference started (paced when the server paces, workloads.pacing)", "ns"),
    Field("comp1", "inference ended", "ns"),
    Field("cpu", "the CPU time the server's compute threads spent in the inference", "ns, 13 digits"),
    Field("paced", "how long pacing made the inference wait", "ns, 13 digits"),
    Field("exit", "the early-exit segment that answered, or null", "index"),
    Field("conn0", "before opening a connection to the next hop (only when one was opened)", "ns"),
    Field("conn1", "the connection to the next hop open", "ns"),
    Field("enc0", "before encoding what this process sends next", "ns"),
)

now = time.monotonic_ns


def fixed_ns(ns: int) -> str:
    """``ns`` as a 13-digit string (up to 2.7 hours): for fields whose value must not change the
    size of the frame that carries them."""
    return f"{ns:013d}"


def client_record(host: str, due: int | None = None) -> dict:
    """The record a client starts a request's trace with; ``due``: the stamp at which a load
    scenario scheduled the request (end-to-end latency counts from it, see :func:`breakdown`)."""
    rec = {"host": host, "stage": "client", "start": now()}
    if due is not None:
        rec["due"] = due
    return rec


def record(host: str, stage: str, msg: Message, part: int | None = None) -> dict:
    """The record of frame ``msg``, just read and decoded by ``host``: its stamps and size.
    ``part``: the model part this server runs (request records)."""
    rec: dict = {"host": host, "stage": stage}
    if part is not None:
        rec["part"] = part
    rec.update(sent=msg.sent_ns, recv0=msg.recv_start_ns, recv1=msg.recv_end_ns, dec1=msg.decode_end_ns,
               bytes=msg.nbytes, stall=fixed_ns(msg.stall_ns))
    return rec


def markdown() -> str:
    """The stages and fields as Markdown tables (for the docs)."""
    lines = ["| stage | record |", "|---|---|"]
    lines += [f"| `{name}` | {meaning} |" for name, meaning in STAGES.items()]
    lines += ["", "| field | meaning | unit |", "|---|---|---|"]
    lines += [f"| `{f.name}` | {f.meaning} | {f.unit} |" for f in FIELDS]
    return "\n".join(lines) + "\n"


# ---- the trace, read ------------------------------------------------------------------------

@dataclass
class Breakdown:
    e2e_ms: float | None
    compute_ms: float
    transmission_ms: float
    serialization_ms: float
    queue_ms: float         # waiting for the compute of requests ahead, summed over the servers
    late_ms: float          # the client began this long after the request was due (0 when not scheduled)
    overhead_ms: float | None
    bytes_sent: int
    exit_segment: int | None
    hops: list[dict]       # {kind, src, dst, direction, part, bytes, ms, decode_ms, encode_ms}


def _ms(a: int, b: int) -> float:
    return (b - a) / 1e6


def breakdown(trace: list[dict]) -> Breakdown:
    """Where one request's time went, from its trace (see the module docstring).

    Links: for each record that received a frame, ``recv1 - sent`` (first byte sent to last
    byte received; plus the connection set-up when the sender opened one for it), attributed
    to sender host -> receiver host in the record's direction. A hop between two processes on
    the same host (the source is the first host) is not an emulated link: it is kept as a hop
    but it is not transmission: moving a message between two processes on one host is that
    host's work, done under its CPU quota, and counts as serialisation. Serialisation: ``sent -
    enc0`` at the sender plus ``dec1 - recv1`` at the receiver, plus the receiver's quota stall
    on the frame's last bytes (``stall``: the host's CPU quota had run out when they arrived,
    :class:`workloads.pacing.QuotaStalls`), which is taken out of the link's time. Queue: on each
    server, ``comp0 - dec1`` (a ``queue`` hop before its ``compute`` hop). End-to-end: from
    ``due`` when the client record has it (a send that began late counts: ``late_ms`` is
    ``start - due``), else from ``start``, to the answer decoded. Overhead: end-to-end minus the
    rest."""
    hops: list[dict] = []
    compute = transmission = serialization = queue = 0.0
    nbytes = 0
    exit_segment = None
    for prev, rec in zip(trace, trace[1:]):
        if "sent" not in rec:
            break
        connect = _ms(prev["conn0"], prev["conn1"]) if "conn1" in prev else 0.0
        stall = min(int(rec.get("stall", 0)) / 1e6, _ms(rec["sent"], rec["recv1"]))
        link_ms = _ms(rec["sent"], rec["recv1"]) + connect - stall
        enc = _ms(prev["enc0"], rec["sent"]) if "enc0" in prev else None
        dec = _ms(rec["recv1"], rec["dec1"]) + stall
        direction = "request" if rec["stage"] == "request" else "response"
        hops.append({"kind": "link", "src": prev["host"], "dst": rec["host"], "direction": direction,
                     "part": None, "bytes": rec["bytes"], "ms": link_ms, "decode_ms": dec, "encode_ms": enc})
        if prev["host"] != rec["host"]:
            transmission += link_ms
        else:
            serialization += link_ms
        serialization += dec + (enc or 0.0)
        nbytes += rec["bytes"]
        if "comp1" in rec:
            q, c = _ms(rec["dec1"], rec["comp0"]), _ms(rec["comp0"], rec["comp1"])
            for kind, ms in (("queue", q), ("compute", c)):
                hops.append({"kind": kind, "src": rec["host"], "dst": rec["host"], "direction": "request",
                             "part": rec.get("part"), "bytes": None, "ms": ms, "decode_ms": None, "encode_ms": None})
            queue += q
            compute += c
        if rec.get("exit") is not None:
            exit_segment = rec["exit"]
    last = trace[-1] if trace else {}
    complete = len(trace) >= 2 and trace[0].get("stage") == "client" and last.get("stage") == "response" \
        and "dec1" in last and len(hops) > 0
    first = trace[0] if trace else {}
    late = _ms(first["due"], first["start"]) if "due" in first else 0.0
    e2e = _ms(first.get("due", first.get("start")), last["dec1"]) if complete else None
    overhead = e2e - compute - transmission - serialization - queue - late if e2e is not None else None
    return Breakdown(e2e, compute, transmission, serialization, queue, late, overhead, nbytes, exit_segment, hops)
