"""``partition: {cut: fastest}`` (testbed.fastest): its validation, the candidate cuts of a
real graph, the expansion of a fastest strategy into one artifact per candidate, and the
choice per sweep point. The artifacts are real: fmnist_cnn prepared into the artifact cache
(a test cache whose entries are the user's cache's, but whose profiles are its own). Only the
tests of the choosing logic write profiles, with compute times constructed so that the
winner at each bandwidth is known (tests/integration/test_fastest.py measures them)."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from testbed import fastest
from testbed import profile as prof
from testbed.experiment import ArtifactNeed, ExperimentError, load_experiment_dict
from workloads.cache import Cache, default_root
from workloads.errors import WorkloadError

GiB = 1 << 30
ME = "links.mobile-edge.bandwidth"
FASTEST = {"name": "me-fastest", "operators": [{"partition": {"cut": "fastest"}}], "placement": ["mobile", "edge"]}
AUTO = {"name": "me-auto", "operators": [{"partition": {"cut": "auto"}}], "placement": ["mobile", "edge"]}
# fmnist_cnn's candidates (valid cuts: 12, more than 8): auto's, and the fewest bytes in each of 7 FLOPs bins
EARLY, MIDDLE, LATE = ("/stage1/stage1.3/MaxPool_output_0", "/stage2/stage2.3/MaxPool_output_0",
                       "/head/head.1/Gemm_output_0")


def _load(strategies, **extra):
    data = {"name": "f", "topology": "three_tier", "models": ["fmnist_cnn"], "source": "mobile",
            "strategies": strategies, "requests": {"warmup": 1, "repeat": 5, "inputs": 2}, **extra}
    return load_experiment_dict(data, [], cores=2.0, memory_bytes=24 * GiB, source="<test>", base_dir=Path("."))


@pytest.fixture
def cache(tmp_path):
    """A cache that shares the user's prepared models and artifacts (content-keyed, so
    sharing them is safe) but keeps its own profiles."""
    real, mine = default_root(), tmp_path / "cache"
    mine.mkdir()
    for kind in ("artifacts", "checkpoints", "datasets", "evaluations", "models", "trained", "weights"):
        (real / kind).mkdir(parents=True, exist_ok=True)
        (mine / kind).symlink_to(real / kind)
    return Cache(mine)


def _cut(need: ArtifactNeed):
    return next(c.get("cut") for c in need.operators if c.name == "partition")


# ---- validation ----------------------------------------------------------------------------

def test_fastest_is_accepted_for_two_hosts_and_kept_in_the_chain():
    exp = _load([FASTEST])
    (s,) = exp.strategies
    assert fastest.is_fastest(s) and s.operators[0].get("cut") == "fastest"
    assert not fastest.is_fastest(_load([AUTO]).strategies[0])


@pytest.mark.parametrize("strategy,says", [
    ({**FASTEST, "operators": [{"partition": {"cut": ["auto", "fastest"]}}], "placement": ["mobile", "edge", "cloud"]},
     "fastest alone"),
    ({**FASTEST, "placement": ["mobile", "edge", "cloud"]}, "for a placement on two hosts, not 3"),
    ({**FASTEST, "operators": [{"early_exit": {"threshold": 0.8}}, {"partition": {"cut": "fastest"}}]},
     "after early_exit heads is not supported"),
])
def test_misuse_of_fastest_is_one_line_naming_the_field(strategy, says):
    with pytest.raises(ExperimentError) as e:
        _load([strategy])
    text = str(e.value)
    assert says in text and "strategies[0]" in text and "\n" not in text


def test_fastest_after_skipped_blocks_or_quantize_is_accepted():
    exp = _load([{**FASTEST, "operators": ["quantize", {"partition": {"cut": "fastest"}}]}])
    assert fastest.is_fastest(exp.strategies[0])


def test_building_one_artifact_with_cut_fastest_says_to_give_the_tensor(cache):
    from workloads.operators import parse_chain
    from workloads.prepare import prepare

    with pytest.raises(WorkloadError, match="give the cut's tensor") as e:
        prepare("fmnist_cnn", parse_chain([{"partition": {"cut": "fastest"}}], "t"), parts=2, cache=cache)
    assert "\n" not in str(e.value)


# ---- candidates ----------------------------------------------------------------------------

@pytest.fixture
def fmnist_graph(cache):
    from workloads import graph
    from workloads.prepare import prepare

    return graph.analyze(onnx.load(str(prepare("fmnist_cnn", (), cache=cache).path / "seg0.onnx")))


def test_candidates_are_autos_cut_and_the_fewest_bytes_per_flops_bin(fmnist_graph):
    info = fmnist_graph
    assert len(info.cuts) == 12
    picked = fastest.pick(info, "fmnist_cnn")
    assert [c.tensor for c in picked] == [EARLY, MIDDLE, LATE]
    assert [c.auto for c in picked] == [False, True, False]
    assert [c.bytes for c in picked] == [info.cut(t).bytes for t in (EARLY, MIDDLE, LATE)]
    # every cut of the graph when it has no more than the limit
    assert [c.index for c in fastest.pick(info, "fmnist_cnn", limit=12)] == list(range(12))
    # one bin: the fewest bytes of all (the first 512 B cut), and auto's
    assert [c.tensor for c in fastest.pick(info, "fmnist_cnn", limit=2)] == [MIDDLE, LATE]


def test_a_fastest_strategy_needs_one_artifact_per_candidate_and_each_parts_on_its_host(cache):
    exp = _load([FASTEST, AUTO])
    needs = exp.artifacts_needed(cache=cache)
    assert [_cut(n) for n in needs] == [EARLY, MIDDLE, LATE, "auto"]
    assert all(n.parts == 2 for n in needs)
    by_host = exp.parts_by_host(cache=cache)
    assert [(_cut(n), i, name) for n, i, name in by_host["mobile"]][:3] == [
        (t, 0, f"me-fastest, cut {t}") for t in (EARLY, MIDDLE, LATE)]
    assert {(_cut(n), i) for n, i, _ in by_host["edge"]} == {(t, 1) for t in (EARLY, MIDDLE, LATE, "auto")}
    labels = [p.label for p in prof.parts_on_hosts(exp, cache=cache) if p.host == "mobile"]
    assert labels[0] == f"fmnist_cnn [me-fastest, cut {EARLY}] part 1/2"


def test_without_building_unknown_candidates_leave_the_fastest_need_as_written(tmp_path):
    exp = _load([FASTEST])
    (need,) = exp.artifacts_needed(cache=Cache(tmp_path / "empty"), build=False)
    assert _cut(need) == "fastest"
    assert not (tmp_path / "empty" / "artifacts").exists()      # nothing was built


# ---- the choice ----------------------------------------------------------------------------

MOBILE_MS, EDGE_MS, FIXED_MS = 8.0, 1.0, 0.05     # per model's FLOPs; per part


def _constructed_profiles(exp, cache):
    """Profiles made up for the choosing logic: part 0 on mobile takes MOBILE_MS x the FLOPs
    fraction before the cut, part 1 on edge EDGE_MS x the rest (+ FIXED_MS each)."""
    fraction = {c.tensor: c.fraction for c in fastest.candidates(exp.models[0], exp.strategies[0].operators,
                                                                 cache=cache)}
    made = {}
    for p in prof.parts_on_hosts(exp, cache=cache):
        f = fraction[_cut(p.need)]
        ms = (MOBILE_MS * f if p.part == 0 else EDGE_MS * (1 - f)) + FIXED_MS
        folder = prof.artifact_folder(p.need, cache)
        prof.save(p, folder, {"artifact": folder.name, "p50_ms": ms, "p90_ms": ms * 1.2, "measured_at": "test"},
                  cache=cache)
        made[(_cut(p.need), p.part)] = ms
    zero = {"gap_ms": 1.0, "p10_ms": 0.0, "p50_ms": 0.0, "p90_ms": 0.0, "mean_ms": 0.0}     # links: their arithmetic only
    prof.save_links({"version": prof.PROFILE_VERSION, "machine": prof.machine(), "netem": False, "measured_at": "test",
                     "classes": {c: {"warm": zero, "idle": zero} for c in ("line", "plain")}}, cache=cache, replace=True)
    return made


def test_constructed_profiles_choose_the_late_cut_on_a_slow_link_and_the_early_one_on_a_fast_link(cache):
    from testbed.artifacts import prepare_all

    exp = _load([FASTEST], sweep={ME: ["1Mbit", "1Gbit"]})
    prepare_all(exp.artifacts_needed(cache=cache), cache=cache)
    made = _constructed_profiles(exp, cache)
    choices, why_not = fastest.preview(exp, cache)
    assert why_not is None
    chosen = {p: choices[fastest.choice_key({ME: p}, exp.models[0], "me-fastest")] for p in ("1Mbit", "1Gbit")}
    # 1 Mbit/s: 12.5 kB cost ~100 ms on the wire, the 512 B cut ~8 ms more mobile compute
    assert chosen["1Mbit"][1]["cut"] == LATE and chosen["1Gbit"][1]["cut"] == EARLY
    for point, (strategy, why) in chosen.items():
        assert strategy.name == "me-fastest" and strategy.operators[0].get("cut") == why["cut"]
        assert [c["tensor"] for c in why["candidates"]] == [EARLY, MIDDLE, LATE]
        assert why["p50_ms"] == min(c["p50_ms"] for c in why["candidates"])
        for c in why["candidates"]:
            assert c["compute_ms"] == pytest.approx(made[(c["tensor"], 0)] + made[(c["tensor"], 1)])
            assert c["p50_ms"] == pytest.approx(c["compute_ms"] + c["transmission_ms"] + c["overhead_ms"])
        # more bytes across the cut, longer on the wire
        tx = {c["bytes"]: c["transmission_ms"] for c in why["candidates"]}
        assert tx[12544] > tx[6272] > tx[512]


def test_the_plan_row_of_a_fastest_strategy_is_its_best_candidate_and_the_dry_run_shows_the_cut(cache):
    from testbed.artifacts import prepare_all
    from testbed.estimate import estimate
    from testbed.plan import make_plan, parse_grid

    exp = _load([FASTEST, AUTO], sweep={ME: ["1Mbit", "1Gbit"]})
    prepare_all(exp.artifacts_needed(cache=cache), cache=cache)
    _constructed_profiles(_load([FASTEST], sweep={ME: ["1Mbit", "1Gbit"]}), cache)
    auto = exp.strategies[1]
    for p in prof.parts_on_hosts(exp, cache=cache, only=lambda m, s: s == auto):
        folder = prof.artifact_folder(p.need, cache)
        prof.save(p, folder, {"p50_ms": 1.0, "p90_ms": 1.0, "measured_at": "test"}, cache=cache)
    plan = make_plan(exp, [parse_grid(f"{ME}=1Mbit,1Gbit")], cache=cache)
    rows = {(r["point"][ME], r["strategy"]): r for r in plan.rows}
    assert rows[("1Mbit", "me-fastest")]["cut"] == LATE and rows[("1Gbit", "me-fastest")]["cut"] == EARLY
    for point in ("1Mbit", "1Gbit"):
        row = rows[(point, "me-fastest")]
        assert row["p50_ms"] == row["choice"]["p50_ms"] and "cut" not in rows[(point, "me-auto")]
    cells, _total, unknown = estimate(exp, set(), cache=cache)
    assert unknown == 0
    assert [(c.point[ME], c.strategy, c.cut) for c in cells] == [
        ("1Mbit", "me-fastest", LATE), ("1Mbit", "me-auto", None), ("1Gbit", "me-fastest", EARLY),
        ("1Gbit", "me-auto", None)]


def test_the_plan_finds_the_bandwidths_where_the_fastest_cut_changes(cache, capsys):
    from testbed.artifacts import prepare_all
    from testbed.output import print_plan
    from testbed.plan import make_plan, parse_grid

    exp = _load([FASTEST], sweep={ME: ["1Mbit"]})
    prepare_all(exp.artifacts_needed(cache=cache), cache=cache)
    _constructed_profiles(exp, cache)
    plan = make_plan(exp, [parse_grid(f"{ME}=100kbit..10Gbit:11")], cache=cache)
    cuts = [r["cut"] for r in plan.rows]
    # a slow link sends the fewest bytes, a fast one leaves the least compute on the slow mobile
    assert cuts[0] == LATE and cuts[-1] == EARLY
    changes = plan.cut_crossovers
    assert changes and [c["strategy"] for c in changes] == ["me-fastest"] * len(changes)
    # a chain of changes in order along the axis, from the slowest grid value's cut to the
    # fastest's, through every cut the grid shows; with these profiles MIDDLE wins only between
    # two grid values (100 kbit/s .. 10 Gbit/s in 11: x3.16 a step), and is still found
    assert [c["below"] for c in changes] + [changes[-1]["above"]] == [LATE, MIDDLE, EARLY]
    assert MIDDLE not in cuts
    assert [c["bandwidth_bps"] for c in changes] == sorted(c["bandwidth_bps"] for c in changes)
    # the cut predicted just below each change is the one below, just above it the one above
    for c in changes:
        near = [f"{c['bandwidth_bps'] * f / 1000:.3f}kbit" for f in (0.99, 1.01)]
        beside = make_plan(exp, [parse_grid(f"{ME}={','.join(near)}")], cache=cache)
        assert [r["cut"] for r in beside.rows] == [c["below"], c["above"]], (c, near)
    assert plan.to_dict()["cut_crossovers"] == changes
    print_plan(plan)
    printed = capsys.readouterr().out
    for c in changes:
        assert f"cut change: me-fastest from {c['below']} to {c['above']} at" in printed


def test_without_profiles_the_dry_run_says_what_is_missing_and_chooses_nothing(cache):
    from testbed.estimate import FASTEST as NO_CUT, estimate

    exp = _load([FASTEST], sweep={ME: ["1Mbit", "1Gbit"]})
    choices, why_not = fastest.preview(exp, cache)
    assert choices == {} and "testbed run prepares and profiles what is missing first" in why_not
    cells, _, unknown = estimate(exp, set(), cache=cache)
    assert unknown == 2 and {(c.cut, c.no_estimate) for c in cells} == {(None, NO_CUT)}


def test_the_runner_deploys_the_chosen_cut_under_the_declared_cells_key(cache, tmp_path):
    from testbed.artifacts import prepare_all
    from testbed.runner import Runner, cell_key

    exp = _load([FASTEST], sweep={ME: ["1Mbit", "1Gbit"]})
    prepare_all(exp.artifacts_needed(cache=cache), cache=cache)
    _constructed_profiles(exp, cache)
    runner = Runner(exp, tmp_path / "out", store=None, cache=cache)
    runner.prepare()
    for (point, e), (_, cells) in zip(exp.points(), runner.plan()):
        (c,) = cells
        assert c.key == cell_key(e, point, e.models[0], e.strategies[0])      # the file's strategy
        assert c.declared == e.strategies[0] and c.error is None
        assert c.strategy.operators[0].get("cut") == c.choice["cut"] == {"1Mbit": LATE, "1Gbit": EARLY}[point[ME]]
        assert c.manifest["cuts"] == [c.choice["cut"]]        # the artifact deployed has that cut


def test_a_point_with_unsteady_links_is_refused_for_fastest_in_one_line(cache):
    exp = _load([FASTEST], links={"mobile-edge": {"loss": "1%"}})
    with pytest.raises(fastest.FastestError) as e:
        fastest.resolve(exp, cache=cache)
    assert "link mobile-edge has loss or jitter" in str(e.value) and "\n" not in str(e.value)


def test_ray_refuses_fastest_before_running_anything(tmp_path):
    from testbed.distributed import run_on_ray
    from testbed.runner import Runner, RunError

    with pytest.raises(RunError, match="--executor ray does not choose a cut: fastest"):
        run_on_ray(Runner(_load([FASTEST]), tmp_path, store=None), None)
