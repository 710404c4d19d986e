"""`testbed report`: a study's results as one HTML page that works offline.

:func:`write_report` reads the store of an output folder and writes ``<out>/index.html``
(default ``<folder>/report``), with every figure both embedded as a ``data:`` URI and saved
as ``figures/*.png``, and every table as ``tables/*.csv`` and ``tables/*.tex``. The page
loads nothing from anywhere: no CDN, scripts or web fonts. Re-running replaces the report:
PNG, CSV and TeX files of an earlier one in ``figures/`` and ``tables/`` are removed first.

Cells measured under load (``load.scenario`` other than single-stream) add, per model: latency
(p50, p99) and throughput against the offered load, with the latency targets; the winner at
each load level and each strategy's highest rate within the targets and highest answered
rate (``tables/load_winners.*``, ``tables/load_strategies.*``); and statements across the
levels among the recommendations (``testbed.recommend.load_recommendations``). A store
without such cells gets none of this.

A store without a single done cell still gets a report (runs, failed cells, and a note that
there is nothing to compare); ``Report.note`` says so.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader
from matplotlib.colors import ListedColormap, to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, NullLocator

from topologies import TopologyError, format_size, parse_duration_ms, parse_fraction, parse_rate, parse_size
from topologies.errors import TestbedError
from workloads.quality import BASELINE_SCORES_FILE, SCORES_FILE

from .experiment import point_label
from .load import (LEVEL_AXES, capacities, curves, json_key, level_axis, level_text, level_winners, qps_text,
                   reach_text, saturation, targets_text)
from .recommend import TOLERANCE, recommend
from .stats import StudyGroup, paired_test, study_groups, study_statistics
from .store import CELL_STATUSES, ResultStore
from .summary import NO_INTERVAL, host_flags, interval, summarize
from .verify import verify

MAX_FACETS = 6          # sweep points drawn side by side; beyond, one panel of per-point medians
DPI = 100
PARTS = ("compute_ms", "transmission_ms", "serialization_ms", "queue_ms", "late_ms", "overhead_ms")
PART_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#8c8c8c")
TEMPLATES = Path(__file__).parent / "templates"
# the last part of a sweep path -> the topology parser of its unit
_AXIS_PARSERS = {"bandwidth": parse_rate, "delay": parse_duration_ms, "jitter": parse_duration_ms,
                 "loss": parse_fraction, "queue": parse_size, "memory": parse_size}


class ReportError(TestbedError):
    """The report could not be written, as one line: what, where, what to do."""


@dataclass(frozen=True)
class Report:
    index: Path
    figures: list[Path]
    tables: list[Path]
    recommendations: list[dict]
    cells: dict[str, int]           # cells per status
    note: str | None                # set when there is nothing to compare
    predicted: dict | None = None   # the plan against the measured cells (testbed.verify), or {"reason": ...}

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(index=str(self.index), figures=[str(p) for p in self.figures], tables=[str(p) for p in self.tables])
        return d


# --- data -----------------------------------------------------------------------------------

def axis_number(path: str, value) -> float | None:
    """A sweep value as a number, for ordering and plotting: a unit is parsed by the
    topology's parser for that kind of value (``*.bandwidth`` -> bit/s, ``*.delay`` -> ms,
    ...), a plain number is taken as it is; None for anything else (e.g. ``none``)."""
    parser = _AXIS_PARSERS.get(path.rsplit(".", 1)[-1])
    if isinstance(value, bool):
        return None
    try:
        return float(parser(value)) if parser is not None and isinstance(value, str) else float(value)
    except (TopologyError, TypeError, ValueError):
        return None


def _value_key(path: str, value) -> tuple:
    """Orders one axis's values numerically where they parse, the others after them by text."""
    n = axis_number(path, value)
    return (n is None, n if n is not None else 0.0, str(value))


def _axis_order(path: str, values) -> list:
    """Distinct values of one axis in :func:`_value_key` order."""
    return sorted(set(values), key=lambda v: _value_key(path, v))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, metric) points that no other point dominates (latency no
    higher and metric no lower, one of them strictly), ordered by latency."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(x2 <= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in points)]
    return sorted(front, key=lambda i: points[i])


def winners(groups: list[StudyGroup], latencies: dict[str, list[float]]) -> list[dict]:
    """Per group: the strategy with the lowest p50 end-to-end latency (None when no strategy
    has an ok request): ``{"model", "point", "winner", "p50_ms"}``."""
    out = []
    for g in groups:
        p50 = {label: float(np.median(latencies[c["cell"]])) for label, c in zip(g.labels, g.cells)
               if latencies.get(c["cell"])}
        best = min(p50, key=p50.get) if p50 else None
        out.append({"model": g.model, "point": g.point, "winner": best, "p50_ms": p50.get(best)})
    return out


@dataclass(frozen=True)
class _Facet:
    """What one panel shows: each strategy's ok requests, its cell, and its p50 at each of the
    ``points`` sweep points the panel covers (1, or all of them when there are too many)."""
    title: str
    points: int
    requests: dict[str, list[dict]]
    cells: dict[str, dict]
    p50s: dict[str, list[float]]


def _facets(groups: list[StudyGroup], ok: dict[str, list[dict]]) -> list[_Facet]:
    """One panel per sweep point up to MAX_FACETS points; beyond, one panel for all of them."""
    facets = []
    for g in groups:
        series = {label: ok[c["cell"]] for label, c in zip(g.labels, g.cells) if ok.get(c["cell"])}
        facets.append(_Facet("\n".join(f"{k}={v}" for k, v in g.point.items()), 1, series,
                             dict(zip(g.labels, g.cells)),
                             {label: [_median(r["e2e_ms"] for r in rows)] for label, rows in series.items()}))
    if len(facets) <= MAX_FACETS:
        return facets
    merged = _Facet(f"all {len(facets)} sweep points", len(facets), {}, {}, {})
    for f in facets:
        for label, rows in f.requests.items():
            merged.requests.setdefault(label, []).extend(rows)
            merged.cells.setdefault(label, f.cells[label])
            merged.p50s.setdefault(label, []).extend(f.p50s[label])
    return [merged]


def _median(values) -> float:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    return float(np.median(v)) if v.size else 0.0


# --- figures --------------------------------------------------------------------------------

def _panels(n: int, width: float) -> tuple[Figure, list]:
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cols * width, rows * 4.0), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _log_if_positive(ax, values, axis: str = "y") -> None:
    """A log scale with plain tick labels (20, 50, 100; minor ones too within two decades)."""
    if values and min(values) > 0:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        which = ax.yaxis if axis == "y" else ax.xaxis
        which.set_major_formatter(LogFormatter(labelOnlyBase=False))
        which.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _tick_label(label: str, cell: dict) -> str:
    return f"{label}\n({cell['placement']})"


def _latency_figure(model: str, facets: list[_Facet]) -> tuple[Figure, str]:
    width = max(4.5, 0.9 * max(len(f.requests) for f in facets))
    fig, axes = _panels(len(facets), width)
    per_point = facets[0].points == 1
    for ax, f in zip(axes, facets):
        labels = list(f.requests)
        data = [[r["e2e_ms"] for r in f.requests[s]] if per_point else f.p50s[s] for s in labels]
        ax.boxplot(data, tick_labels=[_tick_label(s, f.cells[s]) for s in labels], showfliers=True)
        _log_if_positive(ax, [v for d in data for v in d])
        ax.set_title(f.title, fontsize=9)
        ax.set_ylabel("end-to-end latency (ms)" if per_point else "p50 per sweep point (ms)")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(f"{model}: end-to-end latency per strategy (placement)")
    caption = ("Box plots of the end-to-end latency of every ok request, log scale."
               if per_point else "Box plots of each strategy's p50 latency over the sweep points, log scale.")
    return fig, caption


def _parts_figure(model: str, facets: list[_Facet]) -> tuple[Figure, str]:
    width = max(4.5, 0.8 * max(len(f.requests) for f in facets))
    fig, axes = _panels(len(facets), width)
    for ax, f in zip(axes, facets):
        labels = list(f.requests)
        bottom = np.zeros(len(labels))
        for part, color in zip(PARTS, PART_COLORS):
            heights = np.array([_median(r.get(part) for r in f.requests[s]) for s in labels])
            if part in ("queue_ms", "late_ms") and not heights.any():
                continue        # nothing waited (one request at a time): no empty legend entry
            ax.bar(range(len(labels)), heights, bottom=bottom, color=color, label=part.removesuffix("_ms"))
            bottom += heights
        ax.set_xticks(range(len(labels)), [_tick_label(s, f.cells[s]) for s in labels], rotation=30, fontsize=8)
        ax.set_title(f.title, fontsize=9)
        ax.set_ylabel("median ms per request")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{model}: where the time goes")
    return fig, ("Median compute, transmission, serialization, queueing (under load: waiting at a host, and "
                 "sent late by the load generator) and harness overhead per request (each part's own median, so "
                 "a bar need not equal the median end-to-end latency).")


def _quality_figure(model: str, facets: list[_Facet]) -> tuple[Figure, str]:
    fig, axes = _panels(len(facets), 5.0)
    for ax, f in zip(axes, facets):
        labels = [s for s in f.requests if f.cells[s]["metric_value"] is not None]
        points = [(_median(f.p50s[s]), f.cells[s]["metric_value"]) for s in labels]
        ax.scatter([x for x, _ in points], [y for _, y in points], color="#4c72b0", zorder=2)
        bars = [(x, y, interval(f.cells[s], "value")) for s, (x, y) in zip(labels, points)
                if interval(f.cells[s], "value")]
        if bars:        # the metric's 95 % interval (BCa need not be centred on the point)
            ax.errorbar([x for x, _, _ in bars], [y for _, y, _ in bars], fmt="none", ecolor="#4c72b0", capsize=3,
                        yerr=[[max(0.0, y - ci[0]) for _, y, ci in bars], [max(0.0, ci[1] - y) for _, y, ci in bars]],
                        label="95 % interval", zorder=1)
        front = pareto_front(points)
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "o--", color="#c44e52",
                markersize=9, markerfacecolor="none", label="Pareto front", zorder=3)
        for s, (x, y) in zip(labels, points):
            ax.annotate(s, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        _log_if_positive(ax, [x for x, _ in points], axis="x")
        ax.set_title(f.title, fontsize=9)
        ax.set_xlabel("p50 end-to-end latency (ms)")
        ax.set_ylabel(f.cells[labels[0]]["metric"] if labels else "metric")
        ax.legend(fontsize=8)
    fig.suptitle(f"{model}: quality against latency")
    return fig, ("Each strategy's metric against its p50 latency, with the metric's 95 % interval (a bootstrap over "
                 "the evaluation samples; a point without a bar has none); circled points form the Pareto front "
                 "(nothing else is both faster and at least as accurate, by the point values).")


def _heatmap_figure(model: str, rows: list[dict], x_axis: str, y_axis: str,
                    colors: dict[str, str]) -> tuple[Figure, str]:
    others = [a for a in rows[0]["point"] if a not in (x_axis, y_axis)]
    slices: dict[str, list[dict]] = {}
    for r in rows:
        slices.setdefault(point_label({a: r["point"][a] for a in others}), []).append(r)
    shown = list(slices.items())[:MAX_FACETS]
    xs = _axis_order(x_axis, [r["point"][x_axis] for r in rows])
    ys = _axis_order(y_axis, [r["point"][y_axis] for r in rows])
    names = list(colors)
    fig, axes = _panels(len(shown), max(6.0, 1.6 * len(xs)))
    for ax, (title, members) in zip(axes, shown):
        grid = np.full((len(ys), len(xs)), np.nan)
        for r in members:
            i, j = ys.index(r["point"][y_axis]), xs.index(r["point"][x_axis])
            text = "no ok request"
            if r["winner"] is not None:
                grid[i, j] = names.index(r["winner"])
                text = f"{r['winner']}\n{r['p50_ms']:.3g} ms"
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
        ax.imshow(grid, origin="lower", cmap=ListedColormap([colors[n] for n in names]), vmin=-0.5,
                  vmax=len(names) - 0.5, alpha=0.55, aspect="auto")
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
        ax.set_yticks(range(len(ys)), [str(v) for v in ys])
        ax.set_xlabel(x_axis)
        ax.set_ylabel(y_axis)
        ax.set_title(title if others else "", fontsize=9)
    fig.suptitle(f"{model}: fastest strategy (lowest p50) per bandwidth pair")
    more = f" Only the first {MAX_FACETS} of {len(slices)} slices are drawn; tables/winners.csv has all." \
        if len(slices) > MAX_FACETS else ""
    return fig, f"The strategy with the lowest p50 end-to-end latency at each pair of bandwidths.{more}"


def _line_figure(model: str, groups: list[StudyGroup], latencies: dict[str, list[float]], axis: str,
                 colors: dict[str, str]) -> tuple[Figure, str]:
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    xs, ys = [], []
    for label in colors:
        line = sorted((axis_number(axis, g.point[axis]), float(np.median(latencies[c["cell"]])))
                      for g in groups for lab, c in zip(g.labels, g.cells)
                      if lab == label and latencies.get(c["cell"]))
        if line:
            ax.plot([x for x, _ in line], [y for _, y in line], "o-", color=colors[label], label=label)
            xs += [x for x, _ in line]
            ys += [y for _, y in line]
    _log_if_positive(ax, xs, axis="x")
    _log_if_positive(ax, ys)
    values = _axis_order(axis, [g.point[axis] for g in groups])
    ax.set_xticks([axis_number(axis, v) for v in values], [str(v) for v in values])
    ax.xaxis.set_minor_locator(NullLocator())     # the sweep's own values are the ticks
    ax.set_xlabel(axis)
    ax.set_ylabel("p50 end-to-end latency (ms)")
    ax.legend(fontsize=8)
    fig.suptitle(f"{model}: p50 latency against {axis}")
    return fig, f"Each strategy's p50 end-to-end latency at each value of {axis} (log scales for positive values)."


# --- under load -----------------------------------------------------------------------------

BEYOND_Y = 0.97         # where a percentile without an answer is drawn: at the top edge, in axes fraction


def _curve_title(curve: dict) -> str:
    return curve["scenario"] + (f"\n{point_label(curve['point'])}" if curve["point"] else "")


def _spread_scale(ax, values: list[float], axis: str = "y") -> None:
    """A log scale where the values span a decade or more (latency past saturation does), else linear."""
    if values and min(values) > 0 and max(values) / min(values) >= 10:
        _log_if_positive(ax, values, axis)


def _strategy_handles(shown: list[dict], colors: dict[str, str]) -> list:
    """One legend entry per strategy of the panels, in their order: a figure legend beside
    them, since every panel has the same strategies (or a few less)."""
    from matplotlib.lines import Line2D

    names = dict.fromkeys(s for curve in shown for s in curve["strategies"])
    return [Line2D([], [], color=colors.get(s, "#333333"), marker="o", markersize=4, label=s) for s in names]


def _load_latency_figure(model: str, shown: list[dict], colors: dict[str, str]) -> tuple[Figure, str]:
    from matplotlib.lines import Line2D
    from matplotlib.transforms import offset_copy

    fig, axes = _panels(len(shown), 5.5)
    beyond_any = False
    for ax, curve in zip(axes, shown):
        xs, ys = [], []
        names = list(curve["strategies"])
        for i, (s, cells) in enumerate(curve["strategies"].items()):
            color = colors.get(s, "#333333")
            # marks at the top edge side by side, so that strategies at the same load do not hide each other
            top = offset_copy(ax.get_xaxis_transform(), fig=fig, x=7 * (i - (len(names) - 1) / 2), units="points")
            for pct, style, marker in (("p99", "-", "^"), ("p50", "--", "v")):
                pts = [(x, r["load"]["latency_ms"].get(pct)) for x, r in cells]
                got = [(x, y) for x, y in pts if y is not None]
                ax.plot([x for x, _ in got], [y for _, y in got], style, marker="o", markersize=4, color=color,
                        label=f"{s} {pct}")
                missing = [x for x, y in pts if y is None]
                if missing:     # beyond the answers: no value to draw, a mark at the top edge instead
                    beyond_any = True
                    ax.plot(missing, [BEYOND_Y if pct == "p99" else BEYOND_Y - 0.06] * len(missing),
                            linestyle="none", marker=marker, markersize=8, color=color,
                            markerfacecolor=color if pct == "p99" else "none", transform=top, clip_on=False,
                            label=f"{s} {pct}: no answer")
                xs += [x for x, _ in pts]
                ys += [y for _, y in got]
        for k, ms in curve["targets"].items():
            ax.axhline(ms, color="#444444", linestyle=":", linewidth=1.2, label=f"{k} target")
            ax.annotate(f"{k} target {ms:g} ms", xy=(0.01, ms), xycoords=("axes fraction", "data"), xytext=(0, 2),
                        textcoords="offset points", fontsize=8, color="#444444",
                        bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.7})
            ys.append(ms)
        _spread_scale(ax, xs, "x")
        _spread_scale(ax, ys)
        if ys:      # room above the highest value for the top-edge marks
            ax.set_ylim(top=max(ys) * (2.5 if ax.get_yscale() == "log" else 1.3))
            if ax.get_yscale() != "log":
                ax.set_ylim(bottom=0)
        ax.set_title(_curve_title(curve), fontsize=9)
        ax.set_xlabel(level_axis(curve["scenario"]))
        ax.set_ylabel("latency (ms)")
    handles = _strategy_handles(shown, colors) + [
        Line2D([], [], color="#333333", linestyle="-", label="p99"),
        Line2D([], [], color="#333333", linestyle="--", label="p50")]
    if beyond_any:
        handles += [Line2D([], [], linestyle="none", marker="^", color="#333333", label="p99: no answer"),
                    Line2D([], [], linestyle="none", marker="v", color="#333333", markerfacecolor="none",
                           label="p50: no answer")]
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    fig.suptitle(f"{model}: latency against offered load")
    caption = ("p99 (solid) and p50 (dashed) latency, from each request's scheduled time, against the offered "
               "load: the target rate of a server scenario, the requests in flight of a closed loop (multi-stream, "
               "offline); one color per strategy, dotted lines at the latency targets; log scales where the values "
               "span a decade or more. A request without an answer counts as slower than every answer.")
    if beyond_any:
        caption += (" A triangle at the top edge (filled, pointing up: p99; hollow, pointing down: p50) marks a "
                    "percentile that falls on a request without an answer (beyond the timeout): it has no value "
                    "to draw.")
    return fig, caption


def _load_throughput_figure(model: str, shown: list[dict], colors: dict[str, str]) -> tuple[Figure, str]:
    from matplotlib.lines import Line2D

    fig, axes = _panels(len(shown), 5.5)
    named, diagonal = [], False
    for ax, curve in zip(axes, shown):
        peaks, hi = saturation(curve), 0.0
        for s, cells in curve["strategies"].items():
            pts = [(x, r["load"]["throughput_rps"]) for x, r in cells if r["load"].get("throughput_rps") is not None]
            ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", color=colors.get(s, "#333333"), label=s)
            if s in peaks:
                ax.plot(peaks[s][1], peaks[s][0], marker="*", markersize=14, color=colors.get(s, "#333333"),
                        linestyle="none", label=f"{s}: most answered")
            hi = max([hi] + [v for p in pts for v in p])
        if curve["scenario"] == "server" and hi > 0:
            ax.plot([0, hi], [0, hi], ":", color="#888888", label="answered = offered", zorder=0)
            diagonal = True
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.set_title(_curve_title(curve), fontsize=9)
        ax.set_xlabel(level_axis(curve["scenario"]))
        ax.set_ylabel("answered (req/s)")
        peak = ", ".join(f"{s} {qps_text(rps)} req/s (at {level_text(curve['scenario'], at)})"
                         for s, (rps, at) in sorted(peaks.items(), key=lambda kv: -kv[1][0]))
        named.append((f"{_curve_title(curve).replace(chr(10), ', ')}: " if len(shown) > 1 else "") + peak)
    handles = _strategy_handles(shown, colors) + [
        Line2D([], [], linestyle="none", marker="*", markersize=10, color="#333333", label="most answered")]
    if diagonal:
        handles.append(Line2D([], [], linestyle=":", color="#888888", label="answered = offered"))
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    fig.suptitle(f"{model}: throughput against offered load")
    return fig, ("Answered requests per second (up to each cell's last answer) against the offered load"
                 + ("; the dotted diagonal is answered = offered, so saturation shows where a curve bends away "
                    "below it" if diagonal else "; a closed loop offers what it gets back: saturation shows where "
                    "a curve flattens")
                 + "; a star marks each strategy's highest answered rate: " + "; ".join(named) + ".")


def _load_figures(model: str, curves_: list[dict], colors: dict[str, str]) -> list[tuple[str, Figure, str]]:
    """(kind, figure, caption) of one model's cells under load: latency and throughput against
    the offered load, a panel per scenario and point (the first MAX_FACETS)."""
    if not curves_:
        return []
    shown = curves_[:MAX_FACETS]
    more = (f" Only the first {MAX_FACETS} of {len(curves_)} scenarios and points are drawn; "
            "tables/load_winners.csv has all.") if len(curves_) > MAX_FACETS else ""
    out = []
    for kind, draw in (("load-latency", _load_latency_figure), ("load-throughput", _load_throughput_figure)):
        fig, caption = draw(model, shown, colors)
        out.append((kind, fig, caption + more))
    return out


def load_tables(curves_: list[dict], caps: list[dict]) -> tuple[list[dict], list[dict]]:
    """The rows of the two tables under load: per curve and level, the winner (lowest p99
    within every target: ``testbed.load.level_winners``); per curve and strategy, its highest
    answered rate and (server, with targets) the highest rate meeting them
    (``testbed.load.capacities``)."""
    winners_, strategies = [], []
    for curve in curves_:
        where = {"model": curve["model"], "point": point_label(curve["point"]), "scenario": curve["scenario"]}
        unit = level_text(curve["scenario"], 1.0).split(" ", 1)[1]
        for w in level_winners(curve):
            winners_.append({**where, "offered": w["level"], "unit": unit, "winner": w["winner"],
                             "tied": ", ".join(w["tied"]), "p99_ms": w["p99_ms"], "p50_ms": w["p50_ms"],
                             "met": w["met"], "sure": w["sure"], "meeting": ", ".join(w["meeting"]),
                             "measured": ", ".join(w["measured"])})
        peaks = saturation(curve)
        for s, cells in curve["strategies"].items():
            cap = next((c for c in caps if curve["scenario"] == "server" and (c["model"], c["strategy"]) ==
                        (curve["model"], s) and json_key(c["point"]) == json_key(curve["point"])), None)
            rps, at = peaks.get(s, (None, None))
            strategies.append({**where, "strategy": s, "levels": len(cells), "max_answered_rps": rps,
                               "at_offered": at, "unit": unit,
                               "targets": targets_text(cap["targets"]) if cap else None,
                               "best_qps": cap["best"] if cap else None, "above_qps": cap["above"] if cap else None,
                               "rates": cap["rates"] if cap else None, "sure": cap["sure"] if cap else None,
                               "reach": reach_text(cap) if cap else None})
    return winners_, strategies


def _colors(groups: list[StudyGroup]) -> dict[str, str]:
    return _palette(label for g in groups for label in g.labels)


def _palette(labels) -> dict[str, str]:
    """A color per distinct label, in first-seen order."""
    palette = [f"C{i}" for i in range(10)] + ["#a6761d", "#666666", "#e7298a", "#1b9e77", "#7570b3"]
    return {label: to_hex(palette[i % len(palette)]) for i, label in enumerate(dict.fromkeys(labels))}


def _figures(model: str, groups: list[StudyGroup], ok: dict[str, list[dict]],
             latencies: dict[str, list[float]]) -> list[tuple[str, Figure, str]]:
    """(kind, figure, caption) of one model: latency boxes, time split, quality against latency
    (with a metric), and the winner heatmap (two bandwidth axes) or a line plot (one numeric axis)."""
    drawn = []
    facets = [f for f in _facets(groups, ok) if f.requests]
    if facets:
        drawn += [("latency", *_latency_figure(model, facets)), ("parts", *_parts_figure(model, facets))]
        if any(c["metric_value"] is not None for f in facets for c in f.cells.values()):
            drawn.append(("quality", *_quality_figure(model, facets)))
    colors = _colors(groups)
    axes = list(dict.fromkeys(a for g in groups for a in g.point))
    bandwidths = [a for a in axes if a.endswith(".bandwidth")]
    if len(bandwidths) == 2:
        drawn.append(("winners", *_heatmap_figure(model, winners(groups, latencies), *bandwidths, colors)))
    elif len(axes) == 1 and all(axis_number(axes[0], g.point[axes[0]]) is not None for g in groups) and not (
            axes[0] in LEVEL_AXES and any(c.get("load") for g in groups for c in g.cells)):
        # (a load level as the only axis: the load figures draw it, with the tail and the targets)
        drawn.append(("sweep", *_line_figure(model, groups, latencies, axes[0], colors)))
    return drawn


# --- link traces ----------------------------------------------------------------------------

TAIL_PERCENTILES = (50, 90, 99)


def trace_label(cell: dict) -> str | None:
    """What a traced cell replayed, e.g. ``markov.csv (loop) on mobile-edge forward, reverse``."""
    dirs = (cell.get("trace") or {}).get("directions") or []
    if not dirs:
        return None
    by_file: dict[tuple[str, str], list[str]] = {}
    for d in dirs:
        by_file.setdefault((Path(d["file"]).name, d["mode"]), []).append(f"{d['link']} {d['direction']}")
    return "; ".join(f"{name} ({mode}) on {', '.join(on)}" for (name, mode), on in by_file.items())


def trace_tails(groups: list[StudyGroup], ok: dict[str, list[dict]]) -> list[dict]:
    """One row per strategy of every traced sweep point: its tail latencies (p50/p90/p99 of ok
    requests, ms) on the trace, and how the replay kept to the trace during its cell (steps,
    missed, late, the worst apply lag p50/p99 over its traced directions)."""
    rows = []
    for g in groups:
        for label, c in zip(g.labels, g.cells):
            dirs = (c.get("trace") or {}).get("directions") or []
            if not dirs:
                continue
            e2e = [r["e2e_ms"] for r in ok.get(c["cell"], [])]
            tails = dict(zip((f"p{q}_ms" for q in TAIL_PERCENTILES),
                             np.percentile(e2e, TAIL_PERCENTILES).tolist() if e2e else [None] * 3))

            def worst(key: str, q: str) -> float | None:
                values = [d[key][q] for d in dirs if d.get(key) and d[key].get(q) is not None]
                return max(values) if values else None

            rows.append({"model": g.model, "point": point_label(g.point), "trace": trace_label(c), "strategy": label,
                         "placement": c["placement"], "ok": len(e2e), **tails,
                         "steps": sum(d["steps"] for d in dirs), "missed": sum(d["missed"] for d in dirs),
                         "late": sum(d["late"] for d in dirs), "lag_p50_ms": worst("lag_ms", "p50"),
                         "lag_p99_ms": worst("lag_ms", "p99"),
                         "mismatches": sum(d.get("mismatches", 0) for d in dirs)})
    return rows


def _trace_figure(model: str, g: StudyGroup, ok: dict[str, list[dict]], times: dict[tuple[str, int], float],
                  colors: dict[str, str]) -> tuple[Figure, str] | None:
    """Latency over time on one sweep point's trace, every strategy's requests by when they
    first crossed a traced direction, with the trace's bandwidth as the replay applied it."""
    traced = [(label, c) for label, c in zip(g.labels, g.cells) if (c.get("trace") or {}).get("directions")]
    if not traced:
        return None
    fig = Figure(figsize=(9, 4.2), layout="constrained")
    ax = fig.add_subplot()
    bw = ax.twinx()
    drawn, unplaced = [], []
    for label, c in traced:
        pts = [(times[(c["cell"], r["seq"])] / 1000, r["e2e_ms"]) for r in ok.get(c["cell"], [])
               if (c["cell"], r["seq"]) in times]
        if not pts:
            unplaced.append(label)
            continue
        x, y = zip(*pts)
        ax.scatter(x, y, s=6, alpha=0.6, color=colors.get(label), label=label, zorder=3)
        drawn.append(label)
    first = traced[0][1]["trace"]["directions"][0]
    steps = first.get("applied_steps") or []
    if steps:
        bw.step([s[0] / 1000 for s in steps], [s[1] / 1e6 for s in steps], where="post", color="black", lw=1,
                alpha=0.5, label=f"bandwidth, {first['link']} {first['direction']}")
        bw.set_ylabel("bandwidth (Mbit/s)")
        bw.set_ylim(bottom=0)
    _log_if_positive(ax, [r["e2e_ms"] for label, c in traced for r in ok.get(c["cell"], [])])
    ax.set_xlabel("time since the trace started (s): the request's first byte on a traced link")
    ax.set_ylabel("end-to-end latency (ms)")
    handles = ax.get_legend_handles_labels()[0] + bw.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left")
    title = point_label(g.point) if g.point else ""
    fig.suptitle(f"{model}: latency on the trace {trace_label(traced[0][1])}" + (f"\n{title}" if title else ""),
                 fontsize=10)
    caption = ("Each dot is an ok request, at the time its first byte crossed a traced link direction (log "
               "scale); the line is the bandwidth the replay applied, at the moment each step was in force, "
               "in the first strategy's cell (every cell replays the same trace from its first measured request).")
    if unplaced:
        caption += f" Not drawn (their requests cross no traced direction): {', '.join(unplaced)}; their tails are in the table."
    return fig, caption


def _trace_figures(model: str, groups: list[StudyGroup], ok: dict[str, list[dict]],
                   times: dict[tuple[str, int], float]) -> list[tuple[str, Figure, str]]:
    colors = _colors(groups)
    out = []
    for i, g in enumerate(groups[:MAX_FACETS]):
        drawn = _trace_figure(model, g, ok, times, colors)
        if drawn is not None:
            out.append((f"trace-{i + 1}", *drawn))
    return out


# --- the plan against measurement -----------------------------------------------------------

BAND = 0.10         # the scatter's band: |predicted - measured| within 10 % of measured
PREDICTED_CELL_COLUMNS = ["model", "point", "strategy", "placement", "ok", "predicted_ms", "measured_ms", "error",
                          "predicted_p90_ms", "measured_p90_ms", "error_p90", "predicted_compute_ms",
                          "measured_compute_ms", "predicted_transmission_ms", "measured_transmission_ms",
                          "cpu_run_vs_profile", "note"]


def _prediction_figure(comparison: dict) -> tuple[Figure, str] | None:
    """Measured against predicted p50, log-log, a panel per model: the diagonal, the band of
    :data:`BAND`, a color per strategy (None without a cell to draw)."""
    cells = [c for c in comparison["cells"] if (c["measured_ms"] or 0) > 0 and (c["predicted_ms"] or 0) > 0]
    if not cells:
        return None
    models = list(dict.fromkeys(c["model"] for c in cells))
    colors = _palette(c["strategy"] for c in cells)
    fig, axes = _panels(len(models), 5.5)
    for ax, model in zip(axes, models):
        mine = [c for c in cells if c["model"] == model]
        values = [v for c in mine for v in (c["predicted_ms"], c["measured_ms"])]
        line = np.geomspace(min(values) / 1.5, max(values) * 1.5, 64)
        ax.fill_between(line, line / (1 + BAND), line / (1 - BAND), color="#dddddd", label=f"within {BAND * 100:g} %")
        ax.plot(line, line, "--", color="#555555", linewidth=1, label="measured = predicted")
        for s, color in colors.items():
            pts = [(c["predicted_ms"], c["measured_ms"]) for c in mine if c["strategy"] == s]
            if pts:
                ax.scatter([x for x, _ in pts], [y for _, y in pts], s=24, color=color, label=s, zorder=3)
        for which in ("x", "y"):
            _log_if_positive(ax, list(line), which)
        ax.set_xlim(line[0], line[-1])
        ax.set_ylim(line[0], line[-1])
        ax.set_title(Path(model).name, fontsize=9)         # (a user's model is a path)
        ax.set_xlabel("predicted p50 (ms)")
        ax.set_ylabel("measured p50 (ms)")
        ax.legend(fontsize=8)
    fig.suptitle("p50 end-to-end latency: measured against planned")
    return fig, (f"Each measured cell's median end-to-end latency against the plan's prediction, log scales; the "
                 f"dashed line is a perfect prediction, the grey band a prediction within {BAND * 100:g} % of the "
                 "measured value (above the line the plan was low).")


def prediction_rows(comparison: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """The rows of the three tables of :func:`testbed.verify.compare`: per cell (a measured
    cell without a prediction too, with a note), the errors per strategy and per tier, and
    per (point, model) the winners with both winners' measured p50."""
    from .verify import cpu_text

    cells = [{**c, "point": point_label(c["point"]), "cpu_run_vs_profile": cpu_text(c) or None, "note": None}
             for c in comparison["cells"]]
    cells += [{**c, "point": point_label(c["point"]), "note": "no prediction: not in the plan"}
              for c in comparison["unmatched"]]
    winners_ = [{"model": w["model"], "point": point_label(w["point"]), "rule": w["rule"],
                 "predicted": w["predicted"], "measured": w["measured"], "agree": w["agree"], "tie": w["tie"],
                 "predicted_winner_measured_ms": w["measured_ms"].get(w["predicted"]),
                 "measured_winner_ms": w["measured_ms"].get(w["measured"]),
                 "indistinguishable": w["indistinguishable"], "p": (w["test"] or {}).get("p"),
                 "unmeasured": ", ".join(w["unmeasured"]) or None} for w in comparison["winners"]]
    return cells, comparison["by_strategy"] + comparison["by_tier"], winners_


PREDICTED_LOAD_COLUMNS = ["model", "point", "strategy", "placement", "target_qps", "answered_qps", "predicted_ms",
                          "measured_ms", "error", "predicted_p99_ms", "measured_p99_ms", "error_p99", "saturated",
                          "saturation_qps", "bottleneck", "predicted_slo", "measured_slo", "note"]


def prediction_load_rows(load: dict) -> tuple[list[dict], list[dict]]:
    """The rows of the tables of :func:`testbed.verify.compare_load`: per cell under load (a
    measured one without a prediction too, with a note), and per (point, model) the winners
    by the load rule with both winners' measured p99."""
    def verdicts(slo: dict) -> str | None:
        return ", ".join(f"{k} {'met' if v else 'missed'}" for k, v in slo.items()) or None

    cells = [{**c, "point": point_label(c["point"]), "predicted_slo": verdicts(c["predicted_slo"]),
              "measured_slo": verdicts(c["measured_slo"]), "note": None} for c in load["cells"]]
    cells += [{**c, "point": point_label(c["point"]), "note": "no prediction at this rate: not in the plan"}
              for c in load["unmatched"]]
    winners_ = [{"model": w["model"], "point": point_label(w["point"]), "rule": w["rule"],
                 "predicted": w["predicted"], "measured": w["measured"], "agree": w["agree"],
                 "predicted_winner_measured_p99_ms": w["measured_p99_ms"].get(w["predicted"]),
                 "measured_winner_p99_ms": w["measured_p99_ms"].get(w["measured"])} for w in load["winners"]]
    return cells, winners_


def _prediction_section(out: Path, comparison: dict | None, reason: str | None, save) -> tuple[dict, list[Path]]:
    """What the page shows of the plan against measurement, and the tables written: the
    comparison with its figure and rows (and, for cells under a server scenario's load,
    ``load`` with its own), or only the reason there is none."""
    if comparison is None:
        return {"reason": reason}, []
    drawn = _prediction_figure(comparison)
    cells, errors, winners_ = prediction_rows(comparison)
    tables = []
    if comparison["cells"] or comparison["unmatched"]:
        tables = (_write_table(out / "tables", "predicted", cells, PREDICTED_CELL_COLUMNS)
                  + _write_table(out / "tables", "predicted_errors", errors,
                                 ["by", "name", "n", "median_abs_error", "median_error", "worst_error", "worst_at"])
                  + _write_table(out / "tables", "predicted_winners", winners_,
                                 ["model", "point", "rule", "predicted", "measured", "agree", "tie",
                                  "predicted_winner_measured_ms", "measured_winner_ms", "indistinguishable", "p",
                                  "unmeasured"]))
    load = comparison.get("load")
    if load:
        load_cells, load_winners = prediction_load_rows(load)
        tables += (_write_table(out / "tables", "predicted_load", load_cells, PREDICTED_LOAD_COLUMNS)
                   + _write_table(out / "tables", "predicted_load_winners", load_winners,
                                  ["model", "point", "rule", "predicted", "measured", "agree",
                                   "predicted_winner_measured_p99_ms", "measured_winner_p99_ms"]))
        load = {**load, "rows": load_cells, "disagreements": [w for w in load_winners if not w["agree"]]}
    return {**comparison, "figures": save("predicted", [("vs-measured", *drawn)] if drawn else []),
            "rows": cells, "errors": errors, "disagreements": [w for w in winners_ if not w["agree"]],
            "load": load}, tables


# --- tables ---------------------------------------------------------------------------------

def _cell_rows(cells: list[dict], requests: list[dict]) -> list[dict]:
    """One row per cell, any status: the summary of `testbed results show` without hops."""
    rows = []
    for r in summarize(cells, requests, []):
        (v_low, v_high), (l_low, l_high) = (r[k] or (None, None) for k in ("value_ci", "loss_ci"))
        rows.append({"model": r["model"], "point": point_label(r["point"]), "strategy": r["strategy"],
                     "placement": r["placement"], "status": r["status"], "requests": sum(r["counts"].values()),
                     "ok": r["counts"]["ok"], "p50_ms": r["e2e_p50"], "p90_ms": r["e2e_p90"], "metric": r["metric"],
                     "metric_value": r["value"], "metric_ci_low": v_low, "metric_ci_high": v_high,
                     "baseline_value": r["baseline"], "loss_ci_low": l_low, "loss_ci_high": l_high,
                     "error": r["error"], "host_flags": "; ".join(r["host_flags"]) or None,
                     "cut": r.get("cut"), "cut_choice": choice_text(r.get("choice"))})
    return rows


def choice_text(choice: dict | None) -> str | None:
    """Why a ``cut: fastest`` cell deployed its cut, in one line: its predicted p50 among the
    candidates', and ``auto``'s beside it."""
    if not choice:
        return None
    cands = choice.get("candidates") or []
    auto = next((c for c in cands if c.get("auto")), None)
    return (f"least predicted p50 of {len(cands)} candidate cuts: {choice['p50_ms']:.2f} ms"
            + ("" if auto is None or auto["tensor"] == choice["cut"] else
               f" (auto's cut {auto['tensor']}: {auto['p50_ms']:.2f} ms)")
            + " — " + ", ".join(f"{c['tensor']} ({c['bytes']} B) {c['p50_ms']:.2f} ms" for c in cands))


def _write_table(folder: Path, name: str, rows: list[dict], columns: list[str]) -> list[Path]:
    frame = pd.DataFrame(rows, columns=columns)
    csv_path, tex_path = folder / f"{name}.csv", folder / f"{name}.tex"
    frame.to_csv(csv_path, index=False)
    tex_path.write_text(frame.to_latex(index=False, escape=True, float_format="%.4g", na_rep="--"), encoding="utf-8")
    return [csv_path, tex_path]


# --- the page -------------------------------------------------------------------------------

def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def _machine(m: dict | None) -> str:
    if not m:
        return "-"
    parts = [m.get("hostname"), m.get("machine"), f"{m['cores']:g} cores" if m.get("cores") else None,
             f"{format_size(m['memory_bytes'])} RAM" if m.get("memory_bytes") else None,
             f"kernel {m['kernel']}" if m.get("kernel") else None, f"Python {m['python']}" if m.get("python") else None]
    return ", ".join(p for p in parts if p)


def _pvalue(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.0001" if p < 1e-4 else f"{p:.3g}"


def _p_equals(p: float | None) -> str:
    """``p = 0.031`` or ``p < 0.0001``, for prose."""
    text = _pvalue(p)
    return f"p < {text[1:]}" if text.startswith("<") else f"p = {text}"


def _number(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _percent(v: float | None) -> str:
    """A signed fraction as a percentage: ``+4.2 %``."""
    return "–" if v is None else f"{v * 100:+.1f} %"


def _interval_text(low: float | None, high: float | None) -> str:
    return "–" if low is None or high is None else f"[{_number(low)}, {_number(high)}]"


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pvalue=_pvalue, p_equals=_p_equals, num=_number, pct=_percent)
    return env


def _slug(name: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


OWNED = ".testbed-report.json"      # in a report folder: the files the last report wrote there


def _take_folder(out: Path) -> None:
    """Make ``out`` ready for a report without touching a file the testbed did not write: a
    folder of an earlier report loses exactly the files that report wrote (its :data:`OWNED`
    list), an empty or missing one is used as it is, and any other is refused in one line."""
    owned = out / OWNED
    if owned.is_file():
        try:
            written = json.loads(owned.read_text(encoding="utf-8"))["files"]
        except (ValueError, KeyError, TypeError):
            raise ReportError(f"{owned} is not a report's list of files: remove it (and the report it "
                              "belongs to), or choose another --out") from None
        for rel in written:
            p = out / rel
            if isinstance(rel, str) and ".." not in Path(rel).parts and p.is_file():
                p.unlink()
        return
    if out.exists():
        theirs = next(iter(sorted(p for p in out.rglob("*") if not p.is_dir())), None)
        if theirs is not None:
            raise ReportError(f"{out} holds files the testbed did not write (e.g. {theirs.relative_to(out)}): "
                              "choose an empty or new --out (a report writes only into a folder it owns)")


def _own(out: Path, report: Report) -> None:
    """Record what this report wrote, so that the next one replaces exactly these."""
    files = [report.index, *report.figures, *report.tables]
    (out / OWNED).write_text(json.dumps({"files": sorted(str(p.relative_to(out)) for p in files)}, indent=1),
                             encoding="utf-8")


def write_report(folder: str | Path, out: str | Path | None = None, tolerance: float = TOLERANCE) -> Report:
    """Write the report of the store in ``folder`` into ``out`` (default ``folder/report``)
    and return what was written. ``out`` must be missing, empty, or an earlier report's folder
    (whose files are replaced: nothing else in it is touched). Raises StoreError when
    ``folder`` holds no readable store, ReportError when the report cannot be written."""
    with ResultStore.in_folder(folder, create=False) as store:
        cells, requests, runs = store.cells(), store.requests(), store.runs()
        times = store.trace_times() if any(c.get("trace") for c in cells) else {}
    out = Path(folder) / "report" if out is None else Path(out)
    try:
        _take_folder(out)
        for sub in ("figures", "tables"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        report = _write(out, cells, requests, runs, tolerance, times)
        _own(out, report)
        return report
    except OSError as e:
        raise ReportError(f"cannot write the report to {out}: {e.strerror or e}: "
                          "check its permissions or choose another --out") from None


def quality_tests(cells: list[dict]) -> list[dict]:
    """Per model and artifact (strategy): its metric, the baseline and the loss with their 95 %
    intervals as stored with the cell (``*_ci_low``, ``*_ci_high``; ``interval`` says when
    there are none), and the paired test of its per-sample quality against the untransformed
    model's on the same evaluation samples (the files `workloads.prepare` writes beside the
    artifact; `testbed.stats.paired_test`: exact McNemar for 1/0 scores, correct or agreeing,
    Wilcoxon signed-rank for pixel accuracy; ``test`` names it); a row says so when the files
    are missing."""
    rows, seen = [], set()
    for c in cells:
        if c["status"] != "done" or not c.get("artifact") or (c["model"], c["artifact"]) in seen:
            continue
        seen.add((c["model"], c["artifact"]))
        v, b = c["metric_value"], c["baseline_value"]
        row = {"model": c["model"], "strategy": c["strategy"], "metric": c["metric"], "value": v, "baseline": b,
               "loss": None if v is None or b is None else b - v, "samples": c.get("quality_samples"),
               "interval": None if v is None or interval(c, "loss") else NO_INTERVAL}
        for k in ("value", "baseline", "loss"):
            row[f"{k}_ci_low"], row[f"{k}_ci_high"] = interval(c, k) or (None, None)
        folder = Path(c["artifact"])
        try:
            scores, base = np.load(folder / SCORES_FILE), np.load(folder / BASELINE_SCORES_FILE)
        except (OSError, ValueError):
            rows.append({**row, "test": None, "n": None, "nonzero": None, "statistic": None, "p": None,
                         "median_difference": None, "significant": None,
                         "warning": "no per-sample scores beside the artifact (prepared by an older testbed, "
                                    "moved, or random weights)"})
            continue
        rows.append({**row, **paired_test(base, scores)})
    return rows


def _write(out: Path, cells: list[dict], requests: list[dict], runs: list[dict], tolerance: float,
           times: dict[tuple[str, int], float] | None = None) -> Report:
    ok: dict[str, list[dict]] = {}
    for r in requests:
        if r["status"] == "ok" and r["e2e_ms"] is not None:
            ok.setdefault(r["cell"], []).append(r)
    latencies = {cell: [r["e2e_ms"] for r in rows] for cell, rows in ok.items()}
    comparisons = study_statistics(cells, requests)
    quality = quality_tests(cells)
    models_order = list(dict.fromkeys(c["model"] for c in cells))
    # study_statistics keeps study_groups' order: pair them, then sort the points numerically
    studied = sorted(zip(study_groups(cells), comparisons), key=lambda pair: (
        models_order.index(pair[0].cells[0]["model"]), [_value_key(a, v) for a, v in pair[0].point.items()]))
    groups = [g for g, _ in studied]
    recs = recommend(cells, requests, tolerance, comparisons=comparisons)
    counts = {s: sum(1 for c in cells if c["status"] == s) for s in CELL_STATUSES}
    note = None if groups else (f"no cell of this store is done ({len(cells)} cells in all): there is nothing "
                                "to compare")
    # under load: the models as the groups name them ('model (weights)' where a model has several)
    model_of = {c["cell"]: g.model for g in groups for c in g.cells}
    named = [{**c, "model": model_of.get(c["cell"], c["model"])} for c in cells]
    load_curves = curves(named)
    load_winner_rows, load_strategy_rows = load_tables(load_curves, capacities(named))
    tails = trace_tails(groups, ok)
    figures, models, used = [], [], set()

    def save(slug: str, drawn: list[tuple[str, Figure, str]]) -> list[dict]:
        shown = []
        for kind, fig, caption in drawn:
            path = out / "figures" / f"{slug}-{kind}.png"
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=DPI)
            path.write_bytes(buf.getvalue())
            figures.append(path)
            shown.append({"src": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(),
                          "href": f"figures/{path.name}", "caption": caption})
        return shown

    for model in dict.fromkeys(g.model for g in groups):
        mine = [g for g in groups if g.model == model]
        slug = _slug(model, used)
        shown = save(slug, _figures(model, mine, ok, latencies))
        mine_curves = [cv for cv in load_curves if cv["model"] == model]
        load = None if not mine_curves else {
            "recommendations": [r for r in recs if r["model"] == model and r["kind"].startswith("load_")],
            "figures": save(slug, _load_figures(model, mine_curves, _colors(mine))),
            "winners": [w for w in load_winner_rows if w["model"] == model],
            "strategies": [r for r in load_strategy_rows if r["model"] == model]}
        mine_tails = [t for t in tails if t["model"] == model]
        traced = None if not mine_tails else {
            "figures": save(slug, _trace_figures(model, mine, ok, times or {})), "tails": mine_tails}
        models.append({"name": model, "figures": shown, "load": load, "traced": traced,
                       "metric": next((c["metric"] for g in mine for c in g.cells if c["metric"]), None),
                       "recommendations": [(point_label(g.point), [r for r in recs if r["model"] == model
                                                                   and r["point"] == g.point
                                                                   and not r["kind"].startswith("load_")])
                                           for g in mine],
                       "statistics": [s for g, s in studied if g.model == model],
                       "quality": [q for q in quality if q["model"] == model]})
    sweep_axes = list(dict.fromkeys(a for c in cells for a in c["point"]))
    winner_rows = [{"model": w["model"], **{a: w["point"].get(a) for a in sweep_axes}, "winner": w["winner"],
                    "p50_ms": w["p50_ms"]} for w in winners(groups, latencies)]
    tables = (_write_table(out / "tables", "cells", _cell_rows(cells, requests),
                           ["model", "point", "strategy", "placement", "status", "requests", "ok", "p50_ms", "p90_ms",
                            "metric", "metric_value", "metric_ci_low", "metric_ci_high", "baseline_value",
                            "loss_ci_low", "loss_ci_high", "error", "host_flags", "cut", "cut_choice"])
              + _write_table(out / "tables", "strategies", [r for s in comparisons for r in s.strategy_rows()],
                             ["model", "point", "strategy", "placement", "n", "median_ms", "ci_low_ms", "ci_high_ms",
                              "shapiro_p", "normal"])
              + _write_table(out / "tables", "pairs", [r for s in comparisons for r in s.pair_rows()],
                             ["model", "point", "a", "b", "p_holm", "delta", "magnitude", "significant"])
              + _write_table(out / "tables", "quality", quality,
                             ["model", "strategy", "metric", "value", "value_ci_low", "value_ci_high", "baseline",
                              "baseline_ci_low", "baseline_ci_high", "loss", "loss_ci_low", "loss_ci_high",
                              "samples", "interval", "test", "n", "nonzero", "statistic", "p", "median_difference",
                              "significant", "warning"])
              + _write_table(out / "tables", "recommendations", recs,
                             ["model", "point_label", *(["scenario"] if load_curves else []), "kind", "strategy",
                              "placement", "p50_ms", "loss", "loss_ci_low", "loss_ci_high", "tolerance_verdict",
                              "text"])
              + _write_table(out / "tables", "winners", winner_rows, ["model", *sweep_axes, "winner", "p50_ms"]))
    if tails:
        tables += _write_table(out / "tables", "trace_tails", tails, list(tails[0]))
    if load_curves:
        tables += (_write_table(out / "tables", "load_winners", load_winner_rows, list(load_winner_rows[0]))
                   + _write_table(out / "tables", "load_strategies", load_strategy_rows, list(load_strategy_rows[0])))
    comparison, reason = verify(runs, cells, requests, tolerance=tolerance)
    predicted, more = _prediction_section(out, comparison, reason, lambda slug, drawn: save(_slug(slug, used), drawn))
    tables += more
    experiments = sorted({r["experiment"] for r in runs})
    html = _environment().get_template("report.html.j2").render(
        title=f"Testbed report: {', '.join(experiments) or 'results'}", generated=_when(datetime.now().timestamp()),
        runs=[{**r, "started": _when(r["started"]), "ended": _when(r["ended"]), "machine": _machine(r["machine"])}
              for r in runs],
        counts=counts, no_ok=sum(1 for c in cells if c["status"] == "done" and not latencies.get(c["cell"])),
        problems=[c for c in cells if c["status"] != "done"], note=note, tolerance=tolerance, models=models,
        flagged=[{**c, "flags": host_flags(c.get("hosts"))} for c in cells if host_flags(c.get("hosts"))],
        point_label=point_label, interval=_interval_text, tables=[f"tables/{p.name}" for p in tables],
        predicted=predicted)
    index = out / "index.html"
    tmp = index.with_name(".index.html.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, index)
    return Report(index, figures, tables, recs, counts, note, comparison or {"reason": reason})
