"""All checks a topology spec must pass before anything is emulated.

Callers may rely on:

- :func:`validate` returns the spec unchanged or raises the first problem found as a
  :class:`TopologyError`; the checks run in a fixed order (name, hosts in order, links in
  order, then connectedness), so the same spec always gives the same message;
- limits (``allowed`` in the messages): cpus in (0, 1024], and a quota (cpus x cpu_period) of
  at least 1 ms, the kernel's minimum; cpu_period 1ms..1s; memory 16MiB..64TiB; cpuset CPU
  numbers 0..8191, non-empty; bandwidth 1kbit..100Gbit; delay 0..60s; jitter 0..delay; loss
  0% up to but not including 100%; queue 1514B..1GiB; host names ``^[a-z][a-z0-9_]{0,23}$``;
- nothing here touches the machine: whether this host can give that many cores is the
  emulation's question.
"""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping

from .errors import TopologyError, name_list
from .fields import CPU_PERIOD_ALLOWED, CPUS_ALLOWED, DIRECTION_FIELDS
from .reader import line_of
from .spec import DirectionSpec, HostSpec, LinkSpec, TopologySpec
from .units import GiB, MiB, TiB, format_duration_ms, format_fraction, format_rate, format_size, parse_cpuset

HOST_NAME = re.compile(r"^[a-z][a-z0-9_]{0,23}$")
HOST_NAME_ALLOWED = "a lowercase letter, then up to 23 lowercase letters, digits or '_' (no '-': link names use it)"
TOPOLOGY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TOPOLOGY_NAME_ALLOWED = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"

CPUS_MAX = 1024
# the kernel's bounds of a CFS period, its default (also Docker's), and its smallest quota;
# emulation.cgroups writes with these
CPU_PERIOD_US_MIN, CPU_PERIOD_US_MAX, CPU_PERIOD_US_DEFAULT = 1_000, 1_000_000, 100_000
CPU_QUOTA_US_MIN = 1_000
# the quota an auto period gives a host below one core: the kernel allows 1 ms, but a single
# busy loop at 0.5 cores with a 1 ms quota (2 ms period) got 0.77 of its share for a whole run
# in one network out of three (0.97-0.98 in the others), where a 2 ms quota (4 ms period) got
# 0.998-1.002 in every run (cgroup v1, 250 Hz kernel)
CPU_QUOTA_US_AUTO = 2_000
CPU_PERIOD_US_AUTO_MULTICORE = 10_000   # the auto period from one core up
MEMORY_MIN, MEMORY_MAX = 16 * MiB, 64 * TiB
RATE_MIN, RATE_MAX = 1_000, 100_000_000_000
DELAY_MAX_MS = 60_000.0
QUEUE_MIN, QUEUE_MAX = 1514, GiB  # one full Ethernet frame .. far beyond any sane buffer


@functools.lru_cache(maxsize=256)
def auto_cpu_period_us(cpus: float | None) -> int:
    """The CPU quota's period when a host does not set ``cpu_period``.

    Below one core: the shortest period that gives the share a 2 ms quota (0.25 cores: 8 ms;
    0.5: 4 ms), or the next that makes the quota exact (0.75: 2668 us). The kernel allows a 1 ms
    quota, but held a busy loop to 0.77 of its share under it (``CPU_QUOTA_US_AUTO``). A request
    that starts with quota left runs at full speed
    until the quota is spent, then waits for the next period; the shorter the period, the finer
    a slow host's compute is sliced, and the less a request that finds the quota spent waits
    (at most the period less the quota). Servers also pace each inference to the host's share
    (``serving.pace``, :mod:`workloads.pacing`), which removes the head start of a request that
    finds quota unspent; the period bounds what pacing cannot undo. One core or more: 10 ms (a
    single-threaded server is never throttled there; a 1 ms period would only make the kernel's
    period timer fire 1000 times a second per busy host, which the kernel itself stretches on
    large machines). An unlimited host keeps the kernel's 100 ms.
    """
    if cpus is None:
        return CPU_PERIOD_US_DEFAULT
    if cpus >= 1.0:
        return CPU_PERIOD_US_AUTO_MULTICORE
    shortest = max(CPU_PERIOD_US_MIN, math.ceil(CPU_QUOTA_US_AUTO / cpus - 1e-9))
    # the first period up to 10 % longer whose quota is a whole number of microseconds, so that
    # the share the kernel holds (quota / period) is exactly ``cpus`` (0.75: 2668 us, quota 2001)
    for period in range(shortest, min(CPU_PERIOD_US_MAX, shortest + shortest // 10) + 1):
        if abs(cpus * period - round(cpus * period)) < 1e-6:
            return period
    return int(min(CPU_PERIOD_US_MAX, shortest))


class _Checker:
    """Raises located errors: ``where`` maps field paths to YAML lines (or None)."""

    def __init__(self, spec: TopologySpec, where: Mapping[str, int | None], source: str) -> None:
        self.spec = spec
        self.where = where
        self.source = source

    def line(self, path: str) -> int | None:
        return line_of(self.where, path)

    def fail(self, path: str, problem: str, allowed: str | None) -> None:
        raise TopologyError(problem, allowed, source=self.source, line=self.line(path), path=path)

    def number(self, path: str, value: object, allowed: str, whole: bool = False) -> None:
        kinds = (int,) if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            self.fail(path, f"expected {'a whole number' if whole else 'a number'}, got {value!r}", allowed)
        if not math.isfinite(value):  # type: ignore[arg-type]
            self.fail(path, f"{value} is not a finite number", allowed)

    # --- the checks, in the order they run ---------------------------------------------

    def run(self) -> None:
        spec = self.spec
        if not isinstance(spec.name, str) or not TOPOLOGY_NAME.match(spec.name):
            self.fail("name", f"{spec.name!r} is not a usable topology name", TOPOLOGY_NAME_ALLOWED)
        if not spec.hosts:
            self.fail("hosts", "no hosts", "at least one host, e.g. {mobile: {cpus: 0.5, memory: 1GiB}}")
        seen: set[str] = set()
        for i, h in enumerate(spec.hosts):
            if not isinstance(h, HostSpec):
                self.fail(f"hosts[{i}]", f"expected a HostSpec, got {type(h).__name__}", "HostSpec(name, ...)")
            self.host(h, seen)
        pairs: dict[frozenset, str] = {}
        for i, link in enumerate(spec.links):
            if not isinstance(link, LinkSpec):
                self.fail(f"links[{i}]", f"expected a LinkSpec, got {type(link).__name__}", "LinkSpec(a, b, ...)")
            self.link(link, seen, pairs)
        self.connected()

    def host(self, h: HostSpec, seen: set[str]) -> None:
        p = f"hosts.{h.name}"
        if not isinstance(h.name, str) or not HOST_NAME.match(h.name):
            self.fail(p, "invalid host name", HOST_NAME_ALLOWED)
        if h.name in seen:
            self.fail(p, "duplicate host name", "each host name once")
        seen.add(h.name)
        if h.cpus is not None:
            allowed = f"more than 0 and at most {CPUS_MAX} cores, or unlimited"
            self.number(f"{p}.cpus", h.cpus, CPUS_ALLOWED)
            if not 0 < h.cpus <= CPUS_MAX:
                self.fail(f"{p}.cpus", f"{h.cpus:g} is out of range", allowed)
        if h.cpu_period_us is not None:
            self.number(f"{p}.cpu_period", h.cpu_period_us, CPU_PERIOD_ALLOWED, whole=True)
            if not CPU_PERIOD_US_MIN <= h.cpu_period_us <= CPU_PERIOD_US_MAX:
                self.fail(f"{p}.cpu_period", f"{format_duration_ms(h.cpu_period_us / 1000)} is out of range",
                          CPU_PERIOD_ALLOWED)
        if h.cpus is not None:
            period = h.cpu_period_us or auto_cpu_period_us(h.cpus)
            if round(h.cpus * period) < CPU_QUOTA_US_MIN:
                self.fail(f"{p}.cpus", f"{h.cpus:g} cores over a {format_duration_ms(period / 1000)} cpu_period is a "
                          f"{format_duration_ms(h.cpus * period / 1000)} quota, under the kernel's 1ms minimum",
                          f"at least {CPU_QUOTA_US_MIN / period:g} cores, or a longer cpu_period")
        if h.memory_bytes is not None:
            allowed = f"{format_size(MEMORY_MIN)} to {format_size(MEMORY_MAX)}, or unlimited"
            self.number(f"{p}.memory", h.memory_bytes, allowed, whole=True)
            if not MEMORY_MIN <= h.memory_bytes <= MEMORY_MAX:
                self.fail(f"{p}.memory", f"{format_size(h.memory_bytes)} is out of range", allowed)
        if h.cpuset is not None:
            if not isinstance(h.cpuset, tuple):
                self.fail(f"{p}.cpuset", f"expected a tuple of CPU numbers, got {h.cpuset!r}", "e.g. (0, 1)")
            try:
                parse_cpuset(h.cpuset)
            except TopologyError as e:
                raise e.located(source=self.source, line=self.line(f"{p}.cpuset"), path=f"{p}.cpuset") from None

    def link(self, link: LinkSpec, hosts: set[str], pairs: dict[frozenset, str]) -> None:
        p = f"links.{link.name}"
        if link.a == link.b:
            self.fail(p, "links a host to itself", "two different hosts")
        for end in (link.a, link.b):
            if end not in hosts:
                self.fail(p, f"unknown host '{end}'", f"hosts {name_list(self.spec.host_names)}")
        pair = frozenset((link.a, link.b))
        if pair in pairs:
            self.fail(p, f"duplicate of link {pairs[pair]}",
                      "one link per pair of hosts (forward/reverse set each direction)")
        pairs[pair] = link.name
        for dname, d in (("forward", link.forward), ("reverse", link.reverse)):
            if not isinstance(d, DirectionSpec):
                self.fail(f"{p}.{dname}", f"expected a DirectionSpec, got {type(d).__name__}", "DirectionSpec(...)")
            self.direction(link, dname, d)

    def direction(self, link: LinkSpec, dname: str, d: DirectionSpec) -> None:
        def at(key: str) -> str:
            # name the path the value was written at: per direction, or once for the link
            own, shared = f"links.{link.name}.{dname}.{key}", f"links.{link.name}.{key}"
            if own in self.where:
                return own
            if shared in self.where:
                return shared
            attr = DIRECTION_FIELDS[key][0]
            return shared if getattr(link.forward, attr) == getattr(link.reverse, attr) else own

        if d.rate_bps is not None:
            allowed = f"{format_rate(RATE_MIN)} to {format_rate(RATE_MAX)}, or unlimited"
            self.number(at("bandwidth"), d.rate_bps, allowed, whole=True)
            if not RATE_MIN <= d.rate_bps <= RATE_MAX:
                self.fail(at("bandwidth"), f"{format_rate(d.rate_bps)} is out of range", allowed)
        allowed = f"0ms to {format_duration_ms(DELAY_MAX_MS)}"
        self.number(at("delay"), d.delay_ms, allowed)
        if not 0 <= d.delay_ms <= DELAY_MAX_MS:
            self.fail(at("delay"), f"{format_duration_ms(d.delay_ms)} is out of range", allowed)
        allowed = f"0ms to the delay ({format_duration_ms(d.delay_ms)})"
        self.number(at("jitter"), d.jitter_ms, allowed)
        if d.jitter_ms < 0:
            self.fail(at("jitter"), f"{format_duration_ms(d.jitter_ms)} is out of range", allowed)
        if d.jitter_ms > d.delay_ms:  # netem and the delay line would clamp at 0: a lie about the spread
            # blame what was written, and of that the per-direction value: it is the exception
            written = [p for p in (at("jitter"), at("delay")) if p in self.where]
            blamed = next((p for p in written if f".{dname}." in p), written[0] if written else at("jitter"))
            self.fail(blamed, f"jitter {format_duration_ms(d.jitter_ms)} is larger than the delay "
                                    f"{format_duration_ms(d.delay_ms)}", allowed)
        allowed = "0% up to but not including 100%"
        self.number(at("loss"), d.loss, allowed)
        if not 0 <= d.loss < 1:
            self.fail(at("loss"), f"{format_fraction(d.loss)} is out of range", allowed)
        if d.queue_bytes is not None:
            allowed = f"{QUEUE_MIN}B (one full frame) to {format_size(QUEUE_MAX)}, or auto"
            self.number(at("queue"), d.queue_bytes, allowed, whole=True)
            if not QUEUE_MIN <= d.queue_bytes <= QUEUE_MAX:
                self.fail(at("queue"), f"{format_size(d.queue_bytes)} is out of range", allowed)

    def connected(self) -> None:
        adj: dict[str, set[str]] = {h.name: set() for h in self.spec.hosts}
        for link in self.spec.links:
            adj[link.a].add(link.b)
            adj[link.b].add(link.a)
        first = self.spec.hosts[0].name
        reached, todo = {first}, [first]
        while todo:
            for nb in adj[todo.pop()] - reached:
                reached.add(nb)
                todo.append(nb)
        cut_off = [h.name for h in self.spec.hosts if h.name not in reached]
        if cut_off:
            what = "host" if len(cut_off) == 1 else "hosts"
            self.fail("links", f"{what} {name_list(cut_off)} cannot be reached from {first}",
                      "a connected graph: add links that reach them")


def validate(spec: TopologySpec, *, where: Mapping[str, int | None] | None = None,
             source: str | None = None) -> TopologySpec:
    """Run every check on ``spec``; return it unchanged or raise the first :class:`TopologyError`.

    ``where`` (for loaders) maps field paths such as ``links.a-b.delay`` to the YAML line
    they were written on, or to None for paths set without a line (``--set``); errors then
    carry that line and name the path as it was written. ``source`` replaces
    ``spec.source`` in messages.
    """
    if not isinstance(spec, TopologySpec):
        raise TopologyError(f"expected a TopologySpec, got {type(spec).__name__}", "a TopologySpec",
                            source=source)
    _Checker(spec, where or {}, source or spec.source).run()
    return spec
