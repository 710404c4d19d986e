"""Traces in the experiment file (``links.<a-b>[.forward|.reverse].trace``, ``trace_mode``,
``trace_window``), ``requests.duration``, the cell key, and the per-hop link state a traced
cell records (CellExecution.link_state on real replays driven by a fake clock)."""
from __future__ import annotations

import pytest

from emulation.replay import Replay
from testbed.experiment import load_experiment_dict
from testbed.runner import CellExecution, cell_key
from topologies.traces import load_trace
from tests.unit.test_experiment import BASE, error, load, write
from tests.unit.test_replay import T0, FakeClock

STEPS = "time,bandwidth,delay\n0s,50Mbit,10ms\n1s,5Mbit,40ms\n2s\n"
MAHIMAHI = "\n".join(["1"] * 50 + ["100"] + ["150", "200"]) + "\n"


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "steps.csv").write_text(STEPS)
    (tmp_path / "traces" / "other.csv").write_text("0s,20Mbit\n500ms,2Mbit\n1s\n")
    (tmp_path / "traces" / "mm.trace").write_text(MAHIMAHI)
    return tmp_path


def exp_with(folder, links: str, requests: str = "") -> str:
    return write(folder, BASE + links + requests)


def test_a_link_trace_covers_both_directions_and_a_direction_may_have_its_own(folder):
    exp = load(exp_with(folder, "links:\n  mobile-edge: {trace: traces/steps.csv, trace_mode: loop}\n"
                                "  edge-cloud: {reverse: {trace: traces/other.csv}}\n"))
    assert [(t.label, t.mode, t.file) for t in exp.traces] == [
        ("mobile-edge forward", "loop", str(folder / "traces" / "steps.csv")),
        ("mobile-edge reverse", "loop", str(folder / "traces" / "steps.csv")),
        ("edge-cloud reverse", "once", str(folder / "traces" / "other.csv"))]
    assert [s.rate_bps for s in exp.traces[0].trace.steps] == [50_000_000, 5_000_000]
    # a direction's own value wins over the link's
    exp = load(exp_with(folder, "links:\n  mobile-edge: {trace: traces/steps.csv, trace_mode: loop,"
                                " forward: {trace: traces/other.csv, trace_mode: once}}\n"))
    assert [(t.label, t.mode, t.file.rsplit("/", 1)[1]) for t in exp.traces] == [
        ("mobile-edge forward", "once", "other.csv"), ("mobile-edge reverse", "loop", "steps.csv")]


def test_a_mahimahi_trace_takes_its_window(folder):
    exp = load(exp_with(folder, "links:\n  mobile-edge: {forward: {trace: traces/mm.trace, trace_window: 50ms}}\n"))
    [t] = exp.traces
    assert t.window_ms == 50.0 and t.trace.format == "mahimahi"
    assert t.trace == load_trace(folder / "traces" / "mm.trace", window_ms=50.0)
    assert t.trace != load_trace(folder / "traces" / "mm.trace")    # the default window, 100 ms, differs


@pytest.mark.parametrize("links, tail", [
    ("  mobile-edge: {trace: traces/none.csv}\n",
     "links.mobile-edge.trace: {dir}/traces/none.csv: no such trace file; allowed: a CSV or Mahimahi trace file"),
    ("  mobile-edge: {trace: traces/steps.csv, trace_mode: forever}\n",
     "links.mobile-edge.trace_mode: 'forever' is not a trace mode; allowed: once (the last step stays in force) "
     "| loop (the trace repeats; it needs an end line)"),
    ("  mobile-edge: {trace_mode: loop}\n",
     "links.mobile-edge.trace_mode: set without a trace for mobile-edge forward; allowed: a CSV or Mahimahi trace "
     "file relative to the experiment file, e.g. {trace: traces/walk.csv, trace_mode: loop, trace_window: 100ms}"),
    ("  mobile-edge: {trace: traces/steps.csv, trace_window: 50ms}\n",
     "links.mobile-edge.trace_window: traces/steps.csv is a CSV trace: trace_window is for Mahimahi traces; "
     "allowed: trace_window only with a Mahimahi trace (one millisecond timestamp per line)"),
    ("  mobile-edge: {trace: traces/mm.trace, trace_window: 1ms}\n",
     "links.mobile-edge.trace_window: 1ms is out of range; allowed: a duration from 10ms to 10s, e.g. 100ms"),
    ("  mobile-cloud: {trace: traces/steps.csv}\n",
     "links.mobile-cloud.trace: unknown link 'mobile-cloud'; allowed: links mobile-edge, edge-cloud"),
    ("  edge-mobile: {forward: {trace: traces/steps.csv}}\n",
     "links.edge-mobile.forward.trace: forward/reverse are relative to the link as defined, mobile-edge; "
     "allowed: links.mobile-edge.forward.trace"),
    ("  mobile-edge: {trace: 5}\n",
     "links.mobile-edge.trace: expected a string, got a number; allowed: a CSV or Mahimahi trace file relative "
     "to the experiment file, e.g. {trace: traces/walk.csv, trace_mode: loop, trace_window: 100ms}"),
])
def test_a_bad_trace_is_one_line_at_its_place(folder, links, tail):
    path = exp_with(folder, "links:\n" + links)
    text = error(path)
    assert text.startswith(f"{path}:") and "\n" not in text
    assert text.split(": ", 1)[1] == tail.replace("{dir}", str(folder)), text


def test_a_problem_inside_the_trace_file_names_its_line(folder):
    (folder / "traces" / "bad.csv").write_text("0s,50Mbit\n2s,5Mbit\n1s,7Mbit\n")
    text = error(exp_with(folder, "links:\n  mobile-edge: {trace: traces/bad.csv}\n"))
    assert f"links.mobile-edge.trace: {folder}/traces/bad.csv:3: " in text and "\n" not in text


def test_the_links_jitter_above_a_traced_delay_is_refused_at_load_time(folder):
    """A trace without a jitter column keeps the link's: a traced delay below it cannot be applied."""
    (folder / "traces" / "d.csv").write_text("time,bandwidth,delay\n0s,50Mbit,10ms\n1s,5Mbit,2ms\n")
    text = error(exp_with(folder, "links:\n  mobile-edge: {delay: 20ms, jitter: 5ms, trace: traces/d.csv}\n"))
    assert text.endswith("links.mobile-edge.trace: " + str(folder / "traces" / "d.csv") + ":3: jitter 5ms above "
                         "the delay 2ms of mobile-edge forward; allowed: jitter at most the delay"), text


def test_a_sweep_over_trace_files_makes_one_point_each_and_checks_every_file(folder):
    path = exp_with(folder, "links:\n  mobile-edge: {trace: traces/steps.csv}\n"
                            "sweep:\n  links.mobile-edge.trace: [traces/steps.csv, traces/other.csv]\n")
    exp = load(path)
    files = [[t.file.rsplit("/", 1)[1] for t in at.traces] for _, at in exp.points()]
    assert files == [["steps.csv", "steps.csv"], ["other.csv", "other.csv"]]
    keys = {cell_key(at, p, at.models[0], at.strategies[0]) for p, at in exp.points()}
    assert len(keys) == 2
    bad = exp_with(folder, "sweep:\n  links.mobile-edge.trace: [traces/steps.csv, traces/gone.csv]\n")
    assert "sweep.links.mobile-edge.trace[1]: " in error(bad) and "gone.csv: no such trace file" in error(bad)


def test_a_cells_key_changes_with_its_trace_and_stays_without_one(folder):
    plain = load(exp_with(folder, ""))
    traced = load(exp_with(folder, "links:\n  mobile-edge: {trace: traces/steps.csv}\n"))
    looped = load(exp_with(folder, "links:\n  mobile-edge: {trace: traces/steps.csv, trace_mode: loop}\n"))
    keys = [cell_key(e, {}, e.models[0], e.strategies[0]) for e in (plain, traced, looped)]
    assert len(set(keys)) == 3
    assert plain.traces == () and "links" not in plain.to_dict()
    (folder / "traces" / "steps.csv").write_text(STEPS.replace("5Mbit", "6Mbit"))   # the file's steps count
    again = load(exp_with(folder, "links:\n  mobile-edge: {trace: traces/steps.csv}\n"))
    assert cell_key(again, {}, again.models[0], again.strategies[0]) != keys[1]


def test_to_dict_keeps_the_traces_and_loads_back_equal(folder):
    exp = load(exp_with(folder, "links:\n  mobile-edge: {forward: {trace: traces/mm.trace, trace_window: 50ms}}\n",
                        "requests: {duration: 30s}\n"))
    again = load_experiment_dict(exp.to_dict(), cores=2, memory_bytes=24 << 30)
    assert again == exp and again.traces[0].window_ms == 50.0 and again.requests.duration_ms == 30_000.0


def test_requests_duration_replaces_repeat(folder):
    exp = load(exp_with(folder, "", "requests: {warmup: 2, duration: 30s}\n"))
    assert exp.requests.duration_ms == 30_000.0 and exp.duration_ms() == 30_000.0
    assert exp.to_dict()["requests"] == {"warmup": 2, "inputs": 10, "timeout": "120s", "duration": "30s"}
    plain = load(exp_with(folder, ""))
    assert plain.duration_ms() is None and "duration" not in plain.to_dict()["requests"]
    # a cell's key: unchanged for cells without it (stores of earlier runs resume), another with it
    assert cell_key(plain, {}, plain.models[0], plain.strategies[0]) != cell_key(exp, {}, exp.models[0],
                                                                                  exp.strategies[0])


@pytest.mark.parametrize("requests, tail", [
    ("requests: {repeat: 5, duration: 30s}\n",
     "requests.duration: set with requests.repeat: a cell measures either a number of requests or a duration; "
     "allowed: one of requests.duration and requests.repeat"),
    ("requests: {duration: 0s}\n",
     "requests.duration: 0ms is out of range; allowed: a duration above 0 and at most 3600s, e.g. 30s"),
    ("requests: {duration: 30}\n",
     "requests.duration: '30' needs a unit, e.g. 30ms; allowed: a duration above 0 and at most 3600s, e.g. 30s"),
    ("requests: {duration: 30s}\nload: {scenario: multi-stream, concurrency: 2}\n",
     "requests.duration: the multi-stream scenario measures for load.duration; allowed: load.duration with the "
     "multi-stream scenario (requests.duration: single-stream)"),
])
def test_a_bad_duration_is_one_line(folder, requests, tail):
    text = error(exp_with(folder, "", requests))
    assert text.split(": ", 1)[1].startswith(tail), text


# ---- the link state a traced cell gives each hop ------------------------------------------

def _replay(exp, label: str, clock: FakeClock, upto_ms: float) -> Replay:
    t = next(t for t in exp.traces if t.label == label)
    rp = Replay(t.trace, lambda step: "fast", clock=clock, sleep=clock.sleep)
    rp.run(T0, until_ns=T0 + round(upto_ms * 1e6))
    return t, rp


def test_each_hop_gets_the_state_in_force_on_the_traced_directions_it_crosses(folder):
    exp = load(exp_with(folder, "links:\n  mobile-edge: {forward: {trace: traces/steps.csv}}\n"
                                "  edge-cloud: {forward: {trace: traces/other.csv}}\n"))
    cell = CellExecution(None, exp, None, None, {}, 2.0)
    clock = FakeClock()
    cell.replays = {("mobile-edge", "forward"): _replay(exp, "mobile-edge forward", clock, 1500),
                    ("edge-cloud", "forward"): _replay(exp, "edge-cloud forward", FakeClock(), 1500)}
    cell.trace_t0 = T0
    ms = 1_000_000
    # mobile -> edge at 0.5 s: the first step (50 Mbit/s, 10 ms); at 1.2 s the second (5 Mbit/s, 40 ms)
    assert cell.link_state("mobile", "edge", T0 + 500 * ms) == {
        "trace_at_ms": 500.0, "trace_link": "mobile-edge forward", "trace_bandwidth_bps": 50_000_000,
        "trace_delay_ms": 10.0}
    assert cell.link_state("mobile", "edge", T0 + 1200 * ms)["trace_bandwidth_bps"] == 5_000_000
    # mobile -> cloud crosses both traced directions: the lowest rate, the delays summed (other.csv
    # has no delay column: edge-cloud keeps its own, 0 in three_tier)
    both = cell.link_state("mobile", "cloud", T0 + 700 * ms)
    assert both == {"trace_at_ms": 700.0, "trace_link": "mobile-edge forward, edge-cloud forward",
                    "trace_bandwidth_bps": 2_000_000, "trace_delay_ms": 10.0}
    # the reverse directions are not traced; a hop inside one host crosses no link
    assert cell.link_state("edge", "mobile", T0 + 500 * ms) == {}
    assert cell.link_state("edge", "edge", T0 + 500 * ms) == {}
    # before the first step was in force: the trace's first state (taken before the warm-up)
    assert cell.link_state("mobile", "edge", T0 - 5 * ms)["trace_bandwidth_bps"] == 50_000_000
