"""The experiment runner: prepare artifacts, bring the network up, deploy each strategy's parts
onto its hosts, send the requests, store what was measured, clean up.

One *cell* = one sweep point x one model x one strategy, and it is the unit of storage: its
requests and hops are written in one transaction when it ends, whether it ended well, with
failures (``oom``, ``timeout``, ``error`` are results, not crashes), or was interrupted
(Ctrl-C / SIGTERM keep what was measured so far, marked ``interrupted``). A cell already
stored as ``done`` in the output folder is not run again (re-running a command resumes).

Per cell, in order: one server per placement host (last part first, so every server finds
its next hop listening), each started inside its host's namespace and cgroup and waited for
until it says it is ready; then the client on the source host (in its namespace, outside
its cgroup: the harness is not charged to the host), which pings the first hop, sends the
warm-up and measured requests one at a time and streams a JSON line per request back; then
the servers are stopped (SIGTERM, by PID) and the hosts' OOM counters read.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from emulation import signals
from emulation.errors import EmulationError
from emulation.process import exit_text, line_reader, ready_lines, terminate
from topologies.errors import TestbedError, no_space, no_space_line, one_line
from workloads.errors import WorkloadError
from workloads.serving import LOG_LINES, PORT, ServerConfig
from workloads.trace import breakdown

from .experiment import ArtifactNeed, Experiment, ModelRef, Strategy, point_label
from .store import FULL_ADVICE, CellRecord, HopRow, RequestRow, ResultStore, StoreError, check_rows

READY_TIMEOUT_S = 120.0      # loading a part (ORT session creation) on a throttled host
# what a server counts and prints when it stops (workloads.serving), kept with its host
SERVER_COUNTERS = ("served", "refused", "stalled", "bad_frames", "internal_errors", "uncaught")


class RunError(TestbedError):
    """The run cannot go on (one line); cells stored so far stay stored."""


class NetworkFault(RunError):
    """A process the network needs died while a cell ran (a link's delay line, a shell that
    holds a namespace, the CPU ticker): the network no longer holds its spec. The cell is
    stored ``failed`` with the reason, and the runner brings up a new network."""


# a traced cell's measured requests and replays start this long after the client is warm (the
# replays' threads start meanwhile)
START_AHEAD_NS = 200_000_000
REPLAY_SWITCH_INTERVAL_S = 0.0005   # while a cell's traces replay (see CellExecution._start_replays)
NETWORK_CHECK_S = 0.2        # how often a running cell looks at the network's processes (at most)


@dataclass
class CellPlan:
    key: str
    point: dict
    model: ModelRef
    strategy: Strategy
    artifact: Path | None
    manifest: dict
    error: str | None = None       # the artifact could not be prepared: the cell is stored failed
    # a cut: fastest strategy: ``strategy`` deploys the chosen cut, ``declared`` is the file's
    # (the cell's key is made from it), ``choice`` says why (testbed.fastest; cells.choice_json)
    declared: Strategy | None = None
    choice: dict | None = None


@dataclass
class CellOutcome:
    record: CellRecord
    requests: list[RequestRow]
    hops: list[HopRow]
    interrupt: BaseException | None = None     # Ctrl-C / SIGTERM that ended it, re-raised once stored
    fault: NetworkFault | None = None           # the network broke under it: re-raised once stored


@dataclass
class Events:
    """Callbacks the CLI uses for its progress display (all optional)."""

    stage: Callable[[str], None] = lambda text: None                 # what is happening now
    cell_start: Callable[[CellPlan, int], None] = lambda cell, total: None
    request_done: Callable[[str], None] = lambda status: None        # one measured request
    cell_done: Callable[[CellOutcome], None] = lambda outcome: None
    cells_skipped: Callable[[int], None] = lambda count: None       # already done (a resumed run)


def cell_key(exp: Experiment, point: dict, model: ModelRef, strategy: Strategy) -> str:
    """A stable key: readable model/strategy plus a digest of everything that defines the cell."""
    # the connection cap is left out: it never changes what a cell measures (a cap below what its
    # load holds open is refused when the file is loaded), and keys stay those of earlier runs
    serving = {k: v for k, v in exp.serving.to_dict().items() if k != "max_connections"}
    defn = {"point": point, "model": model.to_dict(), "strategy": strategy.to_dict(),
            "topology": exp.topology.to_dict(), "requests": exp.requests.to_dict(), "codec": exp.codec,
            "source": exp.source, "serving": serving}
    if exp.load.concurrent:     # (single-stream cells keep the keys they had before load scenarios)
        defn["load"] = exp.load.to_dict()
        defn["source"] = list(exp.sources)
        if exp.load.duration_ms is not None:
            defn["requests"] = {k: v for k, v in defn["requests"].items() if k != "repeat"}
    if exp.traces:              # (cells without traces keep the keys they had before traces)
        defn["traces"] = [[t.label, t.mode, t.digest()] for t in exp.traces]
    digest = hashlib.sha256(json.dumps(defn, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{model.name}/{strategy.name}/{digest}"


def host_threads(exp: Experiment, host: str, cores: float) -> int:
    """ORT intra-op threads for ``host``: the set value, else its core budget rounded up."""
    chosen = exp.serving.threads_for(host)
    if chosen is not None:
        return chosen
    cpus = exp.topology.host(host).cpus
    return max(1, math.ceil(min(cpus if cpus is not None else cores, cores) - 1e-9))


def check_threads(host: str, ready: dict) -> None:
    """serving.threads read back: the OS threads ONNX Runtime's pools really started on the host
    (a server's ready line counts them); a mismatch is a RunError."""
    asked, sessions, seen = ready["threads"], ready["sessions"], ready.get("pool_threads")
    if seen is None:
        raise RunError(f"server on {host}: cannot read back ONNX Runtime's threads (/proc/self/task "
                       "unreadable): run on Linux with /proc mounted")
    if seen != sessions * (asked - 1):
        raise RunError(f"server on {host}: asked ONNX Runtime for {asked} intra-op threads per session, "
                       f"but its {sessions} session(s) started {seen} pool threads, not "
                       f"{sessions * (asked - 1)}: check serving.threads and the onnxruntime build")


def host_pace(exp: Experiment, host: str) -> float | None:
    """The cores a host's server paces each inference to (serving.pace), or None."""
    cpus = exp.topology.host(host).cpus
    return cpus if exp.serving.pace and cpus is not None else None


def check_pace(host: str, ready: dict, asked: float | None) -> None:
    """serving.pace read back from the server's ready line; a mismatch is a RunError."""
    if ready.get("pace") != asked:
        raise RunError(f"server on {host}: asked to pace inferences to {asked} cores, but it reports "
                       f"{ready.get('pace')!r}: check that workloads.serving is this version")


def check_connections(host: str, ready: dict, asked: int) -> None:
    """serving.max_connections read back from the server's ready line; a mismatch is a RunError."""
    if ready.get("max_connections") != asked:
        raise RunError(f"server on {host}: asked to take {asked} connections at most, but it reports "
                       f"{ready.get('max_connections')!r}: check that workloads.serving is this version")


def judge_compute(samples: list[tuple[float, float]], cpus: float | None, threads: int) -> dict:
    """How each request's compute on a host compares with the CPU work it did spread over the
    cores it may use: compute / (CPU time of its compute threads / min(cpus, threads)) at p10 /
    p50 / p90 (``slowdown``), judged with calibrate's tolerances where the expected compute is
    at least 20 ms (``within``; None below that, with the reason). A host that got less than
    its share (the machine oversubscribed, or its quota stalling beside pacing) reads above 1.
    ``cpu_p50_ms``: the median CPU time of an inference (what a profile's ``infer_cpu_ms`` holds)."""
    from emulation.calibrate import COMPUTE_JUDGED_MS, COMPUTE_P50_REL, COMPUTE_TAIL_REL, p10_p50_p90

    stretch = 1.0 / (min(cpus, threads) if cpus is not None else threads)
    ratios = [c / (cpu * stretch) for c, cpu in samples if cpu > 0]
    if not ratios:
        return {"requests": 0, "within": None, "note": "no CPU time reported"}
    q = p10_p50_p90(ratios)
    expected = statistics.median(cpu * stretch for _, cpu in samples)
    judged = expected >= COMPUTE_JUDGED_MS
    within = (abs(q[1] - 1) <= COMPUTE_P50_REL and abs(q[0] - 1) <= COMPUTE_TAIL_REL
              and abs(q[2] - 1) <= COMPUTE_TAIL_REL) if judged else None
    note = None
    if within is False:
        note = (f"compute {q[1]:.2f}x what {cpus if cpus is not None else 'unlimited'} cores give its CPU time at p50 "
                f"({q[0]:.2f} / {q[2]:.2f} at p10 / p90): the host got less than its share")
    elif not judged:
        note = f"compute {expected:.1f} ms: under {COMPUTE_JUDGED_MS:g} ms, reported, not judged"
    return {"requests": len(ratios), "expected_ms": round(expected, 3),
            "cpu_p50_ms": round(statistics.median(cpu for _, cpu in samples), 4),
            "slowdown": [round(x, 4) for x in q], "within": within, "note": note}


def machine_info() -> dict:
    from emulation.probe import machine_cores, machine_memory_bytes

    return {"hostname": platform.node(), "kernel": platform.release(), "python": platform.python_version(),
            "cores": machine_cores(), "memory_bytes": machine_memory_bytes(), "machine": platform.machine()}


# ---- addresses ----------------------------------------------------------------------------

def entry_address(net, spec, src: str, dst: str) -> str:
    """The address of ``dst`` on the link a packet from ``src`` arrives over (its first
    address when ``src`` is ``dst``). ``net``: the network, or its plan."""
    route = spec.path(src, dst)
    if len(route) == 1:
        return net.address(dst)
    prev = route[-2]
    link = next(l for l in spec.links if {l.a, l.b} == {prev, dst})
    return net.address(dst, link=link.name)


# ---- the runner ---------------------------------------------------------------------------

class Runner:
    def __init__(self, exp: Experiment, out: Path, store: ResultStore, *, events: Events | None = None,
                 caps: dict | None = None, cache=None, run_id: str | None = None, reuse_network: bool = True):
        self.exp = exp
        self.out = Path(out)
        self.store = store
        self.events = events or Events()
        self.caps = caps
        self.cache = cache
        self.run_id = run_id
        self.reuse_network = reuse_network      # False: a new network at every point (benchmarks compare)
        self.inputs: dict[ModelRef, Path] = {}
        self.artifacts: dict[tuple, object] = {}
        self.choices: dict[tuple, tuple[Strategy, dict]] | None = None     # cut: fastest, per cell
        # seconds spent on the network per sweep point: bringing one up (after stopping the
        # previous one), or changing it live; per cell: starting and stopping its servers
        self.timings: dict[str, list[float]] = {"bring_up_s": [], "reconfigure_s": [], "deploy_s": [],
                                                 "teardown_s": []}

    # -- preparation (no root, no network) ---------------------------------------------------
    def prepare(self) -> None:
        from .artifacts import need_label, prepare_needs
        from .fastest import expand

        needs = []
        for need in self.exp.artifacts_needed(cache=self.cache, build=False):
            try:                # a cut: fastest need's candidates (finding them prepares the graph they cut)
                needs += expand(need, cache=self.cache, progress=self.events.stage)
            except WorkloadError as e:
                self.artifacts[need] = str(e)
                self.events.stage(f"cannot prepare {need_label(need)}: {e}")
        for need, result in prepare_needs(list(dict.fromkeys(needs)), cache=self.cache, progress=self.events.stage):
            if isinstance(result, WorkloadError):   # e.g. an operator this model cannot take, a download
                self.artifacts[need] = str(result)  # its cells are stored failed with this; the rest run
                self.events.stage(f"cannot prepare {need_label(need)}: {result}")
            else:
                self.artifacts[need] = result

    def request_inputs(self, model: ModelRef) -> Path:
        from .artifacts import write_request_inputs

        if model not in self.inputs:
            self.events.stage(f"{model.name}: {self.exp.requests.inputs} request inputs and reference outputs")
            self.inputs[model] = write_request_inputs(model, self.exp.requests.inputs, self.out / "inputs", self.cache)
        return self.inputs[model]

    def plan(self) -> list[tuple[Experiment, list[CellPlan]]]:
        from workloads.runtime import load_manifest

        from .fastest import choice_key, is_fastest

        if self.choices is None:
            self.choices = self.choose()
        out = []
        for point, exp in self.exp.points():
            cells = []
            for model in exp.models:
                for s in exp.strategies:
                    key = cell_key(exp, point, model, s)
                    deployed, choice = s, None
                    if is_fastest(s):
                        failed = self._fastest_failure(model, s)
                        if failed is not None:
                            cells.append(CellPlan(key, point, model, s, None, {}, error=failed, declared=s))
                            continue
                        deployed, choice = self.choices[choice_key(point, model, s.name)]
                    art = self.artifacts[ArtifactNeed(model, deployed.operators, deployed.parts)]
                    if isinstance(art, str):
                        cells.append(CellPlan(key, point, model, deployed, None, {}, error=f"preparing: {art}",
                                              declared=s, choice=choice))
                    else:
                        cells.append(CellPlan(key, point, model, deployed, art.path, load_manifest(art.path),
                                              declared=s, choice=choice))
            out.append((exp, cells))
        return out

    def choose(self) -> dict[tuple, tuple[Strategy, dict]]:
        """The cut of every ``cut: fastest`` cell (testbed.fastest.resolve), the parts it is
        chosen from profiled first where they have no profile; before the run's network."""
        from .fastest import is_fastest, possible, resolve

        if not possible(self.exp):
            return {}
        skip = frozenset(ArtifactNeed(m, s.operators, s.parts) for _, e in self.exp.points() for m in e.models
                         for s in e.strategies if is_fastest(s) and self._fastest_failure(m, s) is not None)
        return resolve(self.exp, cache=self.cache, skip=skip, progress=self.events.stage)

    def _fastest_failure(self, model: ModelRef, s: Strategy) -> str | None:
        """Why a ``cut: fastest`` strategy's cells cannot run: its graph or a candidate could
        not be prepared (never another cut in its place)."""
        from .fastest import expand

        declared = ArtifactNeed(model, s.operators, s.parts)
        if isinstance(self.artifacts.get(declared), str):
            return f"preparing the candidates of cut: fastest: {self.artifacts[declared]}"
        for need in expand(declared, cache=self.cache, build=False):
            if isinstance(self.artifacts.get(need), str):
                cut = dict(next(c for c in need.operators if c.name == "partition").params)["cut"]
                return f"preparing the candidate cut {cut} of cut: fastest: {self.artifacts[need]}"
        return None

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> str:
        """Run every cell not already done; returns ``"done"``. An interrupt (Ctrl-C,
        SIGTERM) is re-raised once the cell it stopped is stored.

        The network is brought up once and kept from one sweep point to the next while the
        topology keeps its shape (only link or host parameters change): those are changed live
        and read back (`EmulatedNetwork.reconfigure`), which is much cheaper than a rebuild.
        A network whose processes died (a delay line killed: :class:`NetworkFault`) fails the
        cell it broke under, within a second or so, and is replaced by a new one before the
        next cell; if the very next cell breaks it again, the run stops (a RunError)."""
        from emulation.probe import capabilities, machine_cores

        self.prepare()
        plan = self.plan()
        done = {k for k, v in self.store.cell_status().items() if v == "done"}
        total = sum(len(c) for _, c in plan)
        caps = self.caps or capabilities()
        cores = machine_cores()
        net = None
        faulted = False       # the last cell measured broke the network
        try:
            for exp, cells in plan:
                todo = [c for c in cells if c.key not in done]
                if len(todo) < len(cells):
                    self.events.cells_skipped(len(cells) - len(todo))
                for c in [c for c in todo if c.error is not None]:
                    outcome = CellOutcome(failed_record(self.run_id, exp, c.key, c.point, c.model, c.strategy,
                                                        c.error, c.choice), [], [])
                    self.store.write_cell(outcome.record, [], [])
                    self.events.cell_done(outcome)
                todo = [c for c in todo if c.error is None]
                if not todo:
                    continue
                for c in todo:
                    self.request_inputs(c.model)
                net = self._network_for(net, exp, cells[0].point, caps)
                network = net.applied()
                for c in todo:
                    if net.failures():    # a process it needs died (under the last cell, or since)
                        net = self._network_for(net, exp, c.point, caps)
                        network = net.applied()
                    try:
                        if exp.load.searching:
                            self._search(exp, net, c, network, cores, done, total)
                        else:
                            self._measure(exp, net, c, network, cores, total)
                    except NetworkFault as e:
                        if faulted:
                            raise RunError(f"{e}; it broke again on a network brought up after the last cell "
                                           "broke one, so the run stops: cells measured so far are kept, and "
                                           "--resume runs the rest") from None
                        faulted = True
                        continue
                    faulted = False
        finally:
            if net is not None:
                net.stop()
        return "done"

    def _measure(self, exp: Experiment, net, c: CellPlan, network: dict, cores: float, total: int) -> CellOutcome:
        """Deploy and measure one cell, store it; an interrupt is re-raised once it is stored."""
        self.events.cell_start(c, total)
        outcome = CellExecution(self, exp, net, c, network, cores).run()
        self.store.write_cell(outcome.record, outcome.requests, outcome.hops)
        self.events.cell_done(outcome)
        if outcome.interrupt is not None:
            raise outcome.interrupt
        if outcome.fault is not None:
            raise outcome.fault
        return outcome

    def _search(self, exp: Experiment, net, c: CellPlan, network: dict, cores: float, done: set[str],
                total: int) -> None:
        """The highest rate that meets ``load.slo`` for one cell (testbed.load.search_rate):
        each rate tried is a cell of its own at the point ``load.qps=<rate>``; one already
        done (a resumed run) is read back, not measured again."""
        from .load import search_rate, start_rate

        stored: dict[str, dict] = {}
        if done:
            stored = {r["cell"]: r.get("load") or {} for r in self.store.cells() if r["cell"] in done}

        def meets(q: float) -> bool:
            point = {**c.point, "load.qps": q}
            at = exp.at({"load.qps": q})
            key = cell_key(at, point, c.model, c.declared or c.strategy)
            if key in stored:
                figures = stored[key]
            else:
                figures = self._measure(at, net, replace(c, key=key, point=point), network, cores, total).record.load
            return bool(figures) and all(v["met"] for v in figures.get("slo", {}).values())

        found = search_rate(meets, start_rate(exp.load))
        targets = ", ".join(f"{k} ≤ {v:g} ms" for k, v in exp.load.slo)
        answer = (f"{found.best:.3g} req/s" if found.best is not None else "none of the rates tried") + \
            (f" (missed at {found.above:.3g})" if found.above is not None else " (the search did not find its limit)")
        self.events.stage(f"{c.model.name} / {c.strategy.name}: the highest rate meeting {targets}: {answer}")

    def run_cell(self, point: dict, model: ModelRef, strategy: Strategy, caps: dict | None = None) -> CellOutcome:
        """Prepare, deploy and measure one cell on a network of its own (the Ray executor's
        unit of work on a node); an interrupt ends the cell as ``interrupted``, not raised."""
        from emulation.probe import capabilities, machine_cores
        from workloads.prepare import prepare
        from workloads.runtime import load_manifest

        exp = self.exp.at(point) if point else self.exp
        self.events.stage(f"preparing {model.name} / {strategy.name}")
        art = prepare(model.name, strategy.operators, parts=strategy.parts, weights=model.weights,
                      data=model.data, cache=self.cache, progress=self.events.stage)
        cell = CellPlan(cell_key(exp, point, model, strategy), point, model, strategy, art.path,
                        load_manifest(art.path))
        self.request_inputs(model)
        net = self._network_for(None, exp, point, caps or capabilities())
        try:
            outcome = CellExecution(self, exp, net, cell, net.applied(), machine_cores()).run()
        finally:
            net.stop()
        return outcome

    def _network_for(self, net, exp: Experiment, point: dict, caps: dict):
        """The running network changed live to ``exp``'s topology, or a new one."""
        from emulation.network import EmulatedNetwork

        at = f" at {point_label(point)}" if point else ""
        broken = net.failures() if net is not None else []
        if net is not None and not broken and self.reuse_network and net.same_shape(exp.topology):
            self.events.stage(f"changing {exp.topology.name} live{at}")
            t0 = time.monotonic()
            net.reconfigure(exp.topology)
            self.timings["reconfigure_s"].append(time.monotonic() - t0)
            return net
        t0 = time.monotonic()
        if net is not None:
            net.stop()
        self.events.stage(f"{broken[0]}: bringing up a new {exp.topology.name}{at}" if broken else
                          f"bringing up {exp.topology.name}{at}")
        net = EmulatedNetwork(exp.topology, run_id=self.run_id, caps=caps)
        net.start()                   # a failed start removes what it made
        self.run_id = net.run_id
        self.timings["bring_up_s"].append(time.monotonic() - t0)
        return net


def failed_record(run_id: str | None, exp: Experiment, key: str, point: dict, model: ModelRef, strategy: Strategy,
                  error: str, choice: dict | None = None) -> CellRecord:
    """A cell that could not be measured at all (stored ``failed``; a resumed run tries it again)."""
    now = time.time()
    return CellRecord(
        cell=key, run_id=run_id or "", model=model.name, weights=model.weights, strategy=strategy.name,
        operators=[o.as_dict() for o in strategy.operators], placement=strategy.placement, source=",".join(exp.sources),
        codec=exp.codec, connection=exp.serving.connection, point=point, artifact=None, metric=None,
        metric_value=None, baseline_value=None, status="failed", error=error, started=now, ended=now, choice=choice)


class CellExecution:
    """Deploys one cell, measures it, and always tears its processes down."""

    def __init__(self, runner: Runner, exp: Experiment, net, cell: CellPlan, network: dict, cores: float):
        self.runner, self.exp, self.net, self.cell = runner, exp, net, cell
        self.network, self.cores = network, cores
        self.servers: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, tuple[Path, int]] = {}
        self.requests: list[RequestRow] = []
        self.hops: list[HopRow] = []
        self.hosts: dict[str, dict] = {}
        self.compute_samples: dict[str, list[tuple[float, float]]] = {}   # host -> (compute ms, CPU ms)
        self.error: str | None = None
        self.interrupt: BaseException | None = None
        self.fault: NetworkFault | None = None
        self._checked = -math.inf           # when the network's processes were last looked at
        self.load: dict | None = None       # a load scenario's figures (testbed.load.figures)
        self.replays: dict[tuple[str, str], tuple] = {}   # (link, direction) -> (LinkTrace, Replay)
        self.trace_t0: int | None = None    # monotonic ns: the replays' start, the first measured request's
        self.trace: dict | None = None      # what the replays did (the cell's trace_json)
        self._switch_interval: float | None = None   # Python's, while the replays run

    def run(self) -> CellOutcome:
        started = time.time()
        placement = [h for h, _ in self.exp.deployment(self.cell.strategy)]
        oom_before = {h: self.net.oom_kills(h) for h in placement}
        status = "done"       # ran to the end, whatever happened to each request
        timings = self.runner.timings
        outcome = None
        try:
            try:
                t0 = time.monotonic()
                self._start_servers()
                timings["deploy_s"].append(time.monotonic() - t0)
                self._prepare_replays()
                if self.exp.load.concurrent:
                    self._run_load()
                else:
                    self._run_client()
            except NetworkFault as e:
                self.error, self.fault = str(e), e
                status = "failed"        # the emulator broke, not the deployment: a resumed run measures it again
            except RunError as e:
                self.error = str(e)
                if not self.requests:
                    status = "failed"    # could not measure at all: a resumed run tries again
            except (KeyboardInterrupt, SystemExit) as e:
                status = "interrupted"
                self.error = "interrupted"
                self.interrupt = e
        finally:
            try:
                # a signal now cannot leave servers running, nor lose what was measured: it is
                # held, and raised again once the cell is stored
                with signals.deferred():
                    self._stop_replays()    # before anything else ends: the network outlives them
                    t0 = time.monotonic()
                    self._stop_servers()
                    timings["teardown_s"].append(time.monotonic() - t0)
                    oom_hosts = [h for h in placement if self.net.oom_kills(h) > oom_before[h]]
                    if oom_hosts:
                        self._mark_oom(oom_hosts)
                    outcome = CellOutcome(self._record(status, started), self.requests, self.hops)
            except (KeyboardInterrupt, SystemExit) as e:
                if outcome is None:
                    raise
                self.interrupt = self.interrupt or e
        outcome.interrupt, outcome.fault = self.interrupt, self.fault
        return outcome

    # -- link traces -------------------------------------------------------------------------
    def _prepare_replays(self) -> None:
        """A replay per traced direction (not started: every state checked against the link and
        its kernel request compiled, so that a step costs only its change), the direction put in
        the trace's first state for the warm-up."""
        from emulation.replay import replay_link

        for t in self.exp.traces:
            try:
                replay = replay_link(self.net, t.link, t.direction, t.trace, name=t.label)
            except EmulationError as e:
                raise RunError(f"trace on {t.label}: {e}") from None
            self.replays[(t.link, t.direction)] = (t, replay)
            # the trace's first state from the warm-up on: a change that retunes the interface
            # (its GSO size) took 20-45 ms here, which the first step would otherwise be late by
            try:
                self.net.step_link(t.link, t.direction, **t.trace.steps[0].changes())
            except EmulationError as e:
                raise RunError(f"trace on {t.label}: {e}") from None

    def _start_replays(self, t0_ns: int) -> None:
        """Every replay from ``t0_ns``, the first measured request's start (after the warm-up)."""
        self.trace_t0 = t0_ns
        if self.replays:
            # the replays' threads share the GIL with this one, which reads every request's line:
            # at Python's 5 ms switch interval a step waited up to that long for it (docs/emulation.md)
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(REPLAY_SWITCH_INTERVAL_S)
        for _, replay in self.replays.values():
            replay.start(t0_ns)

    def _stop_replays(self) -> None:
        """Stop every replay and give each traced direction back its spec value (read back), so
        that the network's teardown or the next cell never meets a replay; the cell's trace
        figures kept in ``self.trace``. A replay that failed, or a link that cannot be given back,
        is the cell's error (the network then no longer holds its spec: a NetworkFault)."""
        if not self.replays:
            return
        out, problems = [], []
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
        for (link, direction), (t, replay) in self.replays.items():
            entry = {"link": link, "direction": direction, "file": t.file, "mode": t.mode,
                     "window_ms": t.window_ms}
            try:
                entry.update(replay.stop())
            except Exception as e:      # noqa: BLE001 - a refused change, a thread that hung: reported
                problems.append(f"trace on {t.label}: {one_line(e)}")
                entry.update(replay.summary())
                entry["error"] = one_line(e)
            entry["started"] = replay.t0_ns is not None
            entry["applied_steps"] = [[round((r.applied_ns - self.trace_t0) / 1e6, 3), r.state.rate_bps,
                                       r.state.delay_ms] for r in replay.records if r.applied_ns is not None]
            spec = getattr(self.exp.topology.link(link), direction)
            try:
                self.net.set_link(link, direction, rate_bps=spec.rate_bps, delay_ms=spec.delay_ms,
                                  jitter_ms=spec.jitter_ms, loss=spec.loss)
            except EmulationError as e:
                problems.append(f"giving {t.label} back its spec value after the trace: {one_line(e)}")
            out.append(entry)
        self.trace = {"t0_ns": self.trace_t0, "directions": out}
        if problems:
            text = "; ".join(problems)
            self.error = f"{self.error}; {text}" if self.error else text
            if any(p.startswith("giving") for p in problems) and self.fault is None:
                self.fault = NetworkFault(text)

    def link_state(self, src: str, dst: str, sent_ns: int) -> dict:
        """The traced directions a hop from ``src`` to ``dst`` crosses, and the state in force on
        them when its first byte was sent (``sent_ns``: the hop's send stamp, on the replay's
        clock): the HopRow fields, empty when it crosses none."""
        if not self.replays or src == dst or self.trace_t0 is None:
            return {}
        spec = self.exp.topology
        labels, rates, delays = [], [], []
        route = spec.path(src, dst)
        for u, v in zip(route, route[1:]):
            link = spec.link(f"{u}-{v}")
            direction = "forward" if (u, v) == (link.a, link.b) else "reverse"
            if (link.name, direction) not in self.replays:
                continue
            t, replay = self.replays[(link.name, direction)]
            # before the replay's first step is in force: the trace's first state, which the
            # direction took before the warm-up (_prepare_replays)
            step = replay.state_at(sent_ns) or t.trace.steps[0]
            own = getattr(link, direction)        # what the trace leaves alone: the link's own
            labels.append(t.label)
            rates.append(step.rate_bps)
            delays.append(step.delay_ms if step.delay_ms is not None else own.delay_ms)
        if not labels:
            return {}
        return {"trace_at_ms": (sent_ns - self.trace_t0) / 1e6, "trace_link": ", ".join(labels),
                "trace_bandwidth_bps": min(rates), "trace_delay_ms": sum(delays)}

    def _check_network(self, now: bool = False) -> None:
        """A :class:`NetworkFault` once a process the network needs has died: looked at every
        :data:`NETWORK_CHECK_S` at most from every loop that waits on servers and sources, and
        ``now`` before a failure is put down to them (the network is the likelier cause)."""
        t = time.monotonic()
        if not now and t - self._checked < NETWORK_CHECK_S:
            return
        self._checked = t
        dead = self.net.failures()
        if dead:
            raise NetworkFault(f"{'; '.join(dead)}: {len(self.requests)} requests measured before")

    # -- servers ------------------------------------------------------------------------------
    def _log_path(self, host: str) -> Path:
        folder = self.runner.out / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{host}.log"

    def _start_servers(self) -> None:
        """One server per deployed part (testbed.experiment.Experiment.deployment: with
        ``source`` first in the placement, part 0 on every source host), last part first."""
        exp, net, cell = self.exp, self.net, self.cell
        placement = cell.strategy.placement
        deployed = exp.deployment(cell.strategy)
        for host, i in reversed(deployed):
            last = i + 1 == len(placement)
            next_hop = None if last else (entry_address(net, exp.topology, host, placement[i + 1]), PORT)
            cfg = ServerConfig(str(cell.artifact), i, host, [(addr, PORT) for addr in net.addresses(host)],
                               next_hop, threads=host_threads(exp, host, self.cores), codec=exp.codec,
                               connection=exp.serving.connection, timeout_s=exp.requests.timeout_ms / 1000,
                               pace=host_pace(exp, host), max_connections=exp.max_connections())
            argv = [sys.executable, "-m", "workloads.serving", *cfg.to_argv()]
            log = self._log_path(host)
            with log.open("a") as f:
                f.write(f"--- cell {cell.key} part {i}\n")
                start = f.tell()
            self.logs[host] = (log, start)
            with log.open("a") as f:
                # a session of its own: a terminal's Ctrl-C reaches the runner, which stops it by PID
                self.servers[host] = net.popen(host, argv, stdout=subprocess.PIPE, stderr=f, text=True,
                                               start_new_session=True)
        for host, _ in reversed(deployed):
            ready = self._wait_ready(host)
            check_threads(host, ready)
            check_pace(host, ready, host_pace(exp, host))
            check_connections(host, ready, exp.max_connections())
            limits = exp.topology.host(host)
            held = net.cgroups[host].read_back()
            self.hosts[host] = {"part": ready["part"], "threads": ready["threads"],
                                "sessions": ready["sessions"], "pool_threads": ready["pool_threads"],
                                "load_ms": ready["load_ms"],
                                "rss_bytes": ready["rss_bytes"], "cpus": limits.cpus,
                                "memory_bytes": limits.memory_bytes,
                                "cpu_period_us": held.period_us if held.cpus is not None else None,
                                "cpu_period": "set" if limits.cpu_period_us is not None else "auto",
                                "pace": ready.get("pace"), "pace_factor": ready.get("pace_factor"),
                                "max_connections": ready["max_connections"], "payload_limit": ready["payload_limit"],
                                "stall_timeout_s": ready["stall_timeout_s"]}

    def _wait_ready(self, host: str) -> dict:
        p = self.servers[host]
        deadline = time.monotonic() + READY_TIMEOUT_S
        ready = _read_until(p, deadline, "ready", self._check_network)
        if ready is not None:
            return ready
        self._check_network(now=True)
        if p.poll() is None and time.monotonic() < deadline:     # its output ended: it is exiting
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if p.poll() is not None:
            raise RunError(f"server on {host} exited ({exit_text(p.returncode)}) before it was ready"
                           f"{self._log_tail(host)}")
        raise RunError(f"server on {host} was not ready within {READY_TIMEOUT_S:g}s{self._log_tail(host)}")

    def _log_tail(self, host: str) -> str:
        path, start = self.logs.get(host, (None, 0))
        if path is None or not path.exists():
            return ""
        with path.open() as f:
            f.seek(start)
            lines = [l.rstrip() for l in f.read().splitlines() if l.strip()][-LOG_LINES:]
        return ("; last log lines: " + " | ".join(lines)) if lines else ""

    def _stop_servers(self) -> None:
        """Stop the servers; each one's counters (connections refused beyond the cap, closed
        stalled, bad frames, internal errors) go with its host (``hosts[h].server``)."""
        terminate(self.servers.values())
        for host, p in self.servers.items():
            if p.stdout:
                stopped = _read_until(p, time.monotonic() + 1.0, "stopped") if host in self.hosts else None
                if stopped is not None:
                    self.hosts[host]["server"] = {k: stopped.get(k) for k in SERVER_COUNTERS}
                p.stdout.close()

    def _dead_servers(self) -> list[str]:
        return [f"{h} ({exit_text(p.returncode)}){self._log_tail(h)}"
                for h, p in self.servers.items() if p.poll() is not None]

    # -- the client ---------------------------------------------------------------------------
    def _source_host(self, source: str) -> str:
        """The host a source runs on (``client``: the placement's first host)."""
        first = self.cell.strategy.placement[0]
        return first if source == "client" and "client" not in self.exp.topology.host_names else source

    def _first_host(self, source_host: str) -> str:
        """Where requests from ``source_host`` enter: itself when each source runs part 0."""
        return source_host if self.exp.per_source(self.cell.strategy) else self.cell.strategy.placement[0]

    def _start_source(self, name: str, host: str, argv: list[str], **kw) -> subprocess.Popen:
        """Start a client or load generator on ``host`` (in its namespace, outside its cgroup:
        the harness is not charged to the host), its stderr in the logs as ``name``."""
        log = self._log_path(f"client-{host}")
        with log.open("a") as f:
            f.write(f"--- cell {self.cell.key}\n")
            start = f.tell()
        self.logs[name] = (log, start)
        with log.open("a") as f:
            return self.net.popen(host, argv, limited=False, stdout=subprocess.PIPE, stderr=f, text=True,
                                  start_new_session=True, **kw)

    def _target(self, host: str) -> str:
        first = self._first_host(host)
        return f"{entry_address(self.net, self.exp.topology, host, first)}:{PORT}"

    def _run_client(self) -> None:
        exp, cell = self.exp, self.cell
        source = self._source_host(exp.source)
        r = exp.requests
        argv = [sys.executable, "-m", "workloads.serving", "client", "--target", self._target(source),
                "--inputs", str(self.runner.request_inputs(cell.model)), "--host", source,
                "--warmup", str(r.warmup), "--repeat", str(r.repeat), "--timeout", f"{r.timeout_ms / 1000:g}",
                "--codec", exp.codec, "--connection", exp.serving.connection]
        if r.duration_ms is not None:
            argv += ["--duration", repr(r.duration_ms / 1000)]
        if self.replays:        # the replays start with the first measured request
            argv.append("--wait-start")
        client = self._start_source("client", source, argv, stdin=subprocess.PIPE if self.replays else None)
        # the client gives up on each request after the timeout; this only guards against a hang
        if r.duration_ms is not None:
            budget = r.warmup * (r.timeout_ms / 1000 + 1) + r.duration_ms / 1000 + r.timeout_ms / 1000 + 60
        else:
            budget = (r.warmup + r.repeat) * (r.timeout_ms / 1000 + 1) + 60
        deadline = time.monotonic() + budget
        finished = False
        try:
            lines = line_reader(client.stdout)
            while time.monotonic() < deadline:
                line = lines.readline(0.5)
                self._check_network()
                if line is None:
                    if client.poll() is not None and not lines.fill(0.0):
                        break
                    continue
                if not line:
                    break
                msg = _message(line, f"client on {source}")
                if msg.get("done"):
                    finished = True
                    break
                if msg.get("warm") and self.replays:
                    t0 = time.monotonic_ns() + START_AHEAD_NS
                    self._start_replays(t0)
                    client.stdin.write(f"start {t0}\n")
                    client.stdin.flush()
                if "seq" in msg:
                    self._add_request(msg, f"client on {source}")
                    self.runner.events.request_done(msg["status"])
        finally:
            terminate([client], grace_s=3.0)
            client.stdout.close()
            if client.stdin:
                with contextlib.suppress(OSError):
                    client.stdin.close()
        if not finished:
            raise RunError(f"{len(self.requests)} of {r.repeat} requests measured; "
                           f"{self._source_failure('client', client, budget)}")

    def _load_argv(self, i: int, host: str) -> list[str]:
        exp, load, r = self.exp, self.exp.load, self.exp.requests
        argv = [sys.executable, "-m", "workloads.loadgen", "--target", self._target(host),
                "--inputs", str(self.runner.request_inputs(self.cell.model)), "--host", host,
                "--scenario", load.scenario, "--stream", str(i), "--streams", str(len(exp.sources)),
                "--warmup", str(r.warmup), "--timeout", f"{r.timeout_ms / 1000:g}", "--codec", exp.codec,
                "--connection", exp.serving.connection, "--wait-start"]
        if load.scenario == "server":
            argv += ["--qps", repr(load.qps), "--seed", str(load.seed)]
        else:
            argv += ["--concurrency", str(load.in_flight())]
        if load.duration_ms is not None:
            argv += ["--duration", repr(load.duration_ms / 1000)]
        else:
            argv += ["--requests", str(r.repeat)]
        return argv

    def _load_budget_s(self) -> float:
        """How long the generators may take at most (a guard against a hang, not a limit)."""
        load, r = self.exp.load, self.exp.requests
        timeout_s = r.timeout_ms / 1000
        if load.duration_ms is not None:
            return load.duration_ms / 1000 + timeout_s + 60
        if load.scenario == "server":
            return 3 * r.repeat / load.qps + timeout_s + 60
        return r.repeat / (load.in_flight() or 1) * (timeout_s + 1) + 60

    def _run_load(self) -> None:
        """A load scenario: one generator per source (workloads.loadgen), warmed up, then all
        started on one shared stamp; their lines are read as they come."""
        exp = self.exp
        hosts = [self._source_host(s) for s in exp.sources]
        gens = {f"loadgen-{h}": self._start_source(f"loadgen-{h}", h, self._load_argv(i, h), stdin=subprocess.PIPE)
                for i, h in enumerate(hosts)}
        done: dict[str, dict] = {}
        try:
            warm_s = 30 + exp.requests.warmup * (exp.requests.timeout_ms / 1000 + 1)
            for name, p in gens.items():
                hello = _read_until(p, time.monotonic() + warm_s, "hello", self._check_network)
                if hello is None:
                    raise RunError(f"load generator on {name.removeprefix('loadgen-')} did not warm up: "
                                   f"{self._source_failure(name, p, warm_s)}")
            t0 = time.monotonic_ns() + 100_000_000      # every generator's schedule starts here
            self._start_replays(t0)
            for p in gens.values():
                p.stdin.write(f"start {t0}\n")
                p.stdin.flush()
            deadline = time.monotonic() + self._load_budget_s()
            streams = {line_reader(p.stdout): name for name, p in gens.items()}
            while streams and time.monotonic() < deadline:
                ready = ready_lines(list(streams), 0.5)
                self._check_network()
                for out in ready:
                    line = out.readline()
                    name = streams[out]
                    if not line:
                        del streams[out]
                        continue
                    who = f"load generator on {name.removeprefix('loadgen-')}"
                    msg = _message(line, who)
                    if msg.get("done"):
                        done[name] = msg
                        del streams[out]
                    elif "seq" in msg:
                        self._add_request(msg, who)
                        self.runner.events.request_done(msg["status"])
        finally:
            terminate(gens.values(), grace_s=3.0)
            for p in gens.values():
                p.stdout.close()
                if p.stdin:
                    try:
                        p.stdin.close()
                    except OSError:
                        pass
            from .load import figures

            self.load = figures(exp.load, self.requests, list(done.values()))
            self.load["host_cpus"] = self._deployed_cpus()
            self.load["machine_cores"] = self.cores
        missing = [n for n in gens if n not in done]
        if missing:
            why = "; ".join(self._source_failure(n, gens[n], self._load_budget_s()) for n in missing)
            raise RunError(f"{len(self.requests)} requests measured; {why}")

    def _deployed_cpus(self) -> float | None:
        """The cores the cell's computing hosts may use together (None: one is unlimited):
        above the machine's, they compete for it under load and compute slower than their
        limits promise, a limit of this machine, not of the deployment."""
        hosts = {h for h, _ in self.exp.deployment(self.cell.strategy)}
        cpus = [self.exp.topology.host(h).cpus for h in hosts]
        return None if None in cpus else round(sum(cpus), 3)

    def _source_failure(self, name: str, p: subprocess.Popen, budget_s: float) -> str:
        self._check_network(now=True)
        dead = self._dead_servers()
        if dead:
            return f"servers exited: {'; '.join(dead)}"
        if p.poll() is not None and p.returncode != 0:
            return f"{name} exited ({exit_text(p.returncode)}){self._log_tail(name)}"
        return f"{name} did not finish within {budget_s:g}s"

    def _add_request(self, msg: dict, who: str) -> None:
        """Add a request ``who`` (a client or load generator) reported; one it reported in a form
        that cannot be stored is a RunError (the requests before it stay measured)."""
        try:
            request, hops, samples = self._rows(msg)
            check_rows(self.cell.key, request, hops)
        except (KeyError, TypeError, ValueError, AttributeError, StoreError) as e:
            raise RunError(f"{who} reported request {str(msg.get('seq'))[:20]} in a form that cannot be stored "
                           f"({type(e).__name__}: {one_line(e)[:200]}); the requests before it are kept") from None
        self.requests.append(request)
        self.hops += hops
        for host, sample in samples:
            self.compute_samples.setdefault(host, []).append(sample)

    def _rows(self, msg: dict) -> tuple[RequestRow, list[HopRow], list[tuple[str, tuple[float, float]]]]:
        """A reported request as its row, its hop rows and its (host, (compute ms, CPU ms)) samples."""
        b = breakdown(msg.get("trace") or [])
        ok = msg["status"] == "ok"
        request = RequestRow(
            seq=msg["seq"], input_index=msg["input"], status=msg["status"],
            e2e_ms=b.e2e_ms if ok else None, compute_ms=b.compute_ms if ok else None,
            transmission_ms=b.transmission_ms if ok else None,
            serialization_ms=b.serialization_ms if ok else None, overhead_ms=b.overhead_ms if ok else None,
            bytes_sent=b.bytes_sent if ok else None, exit_segment=b.exit_segment,
            output_match=msg.get("match"), output_max_diff=msg.get("max_diff"), error=msg.get("error"),
            source=msg.get("source"), due_ms=msg.get("due_ms"), queue_ms=b.queue_ms if ok else None,
            late_ms=b.late_ms if "due_ms" in msg else None)
        hops, samples = [], []
        if ok:
            hops = [HopRow(seq=msg["seq"], idx=idx, **h) for idx, h in enumerate(b.hops)]
            if self.replays:
                # the link hops in order, each with the send stamp of the record that received it
                # (workloads.trace.breakdown walks the records the same way)
                trace = msg.get("trace") or []
                sent = iter([rec["sent"] for rec in itertools.takewhile(lambda rec: "sent" in rec, trace[1:])])
                hops = [replace(h, **self.link_state(h.src, h.dst, next(sent))) if h.kind == "link" else h
                        for h in hops]
            samples = [(rec["host"], ((rec["comp1"] - rec["comp0"]) / 1e6, int(rec["cpu"]) / 1e6))
                       for rec in msg.get("trace") or [] if "comp1" in rec and rec.get("cpu") is not None]
        return request, hops, samples

    def _mark_oom(self, hosts: list[str]) -> None:
        note = "OOM-killed on " + ", ".join(
            f"{h} (memory limit {self.exp.topology.host(h).memory_bytes} B)" for h in hosts)
        self.requests = [replace(r, status="oom", error=note) if r.status == "error" else r for r in self.requests]
        measured = {r.seq for r in self.requests}
        if self.exp.duration_ms() is not None:
            return self._oom_noted(note)     # a duration has no list of requests that were due
        self.requests += [RequestRow(seq=s, input_index=s % self.exp.requests.inputs, status="oom", error=note)
                          for s in range(self.exp.requests.repeat) if s not in measured]
        self._oom_noted(note)

    def _oom_noted(self, note: str) -> None:
        self.error = f"{note}; {self.error}" if self.error else note

    def _record(self, status: str, started: float) -> CellRecord:
        for host, samples in self.compute_samples.items():
            if host in self.hosts:
                h = self.hosts[host]
                h["compute"] = judge_compute(samples, h["cpus"], h["threads"])
        cell, m = self.cell, self.cell.manifest
        q = m.get("quality", {})
        ci = q.get("interval") or {}        # none in an artifact prepared before intervals
        (v_lo, v_hi), (b_lo, b_hi), (l_lo, l_hi) = (tuple(ci.get(k) or (None, None))
                                                    for k in ("value", "baseline", "loss"))
        return CellRecord(
            cell=cell.key, run_id=self.runner.run_id or "", model=cell.model.name, weights=cell.model.weights,
            strategy=cell.strategy.name, operators=[c.as_dict() for c in cell.strategy.operators],
            placement=cell.strategy.placement, source=",".join(self.exp.sources), codec=self.exp.codec,
            connection=self.exp.serving.connection, point=cell.point, artifact=str(cell.artifact),
            metric=q.get("metric"), metric_value=q.get("value"), baseline_value=q.get("baseline"),
            status=status, error=self.error, started=started, ended=time.time(),
            network=self.network, hosts=self.hosts, load=self.load, metric_ci_low=v_lo, metric_ci_high=v_hi,
            baseline_ci_low=b_lo, baseline_ci_high=b_hi, loss_ci_low=l_lo, loss_ci_high=l_hi,
            quality_samples=q.get("samples"), trace=self.trace, choice=cell.choice)


def _message(line: str, who: str) -> dict:
    """One JSON line ``who`` (a client or load generator) wrote, decoded; a garbled one (a
    library printing on its stdout, a cut line) is a RunError naming ``who``."""
    try:
        msg = json.loads(line)
    except ValueError:
        msg = None
    if not isinstance(msg, dict):
        text = line.strip()
        raise RunError(f"{who} wrote a line that is not a JSON object ({len(text)} characters, starting "
                       f"{text[:40]!r}); the requests before it are kept")
    return msg


def _read_until(p: subprocess.Popen, deadline: float, key: str,
                check: Callable[[], None] = lambda: None) -> dict | None:
    """Read ``p``'s JSON lines (other lines are skipped) until one has ``key`` set; None when
    its output ends, it exits, or the deadline passes first. ``check()`` runs at every turn
    (at least every 0.2 s) and may raise to stop the wait."""
    lines = line_reader(p.stdout)
    while time.monotonic() < deadline:
        line = lines.readline(0.2)
        check()
        if line is None:
            if p.poll() is not None and not lines.fill(0.0):
                return None
            continue
        if not line:
            return None
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get(key):
            return msg
    return None


def default_out(exp: Experiment) -> Path:
    return Path("results") / f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def cells_done(folder: Path | str, experiment: str, resume: bool) -> set[str]:
    """The resume policy: keys of the cells already done in ``folder`` (none when it holds no
    store). A folder holding another experiment's cells is refused, and so is one holding any
    cells of this experiment unless ``resume`` (then the done ones are kept, the rest run)."""
    from .store import STORE_FILE

    if not (Path(folder) / STORE_FILE).exists():
        return set()
    with ResultStore.in_folder(folder, create=False) as store:
        status = store.cell_status()
        names = {r["experiment"] for r in store.runs()}
    if not status:
        return set()
    if names and experiment not in names:
        raise RunError(f"{folder} holds results of experiment {', '.join(sorted(names))}, not {experiment}; "
                       "choose another --out")
    if not resume:
        done = sum(v == "done" for v in status.values())
        raise RunError(f"{folder} already holds {len(status)} cells of {experiment} ({done} done); add --resume "
                       "to finish it (done cells are kept, the rest are run again), or choose another --out")
    return {k for k, v in status.items() if v == "done"}


LOCK_FILE = ".testbed-run.lock"


@contextlib.contextmanager
def folder_lock(folder: Path | str) -> Iterator[None]:
    """Hold ``folder`` for one run: an exclusive flock on its lock file, released when the
    run ends (the kernel releases it when the process dies, so a crash never leaves it held).
    A second run into the same folder is refused in one line, before it touches anything:
    two runs measuring side by side would share the cores and distort each other's cells."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunError(f"{folder} is in use by another testbed run ({holder}): wait for it to end, "
                           "or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()


def run_experiment(exp: Experiment, out: Path, *, events: Events | None = None, cache=None,
                   reuse_network: bool = True, executor: str = "local",
                   address: str | None = None, insecure_ray: bool = False) -> tuple[str, Runner]:
    """Run ``exp`` into ``out`` (its store is created or resumed; the folder is locked for the
    run, :func:`folder_lock`). Returns (status, runner). ``executor``: ``local`` (this
    machine, one cell after another) or ``ray`` (cells on the nodes of the Ray cluster at
    ``address``, or of a local one started for the run). A cluster without token
    authentication is refused before anything is written unless ``insecure_ray``."""
    if executor == "ray":
        from .distributed import check_cluster

        check_cluster(address, insecure_ray)
    try:
        with folder_lock(out):
            return _run_experiment(exp, out, events=events, cache=cache, reuse_network=reuse_network,
                                   executor=executor, address=address)
    except OSError as e:
        if not no_space(e):
            raise
        error = RunError(no_space_line(e.filename or out, FULL_ADVICE))    # a file the run writes in `out`
        for note in getattr(e, "__notes__", ()):
            error.add_note(note)
        raise error from None


def _run_experiment(exp: Experiment, out: Path, *, events: Events | None, cache, reuse_network: bool,
                    executor: str, address: str | None) -> tuple[str, Runner]:
    from emulation import registry

    store = ResultStore.in_folder(out)
    try:
        run_id = registry.new_run_id()
        store.begin_run(run_id, exp.name, exp.to_dict(), machine_info())
        runner = Runner(exp, out, store, events=events, cache=cache, run_id=run_id, reuse_network=reuse_network)
        try:
            if executor == "ray":
                from .distributed import run_on_ray

                status = run_on_ray(runner, address)
            else:
                status = runner.run()
        except BaseException as first:
            interrupted = isinstance(first, (KeyboardInterrupt, SystemExit))
            try:
                store.end_run(run_id, "interrupted" if interrupted else "failed")
            except Exception as second:  # noqa: BLE001 - never in place of what ended the run
                first.add_note(f"and the run's end could not be stored: {one_line(second)}")
            raise
        store.end_run(run_id, status)
        return status, runner
    finally:
        store.close()


__all__ = ["Runner", "Events", "RunError", "run_experiment", "cell_key", "default_out", "EmulationError"]
