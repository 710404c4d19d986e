"""Cells on a Ray cluster: ``testbed run EXPERIMENT --executor ray [--address ADDR]``.

Every cell to run becomes one Ray task that needs one unit of the custom resource
``testbed_cell``. A node that offers one unit (``ray start ... --resources
'{"testbed_cell": 1}'``) therefore runs one cell at a time: cells never share a machine's
CPUs and distort each other's latency. A task prepares its artifact in the node's cache,
brings the cell's network up on the node (root, Mininet, cgroups: each node must be a machine
set up with ``scripts/setup.sh``), measures, tears down and returns the cell's rows; the
driver writes each cell to its store as soon as it comes back, so a long sweep's results
stream in and survive the driver's interruption.

Faults: a task whose worker or node dies is retried (``RETRIES`` times) on any node; before
it starts, a node removes what an earlier attempt that died there left behind (`testbed
clean`: runs whose owner process is gone). A cell whose every attempt died is stored as
``failed`` with the reason, and a resumed run tries it again. Ctrl-C / SIGTERM on the driver
cancels the cells still running (each stops its servers and comes back ``interrupted``,
stored), then re-raises.

Without ``--address`` a single-node Ray cluster is started on this machine for the run (and
stopped after it): the local path, and what the tests use.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import replace
from pathlib import Path

from .runner import CellOutcome, Runner, RunError, cell_key, failed_record

CELL_RESOURCE = "testbed_cell"
RETRIES = 2                  # attempts after the first when a worker or node dies
CANCEL_WAIT_S = 60.0         # how long an interrupted driver waits for cancelled cells to stop


def _fork_safe_sigterm() -> None:
    """pyroute2 fork()s helpers for network namespaces and stops them with SIGTERM. A forked
    child inherits Ray's SIGTERM handler, which disconnects the *worker's* connection to its
    raylet (shared after fork): the worker is then destroyed mid-cell (measured: every attempt
    died, "Worker exits unexpectedly ... receives a SIGTERM"). Children must just exit."""
    import signal

    from emulation import signals

    ray_handler = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        if callable(ray_handler):
            ray_handler(signum, frame)
        else:
            raise SystemExit(128 + signum)

    signals.install(on_term, signal.SIGTERM)


def _remote_cell(exp, point: dict, model, strategy, out: str, attempts_dir: str) -> dict:
    """One cell on this node (runs inside a Ray worker)."""
    from emulation import cleanup, registry

    _fork_safe_sigterm()
    cleanup.clean()          # leftovers of an attempt that died here (their owner is gone)
    attempt = Path(attempts_dir)
    attempt.mkdir(parents=True, exist_ok=True)
    # the worker's pid, for tests that kill a worker mid-cell (fault injection)
    # (written whole, then renamed, so that a reader never sees an empty file)
    tmp = attempt / f".{os.getpid()}.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.rename(attempt / f"{os.getpid()}.pid")
    outcome = Runner(exp, Path(out), store=None, run_id=registry.new_run_id()).run_cell(point, model, strategy)
    return {"record": outcome.record, "requests": outcome.requests, "hops": outcome.hops}


def _init_on_loopback(ray) -> None:
    """Start a one-node local cluster that listens on loopback only.

    Ray replaces a loopback node address with the machine's reachable one, and its servers
    then listen on every interface. For a cluster that lives and dies with one run there is
    nobody to reach it from outside, so the replacement is skipped while ray.init runs (Ray is
    pinned; the node address is read back below, and a test checks every socket the cluster
    listens on)."""
    from ray._private import services

    resolve = services.resolve_ip_for_localhost
    services.resolve_ip_for_localhost = lambda host: host
    try:
        ray.init(resources={CELL_RESOURCE: 1}, include_dashboard=False, log_to_driver=False,
                 object_store_memory=128 << 20, configure_logging=False, _node_ip_address="127.0.0.1")
    finally:
        services.resolve_ip_for_localhost = resolve
    got = {n.get("NodeManagerAddress") for n in ray.nodes()}
    if got != {"127.0.0.1"}:
        ray.shutdown()
        raise RunError(f"the local Ray cluster would not stay on loopback (node address {', '.join(map(str, got))}); "
                       "use the pinned ray version, or start a cluster yourself and pass --address")


def _connect(address: str | None):
    import ray

    if ray.is_initialized():
        return False
    # no usage reports to Ray's servers: the testbed's traffic stays on this machine and its hosts
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
            return False
        _init_on_loopback(ray)
        return True
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ...: one line
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RunError(f"cannot start or reach {where}: {first[:200]}") from None


def _failed(runner: Runner, point: dict, model, strategy, error: str) -> CellOutcome:
    exp = runner.exp.at(point) if point else runner.exp
    return CellOutcome(failed_record(runner.run_id, exp, cell_key(exp, point, model, strategy), point, model,
                                     strategy, error), [], [])


def run_on_ray(runner: Runner, address: str | None) -> str:
    """Run ``runner``'s cells not already done on the cluster; store each as it comes back."""
    exp, store, events = runner.exp, runner.store, runner.events
    if any(e.load.searching for _, e in exp.points()):
        raise RunError("--executor ray does not search for the highest rate meeting load.slo (each rate tried "
                       "depends on the one before): give load.qps, or sweep it (sweep: {load.qps: [...]})")
    done = {k for k, v in store.cell_status().items() if v == "done"}
    cells = [(cell_key(e, point, model, s), point, model, s)
             for point, e in exp.points() for model in e.models for s in e.strategies]
    todo = [c for c in cells if c[0] not in done]
    if len(todo) < len(cells):
        events.cells_skipped(len(cells) - len(todo))
    if not todo:
        return "done"
    events.stage("connecting to Ray" if address else "starting a local Ray cluster")
    # Ray prints its cluster's messages (a worker that died, ...) on stdout: stdout is for
    # the run's summary (--json), so they go to stderr
    with contextlib.redirect_stdout(sys.stderr):
        return _run(runner, todo, address)


def _run(runner: Runner, todo: list, address: str | None) -> str:
    import ray
    from ray.exceptions import GetTimeoutError, RayError, RayTaskError, TaskCancelledError

    exp, store, events = runner.exp, runner.store, runner.events
    started = _connect(address)
    try:
        have = ray.cluster_resources().get(CELL_RESOURCE, 0)
        if have < 1:
            raise RunError(f"no node of the Ray cluster offers the {CELL_RESOURCE} resource; start each node with "
                           f"ray start ... --resources '{{\"{CELL_RESOURCE}\": 1}}' (one cell per node at a time)")
        task = ray.remote(_remote_cell).options(resources={CELL_RESOURCE: 1}, num_cpus=0, max_retries=RETRIES,
                                                retry_exceptions=False)
        attempts = Path(runner.out) / "attempts"
        pending = {}
        for key, point, model, s in todo:
            ref = task.remote(exp, point, model, s, str(runner.out), str(attempts / key.replace("/", "_")))
            pending[ref] = (point, model, s)
        events.stage(f"{len(todo)} cells on {int(have)} Ray node(s)")
        interrupt = None
        while pending:
            try:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            except (KeyboardInterrupt, SystemExit) as e:
                interrupt = e
                for ref in pending:
                    ray.cancel(ref, force=False)        # KeyboardInterrupt in the task: it stops its servers
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
            for ref in ready:
                point, model, s = pending.pop(ref)
                try:
                    got = ray.get(ref, timeout=CANCEL_WAIT_S)
                    outcome = CellOutcome(replace(got["record"], run_id=runner.run_id or ""), got["requests"],
                                          got["hops"])
                except TaskCancelledError:
                    continue                              # never started: nothing measured, a resume runs it
                except RayTaskError as e:                 # the cell's own code failed (one line, kept)
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    outcome = _failed(runner, point, model, s, f"on a Ray node: {str(cause).strip().splitlines()[-1]}")
                except (RayError, GetTimeoutError) as e:  # worker or node died on every attempt
                    outcome = _failed(runner, point, model, s, f"Ray: {type(e).__name__}: "
                                      f"{(str(e).strip().splitlines() or [''])[0][:200]} (after {RETRIES + 1} attempts)")
                for r in outcome.requests:
                    events.request_done(r.status)
                store.write_cell(outcome.record, outcome.requests, outcome.hops)
                events.cell_done(outcome)
            if interrupt is not None:
                raise interrupt
        return "done"
    finally:
        if started:
            ray.shutdown()
