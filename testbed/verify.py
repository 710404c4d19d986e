"""The plan against measurement: `testbed plan`'s predictions (testbed/plan.py) beside what a
`testbed run` stored, cell by cell and winner by winner. `testbed report` shows it, and
``benchmarks/bench_plan.py`` measures the planner with it.

- :func:`measured_cells`: per done single-stream cell of a store, the measured p50 and p90 of
  the end-to-end latency over its ok requests and the medians of compute and transmission
  (`testbed.summary.summarize`'s numbers). :func:`measured_load_from`: per done cell under a
  server scenario's load, at its rate, the measured p50 and p99 and each latency target's
  verdict; other loads (closed loops) are left out: a plan predicts one request at a time, or
  Poisson arrivals at a rate (`testbed.queueing`).
- :func:`predictions_for_store`: each run's experiment rebuilt from the store (``runs.config``)
  and planned at its own sweep points (``make_plan(exp, [])``), the predictions kept for the
  cells the store holds; when a plan cannot be made (a part without a profile, an experiment
  that does not load again) the reason in one line instead.
- :func:`compare`: per cell the signed error (predicted − measured) / measured of p50 and p90;
  per (point, model) the predicted winner against the measured one by the plan's own rule
  (the fastest by p50 among the strategies within the quality tolerance when any has a
  verdict, else among all), both taken over the strategies that were measured; where they
  differ, the predicted winner's requests tested against the measured winner's (two-sided
  Mann-Whitney U): a miss the measurement cannot tell apart is counted beside, never as, an
  agreement; the errors
  summarised per strategy and per tier (the placement, e.g. ``mobile>edge``). A measured cell
  without a prediction is listed as unmatched, never dropped.
- :func:`compare_load`: the same for cells under load: predicted p50 and p99 (queueing)
  against measured, the predicted saturation rate beside the answered rate, and the winner by
  the load study's rule (lowest p99 among those within tolerance meeting every target).
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path

from topologies.errors import TestbedError

from .experiment import point_label
from .plan import _winner, make_plan
from .recommend import TOLERANCE
from .stats import ALPHA, ok_latencies, two_samples
from .store import ResultStore
from .summary import summarize


def point_key(point: dict) -> str:
    """A sweep point as text that is equal for the store's point (values as the file wrote
    them, through JSON) and the plan's (values as strings, lists kept)."""
    def norm(v):
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        return str(v)

    return json.dumps(norm(dict(point)), sort_keys=True)


def _cell_key(row: dict) -> tuple[str, str, str]:
    return row["model"], row["strategy"], point_key(row["point"])


# --- measured ---------------------------------------------------------------------------------

def measured_from(cells: list[dict], requests: list[dict]) -> list[dict]:
    """:func:`measured_cells` of rows already read from a store."""
    out = []
    e2e = ok_latencies(requests)
    for c, s in zip(cells, summarize(cells, requests, [])):
        if c["status"] != "done" or c.get("load"):
            continue
        out.append({"model": c["model"], "strategy": c["strategy"], "placement": c["placement"],
                    "point": c["point"], "run_id": c["run_id"], "ok": s["counts"]["ok"], "p50_ms": s["e2e_p50"],
                    "p90_ms": s["e2e_p90"], "compute_ms": s["compute_p50"], "transmission_ms": s["transmission_p50"],
                    "e2e_ms": e2e.get(c["cell"], []), "cpu_ms": _cpu_per_host(c)})
    return out


def _cpu_per_host(cell: dict) -> dict[str, float]:
    """Per host of a cell the median CPU time of an inference there (its servers' traces; a
    run before they were kept has none)."""
    out = {}
    for host, h in (cell.get("hosts") or {}).items():
        v = ((h or {}).get("compute") or {}).get("cpu_p50_ms")
        if v is not None:
            out[host] = float(v)
    return out


def _planned_load(c: dict) -> bool:
    """A done cell a plan predicts under load: the server scenario at its rate (each rate a
    search tried is a cell of its own; the plan of a searching run predicts the highest rate
    instead, so those cells come out unmatched)."""
    f = c.get("load") or {}
    return c["status"] == "done" and f.get("scenario") == "server" and f.get("target_qps") is not None


def measured_load_from(cells: list[dict]) -> list[dict]:
    """Per done server-scenario cell at a fixed rate: model, strategy, placement, point,
    run_id, ok, the rate asked (``target_qps``), offered and answered (req/s), p50_ms and
    p99_ms of e2e under the load (None: beyond the answers) and each latency target's verdict
    (``slo``: percentile -> met)."""
    out = []
    for c in cells:
        if not _planned_load(c):
            continue
        f = c["load"]
        lat = f.get("latency_ms") or {}
        out.append({"model": c["model"], "strategy": c["strategy"], "placement": c["placement"], "point": c["point"],
                    "run_id": c["run_id"], "ok": f.get("ok"), "target_qps": f["target_qps"],
                    "offered_qps": f.get("offered_qps"), "answered_qps": f.get("throughput_rps"),
                    "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"),
                    "slo": {k: v["met"] for k, v in (f.get("slo") or {}).items()}})
    return out


def measured_cells(store_or_folder: ResultStore | str | Path) -> list[dict]:
    """Per done single-stream cell: model, strategy, placement, point, run_id, ok (its ok
    requests), p50_ms and p90_ms of e2e over them, and the medians of compute_ms and
    transmission_ms (None where no request was ok)."""
    if isinstance(store_or_folder, ResultStore):
        return measured_from(store_or_folder.cells(), store_or_folder.requests())
    with ResultStore.in_folder(store_or_folder, create=False) as store:
        return measured_from(store.cells(), store.requests())


# --- predicted --------------------------------------------------------------------------------

def _budget(machine: dict | None) -> tuple[float, int]:
    """The cores and memory a run's experiment was loaded with (its machine, as stored), else this machine's."""
    from emulation.probe import machine_cores, machine_memory_bytes

    m = machine or {}
    return float(m.get("cores") or machine_cores()), int(m.get("memory_bytes") or machine_memory_bytes())


def _plan_run(run: dict, cache, tolerance: float) -> dict:
    """The plan (``Plan.to_dict()``) of one run's experiment at its own sweep points;
    TestbedError in one line when it cannot be made."""
    from .experiment import load_experiment_dict

    config = run.get("config") or {}
    if (config.get("load") or {}).get("scenario", "single-stream") not in ("single-stream", "server"):
        raise TestbedError(f"it measured under load ({config['load']['scenario']}): a plan predicts one "
                           "request at a time, or Poisson arrivals at a rate (load.scenario: server)")
    cores, memory = _budget(run.get("machine"))
    exp = load_experiment_dict(config, [], cores=cores, memory_bytes=memory, source=f"run {run['run_id']}'s config")
    return make_plan(exp, [], tolerance, cache).to_dict()


def _plan_or_reason(run: dict, cache, tolerance: float) -> dict | str:
    try:
        return _plan_run(run, cache, tolerance)
    except TestbedError as e:
        return str(e)


def predict_cells(runs: list[dict], cells: list[dict], cache=None, tolerance: float = TOLERANCE
                  ) -> tuple[dict | None, str | None]:
    """:func:`predictions_for_store` of rows already read from a store."""
    wanted: dict[str, set] = {}
    for c in cells:
        if (c["status"] == "done" and not c.get("load")) or _planned_load(c):
            wanted.setdefault(c["run_id"], set()).add(_cell_key(c))
    if not wanted:
        return None, "no done cell to compare with a plan (single-stream, or under a server scenario's fixed rate)"
    predictions, winners, reasons, plans = {}, {}, [], {}
    for run in runs:
        keys = wanted.get(run["run_id"])
        if not keys:
            continue
        config = json.dumps([run.get("config"), run.get("machine")], sort_keys=True, default=str)
        if config not in plans:         # a resumed run has its first's config: planned once
            plans[config] = _plan_or_reason(run, cache, tolerance)
        plan = plans[config]
        if isinstance(plan, str):
            reasons.append(f"no prediction for run {run['run_id']} ({run['experiment']}): {plan}")
            continue
        for r in plan["predictions"]:
            if _cell_key(r) in keys:
                predictions[_cell_key(r)] = r
        points = {(k[0], k[2]) for k in keys}
        for w in plan["winners"]:
            if (w["model"], point_key(w["point"])) in points:
                winners[(w["model"], point_key(w["point"]))] = w
    if not predictions:
        return None, (reasons[0] + (f" (and {len(reasons) - 1} more runs)" if len(reasons) > 1 else "")
                      if reasons else "the plan has none of the measured cells")
    return {"tolerance": tolerance, "predictions": list(predictions.values()), "winners": list(winners.values()),
            "notes": reasons}, None


def predictions_for_store(folder: str | Path, cache=None, tolerance: float = TOLERANCE
                          ) -> tuple[dict | None, str | None]:
    """(plan, None) with the predictions and winners (as ``Plan.to_dict()`` has them) for
    the store's done single-stream cells, ``notes`` naming any run that could not be
    planned; or (None, the reason in one line), e.g. a part with no profile and the
    `testbed profile` command to run."""
    with ResultStore.in_folder(folder, create=False) as store:
        return predict_cells(store.runs(), store.cells(), cache, tolerance)


# --- compared ---------------------------------------------------------------------------------

def _error(predicted: float | None, measured: float | None) -> float | None:
    return None if predicted is None or not measured else (predicted - measured) / measured


def _cell(p: dict, m: dict) -> dict:
    return {"model": m["model"], "strategy": m["strategy"], "placement": m["placement"], "point": m["point"],
            "run_id": m["run_id"], "ok": m["ok"],
            "predicted_ms": p["p50_ms"], "measured_ms": m["p50_ms"], "error": _error(p["p50_ms"], m["p50_ms"]),
            "predicted_p90_ms": p["p90_ms"], "measured_p90_ms": m["p90_ms"],
            "error_p90": _error(p["p90_ms"], m["p90_ms"]),
            "predicted_compute_ms": p["compute_ms"], "measured_compute_ms": m["compute_ms"],
            "predicted_transmission_ms": p["transmission_ms"], "measured_transmission_ms": m["transmission_ms"],
            "cpu": cpu_drift(p, m), "tolerance_verdict": p.get("tolerance_verdict")}


def cpu_drift(p: dict, m: dict) -> list[dict]:
    """Per host of a prediction's compute: the median CPU time of an inference in its profile
    (the regime the plan used, ``profiled_ms``) against the run's (``measured_ms``), and
    ``ratio`` = measured / profiled. Above 1 the run's inferences took more CPU time than at
    profiling: the machine ran slower, or its caches were colder (other hosts' work on the
    same cores), which the plan cannot know; near 1 with a compute error, the error is the
    plan's (pacing, waits, the regime). None where a side lacks it (a profile or a run from
    before it was recorded, or a host holding two parts)."""
    compute = p.get("compute") or []
    hosts = [c["host"] for c in compute]
    out = []
    for c in compute:
        prof = c.get("cpu_p50_ms")
        run = (m.get("cpu_ms") or {}).get(c["host"]) if hosts.count(c["host"]) == 1 else None
        out.append({"host": c["host"], "regime": c.get("regime"), "profiled_ms": prof, "measured_ms": run,
                    "ratio": run / prof if prof and run is not None else None})
    return out


def cpu_text(cell: dict) -> str:
    """A cell's :func:`cpu_drift` in a few words, e.g. ``mobile x1.32, edge x0.98``."""
    return ", ".join(f"{d['host']} x{d['ratio']:.2f}" for d in cell.get("cpu") or [] if d["ratio"] is not None)


def cpu_summary_text(compared: dict) -> str:
    """``compared``'s :func:`cpu_summary` as a clause for a terminal line ('' without one)."""
    c = compared.get("cpu")
    if not c:
        return ""
    return (f"; an inference's CPU time in the run x{c['median']:.2f} its profile's (median over {c['n']} hosts of "
            f"cells, x{c['low']:.2f} to x{c['high']:.2f})")


def cpu_summary(cells: list[dict]) -> dict | None:
    """Over every host of ``cells``: the median, lowest and highest run / profile ratio of an
    inference's CPU time, and how many (host, cell) pairs had both (None without any)."""
    ratios = [d["ratio"] for c in cells for d in c.get("cpu") or [] if d["ratio"] is not None]
    if not ratios:
        return None
    return {"median": _median(ratios), "low": min(ratios), "high": max(ratios), "n": len(ratios)}


def _winner_row(model: str, point: dict, mine: list[dict], planned: dict | None,
                samples: dict[tuple[str, str, str], list[float]]) -> dict:
    """The predicted and the measured winner among the strategies measured at one (point,
    model), by the plan's rule (`testbed.plan._winner`), the verdicts the plan's; ``samples``:
    each measured cell's per-request e2e (by :func:`_cell_key`), to test a miss."""
    measured = [c for c in mine if c["measured_ms"] is not None]
    pred = _winner(point, model, [{"strategy": c["strategy"], "p50_ms": c["predicted_ms"],
                                   "tolerance_verdict": c["tolerance_verdict"]} for c in measured])
    meas = _winner(point, model, [{"strategy": c["strategy"], "p50_ms": c["measured_ms"],
                                   "tolerance_verdict": c["tolerance_verdict"]} for c in measured])
    p50 = {c["strategy"]: c["measured_ms"] for c in measured}
    tie = pred["winner"] != meas["winner"] and pred["winner"] in p50 and p50[pred["winner"]] == meas["p50_ms"]
    agree = tie or pred["winner"] == meas["winner"]
    row = {"model": model, "point": point, "rule": pred["rule"], "predicted": pred["winner"],
           "measured": meas["winner"], "agree": agree, "tie": tie,
           "planned": planned["winner"] if planned else None,
           "unmeasured": sorted({c["strategy"] for c in mine} - set(p50))}
    # a winner missed by a hair that the measurement cannot tell apart either: the predicted
    # winner's requests against the measured winner's (stats.two_samples, two-sided, alpha 0.05)
    row["test"] = None
    if not agree and pred["winner"] in p50 and meas["winner"] is not None:
        mine_ = {c["strategy"]: samples.get(_cell_key(c), []) for c in measured}
        row["test"] = two_samples(mine_[pred["winner"]], mine_[meas["winner"]])
    row["indistinguishable"] = bool(row["test"] and row["test"]["p"] is not None and not row["test"]["significant"])
    # both winners' numbers (one when they agree): a disagreement by a hair reads as a near tie
    both = [s for s in dict.fromkeys((meas["winner"], pred["winner"])) if s is not None]
    row["measured_ms"] = {s: p50[s] for s in both}
    row["predicted_ms"] = {c["strategy"]: c["predicted_ms"] for c in measured if c["strategy"] in both}
    return row


def miss_text(w: dict) -> str:
    """A missed winner's test in words (:func:`compare`'s winner rows), '' when untested:
    'Mann-Whitney p 0.31 over 6 and 6 requests: not told apart by the measurement'."""
    t = w.get("test") or {}
    if t.get("p") is None:
        return ""
    return (f"Mann-Whitney p {t['p']:.3g} over {t['n'][0]} and {t['n'][1]} requests: "
            + ("not told apart by the measurement" if w["indistinguishable"] else "a real miss"))


def _median(values: Iterable[float]) -> float | None:
    v = list(values)
    return statistics.median(v) if v else None


def error_summary(cells: list[dict], by: str) -> list[dict]:
    """Per value of ``by`` (``strategy`` or ``placement``, the tier) in first-seen order: n,
    the median |error| and median signed error of p50, and the worst (largest |error|) with its cell."""
    groups: dict[str, list[dict]] = {}
    for c in cells:
        if c["error"] is not None:
            groups.setdefault(c[by], []).append(c)
    out = []
    for name, mine in groups.items():
        worst = max(mine, key=lambda c: abs(c["error"]))
        out.append({"by": "tier" if by == "placement" else by, "name": name, "n": len(mine),
                    "median_abs_error": _median(abs(c["error"]) for c in mine),
                    "median_error": _median(c["error"] for c in mine), "worst_error": worst["error"],
                    "worst_at": f"{worst['model']} {worst['strategy']} {point_label(worst['point'])}".strip()})
    return out


def _matched(predictions: list[dict], measured: list[dict], pair) -> tuple[list[dict], list[dict], dict]:
    """Measured cells matched with their predictions by (model, strategy, point): ``pair(p,
    m)`` of each match, the unmatched measured cells (named), and the matches per (model, point)."""
    by_key = {_cell_key(p): p for p in predictions}
    cells, unmatched = [], []
    for m in measured:
        p = by_key.get(_cell_key(m))
        if p is None:
            unmatched.append({k: m[k] for k in ("model", "strategy", "placement", "point", "run_id", "ok")})
        else:
            cells.append(pair(p, m))
    points: dict[tuple[str, str], list[dict]] = {}
    for c in cells:
        points.setdefault((c["model"], point_key(c["point"])), []).append(c)
    return cells, unmatched, points


def compare(predictions: list[dict], winners: list[dict], measured: list[dict]) -> dict:
    """Predictions (``Plan.to_dict()["predictions"]``) against :func:`measured_cells`, matched
    by (model, strategy, point): ``cells`` (each matched cell's predicted and measured p50,
    p90, compute and transmission, signed errors), ``unmatched`` (measured cells without a
    prediction), ``winners`` per (point, model) with ``agree`` and both winners' measured and
    predicted p50 (``measured_ms``, ``predicted_ms``: a near tie reads as one), ``agreement`` (the fraction that agree),
    and, for a winner missed, ``test``: the predicted winner's requests against the measured
    winner's (:func:`testbed.stats.two_samples`), ``indistinguishable`` when they do not differ
    significantly (``agreed_or_indistinguishable`` counts those with the agreed: the
    measurement could not say the prediction was wrong),
    ``median_abs_error`` of p50 (and ``_p90``), ``cpu`` (:func:`cpu_summary`: how the run's
    CPU time per inference compared with the profiles', each cell's in its ``cpu``),
    ``by_strategy`` and ``by_tier`` (:func:`error_summary`)."""
    planned = {(w["model"], point_key(w["point"])): w for w in winners}
    cells, unmatched, points = _matched(predictions, measured, _cell)
    samples = {_cell_key(m): m.get("e2e_ms") or [] for m in measured}
    rows = [_winner_row(model, mine[0]["point"], mine, planned.get((model, key)), samples)
            for (model, key), mine in points.items()]
    errors = [c["error"] for c in cells if c["error"] is not None]
    errors90 = [c["error_p90"] for c in cells if c["error_p90"] is not None]
    return {"cells": cells, "unmatched": unmatched, "winners": rows,
            "agreed": sum(r["agree"] for r in rows), "compared": len(rows),
            "agreement": sum(r["agree"] for r in rows) / len(rows) if rows else None,
            # agreed, or missed where the measured winner is not significantly faster
            "agreed_or_indistinguishable": sum(r["agree"] or r["indistinguishable"] for r in rows),
            "alpha": ALPHA,
            "median_abs_error": _median(abs(e) for e in errors),
            "median_abs_error_p90": _median(abs(e) for e in errors90), "cpu": cpu_summary(cells),
            "by_strategy": error_summary(cells, "strategy"), "by_tier": error_summary(cells, "placement")}


def _load_cell(p: dict, m: dict) -> dict:
    load = p["load"]
    return {"model": m["model"], "strategy": m["strategy"], "placement": m["placement"], "point": m["point"],
            "run_id": m["run_id"], "ok": m["ok"], "target_qps": m["target_qps"], "answered_qps": m["answered_qps"],
            "saturation_qps": load.get("saturation_qps"), "bottleneck": load.get("bottleneck"),
            "saturated": bool(load.get("saturated")),
            "predicted_ms": load.get("p50_ms"), "measured_ms": m["p50_ms"], "error": _error(load.get("p50_ms"), m["p50_ms"]),
            "predicted_p99_ms": load.get("p99_ms"), "measured_p99_ms": m["p99_ms"],
            "error_p99": _error(load.get("p99_ms"), m["p99_ms"]),
            "predicted_slo": {k: v["met"] for k, v in (load.get("slo") or {}).items()}, "measured_slo": m["slo"],
            "tolerance_verdict": p.get("tolerance_verdict")}


def _load_winner_row(model: str, point: dict, mine: list[dict]) -> dict:
    """The predicted and the measured winner under load at one (point, model), both by the
    plan's rule (`testbed.plan._load_winner`: the lowest p99 among the strategies within the
    quality tolerance that meet every latency target) over the strategies measured there; a
    measured p99 beyond the answers ranks last."""
    from .plan import _load_winner

    def rows(side: str) -> list[dict]:
        if side == "predicted":
            return [{"strategy": c["strategy"], "tolerance_verdict": c["tolerance_verdict"],
                     "load": {"p99_ms": c["predicted_p99_ms"], "saturated": c["saturated"],
                              "slo": {k: {"met": v} for k, v in c["predicted_slo"].items()}}} for c in mine]
        return [{"strategy": c["strategy"], "tolerance_verdict": c["tolerance_verdict"],
                 "load": {"p99_ms": c["measured_p99_ms"] if c["measured_p99_ms"] is not None else float("inf"),
                          "slo": {k: {"met": v} for k, v in c["measured_slo"].items()}}} for c in mine]
    pred, meas = _load_winner(point, model, rows("predicted")), _load_winner(point, model, rows("measured"))
    p99 = {c["strategy"]: c["measured_p99_ms"] for c in mine}
    return {"model": model, "point": point, "rule": pred["rule"], "predicted": pred["winner"],
            "measured": meas["winner"], "agree": pred["winner"] == meas["winner"],
            # both winners' measured p99, the measured winner's first (one when they agree)
            "measured_p99_ms": {s: p99[s] for s in dict.fromkeys((meas["winner"], pred["winner"])) if s in p99}}


def compare_load(predictions: list[dict], measured: list[dict]) -> dict:
    """Predictions under a server scenario's load (rows with ``load``) against
    :func:`measured_load_from`, matched by (model, strategy, point): ``cells`` (predicted and
    measured p50 and p99 with signed errors, the predicted saturation rate and bottleneck
    beside the answered rate, each latency target's verdict on both sides), ``unmatched``,
    ``winners`` per (point, model) by the load study's rule (:func:`_load_winner_row`),
    ``agreed`` of ``compared``, and the median |error| of p50 and p99 over the cells where
    both sides have the number (a saturated prediction has none)."""
    at_rate = [p for p in predictions if "p50_ms" in (p.get("load") or {})]
    cells, unmatched, points = _matched(at_rate, measured, _load_cell)
    rows = [_load_winner_row(model, mine[0]["point"], mine) for (model, _key), mine in points.items()]
    return {"cells": cells, "unmatched": unmatched, "winners": rows, "agreed": sum(r["agree"] for r in rows),
            "compared": len(rows),
            "median_abs_error": _median(abs(c["error"]) for c in cells if c["error"] is not None),
            "median_abs_error_p99": _median(abs(c["error_p99"]) for c in cells if c["error_p99"] is not None)}


def verify(runs: list[dict], cells: list[dict], requests: list[dict], cache=None,
           tolerance: float = TOLERANCE) -> tuple[dict | None, str | None]:
    """(:func:`compare` of the store's rows with their plan, plus its ``notes``, None) or
    (None, why there is no plan)."""
    plan, reason = predict_cells(runs, cells, cache, tolerance)
    if plan is None:
        return None, reason
    return {**compare_both(plan["predictions"], plan["winners"], cells, requests), "tolerance": tolerance,
            "notes": plan["notes"]}, None


def compare_both(predictions: list[dict], winners: list[dict], cells: list[dict], requests: list[dict]) -> dict:
    """:func:`compare` of the single-stream predictions with a store's single-stream cells,
    and ``load``: :func:`compare_load` of the predictions under load with its cells under a
    server scenario's load (None when there are neither)."""
    single = [p for p in predictions if "load" not in p]
    at = {(p["model"], point_key(p["point"])) for p in single}
    result = compare(single, [w for w in winners if (w["model"], point_key(w["point"])) in at],
                     measured_from(cells, requests))
    loaded, measured = [p for p in predictions if "load" in p], measured_load_from(cells)
    return {**result, "load": compare_load(loaded, measured) if loaded or measured else None}


# --- measured where the plan is least sure (`testbed plan --verify N`) ------------------------

def one_point(exp, point: dict):
    """``exp`` with its sweep replaced by the single ``point`` (every path one value), so that
    its cells keep the point as the plan has it."""
    import yaml

    from .experiment import load_experiment_dict

    raw = exp.to_dict()
    raw["sweep"] = {path: [yaml.safe_load(v) if isinstance(v, str) else v] for path, v in point.items()}
    ctx = exp._context
    return load_experiment_dict(raw, [], cores=ctx.cores, memory_bytes=ctx.memory_bytes,
                                source=f"{exp.source_path or exp.name} at {point_label(point)}",
                                base_dir=ctx.base_dir)


def verify_plan(exp, plan, n: int, out: Path, events=None,
                progress=lambda message: None) -> dict:
    """Measure the ``n`` points where ``plan`` is least sure of its winner
    (:func:`testbed.plan.uncertain_points`), one `testbed run` each into ``out`` (one store),
    and :func:`compare` them with the plan: how often the predicted winner was the measured
    one, and each cell's error. Cells measured before the run was cut short are kept in
    ``out``."""
    from .plan import uncertain_points
    from .runner import run_experiment

    points = uncertain_points(plan, n)
    for i, point in enumerate(points, 1):
        progress(f"measuring point {i}/{len(points)}: {point_label(point) or 'the experiment as written'}")
        run_experiment(one_point(exp, point), out, events=events)
    keys = {point_key(p) for p in points}
    rows = [r for r in plan.rows if point_key(r["point"]) in keys]
    winners = [w for w in plan.winners if point_key(w["point"]) in keys]
    with ResultStore.in_folder(out, create=False) as store:
        result = compare_both(rows, winners, store.cells(), store.requests())
    margins = {(w["model"], point_key(w["point"])): w["margin_ms"] for w in winners}
    for w in result["winners"] + (result["load"] or {}).get("winners", []):
        w["margin_ms"] = margins.get((w["model"], point_key(w["point"])))
    return {**result, "points": points, "out": str(out), "tolerance": plan.tolerance}
