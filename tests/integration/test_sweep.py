"""Sweeps for real: the network is changed live between points (and read back), `--dry-run`
lists the cells with an estimate, `--resume` is needed to continue a folder, a too-big grid
is refused, and a sweep killed at random moments (SIGINT, SIGTERM, SIGKILL) leaves nothing
after `testbed clean` and resumes to every cell exactly once."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from emulation.cleanup import find_leftovers
from tests.integration.test_run import REPO, TESTBED, _any_cell_stored, _env, _model, _rows
from tests.integration.test_run import _write as write_experiment

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

STRATEGIES = "  - {name: edge, placement: edge}\n  - {name: cloud, placement: cloud}\n"
# the sweep sets both of the edge-cloud link's values of test_run's experiment at every point
SWEEP = "sweep:\n  links.edge-cloud.bandwidth: [5Mbit, 20Mbit]\n  links.edge-cloud.delay: {delays}\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    _model(folder)
    return folder


def _write(folder: Path, name: str, repeat: int = 3, delays: str = "[2ms]") -> Path:
    path = write_experiment(folder, name, STRATEGIES, repeat=repeat)
    path.write_text(path.read_text() + SWEEP.format(delays=delays))
    return path


def test_a_sweep_changes_the_running_network_live_and_each_point_reads_back(study, tmp_path, monkeypatch):
    from emulation.probe import machine_cores, machine_memory_bytes
    from testbed.experiment import load_experiment
    from testbed.runner import run_experiment
    from testbed.store import ResultStore

    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    exp = load_experiment(str(_write(study, "live.yaml")), [], cores=machine_cores(), memory_bytes=machine_memory_bytes())
    status, runner = run_experiment(exp, tmp_path / "out")
    assert status == "done"
    assert len(runner.timings["bring_up_s"]) == 1 and len(runner.timings["reconfigure_s"]) == 1
    with ResultStore.in_folder(tmp_path / "out", create=False) as store:
        cells = store.cells()
        hops = store.hops()
    assert len(cells) == 4 and all(c["status"] == "done" for c in cells)
    for c in cells:                  # what the kernel held while the cell ran
        bw = {l["direction"]: l["bandwidth_bps"] for l in c["network"]["links"]}
        assert bw["edge->cloud"] == {"5Mbit": 5_000_000, "20Mbit": 20_000_000}[c["point"]["links.edge-cloud.bandwidth"]]
    # and it took effect: the 128 KiB input crosses edge->cloud about 4x faster at 20 Mbit/s
    by_cell = {c["cell"]: c for c in cells}
    up = {}
    for h in hops:
        c = by_cell[h["cell"]]
        if c["strategy"] == "cloud" and (h["src"], h["dst"]) == ("mobile", "cloud"):
            up.setdefault(c["point"]["links.edge-cloud.bandwidth"], []).append(h["ms"])
    slow, fast = min(up["5Mbit"]), min(up["20Mbit"])
    assert 3.0 < slow / fast < 4.5, (slow, fast)
    assert find_leftovers() == []


def test_dry_run_lists_cells_with_an_estimate_and_runs_nothing(study, tmp_path):
    exp = _write(study, "dry.yaml", delays="[2ms, 10ms]")
    out = tmp_path / "out"
    p = subprocess.run(TESTBED + ["run", str(exp), "--out", str(out), "--dry-run", "--json"], cwd=REPO,
                       env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    d = json.loads(p.stdout)
    assert len(d["cells"]) == 8 and d["without_estimate"] == 8      # nothing prepared in this cache
    assert {c["strategy"] for c in d["cells"]} == {"edge", "cloud"} and not out.exists()
    assert len({c["key"] for c in d["cells"]}) == 8


def test_a_grid_above_max_cells_is_refused_in_one_line(study, tmp_path):
    exp = _write(study, "big.yaml", delays="[1ms, 2ms, 3ms]")
    p = subprocess.run(TESTBED + ["run", str(exp), "--out", str(tmp_path / "o"), "--max-cells", "10"], cwd=REPO,
                       env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert ("the grid has 12 cells (6 sweep points x 1 models x 2 strategies), above --max-cells 10; check the "
            "sweep, or pass --max-cells 12 to run it") in p.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_sweep_killed_at_a_random_moment_cleans_up_and_resumes_every_cell_exactly_once(study, tmp_path, sig):
    exp = _write(study, f"kill{int(sig)}.yaml", repeat=20, delays="[2ms, 4ms]")
    out = tmp_path / "out"
    env = _env(tmp_path)
    db = out / "results.sqlite"
    rng = random.Random(int(sig))
    p = subprocess.Popen(TESTBED + ["run", str(exp), "--out", str(out)], cwd=REPO, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300      # preparing (first run in this cache) happens before the sweep
    while time.monotonic() < deadline and not _any_cell_stored(db):
        time.sleep(0.2)
    time.sleep(rng.uniform(0.0, 3.0))      # somewhere inside the next cells
    p.send_signal(sig)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode != 0
    if sig != signal.SIGKILL:
        assert "Traceback" not in stderr and find_leftovers() == []
    clean = subprocess.run(TESTBED + ["clean"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr
    assert find_leftovers() == []
    stored = {c["cell"]: c["status"] for c in _rows(db, "SELECT cell, status FROM cells")}
    assert 1 <= len(stored) <= 8
    again = subprocess.run(TESTBED + ["run", str(exp), "--out", str(out), "--resume"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    cells = _rows(db, "SELECT cell, status FROM cells")
    assert len(cells) == 8 and len({c["cell"] for c in cells}) == 8 and all(c["status"] == "done" for c in cells)
    for c in cells:                  # every cell exactly once: its 20 requests, no more
        assert len(_rows(db, f"SELECT seq FROM requests WHERE cell = '{c['cell']}'")) == 20
    # cells that were done before the kill were kept, not measured again
    kept = [k for k, v in stored.items() if v == "done"]
    runs = {r["cell"]: r["run_id"] for r in _rows(db, "SELECT cell, run_id FROM cells")}
    first = _rows(db, "SELECT run_id FROM runs ORDER BY started")[0]["run_id"]
    assert all(runs[k] == first for k in kept)
    assert find_leftovers() == []


def test_a_strategy_that_cannot_be_prepared_is_a_failed_cell_and_the_rest_run(study, tmp_path):
    text = _write(study, "bad.yaml", repeat=2).read_text().replace(
        "  - {name: cloud, placement: cloud}\n", "  - {name: trained, operators: [qat], placement: cloud}\n")
    exp = study / "bad.yaml"
    exp.write_text(text)
    out = tmp_path / "out"
    p = subprocess.run(TESTBED + ["run", str(exp), "--out", str(out)], cwd=REPO, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    cells = _rows(out / "results.sqlite", "SELECT strategy, status, error FROM cells")
    assert sorted(c["status"] for c in cells if c["strategy"] == "edge") == ["done", "done"]
    bad = [c for c in cells if c["strategy"] == "trained"]
    assert len(bad) == 2 and all(c["status"] == "failed" for c in bad)
    assert all(c["error"].startswith("preparing: wide: training operators need the torch model, and this model "
                                     "is an ONNX file") for c in bad), bad
    assert find_leftovers() == []
