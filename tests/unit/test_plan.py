"""`testbed plan`'s arithmetic and decisions: the grid, a message's time on a path (bottleneck,
headers, store and forward, slow start on a fresh connection), the winner under the quality
tolerance and the crossover bandwidth, against numbers worked out by hand. The artifacts are
real (a small user ONNX model prepared into a test cache); the profiles are written as
`testbed profile` stores them, with chosen compute times, so the prediction can be checked
exactly (the profiles' measurement is tested as root in tests/integration/test_plan.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from testbed import plan as pl
from testbed import profile as prof
from testbed.artifacts import prepare_all
from testbed.experiment import load_experiment_dict
from testbed.plan import PlanError, make_plan, parse_grid, transfer_ms

GiB = 1 << 30
FEATURES = 4096            # 16 KiB of float32 per request


def _topo(links: dict):
    data = {"name": "e", "topology": "three_tier", "models": ["fmnist_cnn"], "links": links,
            "strategies": [{"name": "cloud", "placement": "cloud"}], "source": "mobile"}
    return load_experiment_dict(data, [], cores=2.0, memory_bytes=24 * GiB, source="<test>").topology


def test_a_grid_range_is_log_spaced_between_its_bounds_and_a_list_is_kept_as_written():
    a = parse_grid("links.mobile-edge.bandwidth=1Mbit..1Gbit:4")
    assert a.log and a.numbers == (1e6, 1e7, 1e8, 1e9) and a.values == ("1Mbit", "10Mbit", "100Mbit", "1Gbit")
    b = parse_grid("hosts.edge.cpus=0.5,1")
    assert not b.log and b.values == ("0.5", "1")
    for bad, says in [("links.mobile-edge.bandwidth", "PATH=LO..HI:N"),
                      ("hosts.edge.cpus=0.5..2:3", "a link's bandwidth"),
                      ("links.mobile-edge.bandwidth=10Mbit..1Mbit:5", "LO < HI"),
                      ("links.mobile-edge.bandwidth=1Mbit..1Gbit:1", "2..1000"),
                      ("links.mobile-edge.bandwidth=1Mbit..fast:5", "1Mbit..1Gbit:20")]:
        with pytest.raises(PlanError, match=says) as e:
            parse_grid(bad)
        assert "\n" not in str(e.value)


def test_a_message_crosses_the_bottleneck_once_with_headers_and_one_frame_at_every_other_link():
    topo = _topo({"mobile-edge": {"bandwidth": "8Mbit", "delay": "2ms"},
                  "edge-cloud": {"bandwidth": "1Mbit", "delay": "10ms"}})
    # one full segment: its 1514-byte frame at 8 Mbit/s, plus the delay
    assert transfer_ms(topo, "mobile", "edge", 1448) == pytest.approx(1514 * 8 / 8e6 * 1000 + 2)
    # ten segments to cloud: 15140 bytes at the 1 Mbit/s bottleneck, one frame at 8 Mbit/s, both delays
    assert transfer_ms(topo, "mobile", "cloud", 14480) == pytest.approx(15140 * 8 / 1e6 * 1000 + 1514 * 8 / 8e6 * 1000 + 12)
    assert transfer_ms(topo, "edge", "edge", 10**6) == 0.0


def test_a_fresh_connection_pays_the_handshake_and_a_round_trip_per_window_of_slow_start():
    topo = _topo({"mobile-edge": {"bandwidth": "100Mbit", "delay": "10ms"}})
    frame_ms = 1514 * 8 / 1e8 * 1000
    kept = transfer_ms(topo, "mobile", "edge", 100 * 1448)
    assert kept == pytest.approx(100 * frame_ms + 10)
    # windows of 10, 20 and 40 segments each wait a 20 ms round trip; the last 30 stream out
    fresh = transfer_ms(topo, "mobile", "edge", 100 * 1448, fresh=True, handshake=True)
    assert fresh == pytest.approx(20 + 3 * 20 + 30 * frame_ms + 10)
    # a message within the initial window: the handshake only
    assert transfer_ms(topo, "mobile", "edge", 1448, fresh=True, handshake=True) == pytest.approx(20 + frame_ms + 10)


@pytest.fixture
def planned(tmp_path, monkeypatch):
    """A real artifact of a small user model in a test cache, and an experiment placing it on
    mobile (slow) or edge (fast) across a mobile-edge link."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((FEATURES, 4)) / 64).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "m",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, FEATURES])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((20, FEATURES)).astype(np.float32), y=np.arange(20) % 4)
    data = {"name": "plan-test", "models": [{"name": "m.onnx", "data": "data.npz"}], "source": "mobile",
            "topology": {"name": "t", "hosts": {"mobile": {"cpus": 0.5, "memory": "1GiB"},
                                                "edge": {"cpus": 1.0, "memory": "1GiB"}},
                         "links": {"mobile-edge": {"bandwidth": "10Mbit", "delay": "1ms"}}},
            "strategies": [{"name": "mobile", "placement": "mobile"}, {"name": "edge", "placement": "edge"}]}
    exp = load_experiment_dict(data, [], cores=2.0, memory_bytes=24 * GiB, source="<test>", base_dir=tmp_path)
    built = prepare_all(exp.artifacts_needed())
    return exp, built


def _store_links(warm: float = 0.0, idle: float = 0.0, plain: float = 0.0) -> None:
    """A link profile as `testbed profile` stores it, with chosen one-pass times (ms)."""
    regime = lambda ms: {"gap_ms": 1.0, "p10_ms": ms, "p50_ms": ms, "p90_ms": ms, "mean_ms": ms}  # noqa: E731
    prof.save_links({"version": prof.PROFILE_VERSION, "machine": prof.machine(), "netem": False, "measured_at": "test",
                     "classes": {"line": {"warm": regime(warm), "idle": regime(idle)},
                                 "plain": {"warm": regime(plain), "idle": regime(plain)}}}, replace=True)


def _store_profiles(exp, built, ms_by_host: dict[str, float], idle_by_host: dict[str, float] | None = None):
    _store_links()
    for p in prof.parts_on_hosts(exp):
        folder = built[p.need].path
        wall = [ms_by_host[p.host] * f for f in (0.9, 1.0, 1.0, 1.1)]
        extra = {}
        if idle_by_host:
            idle = [idle_by_host[p.host] * f for f in (0.9, 1.0, 1.0, 1.1)]
            extra["regimes"] = {"warm": {"wall_ms": wall, **prof.summary(wall)},
                                "idle": {"wall_ms": idle, **prof.summary(idle)}}
        prof.save(p, folder, {"artifact": folder.name, "requests": len(wall), "wall_ms": wall,
                              "measured_at": "test", **prof.summary(wall), **extra}, replace=True)


def test_without_profiles_the_plan_names_what_to_profile(planned):
    exp, _ = planned
    with pytest.raises(PlanError, match=r"has no profile.*testbed profile") as e:
        make_plan(exp, [])
    assert "\n" not in str(e.value)


def test_the_winner_changes_where_sending_the_input_costs_what_the_slow_host_loses(planned):
    exp, built = planned
    _store_profiles(exp, built, {"mobile": 50.0, "edge": 5.0})
    axis = parse_grid("links.mobile-edge.bandwidth=100kbit..100Mbit:16")
    plan = make_plan(exp, [axis])
    wins = [w["winner"] for w in plan.winners]
    assert wins[0] == "mobile" and wins[-1] == "edge" and len(plan.winners) == 16
    # the winner changes once, where edge's input transfer + answer back take the 45 ms mobile loses
    assert wins == sorted(wins, key=lambda s: s != "mobile")
    (c,) = plan.crossovers
    assert (c["below"], c["above"]) == ("mobile", "edge")
    # (the harness: the client's cost and the server's, the same on both; mobile's input and
    # answer stay on mobile)
    harness = {"edge": pl.OVERHEAD_MS * 2, "mobile": pl.OVERHEAD_MS * 2}
    # the frames: tensors + the wire's header and trace records (one server: no records added)
    inp, answer = FEATURES * 4 + pl.FRAME_HEADER_BYTES, 4 * 4 + pl.ANSWER_HEADER_BYTES
    segs_in, segs_out = math.ceil(inp / 1448), 1

    def edge_minus_mobile(bps: float) -> float:
        tx = ((inp + segs_in * 66) * 8 / bps + (answer + segs_out * 66) * 8 / bps) * 1000 + 2 * 1.0
        return 5.0 + tx + harness["edge"] - 50.0 - harness["mobile"]

    lo, hi = 1e5, 1e8
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if edge_minus_mobile(mid) > 0 else (lo, mid)
    assert c["bandwidth_bps"] == pytest.approx(lo, rel=0.002)
    # each prediction is its parts: compute p50 + transmission + the harness's fixed cost
    row = next(r for r in plan.rows if r["strategy"] == "edge")
    assert row["p50_ms"] == pytest.approx(row["compute_ms"] + row["transmission_ms"] + row["overhead_ms"])
    assert row["compute_ms"] == pytest.approx(5.0) and row["p90_ms"] > row["p50_ms"]
    assert [(t["what"], t["bytes"]) for t in row["transmission"]] == [("input", inp), ("answer", answer)]


def test_the_least_sure_points_are_the_grid_values_beside_the_crossover(planned):
    exp, built = planned
    _store_profiles(exp, built, {"mobile": 50.0, "edge": 5.0})
    axis = parse_grid("links.mobile-edge.bandwidth=100kbit..100Mbit:16")
    plan = make_plan(exp, [axis])
    (c,) = plan.crossovers
    near = [p["links.mobile-edge.bandwidth"] for p in pl.uncertain_points(plan, 2)]
    i = next(i for i, v in enumerate(axis.numbers) if v > c["bandwidth_bps"])
    assert set(near) == {axis.values[i - 1], axis.values[i]}
    assert len(pl.uncertain_points(plan, 100)) == 16          # no more than the grid has


def test_a_strategy_beyond_the_quality_tolerance_cannot_win(planned):
    exp, built = planned
    _store_profiles(exp, built, {"mobile": 50.0, "edge": 5.0})
    plan = make_plan(exp, [parse_grid("links.mobile-edge.bandwidth=1Gbit,1Mbit")])
    rows = {(r["point"]["links.mobile-edge.bandwidth"], r["strategy"]): r for r in plan.rows}
    assert rows[("1Gbit", "edge")]["p50_ms"] < rows[("1Gbit", "mobile")]["p50_ms"]
    # the same artifact on both hosts: no loss, an exact interval, both within
    assert {r["tolerance_verdict"] for r in plan.rows} == {"within"}
    ranked = pl._winner({}, "m", [dict(rows[("1Gbit", "edge")], tolerance_verdict="beyond"),
                                  rows[("1Gbit", "mobile")]])
    assert ranked["winner"] == "mobile" and ranked["fastest"] == "edge"


def test_a_plan_refuses_links_it_does_not_model(planned):
    exp, built = planned
    _store_profiles(exp, built, {"mobile": 50.0, "edge": 5.0})
    with pytest.raises(PlanError, match="loss or jitter"):
        make_plan(exp, [parse_grid("links.mobile-edge.loss=1%")])


def test_a_host_that_waits_long_between_requests_computes_as_after_idling(planned):
    """Edge waits for the input's transfer between its requests (12 ms and more at 10 Mbit/s):
    its part is predicted from the profile's after-idle numbers; mobile, whose requests
    follow each other within a millisecond, from the back-to-back ones."""
    exp, built = planned
    _store_profiles(exp, built, {"mobile": 50.0, "edge": 5.0}, idle_by_host={"mobile": 70.0, "edge": 20.0})
    plan = make_plan(exp, [])
    rows = {r["strategy"]: r for r in plan.rows}
    assert [(c["regime"], c["p50_ms"]) for c in rows["edge"]["compute"]] == [("idle", 20.0)]
    assert [(c["regime"], c["p50_ms"]) for c in rows["mobile"]["compute"]] == [("warm", 50.0)]
    assert rows["edge"]["compute_ms"] == 20.0


def test_a_message_pays_one_pass_per_link_it_crosses_and_a_round_trip_pays_both_ways():
    topo = _topo({"mobile-edge": {"bandwidth": "8Mbit", "delay": "2ms"},
                  "edge-cloud": {"bandwidth": "1Mbit", "delay": "10ms"}})
    plain = transfer_ms(topo, "mobile", "cloud", 14480)
    cost = {("mobile-edge", 8_000_000): 0.1, ("edge-cloud", 1_000_000): 0.3}
    pass_ms = lambda link, d: cost[(link, d.rate_bps)]  # noqa: E731
    assert transfer_ms(topo, "mobile", "cloud", 14480, pass_ms=pass_ms) == pytest.approx(plain + 0.4)
    # the handshake's round trip crosses every link both ways
    fresh = transfer_ms(topo, "mobile", "cloud", 1448, fresh=True, handshake=True)
    assert transfer_ms(topo, "mobile", "cloud", 1448, fresh=True, handshake=True, pass_ms=pass_ms) == \
        pytest.approx(fresh + 3 * 0.4)


def test_a_link_idle_long_before_a_message_passes_it_as_after_idling(planned):
    """edge: the input crosses mobile-edge right after the last request's answer (warm), the
    answer 5 ms of edge's compute after the input (idle, beyond IDLE_MS); a link profile with
    chosen times (0.1 ms warm, 1 ms idle) says what each pass costs."""
    exp, built = planned
    _store_profiles(exp, built, {"mobile": 50.0, "edge": 5.0})
    bare = {r["strategy"]: r for r in make_plan(exp, []).rows}
    _store_links(warm=0.1, idle=1.0)
    rows = {r["strategy"]: r for r in make_plan(exp, []).rows}
    assert [t["links"] for t in rows["edge"]["transmission"]] == [{"mobile-edge": "warm"}, {"mobile-edge": "idle"}]
    assert rows["edge"]["p50_ms"] == pytest.approx(bare["edge"]["p50_ms"] + 0.1 + 1.0)
    assert rows["mobile"]["p50_ms"] == pytest.approx(bare["mobile"]["p50_ms"])     # no link crossed
    # a fast edge: the answer follows the input within IDLE_MS, both passes warm
    _store_profiles(exp, built, {"mobile": 50.0, "edge": 0.5})
    _store_links(warm=0.1, idle=1.0)
    rows = {r["strategy"]: r for r in make_plan(exp, [parse_grid("links.mobile-edge.bandwidth=1Gbit,2Gbit")]).rows}
    assert [t["links"] for t in rows["edge"]["transmission"]] == [{"mobile-edge": "warm"}, {"mobile-edge": "warm"}]


def test_without_a_link_profile_the_plan_names_what_to_profile(planned):
    exp, built = planned
    _store_profiles(exp, built, {"mobile": 50.0, "edge": 5.0})
    from workloads.cache import Cache
    import shutil
    shutil.rmtree(Cache().path(prof.KIND, prof.links_key()))
    with pytest.raises(PlanError, match=r"links have no profile.*testbed profile"):
        make_plan(exp, [])


def test_each_frame_carries_the_trace_so_far_as_the_store_recorded_it():
    """A three-part chain of fmnist_cnn (3136 B input, 40 B answer): the answers' sizes the
    store's hops recorded were 1193 B from cloud, relayed as 1377 B by edge and 1563 B by mobile."""
    data = {"name": "e", "topology": "three_tier", "models": ["fmnist_cnn"], "source": "mobile",
            "strategies": [{"name": "mec", "operators": ["partition"], "placement": ["mobile", "edge", "cloud"]}]}
    exp = load_experiment_dict(data, [], cores=2.0, memory_bytes=24 * GiB, source="<test>")
    art = pl.Artifact(folder=None, input_bytes=3136, cut_bytes=[1000, 2000], answer_bytes=40, metric=None,
                      loss=None, loss_ci=None)
    compute = [{"p50_ms": 1.0, "p90_ms": 1.0}] * 3
    legs = [(t["what"], t["src"], t["dst"], t["bytes"]) for t in pl.predict(exp, exp.strategies[0], art, compute)["transmission"]]
    assert legs == [("cut 1", "mobile", "edge", 1000 + 219 + 309), ("cut 2", "edge", "cloud", 2000 + 219 + 2 * 309),
                    ("answer", "cloud", "edge", 1193), ("answer", "edge", "mobile", 1378)]


def test_requests_an_exit_answers_in_the_first_part_end_there_and_the_quantiles_mix_both_ways():
    """An early-exit artifact split mobile > edge: part 0 answers 70 % of the requests by its
    exit head (1 ms when it exits, 4 ms when it goes on), part 1 takes 10 ms. 70 % of requests
    end on mobile (no link crossed), 30 % cross to edge and back: p50 is the first way's, p90
    the second's."""
    data = {"name": "e", "topology": "three_tier", "models": ["fmnist_cnn"], "source": "mobile",
            "strategies": [{"name": "me", "operators": ["partition"], "placement": ["mobile", "edge"]}]}
    exp = load_experiment_dict(data, [], cores=2.0, memory_bytes=24 * GiB, source="<test>")
    art = pl.Artifact(folder=None, input_bytes=3136, cut_bytes=[1000], answer_bytes=40, metric=None,
                      loss=None, loss_ci=None)
    warm = {"p50_ms": 2.0, "p90_ms": 4.0, "exit_fraction": 0.7, "exited": {"p50_ms": 1.0, "p90_ms": 1.5},
            "continued": {"p50_ms": 4.0, "p90_ms": 5.0}}
    compute = [{"p50_ms": 2.0, "p90_ms": 4.0, "regimes": {"warm": warm}}, {"p50_ms": 10.0, "p90_ms": 12.0}]
    got = pl.predict(exp, exp.strategies[0], art, compute)
    short, full = got["outcomes"]
    assert (short["ends_in_part"], short["share"], full["ends_in_part"], full["share"]) == (0, 0.7, 1, 0.3)
    assert short["p50_ms"] == pytest.approx(1.0 + 2 * pl.OVERHEAD_MS)       # mobile alone: no link
    assert full["p50_ms"] > 4.0 + 10.0 and full["p90_ms"] == pytest.approx(full["p50_ms"] + 1.0 + 2.0)
    assert got["p50_ms"] == short["p50_ms"] and got["p90_ms"] == full["p90_ms"]
    # without exits, one way: the whole chain with the part's overall numbers
    plain = pl.predict(exp, exp.strategies[0], art, [{"p50_ms": 2.0, "p90_ms": 4.0}, compute[1]])
    assert "outcomes" not in plain and plain["compute_ms"] == 12.0


def test_a_grid_over_a_hosts_cores_needs_their_profiles_and_says_how_to_take_them(planned):
    exp, built = planned
    _store_profiles(exp, built, {"mobile": 50.0, "edge": 5.0})
    with pytest.raises(PlanError, match=r"0.25 cores.*has no profile.*testbed profile \S+ --grid "
                                        r"hosts.mobile.cpus=0.25,0.5` first"):
        make_plan(exp, [parse_grid("hosts.mobile.cpus=0.25,0.5")])
