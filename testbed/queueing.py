"""Predictions under load (``load.scenario: server``: Poisson arrivals at ``qps`` requests/s in
all, spread evenly over the sources), from the same profiles and link arithmetic as a
single-stream plan (`testbed.plan`), with each server and each link direction a FIFO queue.

Every request of a strategy from a source visits **stations** in order: each part's server
(its host's part server: one request computed at a time, in arrival order; the service time is
the part's back-to-back compute on the run's inputs, every profiled request a sample, plus
the harness's cost) and, for every message, each link direction on its path (the service
time is the message's wire bytes at that link's rate: the link is busy that long, whatever
the other links do). A station's arrival rate is ``qps`` times the share of requests that
visit it: a part on ``source`` runs on each source's host and gets its share, the edge's
part gets all. Then, per station (M/G/1):

- utilisation rho = arrival rate x mean service time; the strategy saturates at the total
  rate where the busiest station reaches rho = 1 (``saturation_qps``, its ``bottleneck``);
- the wait in its queue: 0 with probability 1 - rho, else exponential with the mean that
  Pollaczek-Khinchine gives (mean wait lambda E[S^2] / (2 (1 - rho)), over rho): the usual
  heavy-traffic approximation of an M/G/1 queue's waiting time.

One request's latency is the sum over its stations of wait and service (on a path of several
links a message's frames overlap: its slowest link counts its whole wire time, each other
link one frame), plus the links' delays, one pass through each link's emulation and the
client's cost. p50 and p99 are read off :data:`SAMPLES` requests drawn at random (service
times from the profile's samples, waits from the approximation above; a fixed seed, so a
plan is reproducible). Stations are taken as independent (they are not: a request that
waited at one arrives bunched at the next), and the waits' exponential tail is an
approximation that is good near saturation and pessimistic at light load. Exits of an
early-exit artifact are not modelled under load (every request is taken to go through).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .estimate import OVERHEAD_MS, _direction

SAMPLES = 4000
SEED = 0


@dataclass
class Station:
    """A server or a link direction: what each kind of visit keeps it busy for (ms), and the
    share of requests that make that visit (a link direction may carry an input and an answer)."""

    name: str
    kinds: list[tuple[float, np.ndarray]] = field(default_factory=list)    # (visits per request, busy samples)

    def visit(self, share: float, busy_ms) -> np.ndarray:
        busy = np.asarray(busy_ms, dtype=float)
        self.kinds.append((share, busy))
        return busy

    @property
    def visits(self) -> float:
        return sum(w for w, _ in self.kinds)

    def moment(self, k: int) -> float:
        """E[S^k] of the service time over every visit."""
        return sum(w * float((b ** k).mean()) for w, b in self.kinds) / self.visits

    @property
    def mean_ms(self) -> float:
        return self.moment(1)


@dataclass
class _Path:
    """One source's requests: the stations they visit in order, each with the service samples
    it adds to the latency (its busy time; on a message's other links than its slowest, one
    frame's time), and the latency no queue adds."""

    steps: list[tuple[str, np.ndarray]] = field(default_factory=list)
    fixed_ms: float = 0.0


def _stations(e, strategy, art, profile_of, links) -> tuple[dict[str, Station], list[_Path]]:
    from .plan import FRAME_BYTES, _pass_ms, chain, message_legs, request_order, wire_size

    stations: dict[str, Station] = {}
    paths = []
    share = 1.0 / len(e.sources)
    for source in e.sources:
        src, hosts = chain(e, strategy, source)
        path = _Path(fixed_ms=OVERHEAD_MS)
        legs = message_legs(art, src, hosts)
        for kind, item in request_order(legs, len(hosts)):
            if kind == "part":
                host = hosts[item]
                prof = profile_of(host, item)
                warm = (prof.get("regimes") or {}).get("warm") or prof
                name = f"{host} part {item + 1}"
                busy = stations.setdefault(name, Station(name)).visit(share, [w + OVERHEAD_MS for w in warm["wall_ms"]])
                path.steps.append((name, busy))
                continue
            _what, a, b, nbytes, _request = legs[item]
            route = e.topology.path(a, b)
            _segments, wire_bits = wire_size(nbytes)
            dirs = [(x, y, _direction(e.topology, x, y)) for x, y in zip(route, route[1:])]
            rated = [i for i, (_, _, d) in enumerate(dirs) if d.rate_bps]
            whole = min(rated, key=lambda i: dirs[i][2].rate_bps) if rated else -1   # the message's slowest link
            for i, (x, y, d) in enumerate(dirs):
                path.fixed_ms += d.delay_ms + (_pass_ms(links, d, "warm") if links else 0.0)
                if not d.rate_bps:
                    continue
                name = f"link {x}->{y}"
                busy = stations.setdefault(name, Station(name)).visit(share, [wire_bits / d.rate_bps * 1000])
                frame = np.array([min(wire_bits, FRAME_BYTES * 8) / d.rate_bps * 1000])
                path.steps.append((name, busy if i == whole else frame))
        paths.append(path)
    return stations, paths


def saturation(stations: dict[str, Station]) -> tuple[float, str]:
    """The total rate (req/s) at which the busiest station is busy all the time, and its name."""
    name, st = max(stations.items(), key=lambda kv: kv[1].visits * kv[1].mean_ms)
    return 1000.0 / (st.visits * st.mean_ms), name


def latencies(stations: dict[str, Station], paths: list[_Path], qps: float, samples: int = SAMPLES,
              seed: int = SEED) -> np.ndarray | None:
    """:data:`SAMPLES` latencies (ms) of requests at ``qps`` in all (from the sources in turn);
    None when a station is saturated (its queue grows without bound)."""
    rng = np.random.default_rng(seed)
    waits = {}
    for name, st in stations.items():
        lam = qps * st.visits / 1000.0                    # arrivals per ms
        rho = lam * st.mean_ms
        if rho >= 1.0:
            return None
        mean_wait = lam * st.moment(2) / (2 * (1 - rho))          # Pollaczek-Khinchine
        waits[name] = (rho, mean_wait / rho if rho > 0 else 0.0)
    out = np.zeros(samples)
    per_path = np.array_split(np.arange(samples), len(paths))
    for path, idx in zip(paths, per_path):
        total = np.full(len(idx), path.fixed_ms)
        for name, service in path.steps:
            total += rng.choice(service, len(idx))
            rho, mean = waits[name]
            total += np.where(rng.random(len(idx)) < rho, rng.exponential(mean, len(idx)), 0.0)
        out[idx] = total
    return out


def predict_server(e, strategy, art, profile_of, links) -> dict:
    """A server scenario's predictions for ``strategy`` at the point ``e`` is at: the
    saturation rate and its bottleneck, each station's utilisation, and p50 / p99 at the
    experiment's ``load.qps`` with each latency target met or not; without a rate (the run
    searches for one), the highest rate predicted to meet every target (``max_qps``)."""
    stations, paths = _stations(e, strategy, art, profile_of, links)
    sat, bottleneck = saturation(stations)
    out = {"saturation_qps": sat, "bottleneck": bottleneck, "qps": e.load.qps}
    if e.load.qps is not None:
        out.update(_at(stations, paths, e.load.qps, e.load.slo))
    elif e.load.slo:
        out["max_qps"] = _max_qps(stations, paths, e.load.slo, sat)
    return out


def _at(stations, paths, qps: float, slo) -> dict:
    from .load import PERCENTILES

    lat = latencies(stations, paths, qps)
    util = {name: round(qps * st.visits * st.mean_ms / 1000.0, 4) for name, st in stations.items()}
    if lat is None:
        return {"p50_ms": None, "p99_ms": None, "saturated": True, "utilization": util,
                "slo": {k: {"target_ms": ms, "predicted_ms": None, "met": False} for k, ms in slo}}
    at = {k: float(np.percentile(lat, PERCENTILES[k])) for k in {"p50", "p99", *(k for k, _ in slo)}}
    return {"p50_ms": at["p50"], "p99_ms": at["p99"], "saturated": False, "utilization": util,
            "slo": {k: {"target_ms": ms, "predicted_ms": at[k], "met": at[k] <= ms} for k, ms in slo}}


def _max_qps(stations, paths, slo, sat: float) -> float:
    """The highest rate (req/s) predicted to meet every target, by bisection below saturation."""
    from .load import PERCENTILES

    lo, hi = 0.0, sat
    for _ in range(30):
        mid = (lo + hi) / 2
        lat = latencies(stations, paths, mid)
        if lat is not None and all(np.percentile(lat, PERCENTILES[k]) <= ms for k, ms in slo):
            lo = mid
        else:
            hi = mid
        if hi - lo < 0.005 * sat:
            break
    return lo
