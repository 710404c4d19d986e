"""Topology specs: plain frozen data describing hosts, links and their limits.

Callers may rely on:

- every class here is a frozen dataclass, compared and hashed by value; sequences are
  tuples (lists given to the constructors are turned into tuples);
- units are fixed: rates in bit/s (int), sizes in bytes (int), times in milliseconds
  (float), loss as a fraction in [0, 1), CPUs as (fractional) cores; ``None`` means no limit
  (or, for a queue, "sized by the emulation");
- constructing a spec checks nothing; :func:`topologies.validate` does (the loaders always
  call it), and the lookup methods raise :class:`TopologyError`, never ``KeyError``;
- ``TopologySpec.source`` says where a spec came from, for messages only: it takes no part
  in ``==``, so ``load_topology_dict(spec.to_dict()) == spec``.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .errors import TopologyError, name_list
from .fields import DIRECTION_FIELDS, HOST_FIELDS


@dataclass(frozen=True)
class HostSpec:
    """One emulated host and its resource limits."""

    name: str
    cpus: float | None = None               # fractional cores (a CPU quota); None = unlimited
    memory_bytes: int | None = None         # None = unlimited
    cpuset: tuple[int, ...] | None = None   # CPUs the host may run on; None = any
    cpu_period_us: int | None = None        # the CPU quota's accounting period; None = auto (checks.auto_cpu_period_us)

    def __post_init__(self) -> None:
        if isinstance(self.cpuset, list):
            object.__setattr__(self, "cpuset", tuple(self.cpuset))


@dataclass(frozen=True)
class DirectionSpec:
    """One direction of a link, as its sender's interface shapes it."""

    rate_bps: int | None = None       # None = unshaped
    delay_ms: float = 0.0             # one-way added delay
    jitter_ms: float = 0.0            # delay varies by up to +- this
    loss: float = 0.0                 # fraction of packets dropped, in [0, 1)
    queue_bytes: int | None = None    # None = sized by the emulation (bandwidth-delay product)

    @property
    def impaired(self) -> bool:
        """True when this direction adds delay, jitter or loss (beyond a rate limit)."""
        return bool(self.delay_ms or self.jitter_ms or self.loss)


@dataclass(frozen=True)
class LinkSpec:
    """A link between hosts ``a`` and ``b``; ``forward`` is a -> b, ``reverse`` is b -> a."""

    a: str
    b: str
    forward: DirectionSpec = field(default_factory=DirectionSpec)
    reverse: DirectionSpec = field(default_factory=DirectionSpec)

    @property
    def name(self) -> str:
        return f"{self.a}-{self.b}"

    @property
    def impaired(self) -> bool:
        return self.forward.impaired or self.reverse.impaired

    def direction(self, src: str, dst: str) -> DirectionSpec:
        """The direction that carries packets from ``src`` to ``dst``."""
        if (src, dst) == (self.a, self.b):
            return self.forward
        if (src, dst) == (self.b, self.a):
            return self.reverse
        raise TopologyError(f"no direction {src}->{dst}", f"{self.a}->{self.b}, {self.b}->{self.a}",
                            path=f"links.{self.name}")


@dataclass(frozen=True)
class TopologySpec:
    """Hosts and the links between them. Host and link order is kept as written."""

    name: str
    hosts: tuple[HostSpec, ...]
    links: tuple[LinkSpec, ...]
    source: str = field(default="<memory>", compare=False)  # provenance, for messages

    def __post_init__(self) -> None:
        object.__setattr__(self, "hosts", tuple(self.hosts))
        object.__setattr__(self, "links", tuple(self.links))

    @property
    def host_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hosts)

    def shape(self) -> tuple:
        """Host names and links (name and ends), without their parameters: two specs of one
        shape differ only in what a running network can change live."""
        return self.host_names, tuple((l.name, l.a, l.b) for l in self.links)

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise TopologyError(f"unknown host '{name}'", f"hosts {name_list(self.host_names)}", source=self.source,
                            path=f"hosts.{name}")

    def link(self, name: str) -> LinkSpec:
        """The link called ``name``, written either way round ("a-b" or "b-a")."""
        for link in self.links:
            if name in (link.name, f"{link.b}-{link.a}"):
                return link
        raise TopologyError(f"unknown link '{name}'", f"links {name_list(l.name for l in self.links)}",
                            source=self.source, path=f"links.{name}")

    def _adjacency(self) -> dict[str, list[str]]:
        adj: dict[str, list[str]] = {h.name: [] for h in self.hosts}
        for link in self.links:
            adj.setdefault(link.a, []).append(link.b)
            adj.setdefault(link.b, []).append(link.a)
        return {k: sorted(set(v)) for k, v in adj.items()}

    def neighbours(self, name: str) -> tuple[str, ...]:
        """Hosts one link away from ``name``, sorted by name."""
        self.host(name)
        return tuple(self._adjacency()[name])

    def path(self, src: str, dst: str) -> list[str]:
        """A shortest path by hop count, both ends included ([src] when src == dst).

        Among equally short paths the one whose host names sort first (compared hop by
        hop) is returned, so the answer never depends on the order links were written in.
        """
        self.host(src)
        self.host(dst)
        adj = self._adjacency()
        hops = {dst: 0}  # hops to dst, found breadth-first from dst
        queue = deque([dst])
        while queue:
            here = queue.popleft()
            for nb in adj[here]:
                if nb not in hops:
                    hops[nb] = hops[here] + 1
                    queue.append(nb)
        if src not in hops:
            raise TopologyError(f"no path from {src} to {dst}", "a connected topology", source=self.source,
                                path="links")
        route = [src]
        while route[-1] != dst:
            route.append(min(nb for nb in adj[route[-1]] if hops.get(nb) == hops[route[-1]] - 1))
        return route

    def to_dict(self) -> dict:
        """The YAML shape (see ``topologies.loader``), values as unit strings, defaults left out.

        A value the two directions of a link share is written once at the link's level;
        values that differ go under ``forward`` and ``reverse``.
        """
        hosts: dict[str, dict] = {}
        for h in self.hosts:
            hosts[h.name] = {key: fmt(getattr(h, attr)) for key, (attr, _, fmt) in HOST_FIELDS.items()
                             if getattr(h, attr) is not None}
        links: dict[str, dict] = {}
        default = DirectionSpec()
        for link in self.links:
            body: dict = {}
            forward: dict = {}
            reverse: dict = {}
            for key, (attr, _, fmt) in DIRECTION_FIELDS.items():
                f, r = getattr(link.forward, attr), getattr(link.reverse, attr)
                if f == r:
                    if f != getattr(default, attr):
                        body[key] = fmt(f)
                else:
                    forward[key], reverse[key] = fmt(f), fmt(r)
            if forward:
                body["forward"], body["reverse"] = forward, reverse
            links[link.name] = body
        return {"name": self.name, "hosts": hosts, "links": links}

    def describe(self) -> list[dict[str, str]]:
        """Printable rows: one per host (kind 'host'), then one per link direction (kind 'link')."""
        rows: list[dict[str, str]] = []
        for h in self.hosts:
            rows.append({"kind": "host", "name": h.name,
                         **{key: str(fmt(getattr(h, attr))) for key, (attr, _, fmt) in HOST_FIELDS.items()}})
        for link in self.links:
            for src, dst, d in ((link.a, link.b, link.forward), (link.b, link.a, link.reverse)):
                rows.append({"kind": "link", "name": link.name, "direction": f"{src}->{dst}",
                             **{key: str(fmt(getattr(d, attr))) for key, (attr, _, fmt) in DIRECTION_FIELDS.items()}})
        return rows
