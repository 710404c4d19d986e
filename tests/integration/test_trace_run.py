"""`testbed run` with a link trace, end to end: the mobile-edge link's forward direction
replays 50 -> 5 -> 50 Mbit/s steps (looped), its reverse 20 -> 2 -> 20 Mbit/s on the same
times (two replay threads stepping one link at once), while one strategy's requests cross it
for a duration; every request's hop over it keeps the bandwidth in force when its first byte
left. The model's input is 128 KiB, so a hop's time is what the link's rate makes it."""
from __future__ import annotations

import json
import statistics
import subprocess

from tests.integration.test_run import REPO, TESTBED, _env, _model, _rows
from topologies.traces import load_trace

TRACE = """\
time,bandwidth
0s,50Mbit
1s,5Mbit
2s,50Mbit
3s
"""
EXPERIMENT = """\
name: it-trace
topology:
  name: it
  hosts:
    mobile: {cpus: 0.5, memory: 512MiB}
    edge: {cpus: 1.0, memory: 1GiB}
  links:
    mobile-edge: {bandwidth: 100Mbit}
models: [{name: wide.onnx, data: data.npz}]
strategies:
  - {name: edge, placement: edge}
source: mobile
links:
  mobile-edge: {trace_mode: loop, forward: {trace: steps.csv}, reverse: {trace: back.csv}}
requests: {warmup: 2, duration: 6s, inputs: 3, timeout: 20s}
"""
NEAR_MS = 60.0      # a hop sent this close to a step's due time may meet either state


def test_a_traced_run_records_each_hops_link_state_and_the_replays_lag(tmp_path):
    _model(tmp_path)
    (tmp_path / "steps.csv").write_text(TRACE)
    (tmp_path / "back.csv").write_text(TRACE.replace("50Mbit", "20Mbit").replace("5Mbit", "2Mbit"))
    exp = tmp_path / "trace.yaml"
    exp.write_text(EXPERIMENT)
    out = tmp_path / "out"
    p = subprocess.run(TESTBED + ["run", str(exp), "--out", str(out), "--json"], cwd=REPO, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    db = out / "results.sqlite"
    [cell] = _rows(db, "SELECT * FROM cells")
    assert cell["status"] == "done" and cell["ok"] >= 20, cell
    replay, back = json.loads(cell["trace_json"])["directions"]
    assert (replay["link"], replay["direction"], replay["mode"]) == ("mobile-edge", "forward", "loop")
    assert (back["direction"], back["missed"], back["mismatches"]) == ("reverse", 0, 0), back
    assert [rate for _, rate, _ in back["applied_steps"][:3]] == [20_000_000, 2_000_000, 20_000_000]
    # 6 s of a 3 s loop of three steps: 6 or 7 steps due (the last may fall after the last request)
    assert replay["steps"] >= 6 and replay["missed"] == 0 and replay["applied"] == replay["steps"]
    assert replay["lag_ms"]["p50"] is not None and 0 <= replay["lag_ms"]["p50"] < 20, replay["lag_ms"]
    assert replay["lag_ms"]["p99"] >= replay["lag_ms"]["p50"] and replay["checked"] > 0
    assert replay["mismatches"] == 0, replay["first_mismatch"]
    applied = replay["applied_steps"]
    assert [rate for _, rate, _ in applied[:4]] == [50_000_000, 5_000_000, 50_000_000, 50_000_000]
    assert all(0 <= at - 1000 * k < 100 for k, (at, _, _) in enumerate(applied)), applied  # in force after due

    hops = _rows(db, "SELECT * FROM hops WHERE kind = 'link' ORDER BY seq, idx")
    up = [h for h in hops if (h["src"], h["dst"]) == ("mobile", "edge")]
    down = [h for h in hops if (h["src"], h["dst"]) == ("edge", "mobile")]
    assert up and down and len(up) == cell["ok"]
    for h in down:      # the answers cross the reverse direction, on its own trace
        in_force = [rate for at, rate, _ in back["applied_steps"] if at <= h["trace_at_ms"]]
        assert h["trace_link"] == "mobile-edge reverse" and h["trace_bandwidth_bps"] == (
            in_force[-1] if in_force else 20_000_000), h
    trace = load_trace(tmp_path / "steps.csv", "loop")
    followed = 0
    for h in up:
        assert h["trace_link"] == "mobile-edge forward" and h["trace_delay_ms"] == 0.0
        # the state in force when its first byte left: the last step applied by then
        in_force = [rate for at, rate, _ in applied if at <= h["trace_at_ms"]]
        assert h["trace_bandwidth_bps"] == (in_force[-1] if in_force else 50_000_000), h   # the first state
        due = [s.at_ms + k * trace.period_ms for k in range(3) for s in trace.steps]
        if min(abs(h["trace_at_ms"] - d) for d in due) > NEAR_MS:
            assert h["trace_bandwidth_bps"] == trace.step_at(h["trace_at_ms"]).rate_bps, h
            followed += 1
    assert followed >= len(up) // 2
    # and the link really changed: 128 KiB take ~21 ms at 50 Mbit/s, ~210 ms at 5 Mbit/s
    slow = [h["ms"] for h in up if h["trace_bandwidth_bps"] == 5_000_000]
    fast = [h["ms"] for h in up if h["trace_bandwidth_bps"] == 50_000_000]
    assert slow and fast and statistics.median(slow) > 4 * statistics.median(fast), (slow, fast)


def test_a_traced_cell_on_a_ray_worker_replays_there_and_stores_the_same_link_states(tmp_path):
    """`--executor ray`: the cell runs on a worker that holds the network, so the replay runs
    there too; the driver stores its trace_json and every hop's link state as a local run does."""
    import pytest

    pytest.importorskip("ray")
    _model(tmp_path)
    (tmp_path / "steps.csv").write_text(TRACE)
    (tmp_path / "back.csv").write_text(TRACE.replace("50Mbit", "20Mbit").replace("5Mbit", "2Mbit"))
    exp = tmp_path / "trace.yaml"
    exp.write_text(EXPERIMENT.replace("duration: 6s", "duration: 4s"))
    out = tmp_path / "out"
    home = tmp_path / "home"
    home.mkdir()
    p = subprocess.run(TESTBED + ["run", str(exp), "--out", str(out), "--executor", "ray"], cwd=REPO,
                       env={**_env(tmp_path), "HOME": str(home)}, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    db = out / "results.sqlite"
    [cell] = _rows(db, "SELECT * FROM cells")
    assert cell["status"] == "done" and cell["ok"] >= 10, cell
    forward, back = json.loads(cell["trace_json"])["directions"]
    assert forward["applied"] >= 4 and forward["missed"] == 0 and forward["mismatches"] == 0, forward
    applied = forward["applied_steps"]
    up = _rows(db, "SELECT * FROM hops WHERE kind = 'link' AND src = 'mobile' AND dst = 'edge'")
    assert len(up) == cell["ok"]
    for h in up:
        in_force = [rate for at, rate, _ in applied if at <= h["trace_at_ms"]]
        assert h["trace_link"] == "mobile-edge forward" and h["trace_bandwidth_bps"] == (
            in_force[-1] if in_force else 50_000_000), h
    assert {h["trace_bandwidth_bps"] for h in up} == {5_000_000, 50_000_000}
