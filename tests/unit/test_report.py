"""`testbed report`: a real store in tmp_path -> HTML, PNG figures, CSV and LaTeX tables."""
from __future__ import annotations

import csv
import json
import re

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from markupsafe import escape

from testbed.cli import cli
from testbed.report import MAX_FACETS, OWNED, ReportError, _facets, axis_number, pareto_front, write_report
from testbed.stats import study_groups
from testbed.store import CellRecord, RequestRow, ResultStore, StoreError
from tests.unit.test_plan import planned  # noqa: F401  (a fixture: a real artifact in a test cache)

ME, EC = "links.mobile-edge.bandwidth", "links.edge-cloud.bandwidth"
ME_VALUES, EC_VALUES = ("5Mbit", "20Mbit"), ("1Mbit", "500kbit")    # file order is not numeric order
# strategy -> (placement, metric value, p50 in ms as a function of the mobile-edge Mbit/s)
STRATEGIES = {
    "mobile": (("mobile",), 0.90, lambda me: 80.0),
    "edge-q": (("edge",), 0.895, lambda me: 40.0 + 100.0 / me),       # 60 ms at 5 Mbit, 45 at 20
    "split": (("mobile", "edge"), 0.90, lambda me: 10.0 + 400.0 / me),  # 90 ms at 5 Mbit, 30 at 20
}
EXPECTED_WINNER = {"5Mbit": "edge-q", "20Mbit": "split"}
BASELINE = 0.90
N_REQUESTS = 20
LOSS_CI = {"mobile": (0.0, 0.0), "edge-q": (0.002, 0.009), "split": (0.0, 0.0)}   # the 95 % intervals of the loss


def _cell(key: str, model: str, strategy: str, point: dict, status: str = "done", error: str | None = None,
          metric: str | None = "accuracy") -> CellRecord:
    placement, value, _ = STRATEGIES.get(strategy, (("cloud",), None, None))
    low, high = LOSS_CI.get(strategy, (None, None)) if metric else (None, None)
    return CellRecord(cell=key, run_id="r1", model=model, weights="pretrained", strategy=strategy, operators=[],
                      placement=placement, source="mobile", codec="binary", connection="persistent", point=point,
                      artifact=None, metric=metric, metric_value=value if metric else None,
                      baseline_value=BASELINE if metric else None, status=status, error=error, started=1.7e9,
                      ended=1.7e9 + 5, network={}, hosts={}, loss_ci_low=low, loss_ci_high=high,
                      metric_ci_low=None if low is None else BASELINE - high,
                      metric_ci_high=None if low is None else BASELINE - low,
                      baseline_ci_low=None if low is None else 0.87, baseline_ci_high=None if low is None else 0.93,
                      quality_samples=None if low is None else 500)


def _requests(rng, p50: float, status: str = "ok") -> list[RequestRow]:
    rows = []
    for i, e2e in enumerate(p50 * rng.lognormal(0.0, 0.08, N_REQUESTS)):
        if status != "ok":
            rows.append(RequestRow(seq=i, input_index=i, status=status, error="no answer"))
            continue
        compute = 0.5 * e2e
        rows.append(RequestRow(seq=i, input_index=i, status="ok", e2e_ms=e2e, compute_ms=compute,
                               transmission_ms=0.3 * e2e, serialization_ms=0.1 * e2e, overhead_ms=0.1 * e2e,
                               bytes_sent=1000 + i))
    return rows


def build_study(folder: Path, seed: int = 0) -> Path:
    """2 models (one with a metric, one without) x 3 strategies x a 2x2 bandwidth sweep, seeded
    latencies; plus one failed cell, and one done cell of the metric-less model whose
    requests all timed out."""
    rng = np.random.default_rng(seed)
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", "bandwidth-study", {"name": "bandwidth-study"},
                        {"hostname": "box", "machine": "x86_64", "cores": 2.0, "memory_bytes": 8 << 30,
                         "kernel": "6.1", "python": "3.11.2"})
        for me in ME_VALUES:
            for ec in EC_VALUES:
                point = {ME: me, EC: ec}
                for model, metric in (("cnn", "accuracy"), ("null", None)):
                    for strategy, (_, _, p50) in STRATEGIES.items():
                        key = f"{model}/{strategy}/{me}-{ec}"
                        timed_out = model == "null" and strategy == "mobile" and (me, ec) == ("5Mbit", "1Mbit")
                        store.write_cell(_cell(key, model, strategy, point, metric=metric),
                                         _requests(rng, p50(axis_number(ME, me) / 1e6),
                                                   "timeout" if timed_out else "ok"), [])
        store.write_cell(_cell("cnn/cloud/x", "cnn", "cloud", {ME: "5Mbit", EC: "1Mbit"}, status="failed",
                               error="server on cloud was OOM-killed <at start>"),
                         [RequestRow(seq=0, input_index=0, status="oom")], [])
        store.end_run("r1", "done")
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = build_study(tmp_path_factory.mktemp("study") / "out")
    return folder, write_report(folder)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.imgs = [], []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.refs.append(value)
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_report_writes_index_figures_and_tables(study):
    folder, report = study
    out = folder / "report"
    assert report.index == out / "index.html" and report.index.is_file()
    names = {p.name for p in report.figures}
    for model in ("cnn", "null"):
        assert {f"{model}-latency.png", f"{model}-parts.png", f"{model}-winners.png"} <= names
    assert "cnn-quality.png" in names and "null-quality.png" not in names     # no metric, no scatter
    for p in report.figures:
        assert p.parent == out / "figures" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("cells", "strategies", "pairs", "recommendations", "winners"):
        assert (out / "tables" / f"{name}.csv").is_file()
        assert "\\begin{tabular}" in (out / "tables" / f"{name}.tex").read_text()


def test_html_loads_only_local_or_data_resources(study):
    folder, report = study
    html = report.index.read_text()
    refs = _Refs()
    refs.feed(html)
    assert refs.imgs and all(src.startswith("data:image/png;base64,") for src in refs.imgs)
    assert len(refs.imgs) == len(report.figures)
    for ref in refs.refs:
        assert not re.match(r"^[a-z][a-z0-9+.-]*:", ref) or ref.startswith("data:"), ref
        if not ref.startswith("data:"):
            assert (folder / "report" / ref).is_file(), ref
    assert "<script" not in html.lower() and "@import" not in html and "url(" not in html


def test_html_escapes_user_text_and_lists_the_failed_cell(study):
    _, report = study
    html = report.index.read_text()
    assert "OOM-killed &lt;at start&gt;" in html and "<at start>" not in html
    assert "bandwidth-study" in html and "box, x86_64, 2 cores" in html
    assert report.cells == {"done": 24, "interrupted": 0, "failed": 1}


def test_tables_have_a_row_per_cell_strategy_and_pair(study):
    folder, _ = study
    tables = folder / "report" / "tables"
    cells = _csv(tables / "cells.csv")
    assert len(cells) == 25 and [c["status"] for c in cells].count("failed") == 1
    strategies = _csv(tables / "strategies.csv")
    assert len(strategies) == 2 * 4 * 3           # models x points x strategies (done cells only)
    timed_out = [r for r in strategies if r["model"] == "null" and r["strategy"] == "mobile" and r["n"] == "0"]
    assert len(timed_out) == 1 and timed_out[0]["median_ms"] == ""
    pairs = _csv(tables / "pairs.csv")
    assert len(pairs) == 4 * 3 + 3 * 3 + 1          # cnn: 3 pairs per point; null: one point has 2 groups
    for r in pairs:
        assert 0 <= float(r["p_holm"]) <= 1 and -1 <= float(r["delta"]) <= 1


def test_winners_follow_the_constructed_latencies_and_bandwidths_sort_numerically(study):
    folder, _ = study
    rows = [r for r in _csv(folder / "report" / "tables" / "winners.csv") if r["model"] == "cnn"]
    assert len(rows) == 4
    for r in rows:
        assert r["winner"] == EXPECTED_WINNER[r[ME]], r
    from testbed.report import _axis_order
    assert _axis_order(ME, ["20Mbit", "5Mbit"]) == ["5Mbit", "20Mbit"]
    assert _axis_order(EC, ["1Mbit", "500kbit"]) == ["500kbit", "1Mbit"]


def test_recommendations_in_the_report_name_the_expected_strategies(study):
    _, report = study
    cnn_5 = [r for r in report.recommendations if r["model"] == "cnn" and r["point"][ME] == "5Mbit"]
    kinds = {r["kind"]: r for r in cnn_5 if r["kind"] != "placement"}
    assert kinds["within_tolerance"]["strategy"] == "edge-q"      # loss 0.005 <= 0.01, fastest at 5 Mbit
    assert kinds["least_loss"]["strategy"] == "mobile"            # loss 0, faster than split at 5 Mbit
    null = [r for r in report.recommendations if r["model"] == "null"]
    assert {r["kind"] for r in null} == {"fastest", "placement", "unmeasured"}
    assert all("accuracy unknown" in r["text"] for r in null if r["kind"] != "unmeasured")
    (timed_out,) = [r for r in null if r["kind"] == "unmeasured"]
    assert timed_out["strategy"] == "mobile" and timed_out["point"] == {ME: "5Mbit", EC: "1Mbit"}


def small_store(folder: Path, cells: list[tuple[str, dict, float]], seed: int = 0) -> Path:
    """A store of one run of model cnn with one done cell per (strategy, point, p50 ms)."""
    rng = np.random.default_rng(seed)
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", "small", {}, {})
        for strategy, point, p50 in cells:
            store.write_cell(_cell(f"cnn/{strategy}/{json.dumps(point)}", "cnn", strategy, point),
                             _requests(rng, p50), [])
    return folder


def test_a_clearly_fastest_strategy_wins_every_heatmap_cell(tmp_path):
    report = write_report(small_store(tmp_path / "out", [
        (strategy, {ME: me, EC: ec}, p50) for me in ("200Mbit", "10Mbit", "50Mbit") for ec in ("2Mbit", "100kbit")
        for strategy, p50 in (("mobile", 100.0), ("edge-q", 5.0), ("split", 40.0))]))
    rows = _csv(report.index.parent / "tables" / "winners.csv")
    assert len(rows) == 6 and {r["winner"] for r in rows} == {"edge-q"}
    assert all(4.0 < float(r["p50_ms"]) < 6.0 for r in rows)


def test_one_numeric_axis_draws_a_line_plot(tmp_path):
    folder = small_store(tmp_path / "out", [(strategy, {EC: ec}, 20.0) for ec in ("5Mbit", "50Mbit", "500Mbit")
                                            for strategy in ("mobile", "split")])
    names = {p.name for p in write_report(folder).figures}
    assert "cnn-sweep.png" in names and "cnn-winners.png" not in names


def test_up_to_six_points_get_a_panel_each_more_get_one_panel_of_per_point_medians():
    def facets(points: int):
        cells = [{"cell": f"{s}/{i}", "model": "cnn", "weights": "w", "strategy": s, "placement": "edge",
                  "point": {"links.edge-cloud.delay": f"{i}ms"}, "status": "done"}
                 for i in range(points) for s in ("a", "b")]
        ok = {c["cell"]: [{"e2e_ms": 10.0 + i} for i in range(3)] for c in cells}
        return _facets(study_groups(cells), ok)

    six = facets(MAX_FACETS)
    assert len(six) == MAX_FACETS and all(f.points == 1 and f.p50s == {"a": [11.0], "b": [11.0]} for f in six)
    (merged,) = facets(MAX_FACETS + 3)
    assert merged.points == MAX_FACETS + 3 and len(merged.p50s["a"]) == MAX_FACETS + 3
    assert len(merged.requests["b"]) == 3 * (MAX_FACETS + 3)


def test_the_pareto_plot_draws_each_metrics_interval_as_an_error_bar(study):
    from matplotlib.container import ErrorbarContainer

    from testbed.report import _quality_figure
    cells = [{"cell": s, "model": "cnn", "weights": "w", "strategy": s, "placement": "edge", "point": {},
              "status": "done", "metric": "accuracy", "metric_value": v, "metric_ci_low": lo, "metric_ci_high": hi}
             for s, v, lo, hi in (("a", 0.90, 0.88, 0.91), ("b", 0.80, 0.75, 0.86), ("old", 0.85, None, None))]
    ok = {c["cell"]: [{"e2e_ms": 10.0 * (i + 1)}] for i, c in enumerate(cells)}
    fig, caption = _quality_figure("cnn", _facets(study_groups(cells), ok))
    (bars,) = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    (segments,) = bars.lines[2]
    spans = sorted((round(float(seg[0][1]), 6), round(float(seg[1][1]), 6)) for seg in segments.get_segments())
    assert spans == [(0.75, 0.86), (0.88, 0.91)]        # asymmetric, and none for the cell without an interval
    assert "95 % interval" in caption and "without a bar has none" in caption


def test_the_reports_tables_carry_the_quality_intervals(study):
    folder, report = study
    tables = folder / "report" / "tables"
    cells = [r for r in _csv(tables / "cells.csv") if r["model"] == "cnn" and r["strategy"] == "edge-q"]
    assert cells and all((float(r["loss_ci_low"]), float(r["loss_ci_high"])) == LOSS_CI["edge-q"] for r in cells)
    assert all(float(r["metric_ci_low"]) == pytest.approx(BASELINE - 0.009) for r in cells)
    recs = [r for r in _csv(tables / "recommendations.csv") if r["kind"] == "within_tolerance" and r["model"] == "cnn"]
    assert recs and {r["tolerance_verdict"] for r in recs} == {"within"} and all(r["loss_ci_high"] for r in recs)
    assert "[0.30 %" not in report.index.read_text()          # edge-q: loss 0.50 % [0.20 %, 0.90 %]
    assert "loss 0.50 % [0.20 %, 0.90 %]" in report.index.read_text()


def test_the_quality_table_shows_intervals_beside_the_paired_test_and_says_when_there_are_none(tmp_path):
    folder = tmp_path / "out"
    art = tmp_path / "artifact"
    art.mkdir()
    base = np.ones(200)
    scores = base.copy()
    scores[:10] = 0.0
    np.save(art / "scores.npy", scores)
    np.save(art / "baseline_scores.npy", base)
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", "q", {}, {})
        rng = np.random.default_rng(0)
        from dataclasses import replace
        store.write_cell(replace(_cell("cnn/edge-q", "cnn", "edge-q", {}), artifact=str(art), metric_value=0.95,
                                 baseline_value=1.0, metric_ci_low=0.92, metric_ci_high=0.975, loss_ci_low=0.025,
                                 loss_ci_high=0.08, baseline_ci_low=1.0, baseline_ci_high=1.0, quality_samples=200),
                         _requests(rng, 20.0), [])
        store.write_cell(replace(_cell("cnn/mobile", "cnn", "mobile", {}), artifact=str(tmp_path / "gone"),
                                 metric_ci_low=None, metric_ci_high=None, loss_ci_low=None, loss_ci_high=None,
                                 baseline_ci_low=None, baseline_ci_high=None, quality_samples=None),
                         _requests(rng, 30.0), [])
        store.end_run("r1", "done")
    report = write_report(folder)
    html = report.index.read_text(encoding="utf-8")
    row = html[html.index("<td>edge-q</td>"):].split("</tr>")[0]
    assert all(x in row for x in ("[0.92, 0.975]", "[1, 1]", "[0.025, 0.08]", "200")), row
    from testbed.report import _pvalue
    # beside it, the exact McNemar test (scores are 1 or 0): 10 samples lost, none gained: p = 2 / 2**10
    assert f'<td>McNemar (exact)</td><td class="num">{_pvalue(2 / 1024)}</td>' in row, row
    old = html[html.index("<td>mobile</td>", html.index("Quality against")):].split("</tr>")[0]
    assert "no interval (stored before intervals, or too few evaluation samples)" in old
    rows = {r["strategy"]: r for r in _csv(folder / "report" / "tables" / "quality.csv")}
    assert (float(rows["edge-q"]["loss"]), float(rows["edge-q"]["loss_ci_high"])) == (pytest.approx(0.05), 0.08)
    assert rows["mobile"]["loss_ci_low"] == "" and rows["mobile"]["interval"].startswith("no interval")
    assert rows["edge-q"]["test"] == "McNemar (exact)" and float(rows["edge-q"]["p"]) == pytest.approx(2 / 1024)


def test_store_without_done_cells_still_gets_a_report_with_a_note(tmp_path):
    folder = tmp_path / "out"
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", "broken", {}, {})
        store.write_cell(_cell("c1", "cnn", "mobile", {}, status="failed", error="deploy failed"), [], [])
    report = write_report(folder)
    assert report.note and "nothing to compare" in report.note
    assert report.figures == [] and "deploy failed" in report.index.read_text()


def test_rerunning_replaces_exactly_what_the_earlier_report_wrote(tmp_path):
    folder = tmp_path / "out"
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", "again", {}, {})
    first = write_report(folder)
    stale = folder / "report" / "figures" / "gone-latency.png"     # as if the first report had drawn it
    stale.write_bytes(b"old")
    owned = json.loads((folder / "report" / OWNED).read_text())
    owned["files"].append("figures/gone-latency.png")
    (folder / "report" / OWNED).write_text(json.dumps(owned))
    mine = [folder / "report" / "figures" / "notes.txt", folder / "report" / "tables" / "my.csv"]
    for p in mine:
        p.write_bytes(b"the user's")
    again = write_report(folder)
    assert not stale.exists() and all(p.read_bytes() == b"the user's" for p in mine)
    assert again.index == first.index and again.index.exists()


def test_a_folder_the_report_does_not_own_is_refused_and_left_alone(tmp_path):
    """Issue 19: `testbed report R --out D` removed D/figures/*.png and D/tables/*.csv|*.tex
    that it had not written."""
    folder = tmp_path / "out"
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", "again", {}, {})
    theirs = tmp_path / "paper"
    files = [theirs / "figures" / "fig1.png", theirs / "tables" / "t1.csv", theirs / "tables" / "t2.tex"]
    for p in files:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"the user's")
    with pytest.raises(ReportError) as info:
        write_report(folder, theirs)
    assert str(info.value) == (f"{theirs} holds files the testbed did not write (e.g. figures/fig1.png): choose an "
                               "empty or new --out (a report writes only into a folder it owns)")
    assert all(p.read_bytes() == b"the user's" for p in files) and not (theirs / "index.html").exists()
    write_report(folder, tmp_path / "empty")          # a new folder, or an empty one, is fine
    (tmp_path / "bare").mkdir()
    write_report(folder, tmp_path / "bare")


def test_missing_store_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="no results at"):
        write_report(tmp_path / "nothing")


def test_pareto_front_keeps_only_undominated_points():
    points = [(10.0, 0.8), (20.0, 0.9), (15.0, 0.7), (30.0, 0.9), (5.0, 0.5)]
    assert pareto_front(points) == [4, 0, 1]
    assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]        # equal points do not dominate each other


def test_axis_number_parses_units_and_plain_numbers():
    assert axis_number(ME, "500kbit") == 500_000
    assert axis_number("links.edge-cloud.delay", "1s") == 1000.0
    assert axis_number("requests.repeat", 5) == 5.0
    assert axis_number(ME, "none") is None and axis_number("serving.connection", "fresh") is None


# --- the CLI ------------------------------------------------------------------------------------

def test_cli_report_prints_where_it_wrote_and_the_recommendations(tmp_path):
    folder = build_study(tmp_path / "out")
    r = CliRunner().invoke(cli, ["report", str(folder), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert str(tmp_path / "rep" / "index.html") in r.output
    assert "lowest latency within 1 % accuracy loss: edge-q" in r.output
    assert (tmp_path / "rep" / "figures" / "cnn-latency.png").is_file()
    # each headline names its point as the summary table does (ME 5Mbit, EC 50Mbit), not as a path
    heads = [line for line in r.output.splitlines() if line.startswith("  cnn at ")]
    assert heads and all(" ME " in h and " EC " in h and "links." not in h for h in heads), r.output


def test_cli_report_json_has_paths_and_recommendations(tmp_path):
    folder = build_study(tmp_path / "out")
    r = CliRunner().invoke(cli, ["report", str(folder), "--json", "--tolerance", "0.001"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert Path(data["index"]) == folder / "report" / "index.html"
    assert all(Path(p).is_file() for p in data["figures"] + data["tables"])
    picks = [x["strategy"] for x in data["recommendations"]
             if x["model"] == "cnn" and x["kind"] == "within_tolerance" and x["point"][ME] == "5Mbit"]
    assert picks == ["mobile", "mobile"]             # at both edge-cloud bandwidths
    assert data["predicted"]["reason"].startswith("no prediction for run r1")


def test_cli_report_without_a_store_is_one_line(tmp_path):
    r = CliRunner().invoke(cli, ["report", str(tmp_path / "nothing")])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no results at") and "testbed run" in lines[0]


def test_cli_report_on_a_non_store_file_is_one_line(tmp_path):
    (tmp_path / "results.sqlite").write_text("not a database")
    r = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "not a testbed result store" in r.output


def test_cli_report_rejects_a_tolerance_outside_0_1(tmp_path):
    r = CliRunner().invoke(cli, ["report", str(tmp_path), "--tolerance", "5"])
    assert r.exit_code == 2 and "--tolerance" in r.output


def test_cli_report_of_an_empty_store_notes_it_and_exits_0(tmp_path):
    folder = tmp_path / "out"
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", "empty", {}, {})
    r = CliRunner().invoke(cli, ["report", str(folder)])
    assert r.exit_code == 0 and "nothing to compare" in r.output


def test_cli_report_into_an_unwritable_place_is_one_line(tmp_path):
    folder = tmp_path / "out"
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", "empty", {}, {})
    (tmp_path / "taken").write_text("a file, not a folder")
    r = CliRunner().invoke(cli, ["report", str(folder), "--out", str(tmp_path / "taken" / "report")])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert r.output.startswith(f"Error: cannot write the report to {tmp_path / 'taken' / 'report'}: ")
    assert "--out" in r.output
    r = CliRunner().invoke(cli, ["report", str(folder), "--out", str(tmp_path / "taken")])
    assert r.exit_code == 2 and "is a file" in r.output        # click's own check of a folder option


def test_quality_is_tested_per_artifact_against_the_untransformed_models_samples(tmp_path):
    from testbed.report import quality_tests

    rng = np.random.default_rng(0)
    base = (rng.random(400) < 0.9).astype(float)
    worse = base.copy()
    worse[np.flatnonzero(base)[:60]] = 0.0             # 60 samples lost, none gained
    same = base.copy()
    folders = {}
    for name, scores in (("worse", worse), ("same", same)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        np.save(folders[name] / "scores.npy", scores)
        np.save(folders[name] / "baseline_scores.npy", base)

    def cell(strategy, artifact, point):
        return {"model": "m", "strategy": strategy, "artifact": str(artifact), "status": "done",
                "metric": "accuracy", "metric_value": 0.8, "baseline_value": 0.9, "point": point}

    cells = [cell("worse", folders["worse"], {"x": 1}), cell("worse", folders["worse"], {"x": 2}),
             cell("same", folders["same"], {"x": 1}), cell("old", tmp_path / "gone", {"x": 1})]
    rows = {r["strategy"]: r for r in quality_tests(cells)}
    assert len(rows) == 3                                # one row per artifact, not per sweep point
    assert rows["worse"]["significant"] and rows["worse"]["p"] < 1e-6 and rows["worse"]["nonzero"] == 60
    assert rows["same"]["significant"] is False and rows["same"]["p"] is None and rows["same"]["warning"]
    assert rows["old"]["p"] is None and "no per-sample scores" in rows["old"]["warning"]
    assert rows["worse"]["test"] == "McNemar (exact)" and rows["worse"]["p"] == pytest.approx(2 / 2 ** 60)


def test_pixel_accuracy_is_tested_with_wilcoxon_in_the_quality_table(tmp_path):
    from testbed.report import quality_tests

    rng = np.random.default_rng(1)
    base = rng.uniform(0.7, 1.0, 80)                    # per-image pixel accuracy
    np.save(tmp_path / "scores.npy", base - rng.uniform(0.0, 0.05, 80))
    np.save(tmp_path / "baseline_scores.npy", base)
    cell = {"model": "seg", "strategy": "q", "artifact": str(tmp_path), "status": "done", "metric": "miou",
            "metric_value": 0.5, "baseline_value": 0.55, "point": {}}
    row = quality_tests([cell])[0]
    assert row["test"] == "Wilcoxon signed-rank" and row["significant"] and row["nonzero"] == 80


def test_a_host_that_got_less_than_its_share_is_flagged_in_the_report(tmp_path):
    """A cell whose host computed slower than its CPU share promises (the runner's
    hosts[h].compute.within false) is listed with the reason, and its row in tables/cells.csv
    says so; cells whose hosts held their share are not."""
    from dataclasses import replace

    note = "compute 1.50x what 0.25 cores give its CPU time at p50 (1.40 / 1.60 at p10 / p90): the host got less than its share"
    folder = tmp_path / "out"
    rng = np.random.default_rng(1)
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", "flags", {"name": "flags"}, {"hostname": "box", "machine": "x86_64", "cores": 2.0,
                                                            "memory_bytes": 8 << 30, "kernel": "6.1", "python": "3.11.2"})
        for strategy, within in (("mobile", False), ("edge-q", True)):
            cell = replace(_cell(f"cnn/{strategy}", "cnn", strategy, {}),
                           hosts={"mobile": {"compute": {"within": within, "note": note if not within else None}}})
            store.write_cell(cell, _requests(rng, 20.0), [])
        store.end_run("r1", "done")
    report = write_report(folder)
    html = report.index.read_text(encoding="utf-8")
    assert "Cells whose hosts computed slower than their CPU share promises" in html
    assert html.count("mobile: compute 1.50x what 0.25 cores give") == 1      # the flagged cell only
    rows = {r["strategy"]: r for r in _csv(folder / "report" / "tables" / "cells.csv")}
    assert rows["mobile"]["host_flags"] == f"mobile: {note}" and rows["edge-q"]["host_flags"] == ""


# --- the plan against measurement -----------------------------------------------------------

def test_without_a_plan_the_section_says_why_in_one_line_and_nothing_else_changes(study):
    folder, report = study
    html = report.index.read_text(encoding="utf-8")
    reason = report.predicted["reason"]
    # the study's run stored a config that is no experiment (a store written by hand)
    assert reason.startswith("no prediction for run r1 (bandwidth-study): ") and "\n" not in reason
    assert '<h2 id="predicted">Predicted vs measured</h2>' in html and str(escape(reason)) in html
    assert not any(p.name.startswith("predicted") for p in report.figures + report.tables)


def test_with_profiles_the_report_compares_each_cell_and_winner_with_the_plan(tmp_path, planned):
    from tests.unit.test_verify import ME as BW, planned_store

    # measured 10 % below the plan, except edge at 100 Mbit/s: slower than mobile
    folder = planned_store(tmp_path, planned, 0.9, 80.0)
    with ResultStore.in_folder(folder) as store:       # and a cell of a model the plan does not know
        store.write_cell(_cell("extra", "cnn", "mobile", {BW: "1Mbit"}), _requests(np.random.default_rng(0), 9.0), [])
    report = write_report(folder)
    tables = report.index.parent / "tables"
    *cells, extra = _csv(tables / "predicted.csv")
    assert len(cells) == 4 and all(r["note"] == "" for r in cells)
    assert (extra["model"], extra["note"], extra["predicted_ms"]) == ("cnn", "no prediction: not in the plan", "")
    for r in cells:
        if (r["strategy"], f"{BW}=100Mbit" in r["point"]) != ("edge", True):
            assert float(r["error"]) == pytest.approx(1 / 0.9 - 1)
    errors = {(r["by"], r["name"]): r for r in _csv(tables / "predicted_errors.csv")}
    assert set(errors) == {("strategy", "mobile"), ("strategy", "edge"), ("tier", "mobile"), ("tier", "edge")}
    assert errors[("strategy", "mobile")]["n"] == "2" and float(errors[("tier", "edge")]["worst_error"]) < -0.5
    winners = {r["point"]: r for r in _csv(tables / "predicted_winners.csv")}
    assert sorted((r["predicted"], r["measured"], r["agree"]) for r in winners.values()) == \
        [("edge", "mobile", "False"), ("mobile", "mobile", "True")]
    # the miss is tested on the two winners' requests: edge 8x slower in each is a real one
    miss = next(r for r in winners.values() if r["agree"] == "False")
    assert miss["indistinguishable"] == "False" and float(miss["p"]) < 0.05
    assert {p.name for p in report.figures} >= {"predicted-vs-measured.png"}
    assert (report.predicted["agreed"], report.predicted["compared"]) == (1, 2)
    html = report.index.read_text(encoding="utf-8")
    section = html[html.index('<h2 id="predicted">'):html.index('<h2 id="tables">')]
    assert "1 of 2</strong>" in section and "predicted edge, measured mobile (measured p50: mobile " in section
    assert ": a real miss)" in section and "not significantly faster" not in section
    assert 'src="data:image/png' in section and "+11.1 %" in section
    assert "1 measured cell without a prediction" in section
    # the CLI: a line of it, and all of it in --json
    r = CliRunner().invoke(cli, ["report", str(folder), "--out", str(tmp_path / "again")])
    assert r.exit_code == 0 and "the plan against these cells: median |error| 11.1 % over 4 cells" in r.output
    r = CliRunner().invoke(cli, ["report", str(folder), "--out", str(tmp_path / "json"), "--json"])
    data = json.loads(r.output)["predicted"]
    assert (data["agreed"], len(data["cells"]), [u["model"] for u in data["unmatched"]]) == (1, 4, ["cnn"])


def test_the_cells_table_says_which_cut_a_fastest_cell_used_and_why(tmp_path):
    import dataclasses

    choice = {"rule": "least predicted p50", "cut": "t2", "p50_ms": 1.5,
              "candidates": [{"tensor": "t1", "bytes": 12544, "auto": True, "p50_ms": 2.25},
                             {"tensor": "t2", "bytes": 512, "auto": False, "p50_ms": 1.5}]}
    rng = np.random.default_rng(0)
    with ResultStore.in_folder(tmp_path / "s") as store:
        store.begin_run("r1", "small", {}, {})
        cell = _cell("cnn/fastest", "cnn", "me-fastest", {"links.mobile-edge.bandwidth": "1Mbit"})
        store.write_cell(dataclasses.replace(cell, operators=[{"partition": {"cut": "t2"}}], choice=choice),
                         _requests(rng, 2.0), [])
        store.write_cell(_cell("cnn/cloud", "cnn", "cloud", {"links.mobile-edge.bandwidth": "1Mbit"}),
                         _requests(rng, 3.0), [])
    write_report(tmp_path / "s")
    rows = {r["strategy"]: r for r in _csv(tmp_path / "s" / "report" / "tables" / "cells.csv")}
    assert rows["me-fastest"]["cut"] == "t2" and rows["cloud"]["cut"] == ""
    why = rows["me-fastest"]["cut_choice"]
    assert why.startswith("least predicted p50 of 2 candidate cuts: 1.50 ms (auto's cut t1: 2.25 ms)")
    assert "t2 (512 B) 1.50 ms" in why and rows["cloud"]["cut_choice"] == ""
