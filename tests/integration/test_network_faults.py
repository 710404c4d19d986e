"""A process the network needs dies mid-cell (here a link's delay line, killed by its PID): the
cell fails within seconds with the reason, keeps what it measured, and the run goes on on a
new network. Without the watch, every packet on the link was dropped silently (the NFQUEUE
rules have no bypass) and each request waited for its timeout."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from emulation.cleanup import find_leftovers
from emulation.registry import process_alive
from tests.integration.test_run import REPO, TESTBED, _env, _model, _rows
from tests.integration.test_run import _write as write_experiment
from tests.integration.test_teardown import _client_of, _records_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# both cells cross edge-cloud (10 Mbit/s, 5 ms: a delay line serves it); the first loses its line
STRATEGIES = "  - {name: cloud, placement: cloud}\n  - {name: cloud-again, placement: cloud}\n"
REPEAT = 40          # ~5 s per cell; the experiment's request timeout is 20 s
FAIL_WITHIN_S = 5.0  # from the kill to the cell stored failed: seen within 0.2 s, servers stopped, stored


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    _model(folder)
    return folder


def _delay_line_of(pid: int, delay_ms: float) -> tuple[int, int]:
    """(pid, start time) of the delay line whose queues hold ``delay_ms`` (its command line)."""
    for r in _records_of(pid):
        for proc in r["processes"]:
            if not proc["role"].startswith("delayline:"):
                continue
            argv = Path(f"/proc/{proc['pid']}/cmdline").read_bytes().decode().split("\0")
            queues = [argv[i + 1] for i, a in enumerate(argv) if a == "--queue"]
            if queues and all(float(q.split(":")[1]) == delay_ms for q in queues):
                return proc["pid"], proc["starttime"]
    raise AssertionError(f"no delay line with {delay_ms} ms among the run's processes")


def _kill_the_line_mid_cell(p: subprocess.Popen, db: Path, strategy: str, after: int | None = None):
    """Once the cell of ``strategy`` measures (its client, not ``after``, has run 1 s), kill
    edge-cloud's delay line by its PID; wait for the cell to be stored. Returns (the line's
    pid, when it was killed, the cell's row or None when it was not stored within 30 s)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and _client_of(p.pid) in (None, after):
        time.sleep(0.05)
    time.sleep(1.0)
    line, start = _delay_line_of(p.pid, 5.0)
    assert process_alive(line, start)
    os.kill(line, signal.SIGKILL)                                        # that PID, and only it
    killed = time.time()
    while time.time() < killed + 30:
        if db.exists():
            row = next((c for c in _rows(db, "SELECT * FROM cells") if c["strategy"] == strategy), None)
            if row is not None:
                return line, killed, row
        time.sleep(0.05)
    return line, killed, None


def _nothing_left(db: Path, env: dict) -> None:
    run_id = _rows(db, "SELECT run_id FROM runs")[0]["run_id"]
    dry = subprocess.run(TESTBED + ["clean", "--dry-run", "--json"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert [i for i in json.loads(dry.stdout)["items"] if i["run_id"] == run_id] == []
    assert [f for f in find_leftovers() if f.run_id == run_id] == []


def _start_run(study, tmp_path, name: str) -> tuple[subprocess.Popen, Path, dict]:
    """A real `testbed run` of the study's strategies; its process, store path and environment."""
    exp = write_experiment(study, name, STRATEGIES, repeat=REPEAT)
    out = tmp_path / "out"
    env = _env(tmp_path)
    p = subprocess.Popen(TESTBED + ["run", str(exp), "--out", str(out)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return p, out / "results.sqlite", env


def test_a_delay_line_killed_mid_cell_fails_the_cell_within_seconds_and_the_run_goes_on(study, tmp_path):
    p, db, env = _start_run(study, tmp_path, "deadline.yaml")
    try:
        line, killed, stored = _kill_the_line_mid_cell(p, db, "cloud")
        assert stored is not None, "the cell whose link died was not stored within 30 s"
        stdout, stderr = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)        # (before the fix: requests wait out 20 s each)
            p.communicate(timeout=60)
    took = stored["ended"] - killed
    print(f"the cell failed {took:.2f} s after its delay line was killed")
    assert stored["status"] == "failed" and took < FAIL_WITHIN_S, (took, stored["error"])
    assert stored["error"].startswith(f"link edge-cloud's delay line (pid {line}) died (killed by SIGKILL): every "
                                      "packet it should delay or serialize is dropped: "), stored["error"]
    # what it measured before is kept (and a resumed run measures the cell again: it is failed)
    assert 0 < stored["ok"] < REPEAT
    assert len(_rows(db, f"SELECT * FROM requests WHERE cell = '{stored['cell']}'")) == stored["ok"]
    assert f"{stored['ok']} requests measured before" in stored["error"]
    # the run went on, on a new network whose edge-cloud link is shaped again: no request
    # crosses faster than 128 KiB at 10 Mbit/s plus 5 ms (an unshaped veth takes ~1 ms), and
    # the median is where test_run finds it
    assert p.returncode == 0, stderr[-3000:]
    again = next(c for c in _rows(db, "SELECT * FROM cells") if c["strategy"] == "cloud-again")
    assert again["status"] == "done" and again["ok"] == REPEAT
    up = [h for h in _rows(db, f"SELECT * FROM hops WHERE cell = '{again['cell']}'")
          if (h["src"], h["dst"]) == ("mobile", "cloud")]
    ratios = sorted(h["ms"] / (h["bytes"] * 8 / 10e6 * 1000 + 5.0) for h in up)
    assert len(up) == REPEAT and ratios[0] > 0.97 and ratios[len(ratios) // 2] < 1.15, ratios
    # the summary says which cell failed and why
    assert f"! cloud: failed; link edge-cloud's delay line (pid {line}) died" in stdout
    _nothing_left(db, env)


def test_a_network_that_breaks_again_right_after_its_rebuild_stops_the_run_in_one_line(study, tmp_path):
    p, db, env = _start_run(study, tmp_path, "deadline2.yaml")
    try:
        first, _, stored = _kill_the_line_mid_cell(p, db, "cloud")
        assert stored is not None and stored["status"] == "failed"
        second, _, stored = _kill_the_line_mid_cell(p, db, "cloud-again", after=_client_of(p.pid))
        assert stored is not None and second != first
        _, stderr = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            p.communicate(timeout=60)
    assert p.returncode == 1 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(f"Error: link edge-cloud's delay line (pid {second}) died "
                                                      "(killed by SIGKILL)"), stderr[-2000:]
    assert stderr.strip().endswith("; it broke again on a network brought up after the last cell broke one, so the "
                                   "run stops: cells measured so far are kept, and --resume runs the rest")
    cells = _rows(db, "SELECT strategy, status, ok FROM cells")
    assert sorted((c["strategy"], c["status"]) for c in cells) == [("cloud", "failed"), ("cloud-again", "failed")]
    assert all(c["ok"] > 0 for c in cells)
    assert _rows(db, "SELECT status FROM runs")[0]["status"] == "failed"
    _nothing_left(db, env)
