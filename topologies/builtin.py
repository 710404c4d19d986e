"""Built-in topologies, scaled to the machine's budget.

The two studies this testbed reproduces gave Mobile 4 CPUs / 4 GB, Edge 8 / 16 GB and
Cloud 16 / 64 GB, with links Mobile-Edge 200 Mbit/s and Edge-Cloud 1 Mbit/s and no added
delay. A laptop has no 28 cores, so the built-ins keep the *ratios* and scale them to the
budget they are given:

- a CPU unit u = cores / 8, to 3 decimals (at least 0.001): mobile u, edge 2u, cloud 4u
  (on 2 cores: 0.25, 0.5, 1.0);
- a memory unit m = memory_bytes / 32 rounded down to a multiple of 64MiB, at least 128MiB:
  mobile m, edge 4m, cloud 16m (on 24GiB: 768MiB, 3GiB, 12GiB).

Callers may rely on: every function in :data:`BUILTINS` is pure, takes
``(cores, memory_bytes, **int_params)``, returns a validated spec named after the built-in
with source ``<builtin NAME>``, and raises :class:`TopologyError` for a bad parameter.
"""
from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable

from .checks import validate
from .errors import TopologyError
from .spec import DirectionSpec, HostSpec, LinkSpec, TopologySpec
from .units import MiB

MOBILE_EDGE_BPS = 200_000_000
EDGE_CLOUD_BPS = 1_000_000
MAX_MOBILES = 500  # beyond this the emulated hosts no longer get a meaningful CPU share


def _source(builtin: str) -> str:
    return f"<builtin {builtin}>"


def budget_units(cores: float, memory_bytes: int, builtin: str = "three_tier") -> tuple[float, int]:
    """(u, m): the CPU unit in cores and the memory unit in bytes for this budget."""
    if isinstance(cores, bool) or not isinstance(cores, (int, float)) or not math.isfinite(cores) or cores <= 0:
        raise TopologyError(f"{cores!r} is not a CPU budget", "a number of cores above 0",
                            source=_source(builtin), path="cores")
    if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, int) or memory_bytes <= 0:
        raise TopologyError(f"{memory_bytes!r} is not a memory budget", "a whole number of bytes above 0",
                            source=_source(builtin), path="memory_bytes")
    u = max(round(cores / 8, 3), 0.001)
    step = 64 * MiB
    m = max(memory_bytes // 32 // step * step, 128 * MiB)
    return u, m


def _int_param(builtin: str, name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TopologyError(f"{value!r} is not a whole number", f"{lo} to {hi}", source=_source(builtin), path=name)
    if not lo <= value <= hi:
        raise TopologyError(f"{value} is out of range", f"{lo} to {hi}", source=_source(builtin), path=name)
    return value


def _host(name: str, k_cpu: int, k_mem: int, u: float, m: int) -> HostSpec:
    return HostSpec(name, cpus=round(k_cpu * u, 3), memory_bytes=k_mem * m)


def _link(a: str, b: str, rate_bps: int) -> LinkSpec:
    return LinkSpec(a, b, DirectionSpec(rate_bps=rate_bps), DirectionSpec(rate_bps=rate_bps))


def _spec(builtin: str, hosts: list[HostSpec], links: list[LinkSpec]) -> TopologySpec:
    return validate(TopologySpec(builtin, tuple(hosts), tuple(links), source=_source(builtin)))


def three_tier(cores: float, memory_bytes: int) -> TopologySpec:
    """mobile - edge - cloud, the studies' setup scaled to the budget."""
    u, m = budget_units(cores, memory_bytes, "three_tier")
    return _spec("three_tier",
                 [_host("mobile", 1, 1, u, m), _host("edge", 2, 4, u, m), _host("cloud", 4, 16, u, m)],
                 [_link("mobile", "edge", MOBILE_EDGE_BPS), _link("edge", "cloud", EDGE_CLOUD_BPS)])


def star(cores: float, memory_bytes: int, mobiles: int = 4) -> TopologySpec:
    """mobile1..mobileN all linked to one edge, which links to the cloud."""
    u, m = budget_units(cores, memory_bytes, "star")
    n = _int_param("star", "mobiles", mobiles, 1, MAX_MOBILES)
    names = [f"mobile{i}" for i in range(1, n + 1)]
    return _spec("star",
                 [_host(h, 1, 1, u, m) for h in names] + [_host("edge", 2, 4, u, m), _host("cloud", 4, 16, u, m)],
                 [_link(h, "edge", MOBILE_EDGE_BPS) for h in names] + [_link("edge", "cloud", EDGE_CLOUD_BPS)])


def multi_edge(cores: float, memory_bytes: int, edges: int = 2, mobiles_per_edge: int = 2) -> TopologySpec:
    """edge1..edgeE, each with mobiles mobile{e}_1..mobile{e}_M, all edges linked to one cloud."""
    u, m = budget_units(cores, memory_bytes, "multi_edge")
    e_count = _int_param("multi_edge", "edges", edges, 1, 50)
    per_edge = _int_param("multi_edge", "mobiles_per_edge", mobiles_per_edge, 1, MAX_MOBILES)
    if e_count * per_edge > MAX_MOBILES:
        raise TopologyError(f"{e_count} edges x {per_edge} mobiles is {e_count * per_edge} mobiles",
                            f"at most {MAX_MOBILES} mobiles in all", source=_source("multi_edge"),
                            path="mobiles_per_edge")
    hosts, links = [], []
    for e in range(1, e_count + 1):
        for i in range(1, per_edge + 1):
            hosts.append(_host(f"mobile{e}_{i}", 1, 1, u, m))
            links.append(_link(f"mobile{e}_{i}", f"edge{e}", MOBILE_EDGE_BPS))
    hosts += [_host(f"edge{e}", 2, 4, u, m) for e in range(1, e_count + 1)] + [_host("cloud", 4, 16, u, m)]
    links += [_link(f"edge{e}", "cloud", EDGE_CLOUD_BPS) for e in range(1, e_count + 1)]
    return _spec("multi_edge", hosts, links)


BUILTINS: dict[str, Callable[..., TopologySpec]] = {
    "three_tier": three_tier,
    "star": star,
    "multi_edge": multi_edge,
}


def builtin_params(name: str) -> tuple[str, ...]:
    """The parameters built-in ``name`` takes after (cores, memory_bytes)."""
    return tuple(inspect.signature(BUILTINS[name]).parameters)[2:]


def run_builtin(name: str, params_text: str, *, cores: float, memory_bytes: int) -> TopologySpec:
    """Built-in ``name`` with parameters written as ``k=v,k2=v2`` (all integers)."""
    source, accepted = _source(name), builtin_params(name)
    allowed = ", ".join(f"{p}=N" for p in accepted) or "no parameters"
    params: dict[str, int] = {}
    for item in params_text.split(",") if params_text.strip() else []:
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not key:
            raise TopologyError(f"'{item.strip()}' is not NAME=VALUE", allowed, source=source)
        if key not in accepted:
            raise TopologyError("unknown parameter", allowed, source=source, path=key)
        if key in params:
            raise TopologyError("given twice", "each parameter once", source=source, path=key)
        if not re.fullmatch(r"[+-]?\d{1,9}", value):
            example = inspect.signature(BUILTINS[name]).parameters[key].default
            raise TopologyError(f"'{value}' is not a whole number", f"a whole number, e.g. {key}={example}",
                                source=source, path=key)
        params[key] = int(value)
    return BUILTINS[name](cores, memory_bytes, **params)
