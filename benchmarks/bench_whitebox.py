"""Benchmark of the white-box operators (QAT, pruning, distillation) on the offline models, side
by side.

For each model: the fp32 baseline, post-training static int8 (to compare QAT with), QAT,
structured pruning at two ratios, unstructured pruning, distillation into the default student
and DSPTQ (distill then static int8), with the operators' default budgets, prepared through `workloads.prepare.prepare` (the default
cache: a model's training time is what its cached build recorded), then every artifact of a
model timed in one interleaved loop (one ONNX Runtime thread, the evaluation inputs in turn).

    .venv/bin/python benchmarks/bench_whitebox.py [--models a b] [--samples 200] [--out DIR]

Writes ``benchmarks/results/whitebox.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_workloads import time_artifacts  # noqa: E402
from workloads.cache import Cache  # noqa: E402
from workloads.errors import WorkloadError  # noqa: E402
from workloads.operators import parse_chain  # noqa: E402

MODELS = ["fmnist_cnn", "fmnist_segnet", "efficientnet_lite0", "minilm_sentiment"]
CHAINS = {
    "fp32": [],
    "static int8 (PTQ)": ["quantize"],
    "QAT": [{"qat": {}}],
    "structured 30 %": [{"prune": {"ratio": 0.3}}],
    "structured 50 %": [{"prune": {"ratio": 0.5}}],
    "unstructured 50 %": [{"prune": {"kind": "unstructured", "ratio": 0.5}}],
    "distill": [{"distill": {}}],
    "DSPTQ": [{"distill": {}}, "quantize"],
}


def main() -> None:
    from workloads.prepare import prepare
    from workloads.quantize import cpu_features

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--chains", nargs="+", choices=list(CHAINS), default=list(CHAINS),
                    help="which columns (fp32 is always timed, as the reference)")
    ap.add_argument("--name", default="whitebox", help="results file name (without extension)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    chains = {k: v for k, v in CHAINS.items() if k == "fp32" or k in args.chains}
    log = lambda m: print(m, flush=True)  # noqa: E731
    prepared, rows = {}, []
    for m in args.models:
        for label, chain in chains.items():
            t = time.monotonic()
            try:
                prepared[(m, label)] = prepare(m, parse_chain(chain, "chain"), cache=Cache())
            except WorkloadError as e:
                prepared[(m, label)] = str(e)
            log(f"{m:20s} {label:20s} {time.monotonic() - t:7.1f} s")
        lat = time_artifacts(prepared, m, args.samples)
        base = lat["fp32"]["median_ms"]
        for label in chains:
            p = prepared[(m, label)]
            if isinstance(p, str):
                rows.append({"model": m, "strategy": label, "error": p})
                continue
            rep = next((p.manifest["report"][k] for k in ("prune", "distill", "qat") if k in p.manifest["report"]), {})
            rows.append({"model": m, "strategy": label, "metric": p.metric, "value": p.value, "baseline": p.baseline,
                         "median_ms": lat[label]["median_ms"], "speedup": base / lat[label]["median_ms"],
                         "size_bytes": p.size_bytes, "flops": rep.get("flops_after"),
                         "params": rep.get("params_after"), "sparsity": rep.get("sparsity"),
                         "training_s": rep.get("seconds"), "steps": (rep.get("history") or {}).get("steps")})
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "cpu_features": cpu_features()}, "started": time.time(), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=str))
    lines = ["# White-box operators (default budgets: qat and prune 1 epoch, distill 3; a model's own step cap where it has one: MiniLM 150 steps)", "",
             f"{result['machine']['cpu']}, {result['machine']['cores']} cores; latency = median over "
             f"{args.samples} evaluation inputs, 1 ORT thread, interleaved.", "",
             "| model | strategy | metric | value (baseline) | ms | speed-up | size | params | sparsity | "
             "training s (steps) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['strategy']} | error: {r['error']} |||||||")
            continue
        v = "n/a" if r["value"] is None else f"{r['value']:.4f}"
        b = "n/a" if r["baseline"] is None else f"{r['baseline']:.4f}"
        trained = "-" if r["training_s"] is None else f"{r['training_s']:.0f} ({r['steps']})"
        sparsity = "-" if r["sparsity"] is None else f"{r['sparsity']:.2f}"
        lines.append(f"| {r['model']} | {r['strategy']} | {r['metric']} | {v} ({b}) | {r['median_ms']:.3f} | "
                     f"{r['speedup']:.2f}x | {r['size_bytes'] / 1e6:.2f} MB | {r['params'] or '-'} | "
                     f"{sparsity} | {trained} |")
    md = "\n".join(lines) + "\n"
    (out / f"{args.name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
