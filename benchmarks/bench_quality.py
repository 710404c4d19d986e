"""Quality with its uncertainty: each offline model's baseline, every operator's quality loss,
and early exit's exit rate against quality loss, each with its 95 % interval, on the held-out
evaluation sets.

Every artifact is prepared through `workloads.prepare.prepare` (the default cache: built
artifacts are reused, missing ones are built, white-box ones take minutes each on 2 cores).
Its metric, the untransformed model's and the loss come with the intervals `prepare` measured
(`workloads.quality`: a paired bootstrap over the evaluation samples, BCa, 2000 replicates,
seed 0), beside the paired test of the per-sample scores the report uses
(`testbed.stats.paired_test`: exact McNemar for 1/0 scores, Wilcoxon for pixel accuracy).

Early exit (heads): the fp32 heads artifact of each classifier is run on the evaluation set
with every exit computed (`workloads.early_exit.exit_answers`); at each threshold of 0.5-0.95
the answers give the exit rate and, against the untransformed model's per-sample data saved
beside the artifact, the metric's loss with its interval (`workloads.quality.paired_interval`),
the same way `prepare` measures an artifact's.

    .venv/bin/python benchmarks/bench_quality.py [--quick] [--models a b] [--out DIR]

``--quick``: the baselines, the black-box operators of fmnist_cnn and fmnist_segnet and
fmnist_cnn's exit thresholds (a few minutes on a warm cache). Writes
``benchmarks/results/quality.{json,md}`` (``quality-quick.*`` with ``--quick``).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workloads.models import get_model  # noqa: E402
from benchmarks.common import (errors_markdown, log, machine_state, run_sections, sigterm_as_interrupt,  # noqa: E402
                               write_results)

MODELS = ["fmnist_cnn", "fmnist_segnet", "minilm_sentiment", "efficientnet_lite0"]
QUICK_MODELS = ["fmnist_cnn", "fmnist_segnet"]
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
HEADS = [{"early_exit": {"kind": "heads"}}]
# (label, chain, parts, white-box): the operators one by one, then the demo's and the white-box
# study's combinations (examples/demo.yaml, studies/whitebox.yaml)
BLACKBOX = [
    ("quantize static", "static", 1),
    ("quantize dynamic", "dynamic", 1),
    ("early_exit heads (0.8)", HEADS, 1),
    ("early_exit skip", [{"early_exit": {"kind": "skip"}}], 1),
    ("partition (2 parts)", ["partition"], 2),
    ("quantize + early_exit heads (0.9)", ["quantize", {"early_exit": {"kind": "heads", "threshold": 0.9}}], 1),
    ("quantize + partition", ["quantize", "partition"], 2),
]
WHITEBOX = [
    ("qat", ["qat"], 1),
    ("prune structured 50 %", [{"prune": {"kind": "structured", "ratio": 0.5}}], 1),
    ("prune unstructured 75 %", [{"prune": {"kind": "unstructured", "ratio": 0.75}}], 1),
    ("distill", ["distill"], 1),
    ("distill + quantize (DSPTQ)", ["distill", "quantize"], 1),
]
# white-box operators train on labelled data: EfficientNet-Lite0 has none offline (it is judged
# by agreement with itself), so they are left out for it (a run tried: agreement near 0)
WHITEBOX_MODELS = ("fmnist_cnn", "minilm_sentiment", "fmnist_segnet")
TASKS_WITH_HEADS = ("classification", "text_classification")
# the order sections run in: cheap and cached first, so that a run cut short by time keeps the
# most rows (MiniLM's 3,817 evaluation sentences make each of its artifacts minutes)
ORDER = ["fmnist_cnn", "fmnist_segnet", "efficientnet_lite0", "whitebox:fmnist_cnn", "minilm_sentiment",
         "whitebox:fmnist_segnet", "whitebox:minilm_sentiment"]


def quantize_chain(model: str, mode: str) -> list:
    """Plain `quantize` where its auto mode is ``mode`` (static for images, dynamic for text:
    the demo's and the studies' artifact, shared through the cache), else the mode named."""
    auto = "dynamic" if get_model(model).task == "text_classification" else "static"
    return ["quantize"] if mode == auto else [{"quantize": {"mode": mode}}]


def _interval(iv: dict | None, key: str) -> list | None:
    return None if not iv else iv.get(key)


def artifact_row(model: str, label: str, chain: list, parts: int) -> dict:
    """Prepare one artifact (or find it in the cache) and read its quality with intervals."""
    from testbed.stats import paired_test
    from workloads.errors import WorkloadError
    from workloads.operators import parse_chain
    from workloads.prepare import prepare
    from workloads.quality import BASELINE_SCORES_FILE, SCORES_FILE

    t0 = time.monotonic()
    if isinstance(chain, str):
        chain = quantize_chain(model, chain)
    try:
        p = prepare(model, parse_chain(chain, "bench"), parts=parts)
    except WorkloadError as e:
        return {"model": model, "operator": label, "error": str(e)}
    q = p.manifest["quality"]
    iv = q.get("interval") or {}
    row = {"model": model, "operator": label, "metric": p.metric, "value": p.value, "baseline": p.baseline,
           "loss": None if p.value is None or p.baseline is None else p.baseline - p.value,
           "value_ci": _interval(iv, "value"), "baseline_ci": _interval(iv, "baseline"),
           "loss_ci": _interval(iv, "loss"), "samples": iv.get("samples"), "exact": iv.get("exact"),
           "method": iv.get("method"), "interval_note": iv.get("note"), "statistic": iv.get("statistic"),
           "cached": p.cached, "seconds": round(time.monotonic() - t0, 1), "artifact": str(p.path)}
    table = (p.manifest["report"].get("early_exit") or {}).get("table")
    if table:
        threshold = p.manifest["report"]["early_exit"]["thresholds"][0]
        row["exit_rate"] = next((r["exit_rate"] for r in table["thresholds"] if r["threshold"] == threshold), None)
    try:
        test = paired_test(np.load(p.path / BASELINE_SCORES_FILE), np.load(p.path / SCORES_FILE))
        row.update(test=test["test"], p=test["p"], differing=test["nonzero"])
    except (OSError, ValueError) as e:
        row["test_note"] = str(e)
    return row


def threshold_rows(model: str) -> list[dict]:
    """Exit rate and quality loss with its interval at each threshold, from the fp32 heads
    artifact's exits run on every evaluation sample."""
    from workloads.cache import Cache
    from workloads.early_exit import exit_answers
    from workloads.metrics import class_counts
    from workloads.models import BuildContext, get_model
    from workloads.operators import parse_chain
    from workloads.prepare import prepare
    from workloads.quality import BASELINE_COUNTS_FILE, BASELINE_SCORES_FILE, metric_of, paired_interval

    entry = get_model(model)
    p = prepare(model, parse_chain(HEADS, "bench"))
    data = entry.dataset("eval", BuildContext(cache=Cache(), weights=entry.weights[0]))
    statistic = p.manifest["quality"]["interval"]["statistic"]
    if data.labelled:
        target = np.asarray(data.labels)
    else:       # agreement: the untransformed model's answers are the target
        target, _ = exit_answers(prepare(model, ()).path, data, grid=())
    final, at = exit_answers(p.path, data, THRESHOLDS)
    if statistic == "mean":
        base = np.load(p.path / BASELINE_SCORES_FILE)
        per_sample = lambda answer: (answer == target).astype(np.float64)  # noqa: E731
    else:
        base = np.load(p.path / BASELINE_COUNTS_FILE)
        per_sample = lambda answer: class_counts(answer, target, base.shape[1])  # noqa: E731
    rows = []
    for t, (answer, exits) in at.items():
        scores = per_sample(answer)
        iv = paired_interval(statistic, scores, base)
        value, baseline = float(metric_of(statistic, scores)), float(metric_of(statistic, base))
        rows.append({"model": model, "threshold": t, "metric": p.metric, "statistic": statistic,
                     "exit_rate": float(np.any(exits, axis=0).mean()) if exits else 0.0,
                     "exit_rates": [float(e.mean()) for e in exits], "value": value, "baseline": baseline,
                     "loss": baseline - value, "loss_ci": iv["loss"], "value_ci": iv["value"],
                     "samples": iv["samples"], "method": iv["method"], "interval_note": iv["note"]})
    return rows


def _pct(v) -> str:
    return "n/a" if v is None else f"{v * 100:.2f}"


def _ci(ci) -> str:
    return "no interval" if not ci else f"[{ci[0] * 100:.2f}, {ci[1] * 100:.2f}]"


def _p(v) -> str:
    return "-" if v is None else (f"{v:.2g}" if v >= 1e-4 else "< 1e-4")


def markdown(res: dict) -> str:
    lines = [f"# Quality with 95 % intervals{' (--quick)' if res['quick'] else ''}", "",
             f"{res['machine']['cpu']}, {res['machine']['cores']} cores, {res['when']}; load at start "
             f"{res['state_start']['loadavg'][0]:.2f}. Metric, loss (baseline − artifact) and intervals in points "
             "of % (paired bootstrap, BCa, 2000 replicates); `exact`: a partition, the untransformed graph "
             "by construction. Test: the report's paired test of the per-sample scores (McNemar on 1/0 "
             "scores, Wilcoxon on pixel accuracy).", ""]
    def table(title: str, header: list[str], rows: list[dict], cells) -> None:
        if not rows:
            return
        lines.extend([f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)])
        for r in rows:
            if "error" in r:        # the model and what was asked, then the one-line error
                asked = [r["model"]] + ([r["operator"]] if r.get("operator") not in (None, "none") else [])
                lines.append("| " + " | ".join(asked) + f" | not applicable: {r['error']} "
                             + "|" * (len(header) - len(asked)))
            else:
                lines.append("| " + " | ".join(str(c) for c in cells(r)) + " |")
        lines.append("")

    table("Baselines", ["model", "metric", "value", "95 % interval", "n"], res.get("baselines") or [],
          lambda r: [r["model"], r["metric"] + (" (agreement with itself: 1 by definition)"
                                                if r["metric"] == "agreement" else ""),
                     _pct(r["value"]), _ci(r["value_ci"]), r["samples"]])
    table("Operators: quality loss", ["model", "operator", "metric (baseline)", "loss", "95 % interval", "n",
                                      "exit rate", "test, p (differing)"], res.get("operators") or [],
          lambda r: [r["model"], r["operator"], f"{r['metric']} {_pct(r['value'])} ({_pct(r['baseline'])})",
                     _pct(r["loss"]), "0 (exact)" if r.get("exact") else _ci(r["loss_ci"]), r["samples"],
                     "-" if r.get("exit_rate") is None else f"{r['exit_rate'] * 100:.1f} %",
                     "-" if r.get("test") is None else f"{r['test']}, {_p(r['p'])} ({r['differing']})"])
    table("Early exit (heads): exit rate against quality loss",
          ["model", "threshold", "exit rate (per exit)", "metric", "loss", "95 % interval", "n"],
          res.get("thresholds") or [],
          lambda r: [r["model"], r["threshold"],
                     f"{r['exit_rate'] * 100:.1f} % (" + " / ".join(f"{e * 100:.1f}" for e in r["exit_rates"]) + ")",
                     f"{r['metric']} {_pct(r['value'])}", _pct(r["loss"]), _ci(r["loss_ci"]), r["samples"]])
    missing = res.get("missing") or []
    if missing:
        lines += ["## Not run", ""] + [f"- {m}" for m in missing] + [""]
    lines += errors_markdown(res.get("errors") or {})
    return "\n".join(lines)


def main() -> None:
    from workloads.quantize import cpu_features

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="baselines, fmnist models' black-box operators, "
                                                          "fmnist_cnn's thresholds")
    ap.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(MODELS)}")
    ap.add_argument("--no-whitebox", action="store_true", help="leave out the white-box operators")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    sigterm_as_interrupt()          # a stop (SIGTERM or Ctrl-C) still writes the rows done, and says what is left
    models = args.models or (QUICK_MODELS if args.quick else MODELS)
    for m in models:
        get_model(m)
    whitebox = not (args.quick or args.no_whitebox)
    res = {"quick": args.quick, "models": models, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "cpu_features": cpu_features()}, "state_start": machine_state(),
           "baselines": [], "operators": [], "thresholds": []}
    baselines = MODELS if args.models is None else models
    heads_models = [m for m in models if get_model(m).task in TASKS_WITH_HEADS]
    if args.quick:
        heads_models = heads_models[:1]
    stem = "quality-quick" if args.quick else "quality"
    out = Path(args.out)

    def section(sec: str):
        kind, _, model = sec.partition(":")
        if kind == "baseline":
            res["baselines"].append(artifact_row(model, "none", [], 1))
        elif kind == "thresholds":
            res["thresholds"].extend(threshold_rows(model))
        else:
            for label, chain, parts in (BLACKBOX if kind == "blackbox" else WHITEBOX):
                row = artifact_row(model, label, chain, parts)
                said = row.get("error") or f"loss {row['loss']} {row['loss_ci']}"
                log(f"{model} {label}: {said} ({row.get('seconds', 0)} s)")
                res["operators"].append(row)
                write_results(out, stem, res, markdown(res))          # what is done so far survives a stop
        return None

    sections = []
    for item in ORDER:
        kind, _, m = item.rpartition(":")
        if kind == "whitebox":
            sections += [item] if whitebox and m in models and m in WHITEBOX_MODELS else []
            continue
        sections += [f"baseline:{m}"] if m in baselines else []
        sections += [f"blackbox:{m}"] if m in models else []
        sections += [f"thresholds:{m}"] if m in heads_models else []
    sections += [f"baseline:{m}" for m in baselines if m not in ORDER]
    res["missing"], done = [], {}
    try:
        run_sections(done, sections, section)
    except KeyboardInterrupt:
        res["missing"].append("interrupted: " + ", ".join(s for s in sections if s not in done))
    res["errors"] = done.get("errors", {})
    res["state_end"] = machine_state()
    write_results(out, stem, res, markdown(res))


if __name__ == "__main__":
    main()
