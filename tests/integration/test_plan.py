"""`testbed profile` then `testbed plan` as users run them (root: the profile runs each part
inside its host's cgroup on the emulated network), then the plan checked against a measured
`testbed run` of the same points: a user ONNX model with a 128 KiB input (so transmission
matters) on a half-core mobile and a one-core edge."""
from __future__ import annotations

import json
import subprocess

from emulation.cleanup import find_leftovers
from testbed.experiment import point_label
from testbed.verify import cpu_text
from tests.integration.test_run import REPO, TESTBED, _env, _model

EXPERIMENT = """\
name: it-plan
topology:
  name: it
  hosts:
    mobile: {cpus: 0.5, memory: 512MiB}
    edge: {cpus: 1.0, memory: 1GiB}
  links:
    mobile-edge: {bandwidth: 50Mbit, delay: 2ms}
models: [{name: wide.onnx, data: data.npz}]
strategies:
  - {name: mobile, placement: mobile}
  - {name: edge, placement: edge}
source: mobile
requests: {warmup: 2, repeat: 15, inputs: 3, timeout: 20s}
sweep:
  links.mobile-edge.bandwidth: [20Mbit, 200Mbit]
"""


def _cli(tmp_path, *args, timeout=600):
    p = subprocess.run(TESTBED + list(args), cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def test_profile_then_plan_then_the_measured_run_agrees_with_the_plan(tmp_path):
    _model(tmp_path)
    exp = tmp_path / "plan.yaml"
    exp.write_text(EXPERIMENT)
    first = _cli(tmp_path, "profile", str(exp), "--requests", "10", "--json")["profiles"]
    assert {(r["host"], r["reused"]) for r in first} == {("mobile", False), ("edge", False)}
    by_host = {r["host"]: r for r in first}
    assert by_host["mobile"]["requests"] == 10 and "0.5 cores" in by_host["mobile"]["limits"]
    # the profile ran inside each host's cgroup, paced to its share: half a core takes markedly
    # longer than a whole one on the same part. (Only a floor: the part takes ~0.5 ms, and below
    # calibrate's COMPUTE_JUDGED_MS the quota's period slices it too coarsely to hold a ratio of
    # 2 to a bound; seen 2.0 to 2.7.) Back to back is the faster regime.
    assert by_host["mobile"]["idle_p50_ms"] / by_host["edge"]["idle_p50_ms"] > 1.5, by_host
    assert all(r["p50_ms"] < r["idle_p50_ms"] for r in first), first
    again = _cli(tmp_path, "profile", str(exp), "--json")["profiles"]     # stored: not measured again
    assert all(r["reused"] for r in again) and [r["p50_ms"] for r in again] == [r["p50_ms"] for r in first]

    plan = _cli(tmp_path, "plan", str(exp), "--json")
    assert len(plan["predictions"]) == 4 and len(plan["winners"]) == 2 and plan["seconds"] < 10
    predicted = {(r["point"]["links.mobile-edge.bandwidth"], r["strategy"]): r for r in plan["predictions"]}
    # 128 KiB at 20 Mbit/s is ~55 ms on the wire: edge pays it, mobile does not
    assert predicted[("20Mbit", "edge")]["transmission_ms"] > 50 and predicted[("20Mbit", "mobile")]["transmission_ms"] == 0
    grid = _cli(tmp_path, "plan", str(exp), "--grid", "links.mobile-edge.bandwidth=1Mbit..1Gbit:12", "--json")
    assert len(grid["winners"]) == 12 and [w["winner"] for w in grid["winners"]][0] == "mobile"

    out = tmp_path / "out"
    _cli(tmp_path, "run", str(exp), "--out", str(out), "--json")
    # the report plans the run's experiment again from the store and compares (testbed/verify.py):
    # the same predictions as `testbed plan`, each against its cell's measured median
    compared = _cli(tmp_path, "report", str(out), "--json")["predicted"]
    assert "reason" not in compared, compared
    assert (len(compared["cells"]), compared["unmatched"], compared["compared"]) == (4, [], 2)
    errors = {}
    for c in compared["cells"]:
        p = predicted[(c["point"]["links.mobile-edge.bandwidth"], c["strategy"])]
        assert c["predicted_ms"] == p["p50_ms"] and c["ok"] == 15
        # and beside it how the run's CPU time per inference compared with the profile's on
        # each host (both recorded: the profile's probe and the run's servers)
        assert [d["host"] for d in c["cpu"]] == [c["placement"]] and all(d["ratio"] > 0 for d in c["cpu"]), c
        errors[(c["strategy"], point_label(c["point"]))] = (round(p["p50_ms"], 3), round(c["measured_ms"], 3),
                                                            cpu_text(c))
    # the plan's p50 within 25 % of the measured median in every cell, or within 0.5 ms where
    # the whole request takes about that (mobile alone: 0.5 ms, the harness's own cost is half);
    # on failure the CPU ratios tell a machine slower than at profiling from a wrong plan
    print(f"\n(predicted p50, measured p50, CPU per inference run / profile) per cell: {errors}")
    assert all(abs(p - m) <= max(0.25 * m, 0.5) for p, m, _ in errors.values()), errors
    assert compared["cpu"]["n"] == 4
    assert (out / "report" / "tables" / "predicted.csv").is_file()
    # the regimes: edge waits for the 128 KiB between its requests (computes as after idling),
    # mobile's requests follow each other (back to back)
    assert [c["regime"] for c in predicted[("20Mbit", "edge")]["compute"]] == ["idle"]
    assert [c["regime"] for c in predicted[("20Mbit", "mobile")]["compute"]] == ["warm"]

    # --verify 2: the two grid points with the smallest relative margin, measured and compared
    checked = tmp_path / "verify"
    got = _cli(tmp_path, "plan", str(exp), "--grid", "links.mobile-edge.bandwidth=1Mbit..1Gbit:12", "--verify", "2",
               "--out", str(checked), "--json")
    sure = sorted(grid["winners"], key=lambda w: w["margin_ms"] / w["p50_ms"])
    assert got["verify"]["points"] == [w["point"] for w in sure[:2]]
    v = got["verify"]
    assert (len(v["cells"]), v["unmatched"], v["compared"]) == (4, [], 2) and all(c["ok"] == 15 for c in v["cells"])
    by_grid = {(json.dumps(r["point"]), r["strategy"]): r["p50_ms"] for r in grid["predictions"]}
    assert all(c["predicted_ms"] == by_grid[(json.dumps(c["point"]), c["strategy"])] for c in v["cells"])
    assert [w["margin_ms"] for w in v["winners"]] == [w["margin_ms"] for w in sure[:2]]
    # the same folder again is refused in one line, as `testbed run` refuses it
    p = subprocess.run(TESTBED + ["plan", str(exp), "--verify", "1", "--out", str(checked)], cwd=REPO,
                       env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "already holds 4 cells" in p.stderr and "Traceback" not in p.stderr
    assert find_leftovers() == []


# the same model, hosts and link under Poisson arrivals at two rates
LOAD_EXPERIMENT = EXPERIMENT.replace("name: it-plan\n", "name: it-plan-load\n").replace(
    "requests: {warmup: 2, repeat: 15, inputs: 3, timeout: 20s}\nsweep:\n  links.mobile-edge.bandwidth: [20Mbit, 200Mbit]\n",
    "requests: {warmup: 2, inputs: 3, timeout: 20s}\n"
    "load: {scenario: server, qps: 20, duration: 3s, seed: 1, slo: {p99: 500ms}}\nsweep:\n  load.qps: [20, 60]\n")
assert "load.qps" in LOAD_EXPERIMENT and "it-plan-load" in LOAD_EXPERIMENT


def test_plan_verify_under_load_measures_the_least_sure_rate_and_compares_p50_and_p99(tmp_path):
    _model(tmp_path)
    exp = tmp_path / "load.yaml"
    exp.write_text(LOAD_EXPERIMENT)
    _cli(tmp_path, "profile", str(exp), "--requests", "10", "--json")
    out = tmp_path / "verify"
    got = _cli(tmp_path, "plan", str(exp), "--verify", "1", "--out", str(out), "--json")
    assert all("load" in r for r in got["predictions"])
    checked = got["verify"]
    (point,) = checked["points"]
    load = checked["load"]
    # both strategies measured at the one rate, each beside its queueing prediction
    assert checked["cells"] == [] and load["unmatched"] == [] and len(load["cells"]) == 2
    predicted = {r["strategy"]: r["load"] for r in got["predictions"] if r["point"] == point}
    for c in load["cells"]:
        assert str(c["point"]["load.qps"]) == str(point["load.qps"])
        assert c["predicted_p99_ms"] == predicted[c["strategy"]]["p99_ms"] and c["measured_p99_ms"] > 0
        assert c["error_p99"] == (c["predicted_p99_ms"] - c["measured_p99_ms"]) / c["measured_p99_ms"]
    (w,) = load["winners"]
    assert w["predicted"] in ("mobile", "edge") and w["margin_ms"] is not None and load["compared"] == 1
    print(point, [(c["strategy"], round(c["predicted_p99_ms"], 2), round(c["measured_p99_ms"], 2))
                  for c in load["cells"]], w)
    # and in the terminal
    p = subprocess.run(TESTBED + ["report", str(out)], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and "the plan against the cells under load: median |error|" in p.stdout, p.stdout[-2000:]
    assert find_leftovers() == []
