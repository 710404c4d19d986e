"""The report's link-trace part, from a synthetic store: latency over time with the trace's
bandwidth, the strategies' tails on the same trace, and the replay's figures beside them."""
from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
from matplotlib.figure import Figure

from testbed.report import _trace_figure, _colors, trace_tails, write_report
from testbed.stats import study_groups
from testbed.store import HopRow, RequestRow, ResultStore
from tests.unit.test_report import _cell

# the trace: 50 Mbit/s, 5 Mbit/s from 1 s to 2 s, then 50 again
APPLIED = [[0.4, 50_000_000, None], [1000.6, 5_000_000, None], [2000.5, 50_000_000, None]]
LABEL = "mobile-edge forward"


def _replay(missed: int = 0) -> dict:
    return {"t0_ns": 1, "directions": [{
        "link": "mobile-edge", "direction": "forward", "file": "/x/steps.csv", "mode": "loop", "window_ms": None,
        "steps": 3 + missed, "applied": 3, "missed": missed, "late": 1, "lag_ms": {"p50": 0.5, "p99": 6.0, "max": 6.2},
        "checked": 3, "mismatches": 0, "applied_steps": APPLIED}]}


def _traced_cell(store, strategy: str, crosses: bool, slow_ms: float, fast_ms: float, missed: int = 0):
    """Requests every 100 ms over 3 s; a request sent while the link was at 5 Mbit/s takes
    ``slow_ms``, else ``fast_ms``; those of a strategy that ``crosses`` the link have a hop on it."""
    rows, hops = [], []
    for seq in range(30):
        at = seq * 100.0 + 50.0
        rate = 5_000_000 if 1000 <= at < 2000 else 50_000_000
        e2e = (slow_ms if rate == 5_000_000 else fast_ms) * (1 + 0.01 * (seq % 3))
        rows.append(RequestRow(seq=seq, input_index=0, status="ok", e2e_ms=e2e, compute_ms=1.0, transmission_ms=1.0,
                               serialization_ms=0.1, overhead_ms=0.1, bytes_sent=100))
        if crosses:
            hops.append(HopRow(seq=seq, idx=0, kind="link", src="mobile", dst="edge", direction="request", ms=1.0,
                               bytes=100, trace_at_ms=at, trace_link=LABEL, trace_bandwidth_bps=rate,
                               trace_delay_ms=0.0))
    store.write_cell(replace(_cell(f"cnn/{strategy}/t", "cnn", strategy, {}), trace=_replay(missed)), rows, hops)


def _store(folder):
    with ResultStore.in_folder(folder) as store:
        store.begin_run("r1", "trace", {"name": "trace"}, {"cores": 2.0})
        _traced_cell(store, "mobile", crosses=False, slow_ms=8.0, fast_ms=8.0)
        _traced_cell(store, "split", crosses=True, slow_ms=60.0, fast_ms=6.0, missed=1)
        _traced_cell(store, "edge-q", crosses=True, slow_ms=30.0, fast_ms=5.0)
        store.end_run("r1", "done")
    return folder


def test_the_tails_on_one_trace_compare_the_strategies_and_carry_the_replays_figures(tmp_path):
    folder = _store(tmp_path / "out")
    with ResultStore.in_folder(folder, create=False) as store:
        cells, requests = store.cells(), store.requests()
    ok = {}
    for r in requests:
        ok.setdefault(r["cell"], []).append(r)
    tails = {t["strategy"]: t for t in trace_tails(study_groups(cells), ok)}
    assert set(tails) == {"mobile", "split", "edge-q"}
    split = tails["split"]
    e2e = [r["e2e_ms"] for r in ok["cnn/split/t"]]
    assert (split["p50_ms"], split["p90_ms"], split["p99_ms"]) == tuple(np.percentile(e2e, [50, 90, 99]).tolist())
    assert split["p99_ms"] > 55 > split["p50_ms"]         # the 5 Mbit/s second is its tail
    assert tails["edge-q"]["p99_ms"] < split["p99_ms"] and tails["mobile"]["p99_ms"] < 9
    assert (split["steps"], split["missed"], split["late"], split["lag_p50_ms"], split["lag_p99_ms"]) == (4, 1, 1, 0.5, 6.0)
    assert split["trace"] == "steps.csv (loop) on mobile-edge forward"


def test_the_trace_figure_draws_latency_against_time_with_the_applied_bandwidth(tmp_path):
    folder = _store(tmp_path / "out")
    with ResultStore.in_folder(folder, create=False) as store:
        cells, requests, times = store.cells(), store.requests(), store.trace_times()
    assert times[("cnn/split/t", 12)] == 1250.0 and ("cnn/mobile/t", 0) not in times
    ok = {}
    for r in requests:
        ok.setdefault(r["cell"], []).append(r)
    groups = study_groups(cells)
    fig, caption = _trace_figure("cnn", groups[0], ok, times, _colors(groups))
    assert isinstance(fig, Figure)
    ax, bw = fig.axes
    dots = {c.get_label(): c.get_offsets() for c in ax.collections}
    assert set(dots) == {"split", "edge-q"}                  # mobile never crosses the traced link
    split = dots["split"]
    assert np.allclose(split[:, 0], [(s * 100 + 50) / 1000 for s in range(30)])
    assert all(y > 55 for x, y in split if 1.0 <= x < 2.0) and all(y < 7 for x, y in split if not 1.0 <= x < 2.0)
    [line] = bw.get_lines()
    assert list(line.get_xdata()) == [0.0004, 1.0006, 2.0005] and list(line.get_ydata()) == [50.0, 5.0, 50.0]
    assert "Not drawn (their requests cross no traced direction): mobile" in caption


def test_the_report_has_the_trace_section_its_figure_and_table(tmp_path):
    folder = _store(tmp_path / "out")
    report = write_report(folder)
    assert any(p.name == "cnn-trace-1.png" for p in report.figures)
    with open(folder / "report" / "tables" / "trace_tails.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["strategy"] for r in rows) == ["edge-q", "mobile", "split"]
    html = report.index.read_text()
    assert "On a link trace" in html and "steps.csv (loop) on mobile-edge forward" in html


def test_a_store_without_traces_has_no_trace_section(tmp_path):
    from tests.unit.test_report import build_study
    folder = build_study(tmp_path / "plain")
    report = write_report(folder)
    assert not any("trace" in p.name for p in report.figures + report.tables)
    assert "On a link trace" not in report.index.read_text()


def test_a_replay_that_missed_steps_is_a_note_under_the_summary(tmp_path):
    """`testbed run` / `results show` put a cell whose trace was not kept to under its table;
    a replay that kept to it is not flagged."""
    from testbed.summary import summarize, trace_flags
    folder = _store(tmp_path / "out")
    with ResultStore.in_folder(folder, create=False) as store:
        rows = {r["strategy"]: r for r in summarize(store.cells(), store.requests(), store.hops())}
    assert rows["split"]["host_flags"] == ["mobile-edge forward: 1 of 4 trace steps missed (apply lag p99 6.0 ms)"]
    assert rows["edge-q"]["host_flags"] == [] and rows["mobile"]["host_flags"] == []
    bad = _replay()
    bad["directions"][0].update(mismatches=2, first_mismatch="mobile's gso_max_segs reads 3, asked 2", error="boom")
    assert trace_flags(bad) == ["mobile-edge forward: 2 read-backs differed (mobile's gso_max_segs reads 3, asked 2); "
                                "replay failed: boom (apply lag p99 6.0 ms)"]
    assert trace_flags(None) == []
