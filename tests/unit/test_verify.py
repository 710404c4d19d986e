"""The plan against measurement (testbed/verify.py): `compare` on rows built by hand (error
signs, the winner rule under quality verdicts, ties, cells the plan lacks), `measured_cells`
on a real store, and `predictions_for_store` rebuilding a run's experiment from the store and
planning it from real profiles of a real (small) artifact, or saying in one line why not."""
from __future__ import annotations

import pytest

from testbed.experiment import load_experiment_dict
from testbed.plan import make_plan
from testbed.store import CellRecord, RequestRow, ResultStore
from testbed.verify import (compare, compare_load, cpu_summary_text, cpu_text, error_summary, measured_cells,
                            measured_from, measured_load_from, point_key, predictions_for_store)
from tests.unit.test_plan import GiB, _store_profiles, planned  # noqa: F401  (a fixture)

ME = "links.mobile-edge.bandwidth"


def _pred(strategy: str, p50: float, point: dict | None = None, model: str = "m", verdict: str | None = None,
          placement: str | None = None) -> dict:
    return {"model": model, "strategy": strategy, "placement": placement or strategy, "point": point or {},
            "p50_ms": p50, "p90_ms": p50 * 1.5, "compute_ms": p50 / 2, "transmission_ms": p50 / 4,
            "tolerance_verdict": verdict}


def _meas(strategy: str, p50: float | None, point: dict | None = None, model: str = "m",
          placement: str | None = None) -> dict:
    return {"model": model, "strategy": strategy, "placement": placement or strategy, "point": point or {},
            "run_id": "r1", "ok": 0 if p50 is None else 10, "p50_ms": p50, "p90_ms": None if p50 is None else p50 * 2,
            "compute_ms": None if p50 is None else p50 / 2, "transmission_ms": None if p50 is None else p50 / 2}


def test_the_error_is_signed_relative_to_the_measured_value_and_summarised_per_strategy_and_tier():
    preds = [_pred("a", 12.0, {ME: "1Mbit"}, placement="mobile"), _pred("a", 8.0, {ME: "10Mbit"}, placement="mobile"),
             _pred("b", 10.5, {ME: "1Mbit"}, placement="mobile>edge")]
    got = compare(preds, [], [_meas("a", 10.0, {ME: "1Mbit"}, placement="mobile"),
                              _meas("a", 10.0, {ME: "10Mbit"}, placement="mobile"),
                              _meas("b", 10.0, {ME: "1Mbit"}, placement="mobile>edge")])
    errors = {(c["strategy"], c["point"][ME]): c["error"] for c in got["cells"]}
    assert errors == {("a", "1Mbit"): pytest.approx(0.2), ("a", "10Mbit"): pytest.approx(-0.2),
                      ("b", "1Mbit"): pytest.approx(0.05)}
    assert got["median_abs_error"] == pytest.approx(0.2)
    # p90: predicted 1.5x p50, measured 2x: (1.5 * 12 - 20) / 20
    assert next(c for c in got["cells"] if c["point"][ME] == "1Mbit")["error_p90"] == pytest.approx(-0.1)
    (a, b) = got["by_strategy"]
    assert (a["name"], a["n"], a["median_abs_error"], a["median_error"]) == \
        ("a", 2, pytest.approx(0.2), pytest.approx(0.0))
    assert abs(a["worst_error"]) == pytest.approx(0.2) and (b["name"], b["n"]) == ("b", 1)
    assert [(t["by"], t["name"]) for t in got["by_tier"]] == [("tier", "mobile"), ("tier", "mobile>edge")]
    assert error_summary([], "strategy") == []


def test_each_hosts_cpu_time_per_inference_is_set_beside_its_profiles():
    """The run's median CPU time of an inference per host against the profile's of the regime
    the plan used: the ratio tells a machine that computed slower than at profiling from a
    plan that was wrong; a side without it (an older profile or run) gives no ratio."""
    def pred(strategy, compute):
        return {**_pred(strategy, 10.0), "compute": [{"host": h, "part": i, "regime": "warm", "p50_ms": 1.0,
                                                     "p90_ms": 1.0, "cpu_p50_ms": c} for i, (h, c) in enumerate(compute)]}

    preds = [pred("split", [("mobile", 2.0), ("edge", 4.0)]), pred("old", [("mobile", None)]),
             pred("twice", [("edge", 1.0), ("edge", 1.0)])]
    meas = [{**_meas(s, 10.0), "cpu_ms": {"mobile": 3.0, "edge": 4.4}} for s in ("split", "old", "twice")]
    got = compare(preds, [], meas)
    by = {c["strategy"]: c["cpu"] for c in got["cells"]}
    assert [(d["host"], d["profiled_ms"], d["measured_ms"], d["ratio"]) for d in by["split"]] == \
        [("mobile", 2.0, 3.0, 1.5), ("edge", 4.0, 4.4, pytest.approx(1.1))]
    assert by["old"][0]["ratio"] is None                    # the profile predates it
    assert [d["ratio"] for d in by["twice"]] == [None, None]  # two parts on one host: the run mixes them
    assert cpu_text(next(c for c in got["cells"] if c["strategy"] == "split")) == "mobile x1.50, edge x1.10"
    assert got["cpu"] == {"median": pytest.approx(1.3), "low": pytest.approx(1.1), "high": 1.5, "n": 2}
    assert cpu_summary_text(got) == ("; an inference's CPU time in the run x1.30 its profile's (median over 2 hosts "
                                     "of cells, x1.10 to x1.50)")
    # without any measured CPU time: no summary, no clause
    bare = compare(preds, [], [_meas("split", 10.0)])
    assert bare["cpu"] is None and cpu_summary_text(bare) == "" and cpu_text(bare["cells"][0]) == ""

def test_the_runs_cpu_time_per_inference_is_read_from_each_cells_hosts(tmp_path):
    hosts = {"mobile": {"cpus": 0.5, "compute": {"requests": 5, "cpu_p50_ms": 3.0}}, "edge": {"cpus": 1.0},
             "cloud": {"compute": {"requests": 0, "note": "no CPU time reported"}}}
    with ResultStore.in_folder(tmp_path / "out") as store:
        store.begin_run("r1", "x", {}, {"cores": 2.0})
        store.write_cell(CellRecord(
            cell="c1", run_id="r1", model="m", weights="pretrained", strategy="split", operators=[], placement="mobile>edge",
            source="mobile", codec="binary", connection="persistent", point={}, artifact=None, metric=None,
            metric_value=None, baseline_value=None, status="done", error=None, started=1.7e9, ended=1.7e9 + 1,
            hosts=hosts), [RequestRow(seq=0, input_index=0, status="ok", e2e_ms=5.0)], [])
        store.end_run("r1", "done")
        assert measured_from(store.cells(), store.requests())[0]["cpu_ms"] == {"mobile": 3.0}


def test_the_winner_is_the_fastest_within_tolerance_on_both_sides():
    # a is fastest, predicted and measured, but beyond the tolerance: b and c compete
    preds = [_pred("a", 1.0, verdict="beyond"), _pred("b", 5.0, verdict="within"), _pred("c", 6.0, verdict="within")]
    agree = compare(preds, [], [_meas("a", 1.0), _meas("b", 5.0), _meas("c", 7.0)])
    (w,) = agree["winners"]
    assert (w["predicted"], w["measured"], w["agree"], w["rule"]) == ("b", "b", True, "within tolerance")
    assert agree["agreement"] == 1.0 and w["measured_ms"] == {"b": 5.0}
    # measured, c beats b: a disagreement that shows both measured p50 (a near tie reads as one)
    (w,) = compare(preds, [], [_meas("a", 1.0), _meas("b", 6.1), _meas("c", 6.0)])["winners"]
    assert (w["predicted"], w["measured"], w["agree"], w["tie"]) == ("b", "c", False, False)
    assert w["measured_ms"] == {"c": 6.0, "b": 6.1} and w["predicted_ms"] == {"c": 6.0, "b": 5.0}
    # without any verdict (no quality metric): the fastest of all
    plain = [_pred("a", 1.0), _pred("b", 5.0)]
    (w,) = compare(plain, [], [_meas("a", 9.0), _meas("b", 5.0)])["winners"]
    assert (w["predicted"], w["measured"], w["rule"]) == ("a", "b", "latency only (no quality metric)")


def test_an_exact_tie_agrees_and_a_strategy_without_an_ok_request_cannot_win():
    preds = [_pred("a", 4.0), _pred("b", 5.0), _pred("c", 1.0)]
    (w,) = compare(preds, [], [_meas("a", 5.0), _meas("b", 5.0), _meas("c", None)])["winners"]
    # c was predicted fastest but measured nothing: both sides choose among a and b
    assert (w["predicted"], w["agree"], w["unmeasured"]) == ("a", True, ["c"])
    # listed first, b takes the measured tie; a, predicted, measured the same: that agrees, as a tie
    (w,) = compare(preds, [], [_meas("b", 5.0), _meas("a", 5.0)])["winners"]
    assert w["agree"] and w["tie"] and (w["predicted"], w["measured"]) == ("a", "b")


def test_a_missed_winner_is_tested_and_counted_apart_only_where_the_measurement_cannot_tell():
    preds = [_pred("a", 5.0), _pred("b", 5.1)]

    def meas(a: list[float], b: list[float]) -> list[dict]:
        return [{**_meas("a", sorted(a)[len(a) // 2]), "e2e_ms": a}, {**_meas("b", sorted(b)[len(b) // 2]), "e2e_ms": b}]

    # b measured faster by a hair, the two spread over each other: a miss nobody could tell
    got = compare(preds, [], meas([5.0, 5.4, 4.8, 5.9, 5.2, 5.1], [5.05, 4.9, 5.3, 5.0, 6.0, 4.7]))
    (w,) = got["winners"]
    assert (w["predicted"], w["measured"], w["agree"], w["indistinguishable"]) == ("a", "b", False, True)
    assert w["test"]["p"] > 0.05 and w["test"]["n"] == [6, 6]
    assert (got["agreed"], got["agreed_or_indistinguishable"], got["compared"]) == (0, 1, 1)
    # b faster in every request: a real miss, counted as one
    got = compare(preds, [], meas([5.0, 5.4, 4.8, 5.9, 5.2, 5.1], [3.0, 3.1, 2.9, 3.2, 3.0, 3.05]))
    (w,) = got["winners"]
    assert not w["indistinguishable"] and w["test"]["p"] < 0.01 and w["test"]["delta"] == 1.0
    assert got["agreed_or_indistinguishable"] == 0
    # too few requests to test: untested, never counted as told apart or not
    (w,) = compare(preds, [], meas([5.0, 5.4, 4.8], [3.0, 3.1, 2.9]))["winners"]
    assert w["test"]["p"] is None and "at least 5" in w["test"]["warning"] and not w["indistinguishable"]
    # an agreement is not tested
    (w,) = compare(preds, [], meas([3.0, 3.1, 2.9, 3.2, 3.0], [5.0, 5.4, 4.8, 5.9, 5.2]))["winners"]
    assert w["agree"] and w["test"] is None and not w["indistinguishable"]


def test_a_measured_cell_the_plan_lacks_is_unmatched_not_dropped():
    got = compare([_pred("a", 4.0, {ME: "1Mbit"})], [],
                  [_meas("a", 5.0, {ME: "1Mbit"}), _meas("z", 5.0, {ME: "1Mbit"}), _meas("a", 5.0, {ME: "2Mbit"})])
    assert len(got["cells"]) == 1 and got["compared"] == 1
    assert sorted((u["strategy"], u["point"][ME]) for u in got["unmatched"]) == [("a", "2Mbit"), ("z", "1Mbit")]
    empty = compare([], [], [])
    assert (empty["agreement"], empty["median_abs_error"], empty["cells"], empty["unmatched"]) == (None, None, [], [])


def test_a_point_matches_whether_its_values_came_through_json_or_the_plans_strings():
    assert point_key({"hosts.edge.cpus": 0.5, "s.0.placement": ("mobile", "edge")}) == \
        point_key({"s.0.placement": ["mobile", "edge"], "hosts.edge.cpus": "0.5"})
    assert point_key({"hosts.edge.cpus": 1}) != point_key({"hosts.edge.cpus": "1.0"})


# --- from a store -----------------------------------------------------------------------------

def _swept(exp, tmp_path):
    """The fixture's experiment over two bandwidths and (a value written as a number) edge's cores."""
    data = {**exp.to_dict(), "sweep": {ME: ["1Mbit", "100Mbit"], "hosts.edge.cpus": [1]}}
    return load_experiment_dict(data, [], cores=2.0, memory_bytes=24 * GiB, source="<test>", base_dir=tmp_path)


def store_run(folder, exp, e2e_ms, machine=None):
    """A store as `testbed run` writes one: the run's config is the experiment, a cell per
    (point, model, strategy) with ``e2e_ms(strategy, point)`` as every ok request's latency."""
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", exp.name, exp.to_dict(), machine or {"cores": 2.0, "memory_bytes": 24 * GiB})
        for point in exp.cells_grid():
            for model in exp.models:
                for s in exp.strategies:
                    ms = e2e_ms(s.name, point)
                    reqs = [RequestRow(seq=i, input_index=i, status="ok" if ms else "timeout", e2e_ms=ms,
                                       compute_ms=ms and ms / 2, transmission_ms=ms and ms / 4) for i in range(5)]
                    store.write_cell(CellRecord(
                        cell=f"{s.name}/{point_key(point)}", run_id="r1", model=model.name, weights=model.weights,
                        strategy=s.name, operators=[], placement=s.placement, source="mobile", codec="binary",
                        connection="persistent", point=point, artifact=None, metric=None, metric_value=None,
                        baseline_value=None, status="done", error=None, started=1.7e9, ended=1.7e9 + 1), reqs, [])
        store.end_run("r1", "done")
    return folder


def test_measured_cells_reads_each_done_cells_medians(tmp_path, planned):
    exp = _swept(planned[0], tmp_path)
    folder = store_run(tmp_path / "out", exp, lambda s, p: None if s == "edge" and p[ME] == "1Mbit" else 8.0)
    cells = measured_cells(folder)
    assert len(cells) == 4 and all(c["run_id"] == "r1" for c in cells)
    timed_out = next(c for c in cells if c["strategy"] == "edge" and c["point"][ME] == "1Mbit")
    assert (timed_out["ok"], timed_out["p50_ms"]) == (0, None)
    ok = next(c for c in cells if c["strategy"] == "mobile")
    assert (ok["ok"], ok["p50_ms"], ok["p90_ms"], ok["compute_ms"], ok["transmission_ms"]) == (5, 8.0, 8.0, 4.0, 2.0)
    assert ok["point"]["hosts.edge.cpus"] == 1              # as the run stored it
    with ResultStore.in_folder(folder, create=False) as store:
        assert measured_cells(store) == cells


def planned_store(tmp_path, planned, scale: float, edge_at_100mbit: float):
    """The fixture's swept experiment with profiles (mobile 50 ms, edge 5 ms), and a store of
    it that measured ``scale`` x the plan, except edge at 100 Mbit/s: ``edge_at_100mbit`` ms."""
    exp, built = planned
    exp = _swept(exp, tmp_path)
    _store_profiles(exp, built, {"mobile": 50.0, "edge": 5.0})
    plan = {(r["strategy"], r["point"][ME]): r["p50_ms"] for r in make_plan(exp, []).rows}
    return store_run(tmp_path / "out", exp, lambda s, p: edge_at_100mbit if (s, p[ME]) == ("edge", "100Mbit")
                     else plan[(s, p[ME])] * scale)


def test_a_stores_cells_get_the_plan_of_their_runs_experiment(tmp_path, planned):
    # measured 25 % above the plan everywhere, except edge at 100 Mbit/s: slower than mobile
    folder = planned_store(tmp_path, planned, 1.25, 100.0)
    plan, reason = predictions_for_store(folder)
    assert reason is None and plan["notes"] == [] and len(plan["predictions"]) == 4 and len(plan["winners"]) == 2
    got = compare(plan["predictions"], plan["winners"], measured_cells(folder))
    assert got["unmatched"] == [] and len(got["cells"]) == 4
    assert all(c["error"] == pytest.approx(-0.2) for c in got["cells"]
               if (c["strategy"], c["point"][ME]) != ("edge", "100Mbit"))
    wins = {w["point"][ME]: w for w in got["winners"]}
    assert (wins["1Mbit"]["predicted"], wins["1Mbit"]["agree"]) == ("mobile", True)
    fast = wins["100Mbit"]
    assert (fast["predicted"], fast["measured"], fast["agree"]) == ("edge", "mobile", False)
    assert got["agreement"] == 0.5 and wins["100Mbit"]["planned"] == "edge"


def test_without_profiles_the_reason_names_the_profile_command_in_one_line(tmp_path, planned):
    folder = store_run(tmp_path / "out", _swept(planned[0], tmp_path), lambda s, p: 5.0)
    plan, reason = predictions_for_store(folder)
    assert plan is None and "has no profile" in reason and "testbed profile" in reason and "\n" not in reason
    assert reason.startswith("no prediction for run r1 (plan-test): ")


def test_a_run_whose_config_does_not_load_or_ran_under_load_gets_a_reason(tmp_path):
    folder = tmp_path / "out"
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", "old", {"name": "old"}, {})
        store.write_cell(CellRecord(cell="c", run_id="r1", model="m", weights="w", strategy="a", operators=[],
                                    placement=("edge",), source="mobile", codec="binary", connection="persistent",
                                    point={}, artifact=None, metric=None, metric_value=None, baseline_value=None,
                                    status="done", error=None, started=1.0, ended=2.0),
                         [RequestRow(seq=0, input_index=0, status="ok", e2e_ms=3.0)], [])
    plan, reason = predictions_for_store(folder)
    assert plan is None and reason.startswith("no prediction for run r1 (old): run r1's config: models")
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", "old", {"name": "old", "load": {"scenario": "multi-stream", "concurrency": 4}}, {})
    assert "measured under load (multi-stream)" in predictions_for_store(folder)[1]
    assert predictions_for_store(tmp_path / "out")[0] is None


# ---- under a server scenario's load ------------------------------------------------------------

def _load_pred(strategy: str, qps: float, p50: float | None, p99: float | None, slo_p99: bool = True,
               verdict: str | None = None) -> dict:
    saturated = p50 is None
    return {"model": "m", "strategy": strategy, "placement": strategy, "point": {"load.qps": qps},
            "tolerance_verdict": verdict,
            "load": {"saturation_qps": 40.0, "bottleneck": f"{strategy} compute", "p50_ms": p50, "p99_ms": p99,
                     "saturated": saturated, "slo": {"p99": {"target_ms": 100.0, "met": slo_p99 and not saturated}}}}


def _load_cell(strategy: str, qps: float, p50: float | None, p99: float | None, met: bool, status: str = "done",
               scenario: str = "server") -> dict:
    return {"model": "m", "strategy": strategy, "placement": strategy, "point": {"load.qps": qps}, "run_id": "r1",
            "status": status, "load": {"scenario": scenario, "target_qps": qps, "offered_qps": qps * 1.01,
                                       "throughput_rps": qps, "ok": 100, "latency_ms": {"p50": p50, "p99": p99},
                                       "slo": {"p99": {"target_ms": 100.0, "met": met}}}}


def test_load_cells_are_read_at_their_rate_and_only_the_server_scenarios():
    cells = [_load_cell("a", 10.0, 20.0, 60.0, True), _load_cell("a", 20.0, 30.0, None, False),
             _load_cell("b", 10.0, 20.0, 60.0, True, status="failed"),
             _load_cell("c", 10.0, 20.0, 60.0, True, scenario="multi-stream"),
             {"model": "m", "strategy": "d", "placement": "d", "point": {}, "run_id": "r1", "status": "done"}]
    got = measured_load_from(cells)
    assert [(m["strategy"], m["target_qps"], m["p50_ms"], m["p99_ms"], m["slo"]) for m in got] == [
        ("a", 10.0, 20.0, 60.0, {"p99": True}), ("a", 20.0, 30.0, None, {"p99": False})]
    assert got[0]["answered_qps"] == 10.0 and got[0]["offered_qps"] == pytest.approx(10.1)


def test_load_predictions_are_compared_at_each_rate_and_the_winner_by_the_load_rule():
    preds = [_load_pred("a", 10.0, 20.0, 50.0), _load_pred("b", 10.0, 15.0, 80.0),
             _load_pred("a", 30.0, 40.0, 150.0, slo_p99=False), _load_pred("b", 30.0, None, None)]
    measured = measured_load_from([_load_cell("a", 10.0, 25.0, 40.0, True), _load_cell("b", 10.0, 15.0, 90.0, True),
                                   _load_cell("a", 30.0, 50.0, 120.0, False), _load_cell("b", 30.0, 60.0, None, False),
                                   _load_cell("c", 10.0, 5.0, 5.0, True)])
    got = compare_load(preds, measured)
    cells = {(c["strategy"], c["target_qps"]): c for c in got["cells"]}
    assert cells[("a", 10.0)]["error"] == pytest.approx(-0.2) and cells[("a", 10.0)]["error_p99"] == pytest.approx(0.25)
    # predicted saturated: no number to compare, the saturation rate and bottleneck beside the answered rate
    sat = cells[("b", 30.0)]
    assert (sat["saturated"], sat["error"], sat["error_p99"], sat["saturation_qps"]) == (True, None, None, 40.0)
    assert got["median_abs_error"] == pytest.approx(0.2)        # |-0.2|, |0|, |-0.2|
    assert got["median_abs_error_p99"] == pytest.approx(0.25)   # 0.25, -0.111, 0.25
    # c has no prediction: listed, not dropped
    assert [(u["strategy"], u["point"]) for u in got["unmatched"]] == [("c", {"load.qps": 10.0})]
    wins = {w["point"]["load.qps"]: w for w in got["winners"]}
    # 10 req/s: both meet p99 <= 100 on both sides; lowest p99: a (50 against 80 predicted, 40 against 90 measured)
    assert (wins[10.0]["predicted"], wins[10.0]["measured"], wins[10.0]["agree"]) == ("a", "a", True)
    # 30 req/s: none meets the target, predicted or measured: no winner on either side, which agrees
    assert (wins[30.0]["predicted"], wins[30.0]["measured"], wins[30.0]["agree"]) == (None, None, True)
    assert (got["agreed"], got["compared"]) == (2, 2)
    # measured, b's p99 wins at 10 req/s: a miss, with both measured p99
    measured[1]["p99_ms"] = 30.0
    (w10, _) = compare_load(preds, measured)["winners"]
    assert (w10["predicted"], w10["measured"], w10["agree"]) == ("a", "b", False)
    assert list(w10["measured_p99_ms"].items()) == [("b", 30.0), ("a", 40.0)]


def test_a_beyond_tolerance_strategy_cannot_win_under_load_either():
    preds = [_load_pred("a", 10.0, 20.0, 30.0, verdict="beyond"), _load_pred("b", 10.0, 25.0, 60.0, verdict="within")]
    measured = measured_load_from([_load_cell("a", 10.0, 20.0, 30.0, True), _load_cell("b", 10.0, 25.0, 60.0, True)])
    (w,) = compare_load(preds, measured)["winners"]
    assert (w["predicted"], w["measured"], w["agree"]) == ("b", "b", True) and "within tolerance" in w["rule"]


def test_a_load_runs_cells_get_the_queueing_prediction_and_the_report_shows_them(tmp_path, planned):
    from testbed.report import write_report

    exp, built = planned
    data = {**exp.to_dict(), "load": {"scenario": "server", "qps": 5, "duration": "2s", "slo": {"p99": "500ms"}},
            "sweep": {"load.qps": [5, 15]}}
    data["requests"] = {k: v for k, v in data["requests"].items() if k != "repeat"}
    exp = load_experiment_dict(data, [], cores=2.0, memory_bytes=24 * GiB, source="<test>", base_dir=tmp_path)
    _store_profiles(exp, built, {"mobile": 50.0, "edge": 5.0})
    plan = {(r["strategy"], float(r["point"]["load.qps"])): r["load"] for r in make_plan(exp, []).rows}
    # mobile (50 ms a request) saturates near 20 req/s: 15 req/s queues; edge is nearly idle
    assert plan[("mobile", 15.0)]["p99_ms"] > 2 * plan[("mobile", 5.0)]["p99_ms"]
    folder = tmp_path / "out"
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", exp.name, exp.to_dict(), {"cores": 2.0, "memory_bytes": 24 * GiB})
        for point in exp.cells_grid():
            for s in exp.strategies:
                q = float(point["load.qps"])
                pred = plan[(s.name, q)]
                # measured 10 % above the plan's p50 and p99
                lat = {"p50": pred["p50_ms"] * 1.1, "p90": pred["p99_ms"], "p99": pred["p99_ms"] * 1.1}
                figures = {"scenario": "server", "target_qps": q, "offered_qps": q, "throughput_rps": q, "ok": 10,
                           "requests": 10, "latency_ms": lat,
                           "slo": {"p99": {"target_ms": 500.0, "measured_ms": lat["p99"], "met": lat["p99"] <= 500,
                                           "sure": True}}}
                reqs = [RequestRow(seq=i, input_index=i, status="ok", e2e_ms=lat["p50"]) for i in range(10)]
                store.write_cell(CellRecord(
                    cell=f"{s.name}/{point_key(point)}", run_id="r1", model=exp.models[0].name, weights="w",
                    strategy=s.name, operators=[], placement=s.placement, source="mobile", codec="binary",
                    connection="persistent", point=point, artifact=None, metric=None, metric_value=None,
                    baseline_value=None, status="done", error=None, started=1.7e9, ended=1.7e9 + 1, load=figures),
                    reqs, [])
        store.end_run("r1", "done")
    from click.testing import CliRunner

    from testbed.cli import cli

    r = CliRunner().invoke(cli, ["report", str(folder), "--out", str(tmp_path / "cli-report")])
    assert r.exit_code == 0, r.output
    assert ("the plan against the cells under load: median |error| p50 9.1 %, p99 9.1 % over 4 cells; the predicted "
            "winner (lowest p99 within the targets) is the measured one at 2 of 2 (point, model)") in r.output
    assert "the plan against these cells" not in r.output       # no single-stream cell
    report = write_report(folder)
    got = report.predicted
    assert "reason" not in got, got.get("reason")
    assert got["cells"] == [] and got["load"] is not None
    load = got["load"]
    assert len(load["cells"]) == 4 and load["unmatched"] == []
    assert all(c["error"] == pytest.approx(-1 / 11) and c["error_p99"] == pytest.approx(-1 / 11) for c in load["cells"])
    assert load["median_abs_error_p99"] == pytest.approx(1 / 11)
    # edge has the lower p99 at both rates, predicted and measured
    assert [(w["predicted"], w["measured"], w["agree"]) for w in load["winners"]] == [("edge", "edge", True)] * 2
    assert (load["agreed"], load["compared"]) == (2, 2)
    page = report.index.read_text()
    assert "Under load" in page and "Per cell under load (4)" in page and "over 0 cells" not in page
    assert (report.index.parent / "tables" / "predicted_load.csv").read_text().count("\n") == 5


def test_plan_verify_prints_each_winner_and_a_table_of_its_own_under_load(capsys):
    from testbed.output import _ms, print_verify

    checked = compare([_pred("a", 5.0), _pred("b", 6.0)], [], [_meas("a", 7.0), _meas("b", 6.0)])
    checked.update(points=[{}], out="/tmp/x", tolerance=0.01, load=None)
    print_verify(checked)
    text = capsys.readouterr().out
    assert "the plan checked at its 1 least sure point(s)" in text and f"no (b {_ms(6.0)}, a {_ms(7.0)})" in text
    assert "winners right at 0 of 1" in text and "under load" not in text
    preds = [_load_pred("a", 10.0, 20.0, 50.0), _load_pred("b", 10.0, 15.0, 80.0)]
    load = compare_load(preds, measured_load_from([_load_cell("a", 10.0, 25.0, 90.0, True),
                                                   _load_cell("b", 10.0, 15.0, 40.0, True)]))
    only_load = compare([], [], [])
    only_load.update(points=[{"load.qps": 10.0}], out="/tmp/x", tolerance=0.01, load=load)
    print_verify(only_load)
    text = capsys.readouterr().out
    assert "the plan under load checked at its 1 least sure point(s)" in text and f"no (b {_ms(40.0)}, a {_ms(90.0)})" in text
    assert "winners under load right at 0 of 1 (point, model); median |predicted - measured| / measured: " \
           "p50 10.0 %, p99 72.2 % over 2 cells" in text.replace("\n", " ")
    assert "the plan checked at" not in text            # no single-stream cell: no table for them
