"""Benchmark of a sweep's fixed costs per cell, apart from its requests: the network per sweep
point (changed live vs brought up anew), and each cell's deploy (servers started, ORT
sessions loaded) and teardown (servers stopped).

The same sweep (a 3x3 bandwidth grid over the three-tier topology, fmnist_cnn, a single-host
and a two-host strategy, one warm-up and one measured request per cell) runs twice, side by
side in one process: with the network reused between points (the default) and with a new
network at every point. Needs root.

    .venv/bin/python benchmarks/bench_sweep.py [--points 3] [--out DIR]

Writes ``benchmarks/results/sweep.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import sigterm_as_interrupt  # noqa: E402

BANDWIDTHS = ["5Mbit", "20Mbit", "50Mbit", "100Mbit", "200Mbit"]
EXPERIMENT = """\
name: bench-sweep
topology: three_tier
models: [fmnist_cnn]
strategies:
  - {{name: edge, placement: edge}}
  - {{name: ec, operators: [{{partition: {{cut: auto}}}}], placement: [edge, cloud]}}
source: mobile
requests: {{warmup: 1, repeat: 1, inputs: 1}}
sweep:
  links.mobile-edge.bandwidth: {bw}
  links.edge-cloud.bandwidth: {bw}
"""


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def main() -> None:
    from emulation.probe import machine_cores, machine_memory_bytes
    from testbed.experiment import load_experiment
    from testbed.runner import run_experiment

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=3, help="values per bandwidth axis (points = this squared)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    sigterm_as_interrupt()
    bw = "[" + ", ".join(BANDWIDTHS[:args.points]) + "]"
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(EXPERIMENT.format(bw=bw))
        exp = load_experiment(str(path), [], cores=machine_cores(), memory_bytes=machine_memory_bytes())
        cells = len(exp.cells_grid()) * len(exp.strategies)
        for mode, reuse in (("reuse", True), ("rebuild", False)):
            t0 = time.monotonic()
            status, runner = run_experiment(exp, Path(tmp) / mode, reuse_network=reuse)
            wall = time.monotonic() - t0
            t = runner.timings
            network = t["bring_up_s"] + t["reconfigure_s"]
            # the first point's bring-up is the same in both modes; per point after it:
            later = (t["reconfigure_s"] if reuse else t["bring_up_s"][1:])
            results[mode] = {
                "status": status, "wall_s": round(wall, 2), "cells": cells, "points": len(exp.cells_grid()),
                "network_per_later_point_s": _median(later), "first_bring_up_s": t["bring_up_s"][0],
                "deploy_per_cell_s": _median(t["deploy_s"]), "teardown_per_cell_s": _median(t["teardown_s"]),
                "network_total_s": round(sum(network), 3),
                "overhead_per_cell_s": (sum(network) + sum(t["deploy_s"]) + sum(t["teardown_s"])) / cells}
            print(mode, json.dumps(results[mode]), flush=True)
    ratio = results["rebuild"]["network_per_later_point_s"] / results["reuse"]["network_per_later_point_s"]
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "kernel": platform.release()},
              "grid": f"{args.points}x{args.points} bandwidth points x 2 strategies (fmnist_cnn)",
              "modes": results, "rebuild_over_reuse": round(ratio, 1), "target": ">= 5x",
              "pass": ratio >= 5}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    r, b = results["reuse"], results["rebuild"]
    ms = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
    md = [f"# Sweep overhead per cell ({result['grid']})", "",
          f"{result['machine']['cpu']}, {result['machine']['cores']} cores, kernel {result['machine']['kernel']}; "
          "medians; requests excluded.", "",
          "| mode | network per later point | deploy per cell | teardown per cell | overhead per cell | wall |",
          "|---|---|---|---|---|---|",
          f"| reuse (live change + read-back) | {ms(r['network_per_later_point_s'])} | {ms(r['deploy_per_cell_s'])} | "
          f"{ms(r['teardown_per_cell_s'])} | {ms(r['overhead_per_cell_s'])} | {r['wall_s']:.1f} s |",
          f"| rebuild (stop + bring up) | {ms(b['network_per_later_point_s'])} | {ms(b['deploy_per_cell_s'])} | "
          f"{ms(b['teardown_per_cell_s'])} | {ms(b['overhead_per_cell_s'])} | {b['wall_s']:.1f} s |", "",
          f"Changing the network live is **{ratio:.1f}x** cheaper than rebuilding it (target >= 5x: "
          f"{'PASS' if ratio >= 5 else 'FAIL'}). First bring-up: {ms(r['first_bring_up_s'])}."]
    (out / "sweep.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
