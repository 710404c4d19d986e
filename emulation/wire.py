"""A link's wire on a machine without netem: its iptables rules and the client of its delay line.

The wire is the forwarding namespace in the middle of a link (:mod:`emulation.plan`). Without
netem, its FORWARD rules drop each direction's loss (``statistic``) and send each direction
that needs delay, jitter or serialization to an NFQUEUE, queue 0 for a->b and 1 for b->a,
served by the wire's delay line (:mod:`emulation.delayline`, a process in the wire's
namespace). This module says which rules and delay-line settings a link's spec needs (pure
functions), and talks to a running delay line over its JSON lines (:class:`Wire`).
"""
from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass, field

from topologies import DirectionSpec, LinkSpec

from . import shaping
from .errors import EmulationError
from .process import read_json_line


@dataclass
class Wire:
    """The forwarding namespace in the middle of one link, and its delay line once started."""

    name: str
    if_a: str   # faces the link's a end
    if_b: str   # faces the link's b end
    delayline: subprocess.Popen | None = None
    sched: dict | None = None   # the delay line's scheduling policy and priority, as it reported them
    rules: list[list[str]] = field(default_factory=list)  # iptables rules in place now
    # one request and its reply at a time: a trace's replay thread and the caller share the pipe
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def line_running(self) -> bool:
        return self.delayline is not None and self.delayline.poll() is None

    def call(self, msg: dict) -> dict:
        """Send one request to the delay line and return its reply; a refusal, or a delay
        line that is gone, is an error."""
        p = self.delayline
        assert p is not None
        with self.lock:
            try:
                p.stdin.write(json.dumps(msg) + "\n")
                p.stdin.flush()
            except OSError as e:            # it died: the pipe is broken
                raise EmulationError(f"delay line of wire {self.name} (pid {p.pid}) is gone ({e.strerror or e}): "
                                     "the network needs a rebuild") from None
            reply = read_json_line(p, what="delay line")
        if not reply.get("ok"):
            raise EmulationError(f"delay line of link {self.name} refused {msg}: {reply.get('error')}")
        return reply

    def line_stats(self) -> dict[str, dict]:
        """The delay line's counters per queue ("0": a->b, "1": b->a), as its ``stats`` op says."""
        return self.call({"op": "stats"})["stats"]

    def set_line(self, link: LinkSpec, serialize: bool = True) -> None:
        """Give the delay line both directions' settings of ``link``."""
        for q, d in enumerate((link.forward, link.reverse)):
            self.call({"op": "set", "queue": q, **line_settings(d, serialize)})

    def rules_for(self, link: LinkSpec, serialize: bool = True) -> list[list[str]]:
        """The FORWARD rules ``link``'s spec needs in this wire (empty: no iptables at all)."""
        rules = []
        for q, (in_if, d) in enumerate(((self.if_a, link.forward), (self.if_b, link.reverse))):
            if d.loss:
                rules.append(["-A", "FORWARD", "-i", in_if, "-m", "statistic", "--mode", "random",
                              "--probability", f"{d.loss:.8f}", "-j", "DROP"])
            if in_line(d, serialize):
                rules.append(["-A", "FORWARD", "-i", in_if, "-j", "NFQUEUE", "--queue-num", str(q)])
        return rules


def in_line(d: DirectionSpec, serialize: bool = True) -> bool:
    """Whether a direction goes through the delay line (on a machine without netem): for its
    delay and jitter, and, on a shaped link, to be serialized packet by packet at its rate
    (the tbf alone would let a burst of a message's first frames through at full speed)."""
    return bool(d.delay_ms or d.jitter_ms or (serialize and d.rate_bps is not None))


def line_settings(d: DirectionSpec, serialize: bool = True) -> dict:
    """What the delay line holds for one direction, as its ``set`` op takes it."""
    shaped = serialize and d.rate_bps is not None
    return {"delay_ms": float(d.delay_ms), "jitter_ms": float(d.jitter_ms),
            "rate_bps": int(d.rate_bps) if shaped else None,
            "queue_bytes": shaping.queue_bytes(d) if shaped else None}


def delayline_args(link: LinkSpec, mtu: int, rt_priority: int, serialize: bool = True) -> list[str]:
    """``python -m`` arguments that start ``link``'s delay line with both directions set."""
    args = ["emulation.delayline", "--rt-priority", str(rt_priority), "--mtu", str(mtu)]
    for q, d in enumerate((link.forward, link.reverse)):
        st = line_settings(d, serialize)
        args += ["--queue", ":".join(["" if v is None else str(v) for v in (q, *st.values())])]
    return args


def rule_lines(rules: list[list[str]]) -> list[str]:
    return [" ".join(r) for r in rules]


def rules_match(want: list[str], got: list[str]) -> bool:
    """Compare iptables -S output with what we added (iptables prints numbers its own way)."""
    if len(want) != len(got):
        return False
    for w, g in zip(want, got):
        wt, gt = w.split(), g.split()
        if wt == gt:
            continue
        if "--probability" in wt and "--probability" in gt:
            wi, gi = wt.index("--probability"), gt.index("--probability")
            if abs(float(wt[wi + 1]) - float(gt[gi + 1])) > 1e-9:
                return False
            if [t for i, t in enumerate(wt) if i != wi + 1] != [t for i, t in enumerate(gt) if i != gi + 1]:
                return False
            continue
        return False
    return True
