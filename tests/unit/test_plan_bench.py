"""The planner's benchmark (benchmarks/bench_plan.py) reads its comparison from testbed/verify.py:
its results keep the format of those already stored (benchmarks/results/plan.json), and its
markdown gains the error per strategy and per tier. Rows built by hand; nothing is run."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.bench_plan import EC, ME, _compared, markdown
from testbed.verify import compare

STORED = json.loads((Path(__file__).parents[2] / "benchmarks" / "results" / "plan.json").read_text())


def _row(strategy: str, me: str, ms: float, **more) -> dict:
    return {"model": "cnn", "strategy": strategy, "placement": strategy, "point": {ME: me, EC: "1Mbit"},
            "p50_ms": ms, "p90_ms": ms, "compute_ms": ms / 2, "transmission_ms": ms / 4, **more}


def test_the_benchmarks_results_keep_their_format_and_add_the_error_per_strategy_and_tier():
    preds = [_row(s, me, ms, tolerance_verdict=None) for s, me, ms in
             (("mobile", "1Mbit", 1.0), ("edge", "1Mbit", 2.0), ("mobile", "200Mbit", 1.0), ("edge", "200Mbit", 0.9))]
    measured = [_row(s, me, ms, run_id="r", ok=10) for s, me, ms in
                (("mobile", "1Mbit", 1.1), ("edge", "1Mbit", 2.5), ("mobile", "200Mbit", 0.8), ("edge", "200Mbit", 0.85))]
    res = _compared(compare(preds, [], measured))
    assert [set(c) for c in res["cells"]] == [set(STORED["cells"][0])] * 4
    agree, differ = sorted(res["winners"], key=lambda w: w["agree"], reverse=True)
    assert set(agree) == set(next(w for w in STORED["winners"] if w["agree"]))
    # a disagreement adds both winners' measured p50, and their test (untested here: no requests)
    assert set(differ) == set(agree) | {"measured_ms", "test", "indistinguishable"}
    assert differ["measured_ms"] == {"mobile": 0.8, "edge": 0.85}
    assert differ["test"]["p"] is None and differ["indistinguishable"] is False
    res.update({k: STORED[k] for k in ("when", "machine", "state_start", "study", "values", "repeat", "plan_s",
                                       "plan_wall_s", "profile_s", "run_s")})
    text = markdown(res)
    assert "## Error per strategy and per tier (p50)" in text
    assert "| strategy | edge | 2 | " in text and "| tier | mobile | 2 | " in text
    assert "- cnn at ME 200Mbit, EC 1Mbit: predicted edge, measured mobile" in text
    assert "## Winners that differ" in markdown(STORED)     # results stored before the table still render
