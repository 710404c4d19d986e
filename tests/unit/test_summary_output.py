"""The summary a user reads (`testbed results show`, the end of `testbed run`): rendered from a
real store at a given terminal width, the swept values in short form, and `--detail`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from testbed.cli import cli
from testbed.store import CellRecord, HopRow, RequestRow, ResultStore
from testbed.summary import axis_names, host_initials, host_names, point_labels, summarize, value_label

ROOT = Path(__file__).resolve().parents[2]
EC, ME = "links.edge-cloud.bandwidth", "links.mobile-edge.bandwidth"
# strategy -> (placement, metric value); the untransformed model scores 0.78
STRATEGIES = {"mobile": (("mobile",), 0.78), "edge-int8": (("edge",), 0.75),
              "me-partition": (("mobile", "edge"), 0.78)}
# strategy -> the 95 % intervals of the metric and of the loss (baseline - metric)
INTERVALS = {"mobile": ((0.74, 0.82), (0.0, 0.0)), "edge-int8": ((0.71, 0.79), (0.01, 0.05)),
             "me-partition": ((0.74, 0.82), (0.0, 0.0))}
MODELS = ("efficientnet_lite0", "a_model_with_a_rather_long_name")


def _requests(e2e: float, n: int = 4, bad: int = 0) -> list[RequestRow]:
    ok = [RequestRow(seq=i, input_index=i, status="ok", e2e_ms=e2e + i, compute_ms=0.5 * e2e, transmission_ms=0.4 * e2e,
                     serialization_ms=0.05 * e2e, overhead_ms=0.05 * e2e, bytes_sent=600_000 + i,
                     output_match=i != 0) for i in range(n)]
    return ok + [RequestRow(seq=n + i, input_index=0, status="timeout", error="no answer") for i in range(bad)]


def _hops(placement: tuple[str, ...], e2e: float, n: int = 4) -> list[HopRow]:
    """Compute on each host of the placement, the links between them and the way back."""
    out = []
    for s in range(n):
        path = ("mobile",) + tuple(h for h in placement if h != "mobile")
        idx = 0
        for a, b in zip(path, path[1:]):
            out.append(HopRow(seq=s, idx=idx, kind="link", src=a, dst=b, direction="request", ms=0.3 * e2e,
                              bytes=600_000))
            idx += 1
        for h in placement:
            out.append(HopRow(seq=s, idx=idx, kind="compute", src=h, dst=h, direction="request",
                              ms=0.5 * e2e / len(placement)))
            idx += 1
        if path[-1] != "mobile":
            out.append(HopRow(seq=s, idx=idx, kind="link", src=path[-1], dst="mobile", direction="response",
                              ms=0.1 * e2e, bytes=40))
    return out


def build_store(folder: Path, points: list[dict], models=MODELS, failed: bool = True) -> Path:
    """Every model x strategy at every point, with hops; with ``failed``, the last strategy of
    the first model at the first point failed (an error, a timeout) and one of its hosts got
    less than its CPU share."""
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", "sweep-study", {"name": "sweep-study"}, {"cores": 2})
        for p, point in enumerate(points):
            for model in models:
                for k, (strategy, (placement, value)) in enumerate(STRATEGIES.items()):
                    e2e = 10.0 * (k + 1) * (p + 1)
                    broken = failed and (p, model, strategy) == (0, models[0], "me-partition")
                    hosts = {"edge": {"compute": {"within": False, "note": "compute 2.1x its share's promise"}}} \
                        if broken else {}
                    store.write_cell(
                        CellRecord(cell=f"{model}/{strategy}/{p}", run_id="r1", model=model, weights="pretrained",
                                   strategy=strategy, operators=[], placement=placement, source="mobile",
                                   codec="binary", connection="persistent", point=point, artifact=None,
                                   metric="accuracy", metric_value=value, baseline_value=0.78,
                                   metric_ci_low=INTERVALS[strategy][0][0], metric_ci_high=INTERVALS[strategy][0][1],
                                   baseline_ci_low=0.74, baseline_ci_high=0.82, loss_ci_low=INTERVALS[strategy][1][0],
                                   loss_ci_high=INTERVALS[strategy][1][1], quality_samples=400,
                                   status="failed" if broken else "done",
                                   error="server on edge exited <at start>" if broken else None,
                                   started=1.7e9 + len(store.cells()), ended=1.7e9 + 5, network={}, hosts=hosts),
                        _requests(e2e, bad=2 if broken else 0), _hops(placement, e2e))
        store.end_run("r1", "done")
    return folder


def show(folder: Path, *args: str, columns: int = 100) -> str:
    """`testbed results show` as a user runs it, at a terminal width of ``columns`` (COLUMNS)."""
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "results", "show", str(folder), *args], cwd=ROOT,
                       env={**os.environ, "COLUMNS": str(columns)}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("swept"), [{EC: "5Mbit"}, {EC: "50Mbit"}])


# --- short labels of sweep points ---------------------------------------------------------------

@pytest.mark.parametrize("path, value, label", [
    (EC, "5Mbit", "EC 5Mbit"),
    (EC, "5000kbit", "EC 5Mbit"),                       # compact: the field's own formatter
    (EC, "500 kbit", "EC 500kbit"),
    (EC, "unlimited", "EC bandwidth unlimited"),        # a word alone would not say of what
    ("links.mobile-edge.delay", "20ms", "ME 20ms"),
    ("links.mobile-edge.delay", "1s", "ME 1s"),
    ("links.mobile-edge.jitter", "2ms", "ME ±2ms"),
    ("links.edge-cloud.loss", "0.1%", "EC loss 0.1%"),
    ("links.edge-cloud.queue", "64KiB", "EC queue 64KiB"),
    ("links.edge-cloud.forward.delay", "5ms", "E→C 5ms"),
    ("links.edge-cloud.reverse.bandwidth", "1Mbit", "C→E 1Mbit"),
    ("links.mobile3-edge.bandwidth", "10Mbit", "M3E 10Mbit"),
    ("hosts.mobile.cpus", 0.5, "mobile 0.5cpu"),
    ("hosts.mobile.cpus", "unlimited", "mobile cpus unlimited"),
    ("hosts.edge.memory", "2048MiB", "edge 2GiB"),
    ("hosts.edge.cpu_period", "10ms", "edge period 10ms"),
    ("strategies.4.operators.1.early_exit.threshold", 0.8, "threshold 0.8"),
    ("strategies.0.placement", ["mobile", "edge"], "placement mobile>edge"),
    ("codec", "json-base64", "codec json-base64"),
    ("serving.pace", False, "pace false"),
])
def test_short_label_of_one_swept_value(path, value, label):
    assert point_labels({path: value}) == [label]


def test_several_swept_values_give_one_label_each_in_order():
    point = {ME: "200Mbit", EC: "5Mbit", "hosts.mobile.cpus": 0.25}
    assert point_labels(point) == ["ME 200Mbit", "EC 5Mbit", "mobile 0.25cpu"]
    assert point_labels({}) == []


def test_axes_that_would_read_alike_keep_their_long_names():
    names = axis_names([EC, "links.east-core.bandwidth", "links.edge-cloud.delay", ME,
                        "strategies.3.operators.1.early_exit.threshold",
                        "strategies.4.operators.1.early_exit.threshold"])
    assert names == {EC: "edge-cloud", "links.east-core.bandwidth": "east-core",
                     "links.edge-cloud.delay": "edge-cloud", ME: "ME",
                     "strategies.3.operators.1.early_exit.threshold": "strategies.3.operators.1.early_exit.threshold",
                     "strategies.4.operators.1.early_exit.threshold": "strategies.4.operators.1.early_exit.threshold"}
    assert point_labels({EC: "5Mbit", "links.east-core.bandwidth": "5Mbit"}, names) == [
        "edge-cloud 5Mbit", "east-core 5Mbit"]
    assert axis_names([EC, "links.edge-cloud.delay"]) == {EC: "EC", "links.edge-cloud.delay": "EC"}   # one link


def test_host_initials_and_their_fallback():
    assert [host_initials(h) for h in ("edge", "mobile12", "edge_gw2")] == ["E", "M12", "EG2"]
    assert host_names(["mobile", "edge", "cloud"]) == {"mobile": "M", "edge": "E", "cloud": "C"}
    assert host_names(["mobile", "middle", "edge"]) == {"mobile": "mobile", "middle": "middle", "edge": "E"}


def test_a_value_the_field_cannot_read_is_shown_as_written():
    assert value_label(EC, "fast") == "bandwidth fast"
    assert value_label("hosts.mobile.cpus", "2 cores") == "cpus 2cores"


# --- the summary table ------------------------------------------------------------------------

def test_summary_fits_100_columns_one_line_per_cell_with_the_swept_values(swept):
    out = show(swept)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100, out
    assert "…" not in out                                          # nothing is truncated
    for model in MODELS:                                           # each model in full, once, as a heading
        assert sum(line.strip() == model for line in lines) == 1, out
        assert sum(model in line for line in lines) == 1
    # one line per cell: each strategy's name starts a row (after the point column) 2 x 2 times,
    # and nothing of a row spills onto a line of its own
    rows = [line for line in lines if any(f" {s} " in f" {line} " for s in STRATEGIES) and not line.startswith("!")]
    assert len(rows) == len(MODELS) * 2 * len(STRATEGIES)
    assert all(len(line.split()) >= 8 for line in rows), rows     # strategy, placement, 4 times, quality, ok
    assert sum(line.startswith("EC 5Mbit ") for line in lines) == len(MODELS)
    assert sum(line.startswith("EC 50Mbit ") for line in lines) == len(MODELS)
    assert "point: EC = links.edge-cloud.bandwidth" in out
    assert "edge-cloud.…" not in out and "links.edge-cloud.bandwidth=" not in out


def test_summary_quality_is_one_cell_with_the_change_and_its_interval_when_there_is_one(swept):
    wide = [line.split() for line in show(swept, columns=140).splitlines()]
    int8 = [r for r in wide if "edge-int8" in r]
    # the change in points, and its 95 % interval: minus the loss's, [-0.05, -0.01]
    assert int8 and all(r[-5:-1] == ["acc", "75.00%", "(-3.0", "[-5.0,-1.0])"] for r in int8), int8
    mobile = [r for r in wide if "mobile" in r[:3] and r[-1].endswith("/4")]
    assert mobile and all(r[-3:-1] == ["acc", "78.00%"] for r in mobile), mobile   # no change, [0, 0]: none shown
    # at 100 columns the interval goes onto a second line, under the quality, and the placement stays
    lines = show(swept).splitlines()
    at = [i for i, line in enumerate(lines) if " edge-int8 " in f" {line} "]
    assert at and all(lines[i].split()[-4:-1] == ["acc", "75.00%", "(-3.0"] and " edge " in lines[i] for i in at)
    assert all(lines[i + 1].strip() == "[-5.0,-1.0])" for i in at), lines
    assert lines[at[0] + 1].index("[") == lines[at[0]].index("acc 75.00%")


def test_summary_notes_what_a_line_cannot_say(swept):
    lines = show(swept).splitlines()
    marked = [line for line in lines if line.rstrip().endswith("!")]
    assert len(marked) == 1 and marked[0].split()[:2] == ["me-partition", "mobile→edge"]
    assert marked[0].rstrip().endswith(" 4/6!")                   # 4 ok of 6 sent
    [note] = [line for line in lines if line.startswith("! me-partition")]
    assert note.startswith("! me-partition at EC 5Mbit: failed; server on edge exited <at start>; 2 timeout")


def test_summary_at_80_columns_drops_the_placement_and_keeps_every_number(swept):
    out = show(swept, columns=80)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    assert "placement: left out, the terminal is too narrow" in out and "mobile→edge" not in out
    assert "…" not in out
    rows = [line.split() for line in lines if not line.startswith("!")]
    for s in STRATEGIES:                                          # names are whole, never folded at 80
        assert sum(s in row for row in rows) == len(MODELS) * 2
    # every number of a row stays on its first line; only the quality's change and interval may wrap
    for row in (r for r in rows if "edge-int8" in r):
        assert len(row) >= 8 and (row[-3:-1] == ["acc", "75.00%"] or row[-4:-1] == ["acc", "75.00%", "(-3.0"]), row
    assert "[-5.0,-1.0])" in out


def test_summary_with_several_swept_values_puts_one_label_per_row(tmp_path):
    folder = build_store(tmp_path, [{ME: "200Mbit", EC: "5Mbit"}, {ME: "10Mbit", EC: "5Mbit"}], failed=False)
    lines = show(folder).splitlines()
    assert max(len(line) for line in lines) <= 100
    firsts = [line.split("  ")[0] for line in lines if line.split() and line.split()[-1].endswith("/4")]
    # the store keeps a point's paths in name order: edge-cloud before mobile-edge
    assert firsts[:6] == ["EC 5Mbit", "ME 200Mbit", "", "EC 5Mbit", "ME 10Mbit", ""]
    assert "point: EC = links.edge-cloud.bandwidth, ME = links.mobile-edge.bandwidth" in "\n".join(lines)


def test_summary_without_a_sweep_has_no_point_column(tmp_path):
    folder = build_store(tmp_path, [{}], models=MODELS[:1], failed=False)
    out = show(folder)
    header = next(line for line in out.splitlines() if line.startswith("strategy"))
    assert header.split()[:2] == ["strategy", "placement"] and "point:" not in out


def test_summary_rows_have_compute_and_transmission_medians(tmp_path):
    folder = build_store(tmp_path, [{EC: "5Mbit"}], models=MODELS[:1], failed=False)
    with ResultStore.in_folder(folder, create=False) as store:
        rows = {r["strategy"]: r for r in summarize(store.cells(), store.requests(), store.hops())}
    assert rows["mobile"]["compute_p50"] == 5.0 and rows["mobile"]["transmission_p50"] == 4.0
    assert rows["edge-int8"]["compute_p50"] == 10.0


# --- --detail ------------------------------------------------------------------------------------

def test_detail_shows_per_host_and_per_link_times(swept):
    out = show(swept, "--detail")
    summary = show(swept)
    assert max(len(line) for line in out.splitlines()) <= 100, out
    assert "efficientnet_lite0 at EC 50Mbit" in out and "hosts: M = mobile, E = edge" in out
    # me-partition at 50 Mbit/s: 60 ms, compute split over mobile and edge, one link each way
    e2e = [60.0 + i for i in range(4)]
    compute, transmission = (f * 60 * 4 / sum(e2e) for f in (0.5, 0.4))      # shares of the summed e2e
    shares = "/".join(f"{100 * x:.0f}" for x in (compute, transmission, 1 - compute - transmission))
    section = out[out.index("efficientnet_lite0 at EC 50Mbit"):]
    row = next(line for line in section.splitlines() if line.startswith("me-partition"))
    assert row.split()[3:7] == ["M", "15.0", "M→E", "18.0"] and shares in row, row
    assert all(s in out for s in ("E 15.0", "E→M 6.00", "base 0.7800", "same 75%", "2 timeout"))
    assert "M→E" not in summary and "same 75%" not in summary
    assert "! me-partition: failed; server on edge exited <at start>; edge: compute 2.1x" in out


def test_detail_is_an_option_of_results_show_in_help():
    res = CliRunner().invoke(cli, ["results", "show", "--help"])
    assert res.exit_code == 0 and "--detail" in res.output and "compute per host" in res.output


def test_detail_and_json_agree_on_the_cells(swept):
    res = CliRunner().invoke(cli, ["results", "show", str(swept), "--detail", "--json"])
    assert res.exit_code == 0, res.output
    cells = json.loads(res.output)["cells"]
    assert len(cells) == 2 * len(MODELS) * len(STRATEGIES)
    assert {c["strategy"]: c["compute"] for c in cells if c["point"] == {EC: "50Mbit"}}["mobile"] == {"mobile": 10.0}


def test_summary_and_detail_of_cells_without_answers_or_metric(tmp_path):
    """An interrupted run ends with this table too: a cell with no request at all, a model without a metric."""
    with ResultStore.in_folder(tmp_path) as store:
        store.begin_run("r1", "cut-short", {"name": "cut-short"}, {"cores": 2})
        for i, (strategy, status, requests) in enumerate((("edge", "done", _requests(10.0)),
                                                          ("cloud", "interrupted", []))):
            store.write_cell(CellRecord(cell=f"m/{strategy}", run_id="r1", model="null", weights="random",
                                        strategy=strategy, operators=[], placement=(strategy,), source="mobile",
                                        codec="binary", connection="persistent", point={}, artifact=None,
                                        metric=None, metric_value=None, baseline_value=None, status=status,
                                        error=None, started=1.7e9 + i, ended=1.7e9 + 5, network={}, hosts={}),
                             requests, [])
        store.end_run("r1", "interrupted")
    rows = [line.split() for line in show(tmp_path).splitlines()]
    assert ["cloud", "cloud", "-", "-", "-", "-", "-", "0/0!"] in rows
    assert ["!", "cloud:", "interrupted"] in rows
    detail = show(tmp_path, "--detail")
    assert "! cloud: interrupted" in detail and "0 ok" in detail


# --- under load -----------------------------------------------------------------------------------

def build_load_store(folder: Path) -> Path:
    """A search's runs for two strategies: `edge` meets p99 <= 100 ms up to 20 req/s (missed at
    25), `edge-int8` at every rate tried; figures as testbed.load.figures makes them."""
    from testbed.experiment import Load
    from testbed.load import figures

    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", "load-study", {"name": "load-study"}, {"cores": 2})
        for strategy, limit in (("edge", 20.0), ("edge-int8", 1000.0)):
            for q in (10.0, 20.0, 25.0, 40.0):
                slow = q > limit
                rows = [RequestRow(seq=i, input_index=0, status="ok", e2e_ms=(150.0 if slow else 40.0) + i % 7,
                                   compute_ms=10.0, transmission_ms=5.0, serialization_ms=1.0, overhead_ms=1.0,
                                   queue_ms=20.0, late_ms=0.1, due_ms=1000.0 * i / q, source="mobile1")
                        for i in range(1000)]     # enough for a sure verdict on a p99
                load = figures(Load("server", q, None, ("mobile1",), None, 0, (("p99", 100.0),)), rows, [{"workers": 2}])
                store.write_cell(
                    CellRecord(cell=f"m/{strategy}/{q}", run_id="r1", model="m", weights="pretrained",
                               strategy=strategy, operators=[], placement=("edge",), source="mobile1", codec="binary",
                               connection="persistent", point={"load.qps": q}, artifact=None, metric=None,
                               metric_value=None, baseline_value=None, status="done", error=None,
                               started=1.7e9 + len(store.cells()), ended=1.7e9 + 5, load=load), rows, [])
        store.end_run("r1", "done")
    return folder


def test_capacities_name_the_highest_rate_meeting_the_target_and_the_one_above(tmp_path):
    from testbed.load import capacities

    folder = build_load_store(tmp_path / "load")
    with ResultStore.in_folder(folder, create=False) as s:
        rows = summarize(s.cells(), s.requests(), s.hops())
    got = {c["strategy"]: (c["best"], c["above"], c["rates"], c["sure"]) for c in capacities(rows)}
    assert got == {"edge": (20.0, 25.0, 4, True), "edge-int8": (40.0, None, 4, True)}


def test_the_summary_under_load_shows_rates_tails_and_the_slo_answer(tmp_path):
    text = show(build_load_store(tmp_path / "load"))
    assert "m under load" in text
    assert "m / edge: p99 ≤ 100 ms up to 20 req/s, missed at 25 (4 rates tried)\n" in text
    assert "m / edge-int8: p99 ≤ 100 ms up to 40 req/s, the highest rate tried (4 rates tried)\n" in text
    line = next(l for l in text.splitlines() if l.strip().startswith("qps 25") and "server 25/s" in l)
    assert "missed" in line and "156.0" in line        # p99 of the slow run, and its verdict


def test_a_load_cell_whose_hosts_may_use_more_cores_than_the_machine_has_is_noted():
    from testbed.summary import load_flags

    assert load_flags({"host_cpus": 2.5, "machine_cores": 2}) == [
        "its hosts may use 2.5 cores together, the machine has 2: under load they may compute slower than "
        "promised (see compute.slowdown)"]
    assert load_flags({"host_cpus": 1.5, "machine_cores": 2}) == []
    assert load_flags({"host_cpus": None, "machine_cores": 2}) == [] and load_flags(None) == []
