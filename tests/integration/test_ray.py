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
    home = tmp_path / "home"
    home.mkdir()
    ray = _run(exp, tmp_path / "ray", {**env, "HOME": str(home)}, "--executor", "ray")
    assert ray.returncode == 0, ray.stderr[-3000:]
    assert not (home / ".ray").exists()      # its token lives in the run's environment, not in ~/.ray
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


# A cluster the user started: a head process of its own on loopback (a real Ray cluster with one
# node offering testbed_cell), with or without token authentication, and a driver given --address.
HEAD = """
import json, sys
import ray
from testbed import distributed
distributed._init_on_loopback(ray)
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address}), flush=True)
sys.stdin.read()            # until the test closes stdin
ray.shutdown()
"""
TOKEN = "5e" * 32


def _start_head(tmp_path, auth: dict) -> tuple[subprocess.Popen, str]:
    import json

    env = {k: v for k, v in _env(tmp_path).items() if not k.startswith("RAY_AUTH")}
    env.update({"HOME": str(tmp_path / "home"), **auth})
    head = subprocess.Popen([str(REPO / ".venv/bin/python"), "-c", HEAD], cwd=REPO, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = head.stdout.readline()
    assert line, "the head did not start"
    return head, json.loads(line)["gcs"]


def _stop_head(head: subprocess.Popen) -> None:
    head.stdin.close()
    head.wait(timeout=120)


def _driver(exp, out, tmp_path, address: str, auth: dict, *extra) -> tuple[subprocess.CompletedProcess, float]:
    env = {**_env(tmp_path), "HOME": str(tmp_path / "home")}
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(k, None)
    t = time.monotonic()
    done = _run(exp, out, {**env, **auth}, "--executor", "ray", "--address", address, *extra)
    return done, time.monotonic() - t


def _refused(done: subprocess.CompletedProcess, took: float, out: Path, words: str) -> None:
    assert done.returncode != 0 and words in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and took < 30
    assert not (out / "results.sqlite").exists()          # refused before anything was written


def test_a_cluster_without_token_authentication_is_refused_unless_the_user_says_insecure(study, tmp_path):  # noqa: F811
    exp = _write(study, "open.yaml", repeat=3)
    (tmp_path / "home").mkdir()
    head, gcs = _start_head(tmp_path, {"RAY_AUTH_MODE": "disabled"})
    try:
        done, took = _driver(exp, tmp_path / "refused", tmp_path, gcs, {})
        _refused(done, took, tmp_path / "refused", "has no token authentication")
        done, _ = _driver(exp, tmp_path / "out", tmp_path, gcs, {}, "--insecure-ray")
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        _stop_head(head)
    cells = _rows(tmp_path / "out" / "results.sqlite", "SELECT status FROM cells")
    assert len(cells) == 4 and all(c["status"] == "done" for c in cells)
    assert find_leftovers() == []


def test_a_token_cluster_runs_cells_only_for_a_driver_with_its_token(study, tmp_path):  # noqa: F811
    exp = _write(study, "token.yaml", repeat=3)
    (tmp_path / "home").mkdir()
    head, gcs = _start_head(tmp_path, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN})
    try:
        done, took = _driver(exp, tmp_path / "none", tmp_path, gcs, {})
        _refused(done, took, tmp_path / "none", "needs its token")
        done, took = _driver(exp, tmp_path / "wrong", tmp_path, gcs, {"RAY_AUTH_MODE": "token",
                                                                      "RAY_AUTH_TOKEN": "a7" * 32})
        _refused(done, took, tmp_path / "wrong", "refused this driver's token")
        done, _ = _driver(exp, tmp_path / "out", tmp_path, gcs, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN})
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        _stop_head(head)
    cells = _rows(tmp_path / "out" / "results.sqlite", "SELECT status FROM cells")
    assert len(cells) == 4 and all(c["status"] == "done" for c in cells)
    assert not (tmp_path / "home" / ".ray" / "auth_token").exists()     # nobody wrote a token file
    assert find_leftovers() == []
