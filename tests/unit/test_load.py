"""Load scenarios: the experiment file's ``load`` key, the arrival process (seeded, Poisson),
the load generator against a real server on loopback, and a cell's load figures."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy import stats

from testbed.experiment import ExperimentError, Load, load_experiment
from testbed.load import SEARCH_MIN_QPS, figures, percentile_ci, search_rate, slo_verdict, start_rate, tail_percentile
from testbed.runner import cell_key
from testbed.store import RequestRow
from tests.unit.test_experiment import fake_models  # noqa: F401  (autouse: tiny registry entries)
from workloads.loadgen import LoadConfig, arrivals, share

BUDGET = {"cores": 2, "memory_bytes": 24 << 30}
BASE = """\
name: t
topology: star:mobiles=4
models: [efficientnet_lite0]
strategies:
  - {name: edge, placement: edge}
"""


def exp_with(tmp_path, extra: str, sets=()):
    path = tmp_path / "exp.yaml"
    path.write_text(BASE + textwrap.dedent(extra))
    return load_experiment(path, sets, **BUDGET)


def load_error(tmp_path, extra: str, sets=()) -> str:
    with pytest.raises(ExperimentError) as info:
        exp_with(tmp_path, extra, sets)
    return str(info.value).split(": ", 1)[1]     # after the file name


# ---- the experiment file ----------------------------------------------------------------------

def test_default_is_single_stream_from_the_source(tmp_path):
    exp = exp_with(tmp_path, "")
    assert exp.load == Load() and not exp.load.concurrent and exp.sources == ("mobile1",)


def test_server_scenario_with_sources_as_a_count_and_slo(tmp_path):
    exp = exp_with(tmp_path, "load: {scenario: server, qps: 40, sources: 3, duration: 2s, seed: 7, slo: {p99: 100ms}}\n")
    assert exp.load == Load("server", 40.0, None, ("mobile1", "mobile2", "mobile3"), 2000.0, 7, (("p99", 100.0),))
    assert exp.sources == ("mobile1", "mobile2", "mobile3") and exp.load.in_flight() is None
    again = exp.to_dict()
    assert "source" not in again and "repeat" not in again["requests"]
    assert again["load"] == {"scenario": "server", "qps": 40.0, "sources": ["mobile1", "mobile2", "mobile3"],
                             "duration": "2s", "seed": 7, "slo": {"p99": "100ms"}}


def test_offline_defaults_to_64_in_flight_and_multi_stream_takes_its_concurrency(tmp_path):
    assert exp_with(tmp_path, "load: {scenario: offline}\n").load.in_flight() == 64
    assert exp_with(tmp_path, "load: {scenario: multi-stream, concurrency: 5}\n").load.in_flight() == 5


def test_qps_concurrency_and_sources_are_sweep_axes(tmp_path):
    exp = exp_with(tmp_path, "load: {scenario: server, qps: 10, sources: 2}\nsweep: {load.qps: [5, 20], load.sources: [1, 4]}\n")
    got = [(e.load.qps, len(e.sources)) for _, e in exp.points()]
    assert got == [(5.0, 1), (5.0, 4), (20.0, 1), (20.0, 4)]
    # every point is its own cell
    keys = {cell_key(e, p, e.models[0], e.strategies[0]) for p, e in exp.points()}
    assert len(keys) == 4


def test_a_single_stream_cell_keeps_the_key_it_had_before_load_scenarios(tmp_path):
    """Results stored before load scenarios existed are still found by --resume: the key's
    definition, as it was before them, pinned here (serving as it was then: without
    max_connections, which came later and is left out of keys)."""
    import hashlib

    exp = exp_with(tmp_path, "load: {scenario: single-stream}\n")
    m, s = exp.models[0], exp.strategies[0]
    defn = {"point": {}, "model": m.to_dict(), "strategy": s.to_dict(), "topology": exp.topology.to_dict(),
            "requests": exp.requests.to_dict(), "codec": exp.codec, "source": exp.source,
            "serving": {"connection": exp.serving.connection, "threads": "auto", "pace": True}}
    digest = hashlib.sha256(json.dumps(defn, sort_keys=True, default=str).encode()).hexdigest()[:10]
    assert cell_key(exp, {}, m, s) == f"efficientnet_lite0/edge/{digest}"
    loaded = exp_with(tmp_path, "load: {scenario: multi-stream, concurrency: 1}\n")
    assert cell_key(loaded, {}, m, s) != cell_key(exp, {}, m, s)


@pytest.mark.parametrize("extra, message", [
    ("load: {scenario: server}\n", "load: the server scenario needs qps, or slo"),
    ("load: {scenario: server, qps: 0}\n", "load.qps: 0 is not a request rate"),
    ("load: {scenario: server, qps: 10, concurrency: 2}\n", "load.concurrency: the server scenario does not take concurrency"),
    ("load: {scenario: multi-stream}\n", "load: the multi-stream scenario needs concurrency"),
    ("load: {scenario: multi-stream, concurrency: 2, sources: 3}\n",
     "load.concurrency: 2 requests in flight cannot keep 3 sources busy"),
    ("load: {scenario: offline, duration: 1s}\n", "load.duration: the offline scenario does not take duration"),
    ("load: {scenario: single-stream, seed: 1}\n", "load.seed: the single-stream scenario does not take seed"),
    ("load: {scenario: burst}\n", "load.scenario: 'burst' is not a scenario"),
    ("load: {scenario: server, qps: 5, sources: [mobile1, cloud9]}\n", "load.sources[1]: unknown host 'cloud9'"),
    ("load: {scenario: server, qps: 5, sources: 9}\n", "load.sources: 9 is out of range"),
    ("load: {scenario: server, qps: 5, sources: 2}\nsource: mobile1\n", "load.sources: set with source"),
    ("load: {scenario: server, qps: 5, duration: 3s}\nrequests: {repeat: 10}\n", "load.duration: set with requests.repeat"),
    ("load: {scenario: server, qps: 5, slo: {p95: 10ms}}\n", "load.slo.p95: unknown key"),
    ("load: {scenario: server, qps: 5, slo: {p99: fast}}\n", "load.slo.p99:"),
    ("load: {scenario: server, qps: 5, slo: {}}\n", "load.slo: no target"),
])
def test_bad_load_is_one_line_naming_the_field(tmp_path, extra, message):
    text = load_error(tmp_path, extra)
    assert "\n" not in text and message in text and "allowed:" in text


# ---- arrivals ---------------------------------------------------------------------------------

def test_arrivals_are_reproducible_per_seed_and_stream_and_differ_otherwise():
    a = arrivals(50, seed=1, stream=0, streams=2, count=200)
    assert np.array_equal(a, arrivals(50, seed=1, stream=0, streams=2, count=200))
    assert not np.array_equal(a, arrivals(50, seed=2, stream=0, streams=2, count=200))
    assert not np.array_equal(a, arrivals(50, seed=1, stream=1, streams=2, count=200))
    assert np.all(np.diff(a) > 0)


def test_arrivals_are_poisson_at_the_streams_share_of_the_rate():
    gaps = np.diff(arrivals(400, seed=3, stream=1, streams=4, count=5000), prepend=0.0)
    rate = 400 / 4
    assert abs(gaps.mean() * rate - 1) < 0.05
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 0.01
    # a rate of the wrong value is rejected by the same test (it can fail)
    assert stats.kstest(gaps, "expon", args=(0, 1 / (1.3 * rate))).pvalue < 0.01


def test_arrivals_over_a_duration_stop_before_it_and_count_about_rate_times_duration():
    times = arrivals(1000, seed=0, duration_s=10.0)     # drawn in several chunks
    assert times[-1] < 10.0 and abs(len(times) - 10_000) < 4 * 100
    assert np.array_equal(times[:4096], arrivals(1000, seed=0, count=4096))


def test_requests_are_shared_out_exactly():
    assert [share(10, s, 4) for s in range(4)] == [3, 3, 2, 2]
    seqs = sorted(k * 4 + s for s in range(4) for k in range(share(10, s, 4)))
    assert seqs == list(range(10))


@pytest.mark.parametrize("cfg, message", [
    (LoadConfig("server", count=5), "server needs --qps"),
    (LoadConfig("multi-stream", concurrency=1, streams=2, count=5), "at least --streams"),
    (LoadConfig("offline", concurrency=2, duration_s=1.0), "offline sends a number of requests"),
    (LoadConfig("server", qps=1.0), "give --requests or --duration"),
])
def test_generator_config_refuses_what_it_cannot_run(cfg, message):
    with pytest.raises(ValueError, match=message):
        cfg.check()


# ---- figures ----------------------------------------------------------------------------------

def _row(seq, e2e, status="ok", due=0.0, queue=0.0, late=0.0):
    return RequestRow(seq=seq, input_index=0, status=status, e2e_ms=e2e if status == "ok" else None,
                      due_ms=due, queue_ms=queue if status == "ok" else None, late_ms=late)


def test_a_percentile_that_lands_on_a_failed_request_has_no_value():
    lat = [float(v) for v in range(1, 100)] + [None]      # 99 answers, one timeout
    assert tail_percentile(lat, 50) == 50.0
    assert tail_percentile(lat, 99) == 99.0
    assert tail_percentile(lat, 99.9) is None


def test_figures_rates_queue_share_and_slo():
    load = Load("server", 10.0, None, (), 2000.0, 0, (("p50", 20.0), ("p99", 20.0)))
    rows = [_row(k, 10.0 + k, due=100.0 * k, queue=5.0) for k in range(19)] + [_row(19, None, "timeout", due=1900.0)]
    f = figures(load, rows, [{"workers": 3}, {"workers": 2}])
    assert f["offered_qps"] == pytest.approx(20 / 2.0)                  # 20 requests in the 2 s window
    assert f["throughput_rps"] == pytest.approx(19 / 2.0)      # answers over the window (the last ends sooner)
    assert f["latency_ms"]["p50"] == 19.0 and f["latency_ms"]["p99"] is None
    assert f["queue_share"] == pytest.approx(5 * 19 / sum(10.0 + k for k in range(19)))
    assert f["slo"]["p50"]["met"] is True
    # the 99th percentile lands on the timeout; even its interval's low end (the 19th of 20) misses
    assert f["slo"]["p99"] == {"target_ms": 20.0, "measured_ms": None, "ci_ms": [28.0, None], "met": False,
                               "sure": True}
    assert f["workers"] == 5 and f["sources"] == 2


# ---- the generator against a real server ------------------------------------------------------

@pytest.fixture
def one_part_server(tmp_path):
    from tests.tiny import tiny_artifact
    from tests.unit.test_serving import Servers
    from workloads.serving import save_inputs

    art, ref, _ = tiny_artifact(tmp_path / "a", parts=1)
    xs = [np.random.default_rng(i).standard_normal((1, 4)).astype(np.float32) for i in range(3)]
    inputs = tmp_path / "in.npz"
    save_inputs(str(inputs), [{"X": x} for x in xs], [ref(x) for x in xs])
    servers = Servers()
    try:
        port, _ = servers.start(art, 0, "edge")
        yield port, inputs
    finally:
        servers.stop()


def _generate(port, inputs, *args) -> list[dict]:
    p = subprocess.run([sys.executable, "-m", "workloads.loadgen", "--target", f"127.0.0.1:{port}",
                        "--inputs", str(inputs), "--host", "m", *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


@pytest.mark.parametrize("args, inflight", [
    (["--scenario", "server", "--qps", "200", "--requests", "100", "--seed", "4"], None),
    (["--scenario", "multi-stream", "--concurrency", "3", "--requests", "60"], 3),
    (["--scenario", "offline", "--concurrency", "4", "--requests", "40"], 4),
])
def test_every_scheduled_request_is_answered_and_traced_from_its_due_time(one_part_server, args, inflight):
    port, inputs = one_part_server
    lines = _generate(port, inputs, *args)
    hello, *reqs, done = lines
    assert hello["hello"] and done["done"]
    count = int(args[args.index("--requests") + 1])
    assert sorted(r["seq"] for r in reqs) == list(range(count)) and done["sent"] == count
    assert all(r["status"] == "ok" and r["match"] for r in reqs)
    for r in reqs:
        client = r["trace"][0]
        assert client["due"] <= client["start"] and r["source"] == "m"
    if inflight is not None:
        assert done["workers"] == inflight
    if args[1] == "server":      # the schedule is the seeded one
        want = arrivals(200, seed=4, count=100) * 1000
        got = np.array(sorted(r["due_ms"] for r in reqs))
        assert np.allclose(got, want, atol=1e-3)
    if args[1] == "offline":
        assert all(r["due_ms"] == 0.0 for r in reqs)


def test_a_stream_sends_only_its_share_with_its_own_sequence_numbers(one_part_server):
    port, inputs = one_part_server
    _, *reqs, done = _generate(port, inputs, "--scenario", "server", "--qps", "100", "--requests", "10",
                               "--stream", "1", "--streams", "3")
    assert sorted(r["seq"] for r in reqs) == [1, 4, 7] and done["sent"] == 3


def test_the_percentile_interval_covers_the_true_percentile_about_95_times_in_100():
    rng = np.random.default_rng(0)
    true_p90 = -np.log(0.1) * 10        # exponential with mean 10
    covered = 0
    for _ in range(400):
        lo, hi = percentile_ci(list(rng.exponential(10, size=200)), 90)
        covered += lo <= true_p90 <= hi
    assert 0.92 <= covered / 400 <= 0.99


def test_a_verdict_is_unsure_when_the_interval_straddles_the_target():
    lat = [float(v) for v in range(1, 201)]         # p50 = 100
    assert slo_verdict(lat, 50, 101.0)["met"] and not slo_verdict(lat, 50, 101.0)["sure"]
    assert slo_verdict(lat, 50, 150.0)["sure"] and slo_verdict(lat, 50, 60.0) == {
        "target_ms": 60.0, "measured_ms": 100.0, "ci_ms": slo_verdict(lat, 50, 60.0)["ci_ms"], "met": False, "sure": True}
    assert slo_verdict(lat[:20], 99, 1000.0)["sure"] is False      # 20 requests cannot bound a p99 from above


# ---- the search for the highest rate that meets the targets ----------------------------------

@pytest.mark.parametrize("capacity", [0.7, 3.3, 37.3, 512.0])
def test_the_search_brackets_the_capacity_within_its_precision(capacity):
    r = search_rate(lambda q: q <= capacity, 10.0)
    assert r.best is not None and r.above is not None
    assert r.best <= capacity < r.above and r.above / r.best <= 1.05
    assert len(r.steps) <= 12 and [ok for q, ok in r.steps] == [q <= capacity for q, _ in r.steps]


def test_a_search_where_nothing_meets_the_target_says_so():
    r = search_rate(lambda q: False, 10.0)
    assert r.best is None and r.above == SEARCH_MIN_QPS


def test_a_search_that_never_misses_stops_at_its_step_budget():
    r = search_rate(lambda q: True, 10.0)
    assert r.above is None and r.best == pytest.approx(10.0 * 2 ** 11, rel=0.01) and len(r.steps) == 12
    assert all(float(f"{q:.3g}") == q for q, _ in r.steps)        # rates that read well as labels


def test_searching_starts_at_one_request_per_tightest_target(tmp_path):
    exp = exp_with(tmp_path, "load: {scenario: server, slo: {p50: 20ms, p99: 250ms}, duration: 2s}\n")
    assert exp.load.searching and exp.load.qps is None and start_rate(exp.load) == 50.0
    assert not exp_with(tmp_path, "load: {scenario: server, qps: 5, slo: {p99: 1s}}\n").load.searching


# ---- `source` first in a placement: part 0 on every source host -------------------------------

SPLIT = "  - {name: me, operators: [{partition: {cut: auto}}], placement: [source, edge]}\n"


def test_source_first_in_a_placement_deploys_part_0_on_every_source(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(BASE + SPLIT + "load: {scenario: server, qps: 5, sources: 3}\n")
    exp = load_experiment(path, (), **BUDGET)
    me = exp.strategy("me")
    assert me.placement == ("source", "edge") and exp.per_source(me)
    assert exp.deployment(me) == [("mobile1", 0), ("mobile2", 0), ("mobile3", 0), ("edge", 1)]
    assert exp.deployment(exp.strategy("edge")) == [("edge", 0)]
    assert {h: [i for _, i, _ in parts] for h, parts in exp.parts_by_host().items()} == {
        "edge": [0, 1], "mobile1": [0], "mobile2": [0], "mobile3": [0]}
    single = load_experiment(path, (("load", "{scenario: single-stream}"), ("source", "mobile2")), **BUDGET)
    assert single.deployment(single.strategy("me")) == [("mobile2", 0), ("edge", 1)]


@pytest.mark.parametrize("strategy, extra, message", [
    ("[edge, source]", "", "strategies[1].placement[1]: 'source' (each request's source host) can only come first"),
    ("[source, cloud]", "", "strategies[1].placement: the source mobile1 and cloud are not linked"),
    ("[source, edge]", "source: edge\n", "strategies[1].placement: the source edge is also one of its hosts"),
    ("[source, edge]", "source: client\n", "strategies[1].placement: 'source' runs part 0 on the source host, but "
                                          "the source is client"),
])
def test_source_in_a_placement_is_checked_against_every_source(tmp_path, strategy, extra, message):
    path = tmp_path / "exp.yaml"
    path.write_text(BASE + f"  - {{name: me, operators: [{{partition: {{cut: auto}}}}], placement: {strategy}}}\n"
                    + extra)
    with pytest.raises(ExperimentError) as info:
        load_experiment(path, (), **BUDGET)
    assert message in str(info.value) and "\n" not in str(info.value)
