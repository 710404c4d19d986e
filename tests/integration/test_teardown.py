"""Teardown that a second signal cannot break: a real `testbed run` is interrupted while it
measures, then signalled again while it tears down (200 ms later, the moment its network's
teardown begins, every 50 ms until it exits, and to its whole process group as a terminal's
Ctrl-C is); it must still remove everything (`testbed clean --dry-run` finds nothing of it),
keep what it measured and exit as interrupted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from emulation.cleanup import find_leftovers
from emulation import registry
from emulation.registry import load_records, process_alive
from tests.integration.test_run import REPO, TESTBED, _any_cell_stored, _env, _meanwhile, _model, _rows
from tests.integration.test_run import _write as write_experiment

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STRATEGIES = "  - {name: edge, placement: edge}\n  - {name: cloud, placement: cloud}\n"
REPEAT = 60        # the cloud cell takes ~8 s: interrupted 1 s into it, it has measured some, not all


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teardown")
    _model(folder)
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")     # shared: the model is prepared once for the module


def _records_of(pid: int) -> list[dict]:
    return [r for r in load_records() if r["owner"]["pid"] == pid]


def _first_to_go(pid: int) -> list[tuple[int, int]]:
    """The processes the network of CLI process ``pid`` ends first when its teardown begins:
    its delay lines where the kernel has no netem, else (netem delays in the kernel) its hosts'
    shells."""
    procs = [p for r in _records_of(pid) for p in r["processes"]]
    lines = [(p["pid"], p["starttime"]) for p in procs if p["role"].startswith("delayline:")]
    return lines or [(p["pid"], p["starttime"]) for p in procs if p["role"].startswith("shell:")]


def _client_of(pid: int) -> int | None:
    """The pid of the request client that the run of CLI process ``pid`` runs now, if any."""
    runs = {r["run_id"] for r in _records_of(pid)}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and registry.process_run_mark(int(entry)) in runs:
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"workloads.serving" in argv and b"client" in argv:
                return int(entry)
    return None


def _send(p: subprocess.Popen, sig: int, group: bool) -> None:
    if group:
        os.killpg(p.pid, sig)       # a terminal's Ctrl-C: the whole foreground process group
    else:
        p.send_signal(sig)


@pytest.mark.parametrize("first, again, group", [
    (signal.SIGINT, "200ms", False),          # the case
    (signal.SIGINT, "teardown", False),       # the moment the network's teardown begins
    (signal.SIGINT, "every 50ms", False),     # a user holding Ctrl-C down: every stage of teardown
    (signal.SIGINT, "200ms", True),           # to the process group, as a terminal sends it
    (signal.SIGTERM, "every 50ms", False),    # a supervisor's SIGTERM, then Ctrl-C
], ids=["sigint-200ms", "sigint-at-teardown", "sigint-every-50ms", "group-sigint-200ms", "sigterm-then-sigint"])
def test_a_second_signal_during_teardown_cannot_cut_it_short(study, cache, tmp_path, first, again, group):
    exp = write_experiment(study, f"td-{int(first)}-{again.replace(' ', '')}-{group}.yaml", STRATEGIES,
                           repeat=REPEAT)
    out = tmp_path / "out"
    env = {**_env(tmp_path), "TESTBED_CACHE": str(cache)}
    p = subprocess.Popen(TESTBED + ["run", str(exp), "--out", str(out)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    db = out / "results.sqlite"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not _any_cell_stored(db):     # edge is done ...
            time.sleep(0.1)
        assert _any_cell_stored(db), "the first cell was not stored within 90 s"
        while time.monotonic() < deadline and _client_of(p.pid) is None:   # ... cloud's client runs ...
            time.sleep(0.05)
        time.sleep(_meanwhile(db))                                           # ... and has measured some
        first_to_go = _first_to_go(p.pid)
        assert first_to_go, "the run's network must be in the registry with its processes"
        _send(p, first, group)
        if again == "200ms":
            time.sleep(0.2)
            _send(p, signal.SIGINT, group)
        elif again == "teardown":
            # the network's stop begins by ending its delay lines (or shells): signal again at once
            end = time.monotonic() + 30
            while time.monotonic() < end and all(process_alive(pid, st) for pid, st in first_to_go):
                time.sleep(0.002)
            _send(p, signal.SIGINT, group)
        else:
            # (not at once: signals pending together are handled in the order of their numbers)
            end = time.monotonic() + 60
            while time.monotonic() < end and p.poll() is None:
                time.sleep(0.05)
                _send(p, signal.SIGINT, group)
        _, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + first, stderr[-3000:]
    assert "interrupted: cells measured so far are kept" in stderr and "Traceback" not in stderr, stderr[-3000:]
    run_id = _rows(db, "SELECT run_id, status FROM runs")[0]
    assert run_id["status"] == "interrupted"
    # nothing of the run is left for `testbed clean` to remove (other runs on this machine are theirs)
    dry = subprocess.run(TESTBED + ["clean", "--dry-run", "--json"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert [i for i in json.loads(dry.stdout)["items"] if i["run_id"] == run_id["run_id"]] == []
    assert [f for f in find_leftovers() if f.run_id == run_id["run_id"]] == []
    # what was measured before is kept: the first cell whole, the interrupted one in part
    cells = {c["strategy"]: c for c in _rows(db, "SELECT * FROM cells")}
    assert cells["edge"]["status"] == "done" and cells["edge"]["ok"] == REPEAT
    assert cells["cloud"]["status"] == "interrupted" and 0 < cells["cloud"]["ok"] < REPEAT, cells["cloud"]
    assert len(_rows(db, f"SELECT seq FROM requests WHERE cell = '{cells['cloud']['cell']}'")) == cells["cloud"]["ok"]


def test_a_stop_that_failed_part_way_finishes_the_rest_when_called_again(caps, monkeypatch):
    """The network counts as stopped only once everything is gone: a stop whose cgroup step
    fails (injected here: in the field, a cgroup still busy after its 5 s) leaves the cgroups
    and the registry record, and the next stop() removes them."""
    from emulation import cgroups, network
    from emulation.network import EmulatedNetwork, EmulationError
    from topologies import apply_overrides, load_topology

    spec = apply_overrides(load_topology("three_tier", cores=2.0, memory_bytes=24 * 2**30),
                           [("links.mobile-edge.delay", "5ms")])
    net = EmulatedNetwork(spec, caps=caps)
    net.start()
    real = cgroups.remove_run_cgroups
    calls = []

    def busy_once(run_id, *args, **kw):
        calls.append(run_id)
        if len(calls) == 1:
            raise cgroups.CgroupError(f"cannot remove cgroup testbed/{run_id}/mobile: Device or resource busy")
        return real(run_id, *args, **kw)

    monkeypatch.setattr(network.cgroups, "remove_run_cgroups", busy_once)
    try:
        with pytest.raises(EmulationError, match=r"^teardown incomplete \(run `testbed clean`\): cannot remove"):
            net.stop()
        left = {f.kind for f in find_leftovers(owned_by=os.getpid()) if f.run_id == net.run_id}
        assert left == {"cgroup", "registry"}       # processes and namespaces are gone already
        net.stop()                                   # called again: it finishes the rest
        assert [f for f in find_leftovers(owned_by=os.getpid()) if f.run_id == net.run_id] == []
        assert calls == [net.run_id, net.run_id]
        net.stop()                                   # and once stopped, it stays a no-op
        assert len(calls) == 2
    finally:
        monkeypatch.undo()
        cgroups.remove_run_cgroups(net.run_id)       # whatever a failing version of stop() left
        net.registry.remove()
