"""`testbed run --dry-run`: the cells a run would measure and roughly how long each takes,
from what is known without running anything: the cached artifacts' measured single-thread
compute time per part, the bytes each hop carries, the links' bandwidth and delay, the hosts'
CPU budgets, and the runner's own fixed costs (bringing a network up, changing it live,
starting and stopping a cell's servers: measured by ``benchmarks/bench_sweep.py``).

It is an estimate for planning (minutes or hours?), not a prediction: CPU contention,
ONNX Runtime's threads and the delay line's scheduling are not modelled, and a cell whose
artifact is not prepared yet has no compute estimate (``testbed prepare`` first). Nor has a
cell of a model from a Python factory: its artifacts are keyed by the module the factory
makes, and a dry run imports and calls no user code (the experiment loader only checks it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workloads.user import is_factory_ref

from .experiment import Experiment, ModelRef, Strategy
from .load import SEARCH_STEPS, start_rate
from .runner import cell_key

FRAME_BYTES, MSS_BYTES = 1514, 1448      # a full TCP segment's Ethernet frame and its payload (timestamps on)
INIT_CWND = 10                           # Linux's initial congestion window, in segments
# the runner's fixed costs on the 2-core reference VM (benchmarks/results/sweep.md)
BRING_UP_S = 0.7          # a three-host network: namespaces, links, qdiscs, cgroups, read-back
RECONFIGURE_S = 0.05      # the next sweep point's link/host changes, read back
DEPLOY_S = 0.6            # a cell's servers started (ORT sessions loaded) and stopped
# the harness per request and hop (client, codec, server), counted once per server and once for
# the client: benchmarks/results/serving-overhead-compute.md measured 0.10 ms in all for one
# server and 0.55 ms for a chain of three (null model, loopback); 0.4 before, which made a
# plan's sub-millisecond requests 2x too slow (tests/integration/test_plan.py)
OVERHEAD_MS = 0.1


NOT_PREPARED = "not prepared"     # the artifact is not in the cache: `testbed prepare` first
FACTORY = "factory"               # a model from a Python factory: --dry-run runs no user code
FASTEST = "fastest"               # a cut: fastest cell whose candidates are not all prepared and profiled


@dataclass
class CellEstimate:
    key: str
    point: dict
    model: str
    strategy: str
    placement: tuple[str, ...]
    done: bool                       # already stored as done in the output folder (skipped)
    request_ms: float | None         # one request, end to end; None: artifact not prepared
    seconds: float | None            # the whole cell (deploy + warm-up + measured requests)
    search: bool = False             # a search for a rate: ``seconds`` is its most (every run it may try)
    no_estimate: str | None = None   # why request_ms is None: NOT_PREPARED, FACTORY or FASTEST
    cut: str | None = None           # a cut: fastest cell's chosen cut (testbed.fastest), when it can be told
    cut_why: str | None = None       # why it cannot be told yet (FASTEST)


def _direction(topology, a: str, b: str):
    link = topology.link(f"{a}-{b}")
    return link.forward if (link.a, link.b) == (a, b) else link.reverse


def wire_size(nbytes: int) -> tuple[int, int]:
    """(TCP segments, bits on the wire) of a message of ``nbytes`` payload: a 1448-byte
    payload per 1514-byte frame."""
    segments = max(1, math.ceil(nbytes / MSS_BYTES))
    return segments, (nbytes + segments * (FRAME_BYTES - MSS_BYTES)) * 8


def transfer_ms(topology, src: str, dst: str, nbytes: int, *, fresh: bool = False, handshake: bool = False,
                pass_ms=None) -> float:
    """One message of ``nbytes`` (payload) from ``src`` to ``dst`` along the topology's path,
    until its last byte arrives (the arithmetic is in :mod:`testbed.plan`'s docstring). ``fresh``: on a new connection
    (slow start from the initial window); ``handshake``: the connection is opened first.
    ``pass_ms(link, direction)``: what one pass through that link direction's emulation costs
    beyond its rate and delay (`profile.measure_links`); none by default."""
    route = topology.path(src, dst)
    if len(route) < 2 or nbytes <= 0:
        return 0.0
    links = [topology.link(f"{a}-{b}").name for a, b in zip(route, route[1:])]
    dirs = [_direction(topology, a, b) for a, b in zip(route, route[1:])]
    segments, wire_bits = wire_size(nbytes)
    frame_bits = min(wire_bits, FRAME_BYTES * 8)
    rates = [d.rate_bps for d in dirs if d.rate_bps]
    bottleneck = min(rates) if rates else None
    back = [_direction(topology, b, a) for a, b in zip(route, route[1:])]
    passes = [pass_ms(n, d) for n, d in zip(links, dirs)] if pass_ms else [0.0] * len(dirs)
    passes_back = [pass_ms(n, d) for n, d in zip(links, back)] if pass_ms else [0.0] * len(dirs)
    one_way = sum(d.delay_ms for d in dirs) + sum(passes)
    rtt = one_way + sum(d.delay_ms for d in back) + sum(passes_back)
    ms = one_way
    # every link but the slowest takes one frame's time (the rest overlaps the bottleneck)
    slowest = dirs.index(min(dirs, key=lambda d: d.rate_bps or math.inf)) if rates else -1
    ms += sum(frame_bits / d.rate_bps * 1000 for i, d in enumerate(dirs) if d.rate_bps and i != slowest)
    if handshake:
        ms += rtt
    left = segments
    if fresh and rtt > 0:
        cwnd = INIT_CWND
        while left > cwnd and (bottleneck is None or cwnd * FRAME_BYTES * 8 / bottleneck * 1000 < rtt):
            ms += rtt                    # a window sent, then its acknowledgements awaited
            left -= cwnd
            cwnd *= 2
    if bottleneck:
        ms += wire_bits * left / segments / bottleneck * 1000
    return ms


def _input_bytes(model: ModelRef) -> int:
    from workloads.models import get_model

    return sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in get_model(model.name).inputs)


def _answer_bytes(manifest: dict, folder: str | None) -> int:
    """Bytes of the model's outputs (the answer sent back), from the last segment's graph;
    a segmentation mask is as big as its input or bigger."""
    import onnx

    if not folder:
        return 64
    graph = onnx.load(str(Path(folder) / manifest["segments"][-1]["file"]), load_external_data=False).graph
    total = 0
    for o in graph.output:
        if o.name not in manifest.get("outputs", []):
            continue
        t = o.type.tensor_type
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in t.shape.dim]
        total += int(np.prod(dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    return total or 64


def request_ms(exp: Experiment, model: ModelRef, strategy: Strategy, manifest: dict,
               answer_bytes: int = 64) -> float:
    """One request: the input to the first host, each part's compute (single-thread time
    divided by the host's CPU share when below one core), each cut tensor to the next host,
    and the answer back (``answer_bytes``: `_answer_bytes` of the artifact), each message
    over its path as `testbed plan` sends it (:func:`transfer_ms`, a kept connection)."""
    topo, hosts = exp.topology, strategy.placement
    source = exp.sources[0]         # under load from several sources: as seen from the first
    source = hosts[0] if source == "client" and "client" not in topo.host_names else source
    if exp.per_source(strategy):
        hosts = (source, *hosts[1:])
    cuts = [c["bytes"] for c in (manifest.get("report", {}).get("partition", {}).get("cuts") or [])]
    ms = (transfer_ms(topo, source, hosts[0], _input_bytes(model))
          + transfer_ms(topo, hosts[-1], source, answer_bytes))
    for i, host in enumerate(hosts):
        cpus = topo.host(host).cpus
        ms += manifest["compute_ms"][i] / min(cpus, 1.0) if cpus else manifest["compute_ms"][i]
        if i + 1 < len(hosts):
            ms += transfer_ms(topo, host, hosts[i + 1], cuts[i] if i < len(cuts) else 0)
    return ms + OVERHEAD_MS * (len(hosts) + 1)


def _measuring_s(exp: Experiment, ms: float) -> float:
    """Seconds a cell spends sending requests, one taking ``ms`` alone: one at a time for
    single-stream; under load, the scenario's duration, or its requests at the offered rate
    (server) or ``concurrency`` at a time (the rest: a bound from below, as queueing is left
    out). Warm-up requests go one at a time."""
    load, r = exp.load, exp.requests
    warm = r.warmup * ms / 1000
    if exp.duration_ms() is not None:
        return warm + exp.duration_ms() / 1000 + ms / 1000
    if not load.concurrent:
        return warm + r.repeat * ms / 1000
    if load.scenario == "server":
        return warm + r.repeat / load.qps + ms / 1000
    return warm + r.repeat * ms / 1000 / (load.in_flight() or 1)


def estimate(exp: Experiment, done: set[str], cache=None) -> tuple[list[CellEstimate], float, int]:
    """Every cell of ``exp`` in run order; the estimated seconds of what is left to run (the
    networks included) and how many cells to run have no estimate."""
    from workloads.prepare import cached_artifact
    from workloads.runtime import load_manifest

    from .fastest import choice_key, is_fastest, preview

    manifests: dict = {}
    cells, total, unknown, shape = [], 0.0, 0, None
    choices, fastest_unknown = preview(exp, cache)
    for point, e in exp.points():
        todo = False
        for model in e.models:
            for declared in e.strategies:
                s, cut = declared, None
                if is_fastest(declared) and choices:
                    s, choice = choices[choice_key(point, model, declared.name)]
                    cut = choice["cut"]
                k = (model, s.operators, s.parts)
                if k in manifests:           # read once per artifact, not per cell
                    pass
                elif is_factory_ref(model.name):
                    # finding its artifact needs the module the factory makes: no user code runs here
                    manifests[k] = (None, None)
                else:
                    folder = cached_artifact(model.name, s.operators, parts=s.parts, weights=model.weights,
                                             data=model.data, cache=cache)
                    m = load_manifest(folder) if folder is not None else None
                    manifests[k] = (m, _answer_bytes(m, str(folder)) if m is not None else None)
                key = cell_key(e, point, model, declared)
                m, answer = manifests[k]
                ms = request_ms(e, model, s, m, answer) if m is not None else None
                why = None if m is not None else FACTORY if is_factory_ref(model.name) else \
                    FASTEST if is_fastest(s) else NOT_PREPARED
                secs = None
                if ms is not None and e.load.searching:       # at most SEARCH_STEPS runs, each a cell
                    start = e.at({"load.qps": start_rate(e.load)})
                    secs = SEARCH_STEPS * (DEPLOY_S + _measuring_s(start, ms))
                elif ms is not None:
                    secs = DEPLOY_S + _measuring_s(e, ms)
                is_done = key in done
                cells.append(CellEstimate(key, point, model.name, s.name, s.placement, is_done, ms, secs,
                                          e.load.searching, why, cut, fastest_unknown if why == FASTEST else None))
                if not is_done:
                    todo = True
                    if secs is None:
                        unknown += 1
                        total += DEPLOY_S
                    else:
                        total += secs
        if todo:
            total += RECONFIGURE_S if e.topology.shape() == shape else BRING_UP_S
            shape = e.topology.shape()
    return cells, total, unknown
