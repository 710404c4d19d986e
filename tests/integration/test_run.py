"""`testbed run` for real, as users start it: a user ONNX model and data set, a topology with
shaped links and limited hosts, host servers in namespaces and cgroups, the SQLite store.

The model is small to compute but has a large input (128 KiB), so transmission is what the
links decide and can be checked against bytes x 8 / bandwidth + delay."""
from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from emulation.cleanup import find_leftovers

REPO = Path(__file__).resolve().parents[2]
TESTBED = [sys.executable, "-m", "testbed.cli"]
FEATURES = 32768      # 128 KiB of float32 per request


def _model(folder: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dims = [FEATURES, 64, 64, 64, 4]
    nodes, inits = [], []
    prev = "X"
    for i in range(4):
        w = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        out = "Y" if i == 3 else f"A{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [out if i == 3 else f"M{i}"]))
        if i < 3:
            nodes.append(helper.make_node("Relu", [f"M{i}"], [out]))
        prev = out
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, FEATURES])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "wide.onnx"
    onnx.save(model, str(path))
    x = rng.standard_normal((20, FEATURES)).astype(np.float32)
    np.savez(folder / "data.npz", x=x, y=np.arange(20) % 4)
    return path


EXPERIMENT = """\
name: it-run
topology:
  name: it
  hosts:
    mobile: {{cpus: 0.5, memory: {mobile_memory}}}
    edge: {{cpus: 1.0, memory: 1GiB}}
    cloud: {{}}
  links:
    mobile-edge: {{bandwidth: 50Mbit}}
    edge-cloud: {{bandwidth: 10Mbit, delay: 5ms}}
models: [{{name: wide.onnx, data: data.npz}}]
strategies:
{strategies}
source: mobile
requests: {{warmup: 1, repeat: {repeat}, inputs: 3, timeout: 20s}}
"""
STRATEGIES = """\
  - {name: mobile, placement: mobile}
  - {name: cloud, placement: cloud}
  - {name: ec, operators: [{partition: {cut: auto}}], placement: [edge, cloud]}
  - {name: mec, operators: [{partition: {cut: auto}}], placement: [mobile, edge, cloud]}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    _model(folder)
    return folder


def _write(folder: Path, name: str, strategies: str = STRATEGIES, repeat: int = 5,
           mobile_memory: str = "512MiB") -> Path:
    path = folder / name
    path.write_text(EXPERIMENT.format(strategies=strategies, repeat=repeat, mobile_memory=mobile_memory))
    return path


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "TESTBED_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}


def _any_cell_stored(db: Path) -> bool:
    """For polling a run in progress: the store's file exists a moment before its tables do
    (SQLite creates the file on connect, the schema is committed just after)."""
    if not db.exists():
        return False
    try:
        return bool(_rows(db, "SELECT cell FROM cells"))
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return False
        raise


def _meanwhile(db: Path) -> float:
    """How long to let the second cell of a run run before interrupting it: half as long as
    the first cell took, at least 1 s. It has then measured some requests, not all, on a fast
    machine and a slow one (a VM under software emulation) alike."""
    first = _rows(db, "SELECT started, ended FROM cells ORDER BY started")[0]
    return max(1.0, 0.5 * (first["ended"] - first["started"]))


def _rows(db: Path, sql: str) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql)]
    finally:
        con.close()


def test_run_measures_every_hop_and_transmission_follows_the_links(study, tmp_path):
    exp = _write(study, "run.yaml")
    out = tmp_path / "out"
    p = subprocess.run(TESTBED + ["run", str(exp), "--out", str(out), "--json"], cwd=REPO, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout)
    assert summary["status"] == "done" and len(summary["cells"]) == 4
    db = out / "results.sqlite"
    cells = {c["strategy"]: c for c in _rows(db, "SELECT * FROM cells")}
    assert all(c["status"] == "done" and c["ok"] == 5 for c in cells.values()), cells
    reqs = _rows(db, "SELECT * FROM requests")
    assert len(reqs) == 20 and all(r["status"] == "ok" for r in reqs)
    assert all(r["output_match"] == 1 and r["output_max_diff"] < 1e-4 for r in reqs)   # same model, split
    for r in reqs:
        parts = r["compute_ms"] + r["transmission_ms"] + r["serialization_ms"] + r["queue_ms"] + r["overhead_ms"]
        assert r["late_ms"] is None and r["due_ms"] is None      # one request at a time: nothing scheduled
        assert abs(parts - r["e2e_ms"]) < 1e-6 and r["overhead_ms"] >= 0
    hops = _rows(db, "SELECT h.*, c.strategy FROM hops h JOIN cells c USING (cell)")

    def links(strategy):
        seen = [(h["src"], h["dst"], h["direction"]) for h in hops
                if h["strategy"] == strategy and h["kind"] == "link" and h["seq"] == 0]
        return seen

    assert links("mobile") == [("mobile", "mobile", "request"), ("mobile", "mobile", "response")]
    assert links("cloud") == [("mobile", "cloud", "request"), ("cloud", "mobile", "response")]
    assert links("mec") == [("mobile", "mobile", "request"), ("mobile", "edge", "request"),
                            ("edge", "cloud", "request"), ("cloud", "edge", "response"),
                            ("edge", "mobile", "response"), ("mobile", "mobile", "response")]
    computes = {(h["strategy"], h["src"], h["part"]) for h in hops if h["kind"] == "compute"}
    assert {("mec", "mobile", 0), ("mec", "edge", 1), ("mec", "cloud", 2), ("cloud", "cloud", 0)} <= computes
    # the input crosses 50 Mbit/s then 10 Mbit/s + 5 ms; packets are forwarded as they arrive,
    # so the ideal is the bottleneck's serialisation plus the delay (not the sum of both links)
    up = [h for h in hops if h["strategy"] == "cloud" and (h["src"], h["dst"]) == ("mobile", "cloud")]
    for h in up:
        ideal = h["bytes"] * 8 / 10e6 * 1000 + 5.0
        assert 0.97 < h["ms"] / ideal < 1.15, (h["ms"], ideal)
    # partitioned at a 256-byte tensor: the expensive 128 KiB hop is the local one
    mec_up = [h for h in hops if h["strategy"] == "mec" and (h["src"], h["dst"]) == ("mobile", "edge")]
    assert all(h["bytes"] < 2000 for h in mec_up)
    hosts = json.loads(cells["mec"]["hosts_json"])
    assert hosts["mobile"]["threads"] == 1 and hosts["cloud"]["part"] == 2
    # threads: auto is the core budget (cloud has no limit: every core), read back from the OS
    assert hosts["cloud"]["threads"] == len(os.sched_getaffinity(0))
    assert all(h["pool_threads"] == h["sessions"] * (h["threads"] - 1) for h in hosts.values())
    # each host's CPU period as the kernel holds it (auto: a 1 ms quota below one core, 10 ms from
    # one core up, none without a limit), and the pacing its server reported (serving.pace)
    assert (hosts["mobile"]["cpu_period_us"], hosts["mobile"]["cpu_period"], hosts["mobile"]["pace"]) == (4000, "auto", 0.5)
    assert (hosts["edge"]["cpu_period_us"], hosts["edge"]["pace"], hosts["edge"]["pace_factor"]) == (10_000, 1.0, None)
    assert hosts["cloud"]["cpu_period_us"] is None and hosts["cloud"]["pace"] is None
    # each server's bounds as it reported them: frames up to twice its part's largest request (the
    # 128 KiB input on part 0, a 256-byte cut after it), stalls cut at the request timeout, the
    # connection cap (auto: 1024 for one request at a time); and its counters when it stopped
    assert [hosts[h]["payload_limit"] for h in ("mobile", "edge", "cloud")] == [2 * 4 * FEATURES, 512, 512]
    assert all(h["max_connections"] == 1024 and h["stall_timeout_s"] == 20.0 for h in hosts.values())
    assert all(h["server"] == {"served": 6, "refused": 0, "stalled": 0, "bad_frames": 0, "internal_errors": 0,
                               "uncaught": 0} for h in hosts.values()), hosts
    # the summary agrees with the store
    s_cloud = next(c for c in summary["cells"] if c["strategy"] == "cloud")
    assert s_cloud["counts"]["ok"] == 5 and s_cloud["e2e_p50"] == pytest.approx(
        float(np.median([r["e2e_ms"] for r in reqs if r["cell"] == cells["cloud"]["cell"]])))
    # export
    e = subprocess.run(TESTBED + ["results", "export", str(out), "--format", "csv"], cwd=REPO,
                       env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert e.returncode == 0, e.stderr
    with open(out / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and list(rows[0])[:9] == ["cell", "model", "strategy", "placement", "status", "e2e_ms",
                                                     "compute_ms", "transmission_ms", "bytes_sent"]
    # a second run into the same folder is refused without --resume (nothing is touched) ...
    again = subprocess.run(TESTBED + ["run", str(exp), "--out", str(out)], cwd=REPO, env=_env(tmp_path),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and "already holds 4 cells of it-run (4 done); add --resume" in again.stderr
    assert "Traceback" not in again.stderr and len(_rows(db, "SELECT * FROM runs")) == 1
    # ... and with it resumes: every cell is done, nothing is re-run
    again = subprocess.run(TESTBED + ["run", str(exp), "--out", str(out), "--resume", "--json"], cwd=REPO,
                           env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(_rows(db, "SELECT * FROM runs")) == 2 and len(_rows(db, "SELECT * FROM requests")) == 20


def test_an_oom_killed_server_is_an_oom_result_and_the_run_goes_on(study, tmp_path):
    strategies = "  - {name: mobile, placement: mobile}\n  - {name: edge, placement: edge}\n"
    exp = _write(study, "oom.yaml", strategies, repeat=3, mobile_memory="24MiB")
    out = tmp_path / "out"
    p = subprocess.run(TESTBED + ["run", str(exp), "--out", str(out), "--json"], cwd=REPO, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    db = out / "results.sqlite"
    cells = {c["strategy"]: c for c in _rows(db, "SELECT * FROM cells")}
    assert cells["mobile"]["status"] == "failed" and cells["mobile"]["ooms"] == 3
    assert "OOM-killed on mobile" in cells["mobile"]["error"]
    assert cells["edge"]["status"] == "done" and cells["edge"]["ok"] == 3


# loaded by every Python the run starts (PYTHONPATH); in the client, the second request's line comes
# out cut short, as when a client is killed mid-line or a library writes on its stdout
GARBLING_SITECUSTOMIZE = """\
import sys

if sys.orig_argv[1:4] == ["-m", "workloads.serving", "client"]:
    class _Cut:
        def __init__(self, out):
            self.out, self.lines = out, 0

        def write(self, text):
            self.lines += 1
            return self.out.write(text[:12] + "\\n" if self.lines == 3 else text)   # hello, seq 0, seq 1

        def __getattr__(self, name):
            return getattr(self.out, name)

    sys.stdout = _Cut(sys.stdout)
"""


def test_a_garbled_line_from_the_client_ends_its_cell_in_one_line_and_keeps_what_was_measured(study, tmp_path):
    """Issue 19: the runner decoded the client's lines unguarded: one garbled line ended the
    whole run as an internal error (exit 3)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GARBLING_SITECUSTOMIZE)
    strategies = "  - {name: mobile, placement: mobile}\n  - {name: edge, placement: edge}\n"
    exp = _write(study, "garbled.yaml", strategies, repeat=4)
    out = tmp_path / "out"
    env = {**_env(tmp_path), "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}
    p = subprocess.run(TESTBED + ["run", str(exp), "--out", str(out), "--json"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    cells = {c["strategy"]: c for c in _rows(out / "results.sqlite", "SELECT * FROM cells")}
    for name, cell in cells.items():                       # every cell: its first request kept, then the line
        assert cell["status"] == "done" and cell["requests"] == 1 and cell["ok"] == 1, cell
        assert cell["error"] == ("client on mobile wrote a line that is not a JSON object (12 characters, "
                                 """starting '{"status": "'); the requests before it are kept"""), cell
    assert set(cells) == {"mobile", "edge"}


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupting_a_run_keeps_what_was_measured_and_leaves_nothing(study, tmp_path, sig, code):
    strategies = "  - {name: edge, placement: edge}\n  - {name: cloud, placement: cloud}\n"
    exp = _write(study, f"int{sig}.yaml", strategies, repeat=400)
    out = tmp_path / "out"
    p = subprocess.Popen(TESTBED + ["run", str(exp), "--out", str(out)], cwd=REPO, env=_env(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = out / "results.sqlite"
    deadline = time.monotonic() + 300
    # wait until the first cell (edge, fast) is stored and the second has been running a while
    while time.monotonic() < deadline:
        if _any_cell_stored(db):
            break
        time.sleep(0.5)
    time.sleep(_meanwhile(db))
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == code, stderr[-3000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    cells = {c["strategy"]: c for c in _rows(db, "SELECT * FROM cells")}
    assert cells["edge"]["status"] == "done" and cells["edge"]["ok"] == 400
    assert cells["cloud"]["status"] == "interrupted" and 0 < cells["cloud"]["ok"] < 400
    assert _rows(db, "SELECT status FROM runs")[0]["status"] == "interrupted"
    assert find_leftovers() == []
