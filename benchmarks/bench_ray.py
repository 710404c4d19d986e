"""Benchmark of the Ray executor against the local one on the same small sweep, side by side in
one run: are the stored rows the same (apart from timings), and what does Ray cost per cell?

The sweep: the three-tier topology at 2x2 bandwidth points, fmnist_cnn, a single-host and a
two-host strategy, 1 warm-up and 5 measured requests per cell. The local executor runs the
cells one after another on one network changed live between points; the Ray executor (a
local single-node cluster started for the run) runs each cell as a task with a network of its
own. Needs root.

    .venv/bin/python benchmarks/bench_ray.py [--out DIR]

Writes ``benchmarks/results/ray.{json,md}``.
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

from benchmarks.common import sigterm_as_interrupt  # noqa: E402

EXPERIMENT = """\
name: bench-ray
topology: three_tier
models: [fmnist_cnn]
strategies:
  - {name: edge, placement: edge}
  - {name: ec, operators: [{partition: {cut: auto}}], placement: [edge, cloud]}
source: mobile
requests: {warmup: 1, repeat: 5, inputs: 5}
sweep:
  links.mobile-edge.bandwidth: [10Mbit, 100Mbit]
  links.edge-cloud.bandwidth: [10Mbit, 100Mbit]
"""
SAME = {"cells": "cell, model, strategy, placement, point_json, status, requests, ok, metric_value",
        "requests": "cell, seq, input_index, status, bytes_sent, exit_segment, output_match",
        "hops": "cell, seq, idx, kind, src, dst, bytes"}
ORDER = {"cells": "cell", "requests": "cell, seq", "hops": "cell, seq, idx"}


def _rows(db: Path, table: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT {SAME[table]} FROM {table} ORDER BY {ORDER[table]}").fetchall()
    finally:
        con.close()


def main() -> None:
    from emulation.probe import machine_cores, machine_memory_bytes
    from testbed.experiment import load_experiment
    from testbed.runner import run_experiment

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    sigterm_as_interrupt()
    modes = {}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(EXPERIMENT)
        exp = load_experiment(str(path), [], cores=machine_cores(), memory_bytes=machine_memory_bytes())
        cells = len(exp.cells_grid()) * len(exp.models) * len(exp.strategies)
        for mode in ("local", "ray"):
            t0 = time.monotonic()
            status, runner = run_experiment(exp, Path(tmp) / mode, executor=mode)
            modes[mode] = {"status": status, "wall_s": round(time.monotonic() - t0, 2),
                           "per_cell_s": round((time.monotonic() - t0) / cells, 3)}
            print(mode, modes[mode], flush=True)
        same = {t: _rows(Path(tmp) / "local" / "results.sqlite", t) == _rows(Path(tmp) / "ray" / "results.sqlite", t)
                for t in SAME}
        counts = {t: len(_rows(Path(tmp) / "ray" / "results.sqlite", t)) for t in SAME}
    overhead = modes["ray"]["per_cell_s"] - modes["local"]["per_cell_s"]
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "cells": cells, "modes": modes, "identical_rows": same, "rows": counts,
              "ray_overhead_per_cell_s": round(overhead, 3)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray.json").write_text(json.dumps(result, indent=1))
    md = [f"# Ray executor vs local ({cells} cells: 2x2 bandwidth points x 2 strategies, fmnist_cnn, 5 requests)",
          "", f"{result['machine']['cpu']}, {result['machine']['cores']} cores; a local single-node Ray cluster "
          "started by the run (its start-up included).", "",
          "| executor | wall | per cell |", "|---|---|---|"]
    md += [f"| {m} | {v['wall_s']:.1f} s | {v['per_cell_s']:.2f} s |" for m, v in modes.items()]
    md += ["", f"Ray costs **{overhead:.2f} s more per cell** here (cluster start-up, a network per cell instead "
           "of one changed live, task dispatch).",
           "Identical rows apart from timings: " + ", ".join(f"{t} {'yes' if v else 'NO'} ({counts[t]} rows)"
                                                          for t, v in same.items()) + "."]
    (out / "ray.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
