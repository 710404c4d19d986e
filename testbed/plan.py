"""`testbed plan EXPERIMENT`: every strategy's end-to-end latency predicted at every point of a
grid, from the compute profiles (`testbed profile`) and the network's arithmetic; the winner
per point under a quality tolerance, the bandwidths where the winner changes, and the map of
winners (what a measured sweep's heatmap shows, in seconds instead of hours).

One request, predicted (:func:`predict`), is the sum of:

- **compute**: each part's per-request compute on its host, p50 (and p90) of its profile, in
  the regime the host is in: back to back, or after idling when the rest of the request (what
  the host waits for before the next one, one request at a time) is at least :data:`IDLE_MS`;
- **transmission** of every message along its path (:func:`transfer_ms`): the input from the
  source to the first part's host, each cut tensor to the next part's host, the answer back
  hop by hop (each server relays its next hop's answer), then to the source. A message's
  bytes (tensors, the frame's header and the trace it carries so far) cross the path's slowest link at its rate with TCP/IP's headers (a 1448-byte payload
  per 1514-byte frame), one frame at each other link (store and forward, pipelined), plus each
  link's delay, plus one pass through each link's emulation (the wire's forwarding and, where
  the direction is shaped or delayed, its delay line or netem: `profile.measure_links`), back
  to back or after idling by how long the request's timeline leaves that link idle. With ``serving.connection: per-request`` every message starts a new
  connection: the request adds the handshake's round trip, and a message larger than the
  initial window (10 segments) waits a round trip per window while slow start doubles it
  until the window fills the path;
- **the harness's fixed cost** for the client and per server (client, codec and server:
  :data:`testbed.estimate.OVERHEAD_MS`, from ``benchmarks/bench_serving.py``), not stretched
  by a host's CPU share: short bursts run at full speed on the period's quota.

p90 adds the parts' p90 compute (an upper bound of the sum's p90 when parts vary independently).
Left out: jitter and loss (a grid with them is refused). Under a server scenario's load each
row also has ``load``: the queueing predictions of `testbed.queueing` (saturation rate, p50 and
p99 at the load's rate, or the highest rate within its latency targets).
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from topologies.errors import TestbedError
from topologies.units import format_rate, parse_rate

from . import profile as profiles
from .estimate import (FRAME_BYTES, INIT_CWND, MSS_BYTES, OVERHEAD_MS, _answer_bytes, _direction,  # noqa: F401
                       _input_bytes, transfer_ms, wire_size)
from .experiment import ArtifactNeed, Experiment, ModelRef, Strategy, point_label
from .recommend import TOLERANCE, WITHIN, tolerance_verdict

MAX_GRID_POINTS = 100_000
# a frame's bytes besides its tensors (the wire's header and the trace records it carries so
# far: docs/wire.md), as the store's hops recorded them for fmnist_cnn on three_tier: the
# client's request 219 B over its 3136 B tensor; each server's request record 309 B; an answer
# 535 B over its tensor from a single server; each relaying server's response record 185 B
# (1, 2 and 3 servers: 575, 884 and 1193 B answers, relayed as 1069, 1377 and 1563 B)
FRAME_HEADER_BYTES, REQUEST_RECORD_BYTES, ANSWER_HEADER_BYTES, RESPONSE_RECORD_BYTES = 219, 309, 535, 185
CROSSOVER_STEPS = 40              # bisections of a crossover between two grid values (log scale)
MAX_CHANGES = 8                   # crossovers looked for between two neighbouring grid values
# the idle time between requests from which a host computes as after idling (profile.REGIMES):
# back to back a small part took 0.15 ms, after 5-10 ms idle 0.44 ms, after 50-150 ms 0.57 ms
IDLE_MS = 2.0


class PlanError(TestbedError):
    """A plan that cannot be made: a grid that does not parse, a part with no profile."""


@dataclass(frozen=True)
class GridAxis:
    path: str
    values: tuple[str, ...]             # as an experiment file would write them
    numbers: tuple[float, ...]          # the same, in the unit the path takes (bit/s for rates)
    log: bool


def parse_grid(text: str) -> GridAxis:
    """``links.X.bandwidth=LO..HI:N`` (N values, log-spaced), or ``PATH=V1,V2,...``. Only a
    link's bandwidth (forward, reverse or both) takes a range: the rest of the network's and
    hosts' values are swept with a list, through the experiment's own ``sweep``."""
    path, eq, spec = text.partition("=")
    path, spec = path.strip(), spec.strip()
    if not eq or not path or not spec:
        raise PlanError(f"--grid {text!r}: write PATH=LO..HI:N or PATH=V1,V2,... "
                        "(e.g. links.mobile-edge.bandwidth=1Mbit..1Gbit:20)")
    if ".." in spec:
        if not path.startswith("links.") or not path.endswith(".bandwidth"):
            raise PlanError(f"--grid {text!r}: a range LO..HI:N is for a link's bandwidth "
                            "(links.A-B[.forward|.reverse].bandwidth); list other values: PATH=V1,V2")
        bounds, colon, n = spec.rpartition(":")
        lo, _, hi = (bounds if colon else spec).partition("..")
        try:
            count = int(n) if colon else 10
            low, high = parse_rate(lo.strip()), parse_rate(hi.strip())
        except (ValueError, TestbedError) as e:
            raise PlanError(f"--grid {text!r}: {e}: write e.g. 1Mbit..1Gbit:20") from None
        if not 2 <= count <= 1000 or low >= high:
            raise PlanError(f"--grid {text!r}: needs LO < HI and 2..1000 values (got {count})")
        numbers = tuple(float(v) for v in np.unique(np.round(np.geomspace(low, high, count))))
        return GridAxis(path, tuple(format_rate(int(v)) for v in numbers), numbers, True)
    values = tuple(v.strip() for v in spec.split(",") if v.strip())
    if not values:
        raise PlanError(f"--grid {text!r}: no values after '='")
    numbers = tuple(float(parse_rate(v)) if path.endswith(".bandwidth") else math.nan for v in values)
    return GridAxis(path, values, numbers, False)


@dataclass
class Artifact:
    """What a prediction needs of one artifact: its folder, bytes and quality."""

    folder: Path
    input_bytes: int
    cut_bytes: list[int]
    answer_bytes: int
    metric: str | None
    loss: float | None
    loss_ci: list[float] | None


def load_artifact(need: ArtifactNeed, cache=None) -> Artifact | None:
    from workloads.runtime import load_manifest

    folder = profiles.artifact_folder(need, cache)
    if folder is None:
        return None
    m = load_manifest(folder)
    q = m.get("quality") or {}
    v, b = q.get("value"), q.get("baseline")
    loss = None if v is None or b is None else b - v
    ci = (q.get("interval") or {}).get("loss")
    cuts = [c["bytes"] for c in (m.get("report", {}).get("partition", {}).get("cuts") or [])]
    return Artifact(folder, _input_bytes(need.model), cuts, _answer_bytes(m, str(folder)), q.get("metric"), loss,
                    list(ci) if ci else None)


def chain(e: Experiment, strategy: Strategy, source: str | None = None) -> tuple[str, list[str]]:
    """The source host (``source``, default the first) and the hosts of the strategy's parts
    from it, in order."""
    source = source or e.sources[0]
    hosts = list(strategy.placement)
    source = hosts[0] if source == "client" and "client" not in e.topology.host_names else source
    if e.per_source(strategy):
        hosts[0] = source
    return source, hosts


def predict(e: Experiment, strategy: Strategy, art: Artifact, compute: list[dict], links: dict | None = None) -> dict:
    """One request of ``strategy`` at the point ``e`` is at: ``compute`` holds each part's
    profile on its host (p50_ms, p90_ms), in part order; ``links`` the machine's link profile
    (`profile.load_links`: one pass through a link, per class and regime), or None.

    A part that answers some requests by an exit head (an early-exit artifact; its profile's
    ``exit_fraction``, measured on the run's inputs) ends those requests there: each way a
    request can end is predicted on its own (the parts before it as they compute when they
    go on, the part it ends in as when it exits, the answer back from there), and p50 and
    p90 are the weighted quantiles over them (``outcomes``: each with its share)."""
    n = len(compute)
    q = [_exit_fraction(c) if k < n - 1 else 0.0 for k, c in enumerate(compute)]
    outcomes, reach = [], 1.0
    for k in range(n):
        share = reach * (q[k] if k < n - 1 else 1.0)
        if share > 0:
            branch = [_branch(c, "continued") for c in compute[:k]] + [_branch(compute[k], "exited" if k < n - 1 else None)]
            outcomes.append((share, k, _predict_chain(e, strategy, art, branch, links, end=k)))
        reach *= 1.0 - q[k]
    if len(outcomes) == 1:
        return outcomes[0][2]
    p50 = _weighted_quantile([(o["p50_ms"], w) for w, _, o in outcomes], 0.5)
    p90 = _weighted_quantile([(o["p90_ms"], w) for w, _, o in outcomes], 0.9)
    typical = next(o for _, _, o in sorted(outcomes, key=lambda t: t[2]["p50_ms"]) if o["p50_ms"] >= p50)
    return {**typical, "p50_ms": p50, "p90_ms": p90,
            "outcomes": [{"ends_in_part": k, "share": round(w, 4), "p50_ms": o["p50_ms"], "p90_ms": o["p90_ms"]}
                         for w, k, o in outcomes]}


def _exit_fraction(profile: dict) -> float:
    """The share of the requests reaching a part that it answers by an exit head (on the run's inputs)."""
    regimes = profile.get("regimes") or {}
    return float((regimes.get("warm") or profile).get("exit_fraction") or 0.0)


def _branch(profile: dict, which: str | None) -> dict:
    """The profile's numbers for the requests that ``exited`` in the part, or ``continued``
    past it (each regime's, where it has both kinds); unchanged for None."""
    if which is None:
        return profile

    def pick(r: dict) -> dict:
        return {**r, **{k: r[which][k] for k in ("p50_ms", "p90_ms")}} if isinstance(r.get(which), dict) else r
    return {**pick(profile), "regimes": {name: pick(r) for name, r in (profile.get("regimes") or {}).items()}}


def _weighted_quantile(values: list[tuple[float, float]], q: float) -> float:
    """The smallest value whose cumulative weight reaches ``q`` of the total."""
    total = sum(w for _, w in values)
    acc = 0.0
    for v, w in sorted(values):
        acc += w
        if acc >= q * total - 1e-12:
            return v
    return max(v for v, _ in values)


def _predict_chain(e: Experiment, strategy: Strategy, art: Artifact, compute: list[dict], links: dict | None,
                   end: int) -> dict:
    """A request that ends in part ``end`` (its answer from there back to the source)."""
    topo = e.topology
    source, hosts = chain(e, strategy)
    hosts = hosts[:end + 1]
    fresh = e.serving.connection == "per-request"
    legs = message_legs(art, source, hosts)

    def leg_ms(leg, regimes=None):
        _what, a, b, nbytes, request = leg
        pass_ms = None if links is None else \
            (lambda name, d: _pass_ms(links, d, (regimes or {}).get(name, "warm")))
        return transfer_ms(topo, a, b, nbytes, fresh=fresh, handshake=fresh and request, pass_ms=pass_ms)

    # not stretched by a host's CPU share: a server's own work comes in bursts of ~0.1 ms, which
    # the period's quota covers at full speed (stretched, a quarter-core mobile's sub-ms requests
    # were predicted 0.78 ms against 0.38-0.71 measured, and 3 of 18 winners went wrong)
    overhead = OVERHEAD_MS * (len(hosts) + 1)
    # first every link and host as if busy (back to back), then each in the regime the idle
    # time this request leaves it puts it in (one request at a time)
    warm_tx = [leg_ms(leg) for leg in legs]
    warm = sum(c["p50_ms"] for c in compute) + sum(warm_tx) + overhead
    chosen = [_regime(c, warm - c["p50_ms"]) for c in compute]
    link_regimes = _link_regimes(topo, legs, warm_tx, [c["p50_ms"] for c in chosen]) if links else [{}] * len(legs)
    transmission = [{"what": leg[0], "src": leg[1], "dst": leg[2], "bytes": leg[3], "ms": leg_ms(leg, r),
                     **({"links": r} if links else {})} for leg, r in zip(legs, link_regimes)]
    tx = sum(t["ms"] for t in transmission)
    c50 = sum(c["p50_ms"] for c in chosen)
    c90 = sum(c["p90_ms"] for c in chosen)
    return {"p50_ms": c50 + tx + overhead, "p90_ms": c90 + tx + overhead, "compute_ms": c50,
            "compute_p90_ms": c90, "transmission_ms": tx, "overhead_ms": overhead,
            "compute": [{"host": h, "part": i, "regime": c["regime"], "p50_ms": c["p50_ms"], "p90_ms": c["p90_ms"],
                         "cpu_p50_ms": c["cpu_p50_ms"]} for i, (h, c) in enumerate(zip(hosts, chosen))],
            "transmission": transmission}


def request_order(legs: list[tuple], parts: int) -> list[tuple[str, object]]:
    """One request's steps in order: ``("leg", i)`` for the i-th of ``legs`` (:func:`message_legs`),
    and ``("part", k)`` where part k computes: after the message into it (the input before part
    0, cut k before part k), every part before the answers."""
    order, k = [], 0
    for i, leg in enumerate(legs):
        what = leg[0]
        upto = int(what.split()[1]) if what.startswith("cut ") else (parts if what == "answer" else 0)
        while k < upto:
            order.append(("part", k))
            k += 1
        order.append(("leg", i))
    return order + [("part", j) for j in range(k, parts)]


def message_legs(art: Artifact, source: str, hosts: list[str]) -> list[tuple[str, str, str, int, bool]]:
    """(what, from, to, bytes, is a request) of every message of one request from ``source``
    through ``hosts`` (the parts' hosts, in order) and its answer back, hop by hop; each frame
    as the wire carries it: the tensors, the header and the trace records so far. Messages
    between a host and itself are left out."""
    n = len(hosts)
    legs = [("input", source, hosts[0], art.input_bytes + FRAME_HEADER_BYTES, True)]
    legs += [(f"cut {i + 1}", hosts[i], hosts[i + 1], (art.cut_bytes[i] if i < len(art.cut_bytes) else 0)
              + FRAME_HEADER_BYTES + REQUEST_RECORD_BYTES * (i + 1), True) for i in range(n - 1)]
    answer = art.answer_bytes + ANSWER_HEADER_BYTES + REQUEST_RECORD_BYTES * (n - 1)
    legs += [("answer", hosts[i], hosts[i - 1], answer + RESPONSE_RECORD_BYTES * (n - 1 - i), False)
             for i in range(n - 1, 0, -1)]
    legs += [("answer", hosts[0], source, answer + RESPONSE_RECORD_BYTES * (n - 1), False)]
    return [leg for leg in legs if leg[1] != leg[2]]


def _pass_ms(links: dict, d, regime: str) -> float:
    """One pass through a link direction ``d``'s emulation, p50, in ``regime``."""
    return links["classes"][profiles.link_class(d)][regime]["p50_ms"]


def _link_regimes(topo, legs: list[tuple], leg_ms: list[float], compute_ms: list[float]) -> list[dict[str, str]]:
    """Per leg, each link it crosses and the regime that link is in when the leg starts: idle
    when the link carried nothing for at least IDLE_MS before (since its last leg in this
    request, or, for its first, in the one before: one request at a time). The request's
    timeline: the input, then each part's compute and the cut after it, then the answers."""
    t, spans = 0.0, []
    for kind, i in request_order(legs, len(compute_ms)):
        if kind == "part":
            t += compute_ms[i]
            continue
        route = topo.path(legs[i][1], legs[i][2])
        spans.append((t, t + leg_ms[i], [topo.link(f"{x}-{y}").name for x, y in zip(route, route[1:])]))
        t += leg_ms[i]
    total = t
    used: dict[str, list[tuple[float, float]]] = {}
    for start, end, names in spans:
        for name in names:
            used.setdefault(name, []).append((start, end))
    out = []
    for start, _end, names in spans:
        regimes = {}
        for name in names:
            uses = used[name]
            before = [e for s, e in uses if s < start]
            last = before[-1] if before else uses[-1][1] - total      # the previous request's last use
            regimes[name] = "idle" if start - last >= IDLE_MS else "warm"
        out.append(regimes)
    return out


def _regime(profile: dict, idle_ms: float) -> dict:
    """The profile's numbers for a host idle ``idle_ms`` between requests: back to back
    (``warm``) below IDLE_MS, else after idling (``idle``); a profile without regimes is warm."""
    regimes = profile.get("regimes") or {}
    name = "idle" if idle_ms >= IDLE_MS and "idle" in regimes else "warm"
    r = regimes.get(name, profile)
    return {"regime": name, "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"], "cpu_p50_ms": r.get("infer_cpu_p50_ms")}


@dataclass
class Plan:
    experiment: str
    tolerance: float
    axes: list[GridAxis]
    rows: list[dict] = field(default_factory=list)          # one per (point, model, strategy)
    winners: list[dict] = field(default_factory=list)       # one per (point, model)
    crossovers: list[dict] = field(default_factory=list)
    cut_crossovers: list[dict] = field(default_factory=list)     # a cut: fastest strategy's cut changes
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"experiment": self.experiment, "tolerance": self.tolerance,
                "grid": [{"path": a.path, "values": list(a.values)} for a in self.axes],
                "predictions": self.rows, "winners": self.winners, "crossovers": self.crossovers,
                "cut_crossovers": self.cut_crossovers, "seconds": round(self.seconds, 3)}


def grid_points(exp: Experiment, axes: list[GridAxis]) -> list[dict]:
    """The experiment's own sweep with the grid's axes replacing (or adding) their paths."""
    import itertools

    mine = {a.path for a in axes}
    sweep = [(p, [str(v) if not isinstance(v, (list, tuple, dict)) else v for v in vs])
             for p, vs in exp.sweep if p not in mine]
    sweep += [(a.path, list(a.values)) for a in axes]
    n = math.prod(len(v) for _, v in sweep) if sweep else 1
    if n > MAX_GRID_POINTS:
        raise PlanError(f"the grid has {n} points, more than {MAX_GRID_POINTS}: use fewer values")
    paths = [p for p, _ in sweep]
    return [dict(zip(paths, combo)) for combo in itertools.product(*(v for _, v in sweep))]


def _limits_key(need: ArtifactNeed, part: int, cpus, period_us: int, threads: int, pace, inputs: int) -> tuple:
    return (need, part, cpus, period_us, threads, pace, inputs)


def _profiles_for(exp: Experiment, points: list[dict], cache=None, only=None) -> tuple[dict, dict, list[str]]:
    """(artifacts by need, profiles by `_limits_key`, what is missing at ``points``: one line
    each); ``only(model, strategy)``: the cells to look at (default: all)."""
    from .artifacts import need_label

    arts, profs, missing = {}, {}, []
    for p in profiles.parts_on_hosts(exp, points, cache=cache, build=False, only=only):
        if p.need not in arts:
            arts[p.need] = load_artifact(p.need, cache)
        art = arts[p.need]
        if art is None:
            missing.append(f"{need_label(p.need)} is not prepared")
            continue
        prof = profiles.load(p, art.folder, cache)
        if prof is None:
            missing.append(f"{p.label} on {p.host} ({profiles.limits_text(p)}) has no profile")
        else:
            profs[_limits_key(p.need, p.part, p.cpus, p.period_us, p.threads, p.pace, p.inputs)] = prof
    return arts, profs, list(dict.fromkeys(missing))


@dataclass
class _Known:
    """What predicting needs beyond the point: artifacts, profiles, the machine's cores."""

    arts: dict
    profs: dict
    cores: float
    tolerance: float
    links: dict | None = None        # the machine's link profile (profile.load_links)
    cache: object = None             # where a cut: fastest strategy's candidates are looked up


def _predict_point(e: Experiment, point: dict, model: ModelRef, known: _Known) -> list[dict]:
    """Every strategy of ``model`` at the point ``e`` is at: one row each."""
    from .fastest import best_row, is_fastest

    # a cut: fastest strategy's row is its best candidate's, with the cut and why (testbed.fastest)
    return [best_row(e, point, model, s, known) if is_fastest(s) else
            _predict_need(e, point, model, s, ArtifactNeed(model, s.operators, s.parts), known)
            for s in e.strategies]


def _predict_need(e: Experiment, point: dict, model: ModelRef, s: Strategy, need: ArtifactNeed, known: _Known) -> dict:
    """The row of strategy ``s`` deploying the artifact ``need`` at the point ``e`` is at (with
    ``load``: the predictions under a server scenario's load, `testbed.queueing`)."""
    art = known.arts[need]

    def profile_of(host: str, i: int) -> dict:
        key = _limits_key(need, i, *profiles.host_limits(e, host, known.cores))
        if key not in known.profs:        # (parts_on_hosts saw every point: a bug if reached)
            raise PlanError(f"{model.name} [{s.name}] part {i + 1} on {host} at {point_label(point)} has no profile")
        return known.profs[key]

    compute = [profile_of(host, i) for host, i in _in_part_order(e, s)]
    row = {"point": point, "model": model.name, "strategy": s.name, "placement": ">".join(s.placement),
           **predict(e, s, art, compute, known.links), "metric": art.metric, "loss": art.loss,
           "loss_ci": art.loss_ci, "tolerance_verdict": tolerance_verdict(art.loss, art.loss_ci, known.tolerance)}
    if e.load.scenario == "server":
        from .queueing import predict_server

        row["load"] = predict_server(e, s, art, profile_of, known.links)
    return row


def _in_part_order(e: Experiment, s: Strategy) -> list[tuple[str, int]]:
    """(host, part) of one request's path: with ``source`` first in the placement, part 0 on
    the first source (as `chain`)."""
    dep = e.deployment(s)
    return [dep[0]] + [(h, i) for h, i in dep if i]


def _check_steady(e: Experiment, point: dict) -> None:
    lossy = [lk.name for lk in e.topology.links for d in (lk.forward, lk.reverse) if d.loss or d.jitter_ms]
    if lossy:
        raise PlanError(f"at {point_label(point)}: link {lossy[0]} has loss or jitter, which a plan does not "
                        "model: plan without them, or measure them (testbed run)")


def make_plan(exp: Experiment, axes: list[GridAxis], tolerance: float = TOLERANCE, cache=None) -> Plan:
    """Predict every (grid point, model, strategy); PlanError names what has no profile."""
    t0 = time.perf_counter()
    if exp.traces:
        raise PlanError("this experiment replays link traces: a plan assumes steady links (drop the traces, "
                        "or measure: testbed run)")
    points = grid_points(exp, axes)
    arts, profs, missing = _profiles_for(exp, points, cache)
    links = profiles.load_links(cache)
    if links is None:
        missing.append("this machine's links have no profile (one pass through a link's emulation)")
    if missing:
        hosts = "".join(f" --grid {a.path}={','.join(a.values)}" for a in axes if a.path.startswith("hosts."))
        raise PlanError(f"{missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                        + f": run `sudo testbed profile {exp.source_path or 'EXPERIMENT'}{hosts}` first")
    known = _Known(arts, profs, float(os.cpu_count() or 1), tolerance, links, cache)
    plan = Plan(exp.name, tolerance, axes)
    for point in points:
        e = profiles.at(exp, point)
        _check_steady(e, point)
        for model in e.models:
            rows = _predict_point(e, point, model, known)
            plan.rows += rows
            plan.winners.append(_winner(point, model.name, rows))
    plan.crossovers = crossovers(exp, axes, plan, known)
    plan.cut_crossovers = cut_crossovers(exp, axes, plan, known)
    plan.seconds = time.perf_counter() - t0
    return plan


def _winner(point: dict, model: str, rows: list[dict]) -> dict:
    """The fastest by predicted p50 among the strategies within tolerance; without any quality
    metric, the fastest. Under a server scenario's load (rows with ``load``) by the load
    study's rule: with a rate, the lowest p99 among those meeting every latency target; when
    the run searches for a rate, the highest rate predicted to meet them."""
    if any("load" in r for r in rows):
        return _load_winner(point, model, rows)
    known = [r for r in rows if r["tolerance_verdict"] is not None]
    eligible = [r for r in rows if r["tolerance_verdict"] == WITHIN] if known else rows
    ranked = sorted(eligible, key=lambda r: r["p50_ms"])
    fastest = min(rows, key=lambda r: r["p50_ms"])
    return {"point": point, "model": model, "winner": ranked[0]["strategy"] if ranked else None,
            "p50_ms": ranked[0]["p50_ms"] if ranked else None, "fastest": fastest["strategy"],
            "rule": "within tolerance" if known else "latency only (no quality metric)",
            # how much faster than the runner-up: how sure the prediction is of its winner
            "margin_ms": ranked[1]["p50_ms"] - ranked[0]["p50_ms"] if len(ranked) > 1 else None}


def _load_winner(point: dict, model: str, rows: list[dict]) -> dict:
    known = [r for r in rows if r["tolerance_verdict"] is not None]
    eligible = [r for r in rows if r["tolerance_verdict"] == WITHIN] if known else rows
    searching = all("max_qps" in r["load"] for r in rows)
    if searching:
        ranked = sorted(eligible, key=lambda r: -r["load"]["max_qps"])
        key, rule = (lambda r: -r["load"]["max_qps"]), "highest rate within the latency targets"
    else:
        eligible = [r for r in eligible if not r["load"].get("saturated")
                    and all(v["met"] for v in (r["load"].get("slo") or {}).values())]
        ranked = sorted(eligible, key=lambda r: r["load"]["p99_ms"])
        key, rule = (lambda r: r["load"]["p99_ms"]), "lowest p99 among those meeting the latency targets"
    best = ranked[0] if ranked else None
    margin = abs(key(ranked[1]) - key(ranked[0])) if len(ranked) > 1 else None
    return {"point": point, "model": model, "winner": best["strategy"] if best else None,
            "p50_ms": best["load"].get("p99_ms") if best and not searching else None,
            "fastest": best["strategy"] if best else None, "rule": rule + (" within tolerance" if known else ""),
            # how sure: p99's margin to the runner-up (ms), or the rates' (req/s) when searching
            "margin_ms": None if searching else margin, **({"margin_qps": margin} if searching else {})}


def _changes(axes: list[GridAxis], decided: list[tuple[dict, str, object]],
             decide: Callable[[dict, str], object]) -> list[dict]:
    """Where a decision changes between two neighbouring values of a bandwidth range (the other
    paths fixed): ``decided`` holds (point, model, decision) at every grid point, ``decide(point,
    model)`` makes it at any other point. Each change is found by bisection on a log scale, on
    the same predictions, and the search goes on above it: between two grid values the decision
    may change more than once (mobile alone, then a split, then edge alone). A decision of None
    (nothing chosen) has no crossover."""
    out = []
    by_point = {(tuple(sorted(point.items())), model): value for point, model, value in decided}
    for axis in (a for a in axes if a.log):
        for point, model, value in decided:
            i = axis.values.index(point[axis.path]) if point.get(axis.path) in axis.values else -1
            if i < 0 or i + 1 >= len(axis.values):
                continue
            upper = by_point.get((tuple(sorted(dict(point, **{axis.path: axis.values[i + 1]}).items())), model))
            if upper == value or None in (value, upper):
                continue
            at_rate = (lambda bps, point=point, model=model:
                       decide(dict(point, **{axis.path: format_rate(int(round(bps)))}), model))
            start, below, top = axis.numbers[i], value, axis.numbers[i + 1]
            for _ in range(MAX_CHANGES):
                lo, hi = start, top
                for _ in range(CROSSOVER_STEPS):
                    if hi / lo < 1.001:
                        break
                    mid = math.sqrt(lo * hi)
                    lo, hi = (mid, hi) if at_rate(mid) == below else (lo, mid)
                at = math.sqrt(lo * hi)
                above = upper if hi >= top else at_rate(hi)     # the decision just above the change
                if above is None:
                    break
                out.append({"model": model, "path": axis.path,
                            "at": {k: v for k, v in point.items() if k != axis.path}, "below": below,
                            "above": above, "bandwidth_bps": at, "bandwidth": format_rate(int(round(at)))})
                if above == upper:
                    break
                start, below = hi, above
    return out


def _model_at(exp: Experiment, point: dict, name: str) -> tuple[Experiment, ModelRef]:
    e = profiles.at(exp, point)
    return e, next(m for m in e.models if m.name == name)


def crossovers(exp: Experiment, axes: list[GridAxis], plan: Plan, known: _Known) -> list[dict]:
    """Where the winner changes along a bandwidth range (:func:`_changes`)."""
    def winner_at(point: dict, name: str):
        e, model = _model_at(exp, point, name)
        return _winner(point, name, _predict_point(e, point, model, known))["winner"]
    return _changes(axes, [(w["point"], w["model"], w["winner"]) for w in plan.winners], winner_at)


def cut_crossovers(exp: Experiment, axes: list[GridAxis], plan: Plan, known: _Known) -> list[dict]:
    """Where a ``cut: fastest`` strategy's cut changes along a bandwidth range (the cut
    Neurosurgeon would switch to there): :func:`_changes` of its rows' ``cut``, each with
    ``strategy``; ``below`` and ``above`` are the cuts' tensors."""
    from .fastest import best_row

    out = []
    for name in dict.fromkeys(r["strategy"] for r in plan.rows if r.get("cut")):
        def cut_at(point: dict, model_name: str, name=name):
            e, model = _model_at(exp, point, model_name)
            return best_row(e, point, model, next(s for s in e.strategies if s.name == name), known)["cut"]
        decided = [(r["point"], r["model"], r["cut"]) for r in plan.rows if r["strategy"] == name and r.get("cut")]
        out += [{**c, "strategy": name} for c in _changes(axes, decided, cut_at)]
    return out


def uncertain_points(plan: Plan, n: int) -> list[dict]:
    """The ``n`` grid points where the plan is least sure of a winner: by the smallest margin
    between a model's winner and its runner-up, relative to the winner's p50 (the nearest
    to a crossover), the least sure model deciding for its point. Points where every model
    has a single candidate (no runner-up) come last."""
    sure: dict[str, tuple[float, dict]] = {}
    for w in plan.winners:
        key = json.dumps(w["point"], sort_keys=True)
        rel = math.inf if w["margin_ms"] is None or not w["p50_ms"] else w["margin_ms"] / w["p50_ms"]
        if key not in sure or rel < sure[key][0]:
            sure[key] = (rel, w["point"])
    return [point for _rel, point in sorted(sure.values(), key=lambda v: v[0])[:n]]
