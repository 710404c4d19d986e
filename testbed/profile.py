"""Compute profiles (`testbed profile EXPERIMENT`): each part of each artifact an experiment
needs, computed on the emulated host that runs it, under that host's real limits (inside its
cgroup, with the ONNX Runtime threads and the pacing its part server would use), one request
at a time, as a distribution: every request's wall time and its p10 / p50 / p90.

A profile holds two regimes: requests back to back (``warm``) and after 50-150 ms idle
(``idle``), which differ several-fold for small parts (see :data:`REGIMES`). Each regime
keeps every request's CPU time too, the inference's own (``infer_cpu_ms``: its threads',
without the pacing, as a part server's trace records it): the report sets its median beside
the run's, which tells a machine that computed slower than at profiling from a wrong plan
(profiles measured before it lack it, and the comparison says so). A profile is
what `testbed plan` predicts from. It is stored in the artifact cache
(``profiles/<key>``), keyed by what decides a part's compute and nothing else:

- the artifact (its cache folder: the model, weights, operator chain and parts, by content)
  and the part;
- the host's limits as its server meets them: cores, the CPU quota's period, ONNX Runtime's
  intra-op threads, the pacing share;
- the machine: CPU model, logical cores, kernel release and ONNX Runtime's version.

Two hosts with the same limits share a profile, and so do two experiments; a sweep over a
host's cores needs one profile per value. The host's name, the links and the memory limit
do not enter the key (they do not change a part's compute).

What a profile leaves out, and the plan therefore too: an early-exit artifact's compute
depends on how many inputs exit, and the probe feeds each part generated inputs (seeded
normal floats, zero token ids), so its profile is that of those inputs.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from topologies.checks import auto_cpu_period_us

from topologies.errors import TestbedError

from .experiment import ArtifactNeed, Experiment, point_label

PROFILE_VERSION = 3          # 3: a part as its server runs it (every segment, exits) on the run's inputs
KIND = "profiles"            # the cache's entry kind
FILE = "profile.json"
DEFAULT_REQUESTS = 30


class ProfileError(TestbedError):
    """A profile that cannot be taken or read: a point the experiment refuses, a host whose
    limits are not what the profile is for."""


@lru_cache(maxsize=1)
def machine() -> dict:
    """What a profile's numbers hold for: the CPU model, logical cores, kernel release, ONNX
    Runtime's version."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        ort = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        ort = "absent"
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "onnxruntime": ort}


@dataclass(frozen=True)
class PartOnHost:
    """One part of one artifact on one host of one sweep point, with the limits its server has."""

    need: ArtifactNeed
    part: int
    host: str
    cpus: float | None
    period_us: int
    threads: int
    pace: float | None
    label: str
    inputs: int = 10                   # the run's request inputs (requests.inputs): the first N of the data

    def key(self, artifact: str) -> str:
        """The profile's cache key, for the artifact in cache folder ``artifact``."""
        from workloads.cache import content_key

        return content_key("profile", version=PROFILE_VERSION, artifact=artifact, part=self.part,
                           cpus=self.cpus, period_us=self.period_us, threads=self.threads, pace=self.pace,
                           inputs=self.inputs, machine=machine())

    def limits(self) -> dict:
        return {"cpus": self.cpus, "cpu_period_us": self.period_us, "threads": self.threads, "pace": self.pace}


def at(exp: Experiment, point: dict) -> Experiment:
    """``exp`` at ``point`` (a sweep point, or a plan's grid point); a value that the
    experiment refuses is a ProfileError naming the point."""
    import yaml

    from .experiment import ExperimentError

    # a plan's grid keeps its values as written (text); the experiment takes them parsed, as --set does
    parsed = {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in point.items()}
    try:
        return exp.at(parsed) if point else exp
    except ExperimentError as e:
        raise ProfileError(f"at {point_label(point)}: {e}") from None


def parts_on_hosts(exp: Experiment, points: list[dict] | None = None, *, cache=None, build: bool = True,
                   only=None) -> list[PartOnHost]:
    """Every (artifact, part, host limits) the cells of ``exp`` compute at ``points`` (default:
    its sweep points), each once (a point that changes only links adds nothing); a ``cut:
    fastest`` strategy's every candidate. ``cache``, ``build``, ``only``: as
    :meth:`Experiment.parts_by_host` takes them."""
    cores = float(os.cpu_count() or 1)
    out: dict[tuple, PartOnHost] = {}
    for point in (exp.cells_grid() if points is None else points):
        e = at(exp, point)
        for host, parts in e.parts_by_host(cache=cache, build=build, only=only).items():
            limits = host_limits(e, host, cores)
            for need, i, strategy in parts:
                label = f"{need.model.name} [{strategy}]" + (f" part {i + 1}/{need.parts}" if need.parts > 1 else "")
                out.setdefault((need, i, *limits), PartOnHost(need, i, host, *limits[:4], label, limits[4]))
    return list(out.values())


def host_limits(e: Experiment, host: str, cores: float) -> tuple:
    """What of ``host``'s limits decides a part's compute there (a profile's key): cores, the
    quota's period, ONNX Runtime's threads, the pacing share, the run's request inputs."""
    from .runner import host_pace, host_threads

    spec = e.topology.host(host)
    return (spec.cpus, spec.cpu_period_us or auto_cpu_period_us(spec.cpus), host_threads(e, host, cores),
            host_pace(e, host), e.requests.inputs)


def artifact_folder(need: ArtifactNeed, cache=None) -> Path | None:
    """The artifact's cache folder, if it is built (nothing is built here)."""
    from workloads.prepare import cached_artifact

    return cached_artifact(need.model.name, need.operators, parts=need.parts, weights=need.model.weights,
                           data=need.model.data, cache=cache)


def load(p: PartOnHost, folder: Path, cache=None) -> dict | None:
    """The stored profile of ``p`` (artifact in ``folder``), or None."""
    return _stored(p.key(folder.name), cache)


def _stored(key: str, cache=None) -> dict | None:
    """The profile stored under ``key``, or None (also when it cannot be read)."""
    from workloads.cache import Cache

    entry = (cache or Cache()).get(KIND, key)
    if entry is None:
        return None
    try:
        return json.loads((entry / FILE).read_text())
    except (OSError, ValueError):
        return None


def exit_summary(wall_ms: list[float], exited: list[bool]) -> dict:
    """The share of requests answered by an exit in the part, and the compute of those that
    exited and of those that went on (p50 / p90), where there are both."""
    out = {"exit_fraction": round(sum(exited) / len(exited), 4) if exited else 0.0}
    for name, want in (("exited", True), ("continued", False)):
        mine = [w for w, x in zip(wall_ms, exited) if x is want]
        if mine and len(mine) < len(wall_ms):
            s = summary(mine)
            out[name] = {"p50_ms": s["p50_ms"], "p90_ms": s["p90_ms"], "requests": len(mine)}
    return out


def summary(wall_ms: list[float]) -> dict:
    """p10 / p50 / p90 and the mean of per-request compute (ms)."""
    from emulation.calibrate import p10_p50_p90

    p10, p50, p90 = p10_p50_p90(wall_ms)
    return {"p10_ms": round(p10, 3), "p50_ms": round(p50, 3), "p90_ms": round(p90, 3),
            "mean_ms": round(statistics.fmean(wall_ms), 3)}


def probe_args(p: PartOnHost, folder: Path, inputs: Path | None = None) -> list[str]:
    """The compute probe's work for ``p``: its part of the artifact as its server runs it
    (every segment of the part, exits), on the run's request inputs in ``inputs`` (an
    ``.npz``), fed through the parts ahead of it."""
    return ["--artifact", str(folder), "--part", str(p.part)] + (["--inputs", str(inputs)] if inputs else [])


# the idle time between two requests that a part server sees decides how fast it computes:
# after 50-150 ms idle a small model took 3.7x as long per request as back to back (0.57 ms
# against 0.15 ms, single thread, 2-core VM: caches and the core's clock). A profile holds
# both regimes; `testbed plan` picks by the idle time its prediction leaves each host.
REGIMES = {"warm": "0:1", "idle": "50:150"}      # regime -> the probe's --gap-ms


def measure(net, p: PartOnHost, folder: Path, requests: int = DEFAULT_REQUESTS, seed: int = 0,
            inputs: Path | None = None) -> dict:
    """Profile ``p`` on its host of ``net`` (already up with the point's limits): ``requests``
    requests one at a time in each regime of :data:`REGIMES`, inside the host's cgroup, with
    the server's threads and pacing, on the request inputs in ``inputs`` (cycled). The
    top-level p10/p50/p90 are the warm regime's; ``exit_fraction``: the share of requests the
    part answered by an exit head (an early-exit artifact), ``reach``: the share of the inputs
    that reach the part (the rest exit before it)."""
    from emulation.calibrate import run_compute_probe

    limits = net.hosts_limits[p.host]
    if limits.cpus != p.cpus or limits.period_us != p.period_us:
        raise ProfileError(f"host {p.host} has cpus {limits.cpus}, period {limits.period_us} us; "
                           f"the profile wants {p.cpus}, {p.period_us} us")
    regimes = {}
    for i, (regime, gap) in enumerate(REGIMES.items()):
        got = run_compute_probe(net, p.host, probe_args(p, folder, inputs), requests=requests, threads=p.threads,
                                limited=True, seed=seed + i, pace=p.pace, gap_ms=gap)
        wall = [round(float(v), 4) for v in got["wall_ms"]]
        infer_cpu = [round(float(v), 4) for v in got["infer_cpu_ms"]]
        regimes[regime] = {"gap_ms": gap, "wall_ms": wall, "cpu_ms": [round(float(v), 4) for v in got["cpu_ms"]],
                           "infer_cpu_ms": infer_cpu, "infer_cpu_p50_ms": round(statistics.median(infer_cpu), 4),
                           "inputs": got["inputs"], "exited": got["exited"], **summary(wall),
                           **exit_summary(wall, got["exited"])}
        reach = len(got["reached"]) / p.inputs if inputs else 1.0
    return {"version": PROFILE_VERSION, "artifact": folder.name, "model": p.need.model.name,
            "operators": [c.label() for c in p.need.operators], "parts": p.need.parts, "part": p.part,
            "limits": p.limits(), "machine": machine(), "measured_on": p.host, "requests": requests,
            "inputs": p.inputs if inputs else None, "reach": reach,
            **{k: v for k, v in regimes["warm"].items() if k.endswith("_ms") and k != "gap_ms"},
            "regimes": regimes, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def save(p: PartOnHost, folder: Path, profile: dict, cache=None, replace: bool = False) -> Path:
    """Store ``profile`` for ``p``; ``replace`` drops a stored one first (``--again``)."""
    from workloads.cache import Cache

    cache = cache or Cache()
    key = p.key(folder.name)
    if replace and cache.get(KIND, key) is not None:
        _drop(cache, key)
    with cache.building(KIND, key, {"part": p.label, "limits": p.limits()}) as tmp:
        (tmp / FILE).write_text(json.dumps(profile, indent=1))
    return cache.path(KIND, key)


def point_limits(exp: Experiment, points: list[dict] | None = None, *, cache=None, only=None
                 ) -> list[tuple[dict, Experiment, list[PartOnHost]]]:
    """The points (default: the sweep's) that need a network of their own: one per distinct
    set of hosts' limits, with the parts computed under it (the first point that has it
    stands for the rest: links do not change compute)."""
    groups: dict[tuple, tuple[dict, Experiment, list[PartOnHost]]] = {}
    for point in (exp.cells_grid() if points is None else points):
        e = at(exp, point)
        shape = tuple((h.name, h.cpus, h.cpu_period_us) for h in e.topology.hosts)
        if shape not in groups:
            groups[shape] = (point, e, parts_on_hosts(e, cache=cache, only=only))
    return list(groups.values())


def profile_experiment(exp: Experiment, points: list[dict] | None = None, *, requests: int = DEFAULT_REQUESTS,
                       again: bool = False, progress: Callable[[str], None] = lambda message: None,
                       cache=None, only=None) -> list[dict]:
    """Profile every part ``exp`` computes that has no stored profile (all with ``again``):
    its artifacts prepared (cached), its network brought up once per distinct set of host
    limits. Returns one row per part on host: label, host, limits, the profile's summary and
    whether it was measured now or reused. ``only(model, strategy)``: the cells whose parts
    to profile (default: all)."""
    from emulation.network import EmulatedNetwork
    from emulation.probe import capabilities

    from .artifacts import prepare_all, write_request_inputs

    built = prepare_all(exp.artifacts_needed(cache=cache, only=only, progress=progress), cache=cache,
                        progress=progress)
    rows, done = [], set()
    for point, e, parts in point_limits(exp, points, cache=cache, only=only):
        todo = []
        for p in parts:
            folder = built[p.need].path
            key = p.key(folder.name)
            if key in done:
                continue
            stored = None if again else load(p, folder, cache)
            if stored is not None:
                rows.append(_row(p, stored, reused=True))
                done.add(key)
            else:
                todo.append((p, folder))
        if not todo:
            continue
        where = ", ".join(f"{k}={v}" for k, v in point.items() if k.startswith("hosts.")) or "the experiment's hosts"
        progress(f"bringing up {e.topology.name} ({where}) to profile {len(todo)} part(s)")
        with EmulatedNetwork(e.topology, caps=capabilities()) as net, \
                tempfile.TemporaryDirectory(prefix="testbed-profile-") as tmp:
            for p, folder in todo:
                key = p.key(folder.name)
                if key in done:
                    continue
                inputs = write_request_inputs(p.need.model, p.inputs, Path(tmp), cache)
                progress(f"profiling {p.label} on {p.host} ({limits_text(p)}): {requests} requests on "
                         f"{p.inputs} inputs")
                prof = measure(net, p, folder, requests=requests, inputs=inputs)
                save(p, folder, prof, cache=cache, replace=again)
                rows.append(_row(p, prof, reused=False))
                done.add(key)
    return rows


# ---- links: what one pass through a link's emulation costs ---------------------------------------
#
# A packet crossing an emulated link passes the link's wire (a forwarding namespace) and, where
# the direction is shaped or delayed on a machine without netem, its delay line (a process that
# holds each packet, then releases it). That pass costs time beyond the link's arithmetic
# (bytes at the rate, its delay), measured: 0.04-0.05 ms one way with pings 1-20 ms apart,
# 0.11-0.17 ms after 200 ms idle (2-core VM, delay line), 0.01-0.03 ms without a delay line. A
# plan adds it per link a message crosses, in the regime the link is in (`plan.predict`). It
# is measured once per machine on a network of two hosts, by pings: half of each RTT beyond
# what the link's rate takes for the ping's frames.
LINK_CLASSES = {"line": 1_000_000_000, "plain": None}   # class -> the rate the pair's link is measured at
LINK_REGIMES = {"warm": (0.001, 100), "idle": (0.1, 15)}   # regime -> (seconds between pings, pings)


def link_class(d, serialize: bool = True) -> str:
    """``line``: the direction passes a delay line (delay, jitter or a rate, without netem) or
    a netem qdisc; ``plain``: only the wire's forwarding."""
    from emulation.wire import in_line

    return "line" if in_line(d, serialize) else "plain"


def links_key() -> str:
    from workloads.cache import content_key

    return content_key("link-profile", version=PROFILE_VERSION, machine=machine())


def load_links(cache=None) -> dict | None:
    """The machine's stored link profile, or None."""
    return _stored(links_key(), cache)


def measure_links(progress: Callable[[str], None] = lambda message: None) -> dict:
    """The one-way cost of one pass through a link, per class and regime (p10/p50/p90 ms), on
    a network of two unlimited hosts brought up for it."""
    from emulation.calibrate import expected_rtt_ms, measure_rtts_ms
    from emulation.network import EmulatedNetwork
    from emulation.probe import capabilities
    from topologies.spec import HostSpec, LinkSpec, TopologySpec

    spec = TopologySpec("link-profile", (HostSpec("a"), HostSpec("b")), (LinkSpec("a", "b"),))
    classes = {}
    with EmulatedNetwork(spec, caps=capabilities()) as net:
        netem = bool(net.netem)
        for cls in ("plain", "line"):        # plain first: no delay line has started yet
            net.set_link("a-b", rate_bps=LINK_CLASSES[cls])
            link = net.links["a-b"]
            ideal = expected_rtt_ms(link.forward, link.reverse)
            classes[cls] = {}
            for regime, (gap_s, count) in LINK_REGIMES.items():
                progress(f"timing one pass through a link ({cls}, {regime}): {count} pings {gap_s * 1000:g} ms apart")
                one_way = [max(0.0, (r - ideal) / 2) for r in measure_rtts_ms(net, "a", "b", count, gap_s)]
                classes[cls][regime] = {"gap_ms": gap_s * 1000, **summary(one_way)}
    return {"version": PROFILE_VERSION, "machine": machine(), "netem": netem, "classes": classes,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def profile_links(again: bool = False, progress: Callable[[str], None] = lambda message: None,
                  cache=None) -> dict:
    """The machine's link profile: the stored one (unless ``again``), else measured and stored.
    Returns it with ``reused``."""
    from workloads.cache import Cache

    cache = cache or Cache()
    stored = None if again else load_links(cache)
    if stored is not None:
        return {**stored, "reused": True}
    prof = measure_links(progress)
    save_links(prof, cache, replace=again)
    return {**prof, "reused": False}


def save_links(prof: dict, cache=None, replace: bool = False) -> Path:
    """Store the machine's link profile; ``replace`` drops a stored one first."""
    from workloads.cache import Cache

    cache = cache or Cache()
    key = links_key()
    if replace and cache.get(KIND, key) is not None:
        _drop(cache, key)
    with cache.building(KIND, key, {"part": "link pass", "machine": machine()}) as tmp:
        (tmp / FILE).write_text(json.dumps(prof, indent=1))
    return cache.path(KIND, key)


def _drop(cache, key: str) -> None:
    old = cache.path(KIND, key)
    aside = old.with_name(f".{key}.old.{os.getpid()}")
    os.replace(old, aside)
    shutil.rmtree(aside, ignore_errors=True)


def limits_text(p: PartOnHost) -> str:
    cpus = "unlimited" if p.cpus is None else f"{p.cpus:g} cores"
    return f"{cpus}, period {p.period_us / 1000:g} ms, {p.threads} thread{'s' * (p.threads > 1)}" + (
        f", paced to {p.pace:g}" if p.pace is not None else "")


def _row(p: PartOnHost, prof: dict, reused: bool) -> dict:
    idle = prof["regimes"]["idle"]
    return {"part": p.label, "host": p.host, "limits": limits_text(p), "artifact": prof["artifact"],
            "requests": prof["requests"], "p10_ms": prof["p10_ms"], "p50_ms": prof["p50_ms"],
            "p90_ms": prof["p90_ms"], "idle_p10_ms": idle["p10_ms"], "idle_p50_ms": idle["p50_ms"],
            "idle_p90_ms": idle["p90_ms"], "reused": reused, "measured_at": prof["measured_at"]}
