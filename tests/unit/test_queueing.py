"""`testbed plan` under a server scenario's load (testbed/queueing.py): stations, their
utilisation and saturation, and the latency's quantiles against M/G/1 arithmetic worked out by
hand. The experiments are real (loaded as users write them); the compute profiles are chosen
numbers, so the queueing can be checked exactly (their measurement is tested as root in
tests/integration/test_plan.py)."""
from __future__ import annotations

import numpy as np
import pytest

from testbed import plan as pl
from testbed import queueing as q
from testbed.experiment import load_experiment_dict

GiB = 1 << 30
ART = pl.Artifact(folder=None, input_bytes=100_000, cut_bytes=[2000], answer_bytes=40, metric=None, loss=None,
                  loss_ci=None)


def _exp(placement, qps=None, slo=None, ops=(), bandwidth="100Mbit"):
    load = {"scenario": "server", "sources": ["mobile1", "mobile2"], "duration": "5s"}
    if qps is not None:
        load["qps"] = qps
    if slo:
        load["slo"] = slo
    data = {"name": "e", "topology": "star:mobiles=2", "models": ["fmnist_cnn"], "load": load,
            "links": {"mobile1-edge": {"bandwidth": bandwidth}, "mobile2-edge": {"bandwidth": bandwidth}},
            "strategies": [{"name": "s", "operators": list(ops), "placement": placement}]}
    return load_experiment_dict(data, [], cores=2.0, memory_bytes=24 * GiB, source="<test>")


def _profiles(ms_by_host: dict[str, float]):
    def profile_of(host, part):
        ms = ms_by_host[host.rstrip("12") if host.startswith("mobile") else host]
        wall = [ms] * 10
        return {"p50_ms": ms, "p90_ms": ms, "regimes": {"warm": {"wall_ms": wall, "p50_ms": ms, "p90_ms": ms}}}
    return profile_of


def test_the_busiest_station_decides_the_saturation_rate():
    e = _exp("edge", qps=10)
    got = q.predict_server(e, e.strategies[0], ART, _profiles({"edge": 10.0}), None)
    # every request computes 10 ms (+ the harness) on the one edge server
    assert got["bottleneck"] == "edge part 1"
    assert got["saturation_qps"] == pytest.approx(1000 / (10.0 + pl.OVERHEAD_MS))
    # each phone's link carries half the requests' inputs: 100 kB at 100 Mbit/s is ~8.3 ms
    assert got["utilization"]["link mobile1->edge"] == pytest.approx(5 * (100_000 + 70 * 66) * 8 / 1e8, rel=0.01)
    assert got["utilization"]["edge part 1"] == pytest.approx(10 * (10.0 + pl.OVERHEAD_MS) / 1000)


def test_a_part_on_each_source_shares_the_load_and_the_edge_gets_it_all():
    e = _exp(["source", "edge"], qps=10, ops=["partition"])
    got = q.predict_server(e, e.strategies[0], ART, _profiles({"mobile": 30.0, "edge": 5.0}), None)
    # each phone computes its own part 1 for half the requests: 30 ms at 5 req/s saturates at 2 x 1000/30
    assert got["bottleneck"] in ("mobile1 part 1", "mobile2 part 1")
    assert got["saturation_qps"] == pytest.approx(2 * 1000 / (30.0 + pl.OVERHEAD_MS))


def test_light_load_costs_the_single_request_and_heavy_load_waits_as_m_d_1():
    e = _exp("edge", qps=0.001)
    profile_of = _profiles({"edge": 10.0})
    light = q.predict_server(e, e.strategies[0], ART, profile_of, None)
    single = pl.predict(e, e.strategies[0], ART, [profile_of("edge", 0)])
    assert light["p50_ms"] == pytest.approx(single["p50_ms"], abs=0.01)
    # 80 % busy with a fixed service time S: the mean wait is rho S / (2 (1 - rho)) = 2 S (the
    # phones' links at 10 Gbit/s wait next to nothing: 100 kB take 0.08 ms, 3 % busy)
    s = 10.0 + pl.OVERHEAD_MS
    e80 = _exp("edge", qps=80, bandwidth="10Gbit")
    single = pl.predict(e80, e80.strategies[0], ART, [profile_of("edge", 0)])
    heavy = q.latencies(*q._stations(e80, e80.strategies[0], ART, profile_of, None),
                        qps=0.8 * 1000 / s, samples=200_000)
    assert heavy.mean() == pytest.approx(single["p50_ms"] + 2 * s, rel=0.03)
    assert np.percentile(heavy, 99) > np.percentile(heavy, 50) + 3 * s


def test_past_saturation_the_prediction_says_so_and_every_target_is_missed():
    e = _exp("edge", qps=200, slo={"p99": "300ms"})
    got = q.predict_server(e, e.strategies[0], ART, _profiles({"edge": 10.0}), None)
    assert got["saturated"] and got["p99_ms"] is None and got["slo"]["p99"]["met"] is False


def test_without_a_rate_the_plan_finds_the_highest_that_meets_the_targets():
    e = _exp("edge", slo={"p99": "100ms"})
    got = q.predict_server(e, e.strategies[0], ART, _profiles({"edge": 10.0}), None)
    assert 0 < got["max_qps"] < got["saturation_qps"]
    at = q.predict_server(_exp("edge", qps=got["max_qps"] * 0.98, slo={"p99": "100ms"}), e.strategies[0], ART,
                          _profiles({"edge": 10.0}), None)
    beyond = q.predict_server(_exp("edge", qps=got["max_qps"] * 1.05, slo={"p99": "100ms"}), e.strategies[0], ART,
                              _profiles({"edge": 10.0}), None)
    assert at["slo"]["p99"]["met"] and not beyond["slo"]["p99"]["met"]


def test_under_load_the_winner_is_the_lowest_p99_meeting_the_targets():
    rows = [{"strategy": "a", "tolerance_verdict": None, "load": {"p99_ms": 50.0, "saturated": False,
                                                                    "slo": {"p99": {"met": True}}}},
            {"strategy": "b", "tolerance_verdict": None, "load": {"p99_ms": 20.0, "saturated": False,
                                                                    "slo": {"p99": {"met": True}}}},
            {"strategy": "c", "tolerance_verdict": None, "load": {"p99_ms": None, "saturated": True, "slo": {}}}]
    w = pl._winner({}, "m", rows)
    assert (w["winner"], w["margin_ms"]) == ("b", 30.0)
    searching = [{"strategy": s, "tolerance_verdict": None, "load": {"max_qps": v}} for s, v in (("a", 40.0), ("b", 80.0))]
    w = pl._winner({}, "m", searching)
    assert (w["winner"], w["margin_qps"], w["margin_ms"]) == ("b", 40.0, None)
