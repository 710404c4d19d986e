#!/usr/bin/env python3
"""One real latency-vs-load curve: EfficientNet-Lite0 served to eight phones on one edge
(``star:mobiles=8`` scaled to this machine), three deployments side by side in one run, at
rising Poisson rates until the edge saturates.

Run from the repository root, as root (it builds the emulated network)::

    sudo .venv/bin/python benchmarks/bench_load_curve.py [--quick] [--rates 5,10,20,...]

Strategies: ``edge`` (the whole model on the edge), ``edge-sptq`` (static int8 on the edge),
``me-partition`` (partitioned: part 0 on each phone, part 1 on the edge). Each rate is one
cell per strategy (`testbed run` with ``load.scenario: server``, ``sources: 8``, a sweep over
``load.qps``); every number here is read back from the run's store. Per strategy and rate:
offered and answered rate, p50 / p99 latency from the scheduled send time, the share of
time spent queueing, the load generators' lateness; per strategy: the answered rate at
saturation (the highest measured) and the highest rate meeting p99 <= 300 ms.

Writes ``benchmarks/results/load-curve.json`` and ``.md`` and prints the markdown.
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

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testbed.load import capacities  # noqa: E402
from testbed.store import ResultStore  # noqa: E402
from testbed.summary import summarize  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
RATES = (5, 10, 20, 40, 60, 80, 120, 160)
QUICK_RATES = (5, 20, 40, 80)
TARGET_MS = 300.0
EXPERIMENT = """\
name: bench-load-curve
topology: star:mobiles=8
models: [efficientnet_lite0]
strategies:
  - {{name: edge,         placement: edge}}
  - {{name: edge-sptq,    operators: [quantize], placement: edge}}
  - {{name: me-partition, operators: [{{partition: {{cut: auto}}}}], placement: [source, edge]}}
requests: {{warmup: 2, inputs: 10, timeout: 10s}}
# qps: the sweep sets it at every point (a value is needed, or each cell would search for a rate)
load: {{scenario: server, sources: 8, duration: {duration}s, seed: 1, qps: 1, slo: {{p99: {target:g}ms}}}}
sweep: {{load.qps: [{rates}]}}
"""


def _fmt(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(result: dict) -> str:
    lines = [f"# Latency against load: EfficientNet-Lite0, 8 phones, one edge ({result['when']})", "",
             f"Machine: {result['machine']['cpu']} ({result['machine']['cores']} cores), kernel "
             f"{result['machine']['kernel']}; {result['duration_s']} s per rate, Poisson arrivals from 8 sources, "
             f"latency from each request's scheduled time; run took {result['wall_s']:.0f} s.", "",
             "| strategy | target req/s | offered | answered | p50 ms | p99 ms | queue % | late p99 ms | "
             f"p99 ≤ {TARGET_MS:g} ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        slo = r["slo"]
        verdict = ("met" if slo["met"] else "missed") + ("" if slo["sure"] else " (close)")
        lines.append(f"| {r['strategy']} | {r['target_qps']:g} | {_fmt(r['offered_qps'])} | "
                     f"{_fmt(r['throughput_rps'])} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | "
                     f"{_fmt(r['queue_share'] and 100 * r['queue_share'], 0)} | {_fmt(r['late_p99_ms'], 2)} | "
                     f"{verdict} |")
    lines += ["", "| strategy | answered req/s at saturation (highest measured) | highest rate meeting "
              f"p99 ≤ {TARGET_MS:g} ms | rate above it that missed |", "|---|---:|---:|---:|"]
    for s in result["strategies"]:
        lines.append(f"| {s['strategy']} | {_fmt(s['saturation_rps'])} | {_fmt(s['best_qps'], 0)} | "
                     f"{_fmt(s['above_qps'], 0)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"rates {QUICK_RATES}, 5 s each")
    ap.add_argument("--rates", help="comma-separated rates (req/s) instead of the default")
    ap.add_argument("--out", help="keep the run's folder here (default: a temporary one)")
    a = ap.parse_args()
    rates = [float(x) for x in a.rates.split(",")] if a.rates else list(QUICK_RATES if a.quick else RATES)
    duration = 5 if a.quick else 10
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        folder = Path(a.out) if a.out else Path(tmp) / "run"
        exp = Path(tmp) / "curve.yaml"
        exp.write_text(EXPERIMENT.format(duration=duration, target=TARGET_MS, rates=", ".join(f"{r:g}" for r in rates)))
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "testbed.cli", "run", str(exp), "--out", str(folder), "--json"],
                           cwd=REPO, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if p.returncode != 0:
            sys.stderr.write(p.stderr[-3000:])
            return p.returncode
        with ResultStore.in_folder(folder, create=False) as store:
            rows = summarize(store.cells(), store.requests(), store.hops())
    out_rows = []
    for r in sorted(rows, key=lambda r: (r["strategy"], r["load"]["target_qps"])):
        f = r["load"]
        out_rows.append({"strategy": r["strategy"], "target_qps": f["target_qps"], "offered_qps": f["offered_qps"],
                         "throughput_rps": f["throughput_rps"], "p50_ms": f["latency_ms"]["p50"],
                         "p99_ms": f["latency_ms"]["p99"], "queue_share": f["queue_share"],
                         "late_p99_ms": f["late_p99_ms"], "ok": f["ok"], "requests": f["requests"],
                         "slo": f["slo"]["p99"], "status": r["status"]})
    caps = {c["strategy"]: c for c in capacities(rows)}
    strategies = [{"strategy": s, "saturation_rps": max(x["throughput_rps"] for x in out_rows if x["strategy"] == s),
                   "best_qps": caps[s]["best"], "above_qps": caps[s]["above"]} for s in dict.fromkeys(
                       x["strategy"] for x in out_rows)]
    from emulation.probe import capabilities

    caps_machine = capabilities()
    result = {"when": time.strftime("%Y-%m-%d %H:%M"), "rates": rates, "duration_s": duration, "wall_s": wall,
              "machine": {"cpu": caps_machine.get("cpu_model") or platform.processor(),
                          "cores": os.cpu_count(), "kernel": platform.release(),
                          "load_average_end": os.getloadavg()},
              "rows": out_rows, "strategies": strategies}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load-curve.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (RESULTS / "load-curve.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
