"""The shipped trace example as a user runs it: `testbed run examples/trace-demo.yaml`, then
`testbed report` on its folder (8 s per cell instead of 25, enough to meet the Markov trace's
first drop to about 2 Mbit/s at 6.1 s). The report must show latency against the link's
bandwidth and the strategies' tails on the same trace."""
from __future__ import annotations

import csv
import json
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

from emulation.cleanup import find_leftovers

REPO = Path(__file__).resolve().parents[2]
SLOW_BPS = 10_000_000     # the trace's bad state is 1.1-2 Mbit/s, its good one 35-100 Mbit/s


def test_the_trace_demo_runs_and_its_report_plots_latency_against_the_trace(tmp_path):
    out = tmp_path / "trace-demo"
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "run", "examples/trace-demo.yaml", "--out", str(out),
                        "--set", "requests.duration=8s", "--set", "requests.warmup=1", "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout)
    assert summary["status"] == "done" and [c["strategy"] for c in summary["cells"]] == [
        "mobile", "me-partition", "edge"], summary["cells"]
    assert all(c["status"] == "done" and c["counts"]["ok"] > 20 for c in summary["cells"]), summary["cells"]

    db = sqlite3.connect(out / "results.sqlite")
    db.row_factory = sqlite3.Row
    for c in db.execute("SELECT strategy, trace_json FROM cells"):
        dirs = json.loads(c["trace_json"])["directions"]
        # the link's both directions replay the trace in every cell, mobile's included: 8 s of
        # 100 ms steps
        assert sorted(d["direction"] for d in dirs) == ["forward", "reverse"], dirs
        assert all(d["applied"] >= 60 and d["mismatches"] == 0 for d in dirs), dirs
    # a request's uplink hop meets the bandwidth in force at its first byte: the few that met
    # the drop take far longer than those on the good state (the cut tensor or the 3 kB input)
    for strategy in ("me-partition", "edge"):
        hops = db.execute("SELECT h.ms, h.trace_bandwidth_bps FROM hops h JOIN cells c ON c.cell = h.cell "
                          "WHERE c.strategy = ? AND h.kind = 'link' AND h.src = 'mobile' AND h.dst = 'edge'",
                          (strategy,)).fetchall()
        slow = [h["ms"] for h in hops if h["trace_bandwidth_bps"] < SLOW_BPS]
        fast = [h["ms"] for h in hops if h["trace_bandwidth_bps"] >= SLOW_BPS]
        assert slow and fast and statistics.median(slow) > 3 * statistics.median(fast), (strategy, slow, fast)
    assert not db.execute("SELECT 1 FROM hops h JOIN cells c ON c.cell = h.cell WHERE c.strategy = 'mobile' "
                          "AND h.trace_link IS NOT NULL").fetchall()      # mobile alone crosses no link
    db.close()

    rep = subprocess.run([sys.executable, "-m", "testbed.cli", "report", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert rep.returncode == 0, rep.stderr[-3000:]
    report = out / "report"
    figures = sorted(f.name for f in (report / "figures").glob("*trace*.png"))
    assert figures, sorted(f.name for f in (report / "figures").iterdir())
    html = (report / "index.html").read_text()
    assert all(f in html for f in figures) and "On a link trace" in html
    with open(report / "tables" / "trace_tails.csv") as f:
        tails = list(csv.DictReader(f))
    assert [r["strategy"] for r in tails] == ["mobile", "me-partition", "edge"], tails
    assert all(r["p99_ms"] and float(r["p99_ms"]) >= float(r["p50_ms"]) for r in tails), tails
    assert find_leftovers() == []
