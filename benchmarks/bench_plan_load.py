"""Benchmark of `testbed plan` under load against measurement, on the load study
(``studies/load.yaml``: EfficientNet-Lite0 from 8 phones to one edge, Poisson arrivals; its
three strategies).

1. ``testbed profile`` of the study (reused when stored);
2. ``testbed plan`` at fixed total rates (``--qps``, the grid's ``load.qps``): per strategy the
   predicted saturation rate and bottleneck, and p50 / p99 at each rate (testbed/queueing.py);
3. ``testbed run`` of the same rates (``--duration`` each), as users run it;
4. per (strategy, rate): predicted against measured p50 and p99 (the error of each, where both
   exist), and the predicted saturation rate against the highest measured answered rate.

Needs root. ``.venv/bin/python benchmarks/bench_plan_load.py [--qps 10 30 50 70 90] [--duration 10s]``
Writes ``benchmarks/results/plan-load.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_plan import _cli  # noqa: E402
from benchmarks.common import REPO, log, machine_state, sigterm_as_interrupt, write_results  # noqa: E402

STUDY = REPO / "studies" / "load.yaml"
QPS = "load.qps"


def _measured(folder: Path) -> dict[tuple[str, float], dict]:
    """(strategy, target qps) -> the cell's load figures, from the run's store."""
    con = sqlite3.connect(folder / "results.sqlite")
    out = {}
    for strategy, point, load in con.execute("SELECT strategy, point_json, load_json FROM cells WHERE status = 'done'"):
        fig = json.loads(load)
        out[(strategy, float(json.loads(point)[QPS]))] = fig
    con.close()
    return out


def main() -> None:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qps", nargs="+", default=["10", "30", "50", "70", "90"], help="total request rates")
    ap.add_argument("--duration", default="10s", help="how long each rate is offered")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    sigterm_as_interrupt()
    sets = ["--set", f"load.duration={args.duration}", "--set", f"load.qps={args.qps[0]}"]
    res: dict = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "study": str(STUDY.relative_to(REPO)),
                 "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                 "state_start": machine_state(), "qps": args.qps, "duration": args.duration}
    log("profiling the study's parts")
    _, res["profile_s"] = _cli("profile", str(STUDY), *sets, "--grid", f"{QPS}={','.join(args.qps)}")
    plan, res["plan_wall_s"] = _cli("plan", str(STUDY), *sets, "--grid", f"{QPS}={','.join(args.qps)}")
    res["plan_s"] = plan["seconds"]
    log(f"planned in {plan['seconds']:.2f} s; measuring {len(args.qps)} rates x {len(plan['predictions']) // len(args.qps)} strategies")
    raw = yaml.safe_load(STUDY.read_text())
    raw["load"] = dict(raw["load"], duration=args.duration)
    raw["sweep"] = {QPS: [float(v) for v in args.qps]}
    with tempfile.TemporaryDirectory(prefix="bench-plan-load-") as tmp:
        exp = Path(tmp) / "load-rates.yaml"
        exp.write_text(yaml.safe_dump(raw, sort_keys=False))
        _, res["run_s"] = _cli("run", str(exp), "--out", str(Path(tmp) / "out"))
        measured = _measured(Path(tmp) / "out")
    rows = []
    for p in plan["predictions"]:
        load = p["load"]
        m = measured.get((p["strategy"], float(p["point"][QPS])))
        lat = (m or {}).get("latency_ms") or {}
        rows.append({"strategy": p["strategy"], "qps": float(p["point"][QPS]),
                     "saturation_qps": load["saturation_qps"], "bottleneck": load["bottleneck"],
                     "predicted_p50_ms": load.get("p50_ms"), "predicted_p99_ms": load.get("p99_ms"),
                     "measured_p50_ms": lat.get("p50"), "measured_p99_ms": lat.get("p99"),
                     "offered_qps": (m or {}).get("offered_qps"), "answered_qps": (m or {}).get("throughput_rps")})
    for r in rows:
        for k in ("p50", "p99"):
            p, m = r[f"predicted_{k}_ms"], r[f"measured_{k}_ms"]
            r[f"error_{k}"] = None if p is None or m is None else (p - m) / m
    res.update(rows=rows, state_end=machine_state())
    write_results(Path(args.out), "plan-load", res, markdown(res))
    print(markdown(res))


def markdown(res: dict) -> str:
    def ms(v):
        return "-" if v is None else f"{v:.1f}"

    def pct(v):
        return "-" if v is None else f"{v * 100:+.0f} %"

    lines = [f"# `testbed plan` under load against measurement ({res['when']})", "",
             f"{res['machine']['cpu']}, {res['machine']['cores']} cores; load at start "
             f"{' / '.join(f'{v:.2f}' for v in res['state_start']['loadavg'])}. Study `{res['study']}` at fixed total "
             f"rates, {res['duration']} each; plan {res['plan_s']:.2f} s, profiling {res['profile_s']:.0f} s, the "
             f"measured rates {res['run_s']:.0f} s.", "",
             "| strategy | qps | answered | predicted saturation (bottleneck) | p50 predicted / measured | error | "
             "p99 predicted / measured | error |", "|---|---:|---:|---|---|---:|---|---:|"]
    for r in sorted(res["rows"], key=lambda r: (r["strategy"], r["qps"])):
        lines.append(f"| {r['strategy']} | {r['qps']:g} | {ms(r['answered_qps'])} | {r['saturation_qps']:.1f} "
                     f"({r['bottleneck']}) | {ms(r['predicted_p50_ms'])} / {ms(r['measured_p50_ms'])} | "
                     f"{pct(r['error_p50'])} | {ms(r['predicted_p99_ms'])} / {ms(r['measured_p99_ms'])} | "
                     f"{pct(r['error_p99'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
