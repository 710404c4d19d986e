"""The layout of an emulated network, worked out from its topology spec alone (no kernel).

Every link ``a-b`` (index i) gets a *wire* of its own, a forwarding namespace named after the
link, joined to each end by one veth pair::

    a [<run>-<i>a] ---- [<run>-<i>w] wire "a-b" [<run>-<i>x] ---- [<run>-<i>b] b

Each veth pair has a /24 of its own (``10.<k // 256>.<k % 256>.0/24`` for the k-th pair), its
``a`` end .1 and its ``b`` end .2. A host has one address per link it is on: which one a peer
must use depends on the link its packets arrive over (:meth:`Plan.address`).

:class:`EmulatedNetwork` builds exactly this; the runner and the tests ask it (or a plan made
here, without root) for addresses instead of reading the layout's fields.
"""
from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field

from topologies import DirectionSpec, LinkSpec, TopologySpec

from .errors import EmulationError


@dataclass
class Veth:
    """One veth pair between two nodes (a host and a wire), with a /24 of its own."""

    index: int
    a: str
    b: str
    if_a: str
    if_b: str
    subnet: ipaddress.IPv4Network

    @property
    def addr_a(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def addr_b(self) -> str:
        return str(self.subnet.network_address + 2)

    def end(self, node: str) -> tuple[str, str]:
        """(interface, address) of ``node`` on this pair."""
        return (self.if_a, self.addr_a) if node == self.a else (self.if_b, self.addr_b)

    def other(self, node: str) -> str:
        return self.b if node == self.a else self.a


@dataclass
class Plan:
    """Pure layout: nodes, veth pairs, routes, where each direction is shaped."""

    hosts: list[str]
    wires: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # link -> (name, if_a, if_b)
    veths: list[Veth] = field(default_factory=list)
    shaped_if: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # (src,dst) -> (node, ifname)

    @property
    def nodes(self) -> list[str]:
        """Every namespace the network has: the hosts, then the wires."""
        return self.hosts + [w[0] for w in self.wires.values()]

    def veths_of(self, node: str) -> list[Veth]:
        """The veth pairs ``node`` is an end of, in the order they were made."""
        return [v for v in self.veths if node in (v.a, v.b)]

    def veth(self, host: str, link: str) -> Veth:
        """The veth pair between ``host`` and the wire of ``link`` (named as in the spec)."""
        wire = self.wires[link][0] if link in self.wires else None
        for v in self.veths:
            if {v.a, v.b} == {host, wire}:
                return v
        raise EmulationError(f"host {host!r} is not an end of link {link!r}")

    def addresses(self, host: str) -> list[str]:
        """Every address of ``host``: one per link it is on (a server listens on all)."""
        out = [v.end(host)[1] for v in self.veths_of(host)]
        if not out:
            raise EmulationError(f"unknown host {host!r}; hosts: {', '.join(self.hosts)}")
        return out

    def address(self, host: str, link: str | None = None) -> str:
        """``host``'s address on ``link``: the one a packet arriving over that link is sent to
        (so that it takes the link the topology's path says). None: its first address."""
        if link is None:
            return self.addresses(host)[0]
        return self.veth(host, link).end(host)[1]

    def neighbours(self, node: str) -> list[tuple[str, Veth]]:
        return [(v.other(node), v) for v in self.veths_of(node)]

    def next_hops(self, node: str) -> dict[int, tuple[str, str]]:
        """For every veth pair not attached to ``node``: (gateway address, out interface)."""
        first: dict[str, tuple[str, str]] = {}
        seen = {node}
        queue: deque[str] = deque()
        for nb, veth in sorted(self.neighbours(node), key=lambda x: x[0]):
            if nb not in seen:
                seen.add(nb)
                first[nb] = (veth.end(nb)[1], veth.end(node)[0])
                queue.append(nb)
        while queue:  # BFS: the first hop toward every node, deterministic by name order
            cur = queue.popleft()
            for nb, _veth in sorted(self.neighbours(cur), key=lambda x: x[0]):
                if nb not in seen:
                    seen.add(nb)
                    first[nb] = first[cur]
                    queue.append(nb)
        out = {}
        for v in self.veths:
            if node in (v.a, v.b):
                continue
            out[v.index] = first[v.a] if v.a in first else first[v.b]
        return out


def directions(link: LinkSpec) -> tuple[tuple[str, str, DirectionSpec], tuple[str, str, DirectionSpec]]:
    """(src, dst, spec) for a->b and b->a, in that order (queue 0 and queue 1 of its wire)."""
    return (link.a, link.b, link.forward), (link.b, link.a, link.reverse)


def plan(spec: TopologySpec, run_id: str) -> Plan:
    """The layout of ``spec``'s network; every interface name carries ``run_id``."""
    p = Plan(hosts=[h.name for h in spec.hosts])

    def pair(a: str, b: str, if_a: str, if_b: str) -> Veth:
        k = len(p.veths)
        v = Veth(k, a, b, if_a, if_b, ipaddress.ip_network(f"10.{k // 256}.{k % 256}.0/24"))
        p.veths.append(v)
        return v

    for i, link in enumerate(spec.links):
        ia, ib, wa, wb = (f"{run_id}-{i}{side}" for side in "abwx")
        p.wires[link.name] = (link.name, wa, wb)
        pair(link.a, link.name, ia, wa)
        pair(link.name, link.b, wb, ib)
        p.shaped_if[(link.a, link.b)] = (link.name, wb)  # the wire's egress toward b
        p.shaped_if[(link.b, link.a)] = (link.name, wa)  # ... and toward a
    return p
