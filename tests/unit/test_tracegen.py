"""`testbed traces synth` and `traces show`: the processes have the statistics their parameters
promise, a seed gives the same file, the file loads back, and mistakes are one line."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from testbed.cli import cli
from testbed.tracegen import markov, summary, walk
from topologies.traces import load_trace


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_the_walk_has_its_mean_cv_and_coherence():
    steps, held = walk(20e6, 0.5, 1000.0, 100.0, 2_000_000.0, seed=3)     # 20000 steps
    assert held == 0 and len(steps) == 20_000
    assert [t for t, _ in steps[:3]] == [0.0, 100.0, 200.0]
    rates = np.array([r for _, r in steps], dtype=float)
    assert rates.mean() == pytest.approx(20e6, rel=0.05)
    assert rates.std() / rates.mean() == pytest.approx(0.5, rel=0.1)
    x = np.log(rates)
    lag1 = np.corrcoef(x[:-1], x[1:])[0, 1]
    assert lag1 == pytest.approx(math.exp(-100 / 1000), abs=0.02)     # phi = exp(-step / coherence)
    assert all(r % 1000 == 0 for r in rates)                          # whole kbit/s


def test_the_walk_is_seeded_and_held_within_its_bounds():
    assert walk(20e6, 0.5, 1000.0, 100.0, 10_000.0, seed=1) == walk(20e6, 0.5, 1000.0, 100.0, 10_000.0, seed=1)
    assert walk(20e6, 0.5, 1000.0, 100.0, 10_000.0, seed=1) != walk(20e6, 0.5, 1000.0, 100.0, 10_000.0, seed=2)
    steps, held = walk(20e6, 2.0, 500.0, 100.0, 60_000.0, seed=1, floor_bps=5_000_000, cap_bps=40_000_000)
    rates = [r for _, r in steps]
    assert min(rates) == 5_000_000 and max(rates) == 40_000_000
    assert held == sum(r in (5_000_000, 40_000_000) for r in rates) > 0


def test_markov_spends_its_share_in_each_state_at_each_mean():
    steps, held, share = markov(50e6, 2e6, 5000.0, 1000.0, 0.0, 100.0, 3_000_000.0, seed=4)
    rates = np.array([r for _, r in steps])
    assert set(rates) == {50_000_000, 2_000_000}                      # cv 0: exactly the means
    assert share == pytest.approx(5 / 6, abs=0.03) and (rates == 50_000_000).mean() == pytest.approx(share)
    good = rates == 50_000_000
    runs = np.diff(np.flatnonzero(np.diff(good.astype(int)) != 0))    # lengths of the sojourns, in steps
    assert runs.mean() * 100 == pytest.approx((5000 + 1000) / 2, rel=0.15)
    noisy, _, _ = markov(50e6, 2e6, 5000.0, 1000.0, 0.2, 100.0, 3_000_000.0, seed=4)
    r = np.array([v for _, v in noisy], dtype=float)
    assert r[good].mean() == pytest.approx(50e6, rel=0.02)
    assert r[good].std() / r[good].mean() == pytest.approx(0.2, rel=0.1)


def test_synth_writes_a_loopable_trace_with_its_parameters_and_the_same_bytes_for_a_seed(tmp_path):
    out = tmp_path / "walk.csv"
    args = ["traces", "synth", "walk", "--mean", "20Mbit", "--cv", "0.4", "--coherence", "1s", "--duration", "30s",
            "--seed", "7", "--out", str(out)]
    res = run(*args)
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert text.splitlines()[0] == ("# testbed traces synth walk --mean 20Mbit --cv 0.4 --coherence 1s --step 100ms "
                                    "--duration 30s --seed 7 --min 1kbit --max 100Gbit")
    assert "phi = exp(-step/coherence) = 0.9048" in text
    trace = load_trace(out, mode="loop")
    assert len(trace.steps) == 300 and trace.period_ms == 30_000.0
    again = run(*args[:-2])                                   # to stdout: the same bytes
    assert again.exit_code == 0 and again.output == text
    res = run("traces", "synth", "markov", "--good", "50Mbit", "--bad", "2Mbit", "--duration", "20s", "--seed", "1")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("# testbed traces synth markov --good 50Mbit --bad 2Mbit --good-time 5s "
                                 "--bad-time 1s --cv 0.2 --step 100ms --duration 20s --seed 1")
    assert "% of the steps in the good state" in res.output


@pytest.mark.parametrize("args, expected", [
    (["walk", "--mean", "20Mbs"], "Invalid value for '--mean': unknown unit 'Mbs'"),
    (["walk", "--mean", "20Mbit", "--step", "5ms"], "Invalid value for --step: 5ms is shorter than the 10ms"),
    (["walk", "--mean", "20Mbit", "--coherence", "0"], "Invalid value for --coherence: must be above 0"),
    (["walk", "--mean", "20Mbit", "--cv", "0"], "Invalid value for '--cv'"),
    (["markov", "--good", "50Mbit", "--bad", "2Mbit", "--bad-time", "50ms"],
     "Invalid value for --bad-time: shorter than one step"),
])
def test_synth_mistakes_are_usage_errors(args, expected):
    res = run("traces", "synth", *args)
    assert res.exit_code == 2 and expected in res.output


def test_show_sums_a_trace_up_by_time(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("0s,10Mbit,20ms\n1s,20Mbit,40ms\n3s\n")
    res = run("traces", "show", str(f), "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["bandwidth_bps"] == {"mean": round((10e6 * 1 + 20e6 * 2) / 3), "p10": 10_000_000, "p50": 20_000_000,
                                     "p90": 20_000_000, "min": 10_000_000, "max": 20_000_000}
    assert (info["duration_ms"], info["steps"], info["shortest_step_ms"]) == (3000.0, 2, 1000.0)
    assert info["delay_ms"] == {"min": 20.0, "max": 40.0}
    table = run("traces", "show", str(f))
    assert table.exit_code == 0 and "mean 16.667Mbit" in table.output


def test_show_of_an_open_trace_counts_up_to_its_last_step():
    info = summary(load_trace("t.csv", text="0s,10Mbit\n1s,30Mbit\n"))
    assert info["bandwidth_bps"]["mean"] == 10_000_000 and info["shortest_step_ms"] == 1000.0
    one = summary(load_trace("t.csv", text="0s,10Mbit\n"))
    assert one["bandwidth_bps"]["mean"] == 10_000_000 and one["shortest_step_ms"] is None


def test_show_says_what_is_wrong_in_one_line(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("0s,10Mbit\n2s,5Mbit\n1s,7Mbit\n")
    res = run("traces", "show", str(f))
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"Error: {f}:3: time: time 1s is before the step before it (2s, line 2); allowed: times increasing, "
        "each step once"]
    res = run("traces", "show", str(f.with_name("none.csv")))
    assert res.exit_code == 1 and "no such trace file" in res.output
