"""The Ray executor on a real local Ray cluster (started by the run, one node offering one
``testbed_cell``): the same sweep stores the same rows as the local executor (apart from
timings), and a worker killed in the middle of a cell is retried to a complete cell, with what
the dead attempt left removed; Ctrl-C on the driver stores the running cell as interrupted
with the requests it had measured; the local cluster listens on loopback only."""
from __future__ import annotations

import ipaddress
import os
import socket
import signal
import subprocess
import time
from pathlib import Path

import pytest

from emulation.cleanup import find_leftovers
from tests.integration.test_run import REPO, TESTBED, _env, _rows
from tests.integration.test_sweep import _write, study  # noqa: F401 - the fixture

pytest.importorskip("ray")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CELL_COLUMNS = "cell, model, weights, strategy, operators, placement, source, codec, point_json, metric, " \
               "metric_value, baseline_value, status, requests, ok, timeouts, ooms, errors"
REQUEST_COLUMNS = "cell, seq, input_index, status, bytes_sent, exit_segment, output_match"
HOP_COLUMNS = "cell, seq, idx, kind, src, dst, direction, part, bytes"


def _run(exp, out, env, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(TESTBED + ["run", str(exp), "--out", str(out), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=800)


def _bandwidths(db) -> dict:
    import json

    return {c["cell"]: {l["direction"]: l["bandwidth_bps"] for l in json.loads(c["network_json"])["links"]}
            for c in _rows(db, "SELECT cell, network_json FROM cells")}


def test_ray_and_local_executors_store_the_same_rows(study, tmp_path):  # noqa: F811
    exp = _write(study, "same.yaml", repeat=4)
    env = _env(tmp_path)
    local = _run(exp, tmp_path / "local", env)
    assert local.returncode == 0, local.stderr[-2000:]
    ray = _run(exp, tmp_path / "ray", env, "--executor", "ray")
    assert ray.returncode == 0, ray.stderr[-3000:]
    a, b = tmp_path / "local" / "results.sqlite", tmp_path / "ray" / "results.sqlite"
    for table, cols, order in (("cells", CELL_COLUMNS, "cell"), ("requests", REQUEST_COLUMNS, "cell, seq"),
                               ("hops", HOP_COLUMNS, "cell, seq, idx")):
        rows_a = _rows(a, f"SELECT {cols} FROM {table} ORDER BY {order}")
        rows_b = _rows(b, f"SELECT {cols} FROM {table} ORDER BY {order}")
        assert len(rows_a) == len(rows_b) > 0 and rows_a == rows_b, table
    assert _bandwidths(a) == _bandwidths(b)              # each point's network, read back on the node
    assert len(_rows(b, "SELECT * FROM cells WHERE status = 'done'")) == 4
    assert find_leftovers() == []


def _loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    return a.is_loopback or bool(getattr(a, "ipv4_mapped", None) and a.ipv4_mapped.is_loopback)


def _listening_sockets(root: int) -> list[tuple[str, int, str]]:
    """(process name, pid, address) of every listening TCP / bound UDP socket of ``root`` and its
    descendants in this network namespace (the cell's servers, in the hosts' namespaces, are not)."""
    import psutil

    ours = os.readlink("/proc/self/ns/net")
    found = []
    procs = [psutil.Process(root)] + psutil.Process(root).children(recursive=True)
    for proc in procs:
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/net") != ours:
                continue
            for c in proc.net_connections(kind="inet"):
                if c.laddr and (c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM):
                    found.append((proc.name(), proc.pid, c.laddr.ip))
        except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError):
            continue
    return found


def _start_ray_run(study, tmp_path, name: str, repeat: int) -> tuple[subprocess.Popen, Path]:
    """A sweep on a local Ray cluster, started the way a user starts it; its output folder."""
    exp = _write(study, name, repeat=repeat)
    out = tmp_path / "out"
    p = subprocess.Popen(TESTBED + ["run", str(exp), "--out", str(out), "--executor", "ray"], cwd=REPO,
                         env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return p, out


def test_a_ray_worker_killed_mid_cell_is_retried_to_a_complete_cell(study, tmp_path):  # noqa: F811
    p, out = _start_ray_run(study, tmp_path, "kill.yaml", repeat=60)
    attempts = out / "attempts"
    victim = None
    deadline = time.monotonic() + 400
    while victim is None and time.monotonic() < deadline and p.poll() is None:
        pids = sorted(attempts.glob("*/*.pid")) if attempts.exists() else []
        if pids:
            time.sleep(6.0)           # well inside the first cell: servers up, requests flowing
            # the local cluster (GCS, raylet, workers) listens on loopback only, nowhere else
            listening = _listening_sockets(p.pid)
            assert listening and all(_loopback(ip) for _, _, ip in listening), listening
            victim = int(pids[0].read_text())
            os.kill(victim, signal.SIGKILL)     # our own Ray worker, by PID
        time.sleep(0.2)
    assert victim is not None, "no cell started"
    _, stderr = p.communicate(timeout=800)
    assert p.returncode == 0, stderr[-3000:]
    db = out / "results.sqlite"
    cells = _rows(db, "SELECT cell, status, ok FROM cells")
    assert len(cells) == 4 and all(c["status"] == "done" and c["ok"] == 60 for c in cells), cells
    killed = [d for d in attempts.iterdir() if len(list(d.glob("*.pid"))) == 2]
    assert len(killed) == 1                   # that cell ran twice; its second attempt is what is stored
    assert find_leftovers() == []


def test_ctrl_c_on_the_driver_stores_the_running_cell_as_interrupted_with_its_requests(study, tmp_path):  # noqa: F811
    p, out = _start_ray_run(study, tmp_path, "int.yaml", repeat=400)
    attempts = out / "attempts"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and p.poll() is None:
        if attempts.exists() and sorted(attempts.glob("*/*.pid")):
            break
        time.sleep(0.2)
    time.sleep(8.0)                      # servers up, requests flowing
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=300)
    assert p.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    cells = _rows(out / "results.sqlite", "SELECT cell, status, ok FROM cells")
    running = [c for c in cells if c["status"] == "interrupted"]
    assert len(running) == 1 and 0 < running[0]["ok"] < 400, cells
    assert len(_rows(out / "results.sqlite", f"SELECT seq FROM requests WHERE cell = '{running[0]['cell']}'")) \
        == running[0]["ok"]
    assert find_leftovers() == []
