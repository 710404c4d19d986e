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

from .fastest import is_fastest
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


@contextlib.contextmanager
def _loopback_stays_loopback():
    """While ``ray.init`` runs: a loopback address stays loopback.

    Ray replaces a loopback node or head address with the machine's reachable one (its servers
    then listen on every interface, and a driver looks for a loopback head elsewhere). The
    testbed skips that replacement for the local cluster it starts and for a head given as
    127.0.0.1. This patches a private Ray function: Ray is pinned, and
    tests/unit/test_distributed.py fails loudly when the pinned version stops calling it
    (``services.resolve_ip_for_localhost``) the way this relies on."""
    try:
        from ray._private import services

        resolve = services.resolve_ip_for_localhost
    except (ImportError, AttributeError):
        raise RunError("this Ray has no ray._private.services.resolve_ip_for_localhost (the testbed keeps a "
                       "local cluster on loopback through it): install the pinned ray (bash scripts/setup.sh)") from None
    services.resolve_ip_for_localhost = lambda host: host
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = resolve


def _init_on_loopback(ray) -> None:
    """Start a one-node local cluster that listens on loopback only, with token authentication
    (a per-process token, :func:`_local_token`): on a machine shared with other users, anyone
    who could reach the cluster could otherwise run code as root through it."""
    with _loopback_stays_loopback():
        ray.init(resources={CELL_RESOURCE: 1}, include_dashboard=False, log_to_driver=False,
                 object_store_memory=128 << 20, configure_logging=False, _node_ip_address="127.0.0.1")
    got = {n.get("NodeManagerAddress") for n in ray.nodes()}
    if got != {"127.0.0.1"}:
        ray.shutdown()
        raise RunError(f"the local Ray cluster would not stay on loopback (node address {', '.join(map(str, got))}); "
                       "use the pinned ray version, or start a cluster yourself and pass --address")


# ----------------------------------------------------------------------------------------------
# Token authentication (Ray >= 2.52). Verified on the pinned 2.60: a local ray.init() cluster
# turns it on by default (writing a token to ~/.ray/auth_token when there is none), but
# `ray start --head` turns it on only with RAY_AUTH_MODE=token in its environment or a token
# already in ~/.ray/auth_token; otherwise anyone who reaches the head can run code as root on
# every node. A driver holding a token connects to an open cluster just as well, so a driver
# cannot tell from its own connection: the cluster is probed by a client that has no token.

AUTH_MODE, AUTH_TOKEN, AUTH_TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
PROBE_TIMEOUT_S = 30.0
_PROBE = """
import json, sys
try:
    from ray._raylet import GcsClient
    GcsClient(address=sys.argv[1]).internal_kv_get(b"testbed-probe", None, timeout=10)
    print(json.dumps({"auth": "open"}))
except Exception as e:
    kind = "token" if type(e).__name__ == "AuthenticationError" else "error"
    print(json.dumps({"auth": kind, "why": (str(e).strip().splitlines() or [type(e).__name__])[0][:200]}))
"""


def probe_auth(address: str, token: bool) -> tuple[str, str]:
    """How the cluster whose head (GCS) is at ``address`` answers a client: ``("open", "")`` when
    it serves one with no token, ``("token", why)`` when it refuses it for its token, ``("error",
    why)`` when it cannot be reached. ``token``: the client sends this process's token
    (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); otherwise none. Runs in a child
    process: Ray reads its authentication settings once per process."""
    import json
    import subprocess

    env = dict(os.environ)
    if token:
        env[AUTH_MODE] = "token"
    else:
        env[AUTH_MODE] = "disabled"
        env.pop(AUTH_TOKEN, None)
        env.pop(AUTH_TOKEN_PATH, None)
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, address], env=env, capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        last = (done.stdout.strip().splitlines() or ["{}"])[-1]
        got = json.loads(last)
        return got["auth"], got.get("why", "")
    except subprocess.TimeoutExpired:
        return "error", f"no answer within {PROBE_TIMEOUT_S:.0f} s"
    except (ValueError, KeyError):
        return "error", "the probe printed no answer"


def _local_token() -> None:
    """Token authentication for the local cluster, without writing ~/.ray/auth_token: a random
    token for this process (kept in its environment for its life: Ray's workers inherit it, and
    Ray caches the token it read first), unless the user gave one."""
    import secrets

    mode = os.environ.get(AUTH_MODE)
    if mode is not None and mode.lower() != "token":
        raise RunError(f"{AUTH_MODE}={mode}: the local Ray cluster always uses token authentication (any user of "
                       f"this machine could otherwise run code as root through it); unset {AUTH_MODE}")
    if not os.environ.get(AUTH_TOKEN) and not os.environ.get(AUTH_TOKEN_PATH):
        os.environ[AUTH_TOKEN] = secrets.token_hex(32)
    os.environ[AUTH_MODE] = "token"


def check_cluster(address: str | None, insecure: bool = False) -> None:
    """Before a run on Ray: refuse, in one line, a cluster that would run anyone's code (no token
    authentication) unless ``insecure``, and a driver that lacks the token of a cluster that
    needs one. Without ``address`` (a local cluster): its settings are checked here and its
    authentication is read back once it runs (:func:`_connect`)."""
    if address is None:
        _local_token()
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RunError(f"--address {address}: give the Ray head's HOST:PORT (the GCS port, e.g. 10.0.0.1:6379)")
    import socket

    try:                    # a head that is not there: at once (Ray's client retries for a minute)
        socket.create_connection((host.strip("[]"), int(port)), timeout=5.0).close()
    except OSError as e:
        raise RunError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None
    auth, why = probe_auth(address, token=False)
    if auth == "error":
        raise RunError(f"cannot reach the Ray cluster at {address}: {why}")
    if auth == "open":
        if insecure:
            return
        raise RunError(f"the Ray cluster at {address} has no token authentication: anyone who can reach it can run "
                       f"code as root on its nodes. Start every node with {AUTH_MODE}=token and the cluster's token "
                       "(docs/running.md, 'Many machines'), or pass --insecure-ray on a network only you can reach")
    if os.environ.get(AUTH_MODE, "").lower() != "token":
        raise RunError(f"the Ray cluster at {address} needs its token: run the driver with {AUTH_MODE}=token and the "
                       f"token in {AUTH_TOKEN}, {AUTH_TOKEN_PATH} or ~/.ray/auth_token")
    auth, why = probe_auth(address, token=True)
    if auth == "token":
        raise RunError(f"the Ray cluster at {address} refused this driver's token ({AUTH_TOKEN}, {AUTH_TOKEN_PATH} or "
                       f"~/.ray/auth_token): use the token its head was started with")
    if auth == "error":
        raise RunError(f"cannot reach the Ray cluster at {address}: {why}")


def _connect(address: str | None):
    import ray

    if ray.is_initialized():
        return False
    # no usage reports to Ray's servers: the testbed's traffic stays on this machine and its hosts
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if address:
            host = address.rpartition(":")[0].strip("[]")
            with (_loopback_stays_loopback() if _is_loopback(host) else contextlib.nullcontext()):
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            return False
        _local_token()
        _init_on_loopback(ray)
    except RunError:
        raise
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ...: one line
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RunError(f"cannot start or reach {where}: {first[:200]}") from None
    # read back: the local cluster refuses a client without its token
    auth, why = probe_auth(ray.get_runtime_context().gcs_address, token=False)
    if auth != "token":
        ray.shutdown()
        raise RunError(f"the local Ray cluster did not turn token authentication on (a client without a token got: "
                       f"{auth} {why}".rstrip() + "): use the pinned ray version (bash scripts/setup.sh)")
    return True


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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
    fastest = next((s.name for _, e in exp.points() for s in e.strategies if is_fastest(s)), None)
    if fastest is not None:
        raise RunError(f"--executor ray does not choose a cut: fastest (strategy {fastest}): its compute profiles are "
                       "per machine and the choice would be made for this one; run it with --executor local, or "
                       "give the cut (auto or a tensor name)")
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
