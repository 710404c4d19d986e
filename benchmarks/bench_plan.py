"""Benchmark of `testbed plan` against measurement, on one of the studies:

- ``--study bandwidth`` (default): ``studies/bandwidth.yaml``, fmnist_cnn and fmnist_segnet,
  every tier and split, both links swept over 1-200 Mbit/s (a 6 x 6 grid);
- ``--study blackbox``: ``studies/blackbox.yaml`` (every black-box operator and hybrid on every
  tier and split: 20 strategies) with EfficientNet-Lite0 and MiniLM (``--models``), planned
  on a 6 x 6 grid of both links' bandwidths (1 Mbit/s .. 1 Gbit/s).

1. ``testbed profile`` (timed; profiles already stored are reused unless ``--again``);
2. ``testbed plan`` of the whole 36-point grid (timed: the goal is under 10 s);
3. ``testbed run`` of a subset of points (``--me`` x ``--ec``: each link's bandwidths; for the
   bandwidth study by default 1, 50 and 200 Mbit/s: 9 points, 90 cells), as users run it;
4. per measured cell, the predicted p50 against the measured median e2e: the error
   |predicted - measured| / measured (goal: median <= 10 %); per measured point and model, the
   predicted winner against the measured one, by the same rule (the fastest within the
   quality tolerance, the artifact's loss interval; goal >= 90 % agree). A disagreement is
   listed with both winners' measured p50, so that a near tie reads as one, and with the
   two-sided Mann-Whitney U test of the predicted winner's requests against the measured
   winner's: where p >= 0.05 the measurement cannot tell them apart (reported beside the
   agreement, which counts exact agreement only).

Needs root. ``.venv/bin/python benchmarks/bench_plan.py [--study bandwidth|blackbox] [--me 1Mbit 200Mbit]
[--ec 1Mbit 50Mbit] [--models M ...] [--repeat 10] [--again]``
Writes ``benchmarks/results/plan.{json,md}`` (bandwidth) or ``plan-blackbox.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, log, machine_state, sigterm_as_interrupt, write_results  # noqa: E402
from testbed.verify import compare, measured_cells, miss_text  # noqa: E402

ME, EC = "links.mobile-edge.bandwidth", "links.edge-cloud.bandwidth"
# study -> (file, models (None: the file's), grid planned (None: the file's sweep), measured ME, measured EC, results)
STUDIES = {
    "bandwidth": ("bandwidth.yaml", None, None, ["1Mbit", "50Mbit", "200Mbit"], ["1Mbit", "50Mbit", "200Mbit"], "plan"),
    "blackbox": ("blackbox.yaml", ["efficientnet_lite0", "minilm_sentiment"],
                 [f"{ME}=1Mbit..1Gbit:6", f"{EC}=1Mbit..1Gbit:6"], ["20Mbit", "200Mbit"], ["1Mbit", "50Mbit"],
                 "plan-blackbox"),
}
GOAL_ERROR, GOAL_AGREE, GOAL_PLAN_S = 0.10, 0.90, 10.0


def _cli(*args: str, timeout: float = 7200) -> tuple[dict, float]:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "testbed.cli", *args, "--json"], cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"testbed {' '.join(args)} exited {p.returncode}: {p.stderr.strip()[-800:]}")
    return json.loads(p.stdout), time.monotonic() - t0


def main() -> None:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", choices=sorted(STUDIES), default="bandwidth")
    ap.add_argument("--me", nargs="+", default=None, help="Mobile-Edge bandwidths to measure")
    ap.add_argument("--ec", nargs="+", default=None, help="Edge-Cloud bandwidths to measure")
    ap.add_argument("--models", nargs="+", default=None, help="the models (default: the study's)")
    ap.add_argument("--repeat", type=int, default=10, help="measured requests per cell")
    ap.add_argument("--again", action="store_true", help="profile again (replace stored profiles)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    name, models, grid, me, ec, results = STUDIES[args.study]
    study = REPO / "studies" / name
    models = args.models or models
    me, ec = args.me or me, args.ec or ec
    sets = ["--set", f"models=[{', '.join(models)}]"] if models else []
    grids = [x for g in (grid or []) for x in ("--grid", g)]
    sigterm_as_interrupt()
    res: dict = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "study": str(study.relative_to(REPO)),
                 "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                 "state_start": machine_state(), "me": me, "ec": ec, "repeat": args.repeat, "models": models}
    log("profiling the study's parts")
    prof, res["profile_s"] = _cli("profile", str(study), *sets, *(["--again"] if args.again else []))
    res["profiles"] = prof["profiles"]
    log(f"profiled in {res['profile_s']:.1f} s; planning the grid")
    plan, res["plan_wall_s"] = _cli("plan", str(study), *sets, *grids)
    res["plan_s"] = plan["seconds"]
    res["grid"] = {"points": len({json.dumps(w["point"], sort_keys=True) for w in plan["winners"]}),
                   "models": len({w["model"] for w in plan["winners"]}),
                   "strategies": len({r["strategy"] for r in plan["predictions"]})}
    log(f"planned {len(plan['predictions'])} predictions in {plan['seconds']:.2f} s "
        f"({res['plan_wall_s']:.1f} s with the command's start-up); measuring {len(me) * len(ec)} points")
    # the measured points' own predictions (a grid planned log-spaced need not hold them)
    at, _ = _cli("plan", str(study), *sets, "--grid", f"{ME}={','.join(me)}", "--grid", f"{EC}={','.join(ec)}")
    raw = yaml.safe_load(study.read_text())
    raw["sweep"] = {ME: me, EC: ec}
    raw["requests"] = dict(raw.get("requests") or {}, repeat=args.repeat)
    if models:
        raw["models"] = models
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        exp = Path(tmp) / f"{args.study}-subset.yaml"
        exp.write_text(yaml.safe_dump(raw, sort_keys=False))
        _, res["run_s"] = _cli("run", str(exp), "--out", str(Path(tmp) / "out"))
        measured = measured_cells(Path(tmp) / "out")
    res.update(_compared(compare(at["predictions"], at["winners"], measured)), state_end=machine_state())
    write_results(Path(args.out), results, res, markdown(res))
    print(markdown(res))


def _compared(got: dict) -> dict:
    """`testbed.verify.compare`'s result in this benchmark's results: cells and winners by
    their two bandwidths (ME, EC), a winner's measured p50 only where it differs."""
    cells = [{"model": c["model"], "strategy": c["strategy"], "me": c["point"][ME], "ec": c["point"][EC],
              "predicted_ms": c["predicted_ms"], "measured_ms": c["measured_ms"], "error": c["error"],
              "compute_ms": c["predicted_compute_ms"], "transmission_ms": c["predicted_transmission_ms"],
              "ok": c["ok"]} for c in got["cells"]]
    winners = [{"model": w["model"], "me": w["point"][ME], "ec": w["point"][EC], "predicted": w["predicted"],
                "measured": w["measured"], "agree": w["agree"],
                **({} if w["agree"] else {"measured_ms": w["measured_ms"], "test": w["test"],
                                           "indistinguishable": w["indistinguishable"]})} for w in got["winners"]]
    return {"cells": cells, "winners": winners, "median_abs_error": got["median_abs_error"],
            "agreement": got["agreement"], "agreed_or_indistinguishable": got["agreed_or_indistinguishable"],
            "by_strategy": got["by_strategy"], "by_tier": got["by_tier"],
            "unmatched": got["unmatched"]}


def markdown(res: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{v * 100:+.1f} %"

    def ms(v):
        return "-" if v is None else f"{v:.2f}"

    err, agree = res.get("median_abs_error"), res.get("agreement")
    grid = res.get("grid") or {"points": 36, "models": 2, "strategies": 5}     # (results before the grid was kept)
    lines = [f"# `testbed plan` against measurement ({res['when']})", "",
             f"{res['machine']['cpu']}, {res['machine']['cores']} cores; load at start "
             f"{' / '.join(f'{v:.2f}' for v in res['state_start']['loadavg'])}. Study `{res['study']}`"
             + (f" with {', '.join(res['models'])}" if res.get("models") else "") + "; measured "
             + (f"each link at {', '.join(res['values'])}" if "values" in res else      # (results before --me/--ec)
                f"Mobile-Edge at {', '.join(res['me'])} x Edge-Cloud at {', '.join(res['ec'])}")
             + f" ({res['repeat']} requests per cell).", "",
             "| | goal | got |", "|---|---|---|",
             f"| plan the {grid['points']}-point grid ({grid['models']} models x {grid['strategies']} strategies) | "
             f"< {GOAL_PLAN_S:g} s | {res['plan_s']:.2f} s "
             f"({res['plan_wall_s']:.1f} s with the command's start-up; profiling took {res['profile_s']:.0f} s, "
             f"the measured subset {res['run_s']:.0f} s) |",
             f"| median \\|predicted - measured\\| / measured of p50 e2e | <= {GOAL_ERROR:.0%} | "
             f"{'-' if err is None else f'{err * 100:.1f} %'} over {len(res['cells'])} cells |",
             f"| winner agreement | >= {GOAL_AGREE:.0%} | {'-' if agree is None else f'{agree * 100:.0f} %'} of "
             f"{len(res['winners'])} (point, model)"
             + ("" if "agreed_or_indistinguishable" not in res else       # (results before the test)
                f"; agreed or not told apart by the measurement (Mann-Whitney U, p >= 0.05): "
                f"{res['agreed_or_indistinguishable']} of {len(res['winners'])}") + " |", "",
             "## Cells (ms)", "", "| model | strategy | ME | EC | predicted | measured | error | compute | transmission |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(res["cells"], key=lambda c: -abs(c["error"] or 0)):
        lines.append(f"| {c['model']} | {c['strategy']} | {c['me']} | {c['ec']} | {ms(c['predicted_ms'])} | "
                     f"{ms(c['measured_ms'])} | {pct(c['error'])} | {ms(c['compute_ms'])} | {ms(c['transmission_ms'])} |")
    errors = res.get("by_strategy", []) + res.get("by_tier", [])         # (not in results before them)
    if errors:
        lines += ["", "## Error per strategy and per tier (p50)", "",
                  "| by | name | cells | median \\|error\\| | median error | worst | worst at |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {e['by']} | {e['name']} | {e['n']} | {e['median_abs_error'] * 100:.1f} % | "
                  f"{pct(e['median_error'])} | {pct(e['worst_error'])} | {e['worst_at']} |" for e in errors]
    if res.get("unmatched"):
        lines += ["", f"{len(res['unmatched'])} measured cells had no prediction (not in the plan)."]
    wrong = [w for w in res["winners"] if not w["agree"]]
    lines += ["", "## Winners that differ", ""]
    lines += [f"- {w['model']} at ME {w['me']}, EC {w['ec']}: predicted {w['predicted']}, measured {w['measured']} "
              f"(measured p50: {json.dumps(w.get('measured_ms'))}" + (f"; {miss_text(w)}" if miss_text(w) else "") + ")" for w in wrong] or ["- none"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
