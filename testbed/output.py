"""Human-readable tables for the CLI (rich). JSON output never goes through here."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from topologies import format_duration_ms, format_fraction, format_rate, format_size

# tables in logs and pipes would be cut to 80 columns; a terminal keeps its own width, and
# COLUMNS, when set, is the width wanted anywhere
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)


def _yes(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "[green]yes[/]" if v else "[red]no[/]"
    return str(v)


def _verdict(v) -> str:
    return "-" if v is None else ("[green]pass[/]" if v else "[red]FAIL[/]")


def print_doctor(caps: dict) -> None:
    t = Table(title="testbed doctor", show_header=True)
    t.add_column("what")
    t.add_column("here")
    t.add_column("means")
    t.add_row("root", _yes(caps["root"]), "needed for up / calibrate / clean")
    t.add_row("kernel", caps["kernel"], "")
    t.add_row("cgroups", f"v{caps['cgroup_version']} ({', '.join(caps['cgroup_controllers'])})"
              if caps["cgroup_version"] else "[red]none[/]", "CPU quota and memory limits per host")
    if caps.get("cgroup_layout"):
        t.add_row("host groups", caps["cgroup_layout"], "where each run's host cgroups live")
    qd = caps.get("qdiscs") or {}
    t.add_row("qdiscs", ", ".join(f"{k}:{'yes' if v else 'no'}" for k, v in qd.items()) or "not probed",
              caps.get("kernel_probe", {}).get("reason", ""))
    t.add_row("bandwidth", caps["shaping"], "tbf in each link's wire namespace")
    t.add_row("delay / jitter", caps["delay_mechanism"],
              "netem qdisc" if caps["delay_mechanism"] == "netem" else "NFQUEUE delay line in a forwarding namespace")
    if caps.get("netem_hint"):
        t.add_row("netem", "no", caps["netem_hint"])
    t.add_row("loss", caps["loss_mechanism"], "")
    t.add_row("mininet", _yes(caps["mininet"]), f"mnexec: {caps['mnexec'] or 'missing'}")
    t.add_row("iperf3 / ping", f"{_yes(bool(caps['iperf3']))} / {_yes(bool(caps['ping']))}", "used by calibrate")
    t.add_row("cpus", f"{caps['cpus']:g}", caps.get("cpu_model", ""))
    feats = caps.get("cpu_features", {})
    t.add_row("cpu features", ", ".join(k for k, v in feats.items() if v) or "none of interest",
              "int8 speed-ups need VNNI/AMX")
    t.add_row("memory", f"{caps['memory_bytes'] / (1 << 30):.1f} GiB", "")
    t.add_row("tcp congestion control", str(caps["tcp_congestion_control"]), "")
    console.print(t)


def print_applied(applied: dict) -> None:
    t = Table(title=f"links of {applied['topology']} (run {applied['run_id']}), read back from the kernel")
    for c in ("link", "direction", "interface", "bandwidth", "queue", "delay", "jitter", "loss", "delay by"):
        t.add_column(c)
    for r in applied["links"]:
        t.add_row(r["link"], r["direction"], r["interface"],
                  format_rate(r["bandwidth_bps"]) if r["bandwidth_bps"] else "unshaped",
                  format_size(r["queue_bytes"]) if r["queue_bytes"] else "-",
                  f"{r['delay_ms']:g} ms", f"{r['jitter_ms']:g} ms", f"{r['loss']:.3%}",
                  r["delay_mechanism"] + (f" ({r['delay_line_sched']})" if r.get("delay_line_sched") else ""))
    console.print(t)
    h = Table(title="hosts, read back from their cgroups")
    for c in ("host", "address", "cpus", "cpu period", "memory", "cpuset", "cgroup"):
        h.add_column(c)
    for r in applied["hosts"]:
        h.add_row(r["host"], r["address"], "unlimited" if r["cpus"] is None else f"{r['cpus']:g}",
                  f"{r['cpu_period_us'] / 1000:g} ms",
                  "unlimited" if r["memory_bytes"] is None else format_size(r["memory_bytes"]),
                  r["cpuset"] or "-", r["cgroup"])
    console.print(h)
    tick = applied.get("cpu_tick")
    if tick:
        console.print(f"CPU ticker: every {tick['interval_us'] / 1000:g} ms on each CPU at {tick['policy']} "
                      f"{tick['priority']} (quotas enforced at that grain, not the kernel's tick)")


def print_calibration(report: dict) -> None:
    t = Table(title=f"calibration of {report['topology']} (run {report['run_id']})")
    for c in ("link", "direction", "bandwidth", "goodput", "ratio", "RTT want", "RTT p10/p50/p90", "loss want",
              "loss got", "verdict"):
        t.add_column(c)
    for r in report["links"]:
        t.add_row(r["link"], r["direction"],
                  format_rate(r["bandwidth_bps"]) if r["bandwidth_bps"] else "unshaped",
                  format_rate(int(r["goodput_bps"])),
                  "-" if r["goodput_ratio"] is None else f"{r['goodput_ratio']:.3f}",
                  f"{r['expected_rtt_ms']:.2f} ms",
                  "/".join(f"{r[k]:.2f}" for k in ("rtt_p10_ms", "rtt_ms", "rtt_p90_ms") if k in r) + " ms",
                  f"{r['loss']:.2%}", f"{r['measured_loss']:.2%}" + ("*" if r.get("loss_socket_drops") else ""),
                  _verdict(r["pass"]))
    console.print(t)
    for r in report["links"]:
        if r.get("loss_socket_drops"):
            console.print(f"* {r['link']} {r['direction']}: {r['loss_socket_drops']} of {r['loss_packets']} datagrams "
                          "were dropped by the receiving socket (its buffer full), not by the link: not in its loss")
    for r in report["links"]:
        line = r.get("delay_line")
        if r["pass"] is False and line:      # was it the delay line (late, dropping) or the link?
            console.print(f"  {r['direction']}: its delay line so far: {line.get('packets')} packets, "
                          f"latest batch {line.get('late_us_max')} us late (mean {line.get('late_us_mean')}), "
                          f"drops: queue full {line.get('dropped_queue')}, ENOBUFS {line.get('dropped_enobufs')}, "
                          f"kernel queue {line.get('kernel_queue_dropped')}")
    h = Table(title="hosts")
    for c in ("host", "cpus", "measured cpus", "cpu period", "slowdown of a 5 / 50 ms burst", "memory",
              "memory enforced", "verdict"):
        h.add_column(c)
    bimodal = []
    for r in report["hosts"]:
        slow = r.get("burst_slowdown")
        if slow and r["cpus"] <= 0.5 and slow["5"] < 1.5:      # steadily, it would be 2x slower or more
            bimodal.append(r["host"])
        h.add_row(r["host"], "unlimited" if r["cpus"] is None else f"{r['cpus']:g}", f"{r['measured_cpus']:.3f}",
                  f"{r['cpu_period_us'] / 1000:g} ms",
                  "-" if not slow else " / ".join(f"{v:.2f}x" for v in slow.values()),
                  "unlimited" if r["memory_bytes"] is None else format_size(r["memory_bytes"]),
                  _yes(r["memory_enforced"]), _verdict(r["pass"]))
    console.print(h)
    c = Table(title="compute per request (p10 / p50 / p90 against unconstrained / cpus)")
    for col in ("host", "work", "cpu period", "paced", "unconstrained", "expected", "p10 / p50 / p90", "ratio",
                "verdict"):
        c.add_column(col)
    notes = []
    for r in report["hosts"]:
        for m in r.get("compute") or []:
            c.add_row(r["host"], m["label"], f"{m['cpu_period_us'] / 1000:g} ms", _yes(m["paced"]),
                      f"{m['unconstrained_p50_ms']:.2f} ms", f"{m['expected_ms']:.2f} ms",
                      f"{m['p10_ms']:.2f} / {m['p50_ms']:.2f} / {m['p90_ms']:.2f} ms",
                      " / ".join(f"{v:.2f}" for v in m["ratio_p10_p50_p90"]), _verdict(m["checks"]["compute"]))
            if m.get("note"):
                notes.append(f"{r['host']} ({m['label']}): {m['note']}")
    if c.row_count:
        console.print(c)
    for n in notes:
        console.print(f"not judged: {n}")
    if bimodal:
        console.print(f"note: on {', '.join(bimodal)} a short burst runs at full speed until the period's quota is "
                      "spent, so under the quota alone short inferences there are fast or slow, not steadily slow; "
                      "cpu_period: auto slices it finer and servers pace each inference (serving.pace), see the "
                      "compute table and the README: A slow host is slow on every request")
    tol = report["tolerances"]
    console.print(f"tolerances: goodput/bandwidth in [{tol['goodput_ratio'][0]}, {tol['goodput_ratio'][1]}], "
                  f"RTT {tol['rtt']}, cpus within {tol['cpus']}, loss within {tol['loss']}"
                  + (f", compute {tol['compute']}" if tol.get("compute") else ""))
    console.print("[green]all checks passed[/]" if report["pass"] else "[red]some checks failed[/]")


def print_clean(found: list, dry_run: bool) -> None:
    if not found:
        console.print("nothing to clean: no leftovers of testbed runs")
        return
    t = Table(title="would remove" if dry_run else "removed")
    for c in ("run", "kind", "what"):
        t.add_column(c)
    for f in found:
        t.add_row(f.run_id, f.kind, f.what)
    console.print(t)


def _bytes(n) -> str:
    if n is None:
        return "-"
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{int(n)} B"


def _flops(n: int) -> str:
    for unit, k in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= k:
            return f"{n / k:.2f}{unit}"
    return str(n)


def print_trace(info: dict) -> None:
    """`testbed traces show`: one table of what a trace holds."""
    t = Table(title=f"trace {info['source']}", show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("format / mode", f"{info['format']} / {info['mode']}")
    t.add_row("duration", format_duration_ms(info["duration_ms"]))
    shortest = info["shortest_step_ms"]
    t.add_row("steps", f"{info['steps']}" + (f" (shortest {format_duration_ms(shortest)})" if shortest else ""))
    bw = info["bandwidth_bps"]
    t.add_row("bandwidth (time-weighted)", f"mean {format_rate(round(bw['mean'], -3))}, p10 {format_rate(bw['p10'])}, "
                                           f"p50 {format_rate(bw['p50'])}, p90 {format_rate(bw['p90'])}")
    t.add_row("bandwidth range", f"{format_rate(bw['min'])} .. {format_rate(bw['max'])}")
    for key, name, fmt in (("delay_ms", "delay", format_duration_ms), ("jitter_ms", "jitter", format_duration_ms),
                           ("loss", "loss", format_fraction)):
        if key in info:
            t.add_row(name, f"{fmt(info[key]['min'])} .. {fmt(info[key]['max'])}")
    for note in info["notes"]:
        t.add_row("note", note)
    console.print(t)


def print_models(rows: list[dict]) -> None:
    t = Table(title="models")
    for c in ("name", "task", "metric", "weights", "inputs", "pretrained weights"):
        t.add_column(c)
    for r in rows:
        shapes = ", ".join(f"{i['name']} {i['dtype']}{i['shape']}" for i in r["inputs"])
        where = "offline" if r["offline"] else "[yellow]need a download[/]"
        t.add_row(r["name"], r["task"], r["metric"], "/".join(r["weights"]), shapes, where)
    console.print(t)
    console.print("Where weights and data come from: testbed models list --json (field source).")


def print_cuts(model: str, total_flops: int, rows: list[dict]) -> None:
    t = Table(title=f"valid cuts of {model} ({len(rows)}; {_flops(total_flops)} FLOPs in all)")
    for c in ("#", "tensor", "shape", "bytes", "FLOPs before", "FLOPs after", "fraction"):
        t.add_column(c, justify="right" if c not in ("tensor", "shape") else "left")
    for r in rows:
        t.add_row(str(r["index"]), r["tensor"], f"{r['dtype']}{r['shape']}", _bytes(r["bytes"]),
                  _flops(r["flops_before"]), _flops(r["flops_after"]), f"{r['fraction']:.3f}")
    console.print(t)


def _metric(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _with_interval(value, ci) -> str:
    """'0.9375 [0.8906,0.9844]': a value and its 95 % interval (no space inside, so that it
    stays whole when a cell wraps); the value alone without one."""
    return _metric(value) + (escape(f" [{ci[0]:.4f},{ci[1]:.4f}]") if ci else "")


def _quality_detail(r: dict) -> str:
    """The metric's name, its value, the untransformed model's (base) and their difference
    (loss), each with its 95 % interval; a 'no interval' line for a cell without intervals."""
    v, b = r["value"], r["baseline"]
    lines = [("", v, r["value_ci"])]
    if v is not None and b is not None:
        lines += [("base ", b, r["baseline_ci"]), ("loss ", b - v, r["loss_ci"])]
    known = any(ci is not None for *_, ci in lines)
    return "\n".join([r["metric"]] + [label + _with_interval(x, ci) for label, x, ci in lines]
                     + ([] if known or v is None else ["no interval"]))


def print_prepared(name: str, rows: list[dict]) -> None:
    t = Table(title=f"artifacts of {name}", caption="value, baseline and loss (baseline - value) with their 95 % "
                                                    "intervals: a paired bootstrap over the evaluation samples")
    for c in ("model", "operators", "parts", "metric", "value", "baseline", "loss", "judged on", "size", "path"):
        t.add_column(c)
    for r in rows:
        ci = r.get("interval") or {}
        v, b = r["value"], r["baseline"]
        loss = "n/a" if v is None or b is None else _with_interval(b - v, ci.get("loss"))
        if v is not None and not ci.get("loss"):
            loss += f" ({ci.get('note') or 'no interval'})"
        t.add_row(r["model"] + ("" if r["weights"] == "pretrained" else f" ({r['weights']})"), r["operators"],
                  str(r["parts"]), r["metric"], _with_interval(v, ci.get("value")),
                  _with_interval(b, ci.get("baseline")), loss, _judged_on(r.get("data")), _bytes(r["size_bytes"]),
                  r["path"] + (" (cached)" if r["cached"] else ""))
    console.print(t)


def _judged_on(data: dict | None) -> str:
    """The evaluation data in short (``600 / 120 src``: samples and distinct source items),
    and what learnt from which other split, whose sources it shares none of."""
    if not data or "eval" not in data:
        return "-"
    learnt = [f"{split} {d['samples']} / {d['sources']} src ({', '.join(d['used_by'])})"
              for split, d in data.items() if split != "eval"]
    return f"{data['eval']['samples']} / {data['eval']['sources']} src" + (
        "; held out from " + "; ".join(learnt) if learnt else "")


class _Bar:
    def __init__(self, progress, task):
        self._p, self._t = progress, task

    def describe(self, text: str) -> None:
        self._p.update(self._t, description=escape(text[:80]))

    def advance(self) -> None:
        self._p.advance(self._t)


class progress:  # noqa: N801 - used as a context manager: `with progress(n) as bar`
    """A progress bar on stderr (so --json output on stdout stays clean)."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=Console(stderr=True), transient=False)
        self._total = total

    def __enter__(self) -> _Bar:
        self._progress.start()
        return _Bar(self._progress, self._progress.add_task("preparing", total=self._total))

    def __exit__(self, *exc) -> None:
        self._progress.stop()


def _ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _per(d: dict, hosts: dict[str, str]) -> str:
    """One line per host or link direction ('src>dst'), hosts by their short names."""
    return "\n".join(f"{'→'.join(hosts[h] for h in k.split('>'))} {_ms(v)}" for k, v in d.items()) or "-"


def _by_model_and_point(rows: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """model -> point (as JSON) -> its rows, each in the order first seen (the store's)."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault(r["model"], {}).setdefault(json.dumps(r["point"], sort_keys=True), []).append(r)
    return groups


def _axes(rows: list[dict]) -> dict[str, str]:
    """Short name of every swept path of the rows (one name per axis over the whole table)."""
    from testbed.summary import axis_names     # numpy: not on every command's start-up path

    return axis_names(k for r in rows for k in r["point"])


def _labels(r: dict, names: dict[str, str]) -> list[str]:
    from testbed.summary import point_labels

    return point_labels(r["point"], names)


def _point_cells(group: list[dict], names: dict[str, str]) -> list[str]:
    """The point column of a group of rows: its short labels one per row, so that each row
    stays one line; a group with fewer rows than labels puts the rest on its last row."""
    labels = _labels(group[0], names)
    cells = labels[:len(group) - 1] + ["\n".join(labels[len(group) - 1:])]
    return cells + [""] * (len(group) - len(cells))


def _legend(names: dict[str, str]) -> str:
    shown = {name: path for path, name in names.items() if name != path}
    return ("point: " + ", ".join(f"{name} = {path}" for name, path in shown.items())) if shown else ""


def _metric_short(r: dict) -> str:
    """'agr 90.62% (-9.4 [-18.8,-3.1])': the metric's name (up to 4 letters, else its first 3),
    its value, and the change from the untransformed model with the change's 95 % interval (in
    points for a fraction, which every metric of the registry is); nothing after the value when
    the two agree on every sample (no change, a zero-width interval), and 'no interval' where
    the cell has none. Rich markup: the brackets are escaped."""
    metric, v, b, ci = r["metric"], r["value"], r["baseline"], r.get("loss_ci")
    if metric is None:
        return "-"
    name = metric if len(metric) <= 4 else metric[:3]
    if v is None:
        return f"{name} n/a"
    fraction = 0 <= v <= 1 and (b is None or 0 <= b <= 1)
    show = (lambda x: f"{x * 100:.2f}%") if fraction else (lambda x: f"{x:.4g}")
    change = (lambda x: f"{x * 100:+.1f}") if fraction else (lambda x: f"{x:+.3g}")
    text = f"{name} {show(v)}"
    if b is None:
        return text
    if ci is None:
        return text + (" (no interval)" if show(b) == show(v) else f" ({change(v - b)}, no interval)")
    if v == b and ci[0] == ci[1] == 0:
        return text
    return text + escape(f" ({change(v - b)} [{change(-ci[1])},{change(-ci[0])}])")


def _notes(r: dict, counts: bool = True) -> list[str]:
    """What a one-line row cannot say: a cell that did not finish, its error, requests that
    were not ok (unless ``counts`` is False: the detail shows them all), hosts that got less
    than their CPU share."""
    out = []
    if r["status"] != "done":
        out.append(f"[red]{r['status']}[/]")
    if r["error"]:
        out.append(f"[red]{r['error'][:160]}[/]")
    bad = ", ".join(f"{n} {s}" for s, n in r["counts"].items() if s != "ok" and n)
    if counts and bad:
        out.append(f"[yellow]{bad}[/]")
    return out + [f"[yellow]{flag[:160]}[/]" for flag in r.get("host_flags") or []]


_SUMMARY_COLUMNS = (("point", "left"), ("strategy", "left"), ("placement", "left"), ("e2e p50", "right"),
                    ("p90", "right"), ("compute", "right"), ("transm.", "right"), ("quality", "left"),
                    ("ok", "right"))


def _summary_lines(points: dict[str, list[dict]],
                   names: dict[str, str]) -> tuple[list[tuple[list[str], bool]], list[str]]:
    """The rows of one model's summary table (cells, and whether the row ends its point's
    group) and the notes under it."""
    lines, notes = [], []
    for group in points.values():
        for i, (r, point) in enumerate(zip(group, _point_cells(group, names))):
            counts, here = r["counts"], _notes(r)
            ok = f"{counts['ok']}/{sum(counts.values())}"
            if here:
                notes.append(f"! {r['strategy']}" + (f" at {', '.join(_labels(r, names))}" if names else "")
                             + ": " + "; ".join(here))
                ok = f"[{'red' if r['status'] != 'done' or not counts['ok'] else 'yellow'}]{ok}![/]"
            lines.append(([point, r["strategy"], r["placement"].replace(">", "→"), _ms(r["e2e_p50"]),
                           _ms(r["e2e_p90"]), _ms(r["compute_p50"]), _ms(r["transmission_p50"]), _metric_short(r),
                           ok], i == len(group) - 1))
    return lines, notes


def print_run_summary(name: str, rows: list[dict], out: str) -> None:
    """The end-of-run summary, one line per cell: a table per model, its rows grouped by sweep
    point (the swept values in short form, e.g. ``EC 5Mbit``; no point column without a
    sweep), medians per request in ms, quality in one cell (its interval on a second line when
    the terminal is narrower than the table). What does not fit a line (a failed cell, its
    error, requests that were not ok, hosts short of their CPU share) is a note under its
    model's table; per-host and per-link times are in :func:`print_run_detail`. The
    columns of every model's table have the same widths, so the tables read as one."""
    from rich.text import Text

    names = _axes(rows)
    tables = {model: _summary_lines(points, names) for model, points in _by_model_and_point(rows).items()}
    shown = [i for i in range(len(_SUMMARY_COLUMNS)) if names or i]     # the point column only for a sweep
    widths = {i: max([len(_SUMMARY_COLUMNS[i][0])] + [Text.from_markup(line).cell_len for cells, _ in
                                                      (x for lines, _ in tables.values() for x in lines)
                                                      for line in cells[i].split("\n")]) for i in shown}
    # narrower than the table (113 columns for the demo): the quality's interval goes onto a
    # second line; narrower than that (98), the placement goes too (--detail has it) and the
    # quality wraps at its spaces, so every number but the interval stays on its row's first line
    quality = _SUMMARY_COLUMNS.index(("quality", "left"))
    before_interval = max([len("quality")] + [Text(Text.from_markup(cells[quality]).plain.split(" [")[0]).cell_len
                                              for lines, _ in tables.values() for cells, _ in lines])
    others = sum(widths[i] + 2 for i in shown if i != quality)
    narrow = others + before_interval > console.width
    if narrow:
        shown.remove(2)
    elif others + widths[quality] > console.width:
        widths[quality] = console.width - others
    console.print(f"[bold]{name}[/]: per request, medians in ms (results in {out})")
    for model, (lines, notes) in tables.items():
        t = Table(title=f"\n[bold]{model}[/]", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  padding=(0, 1), collapse_padding=True, pad_edge=False)
        for i in shown:
            header, justify = _SUMMARY_COLUMNS[i]
            t.add_column(header, justify=justify, min_width=None if narrow else widths[i],
                         no_wrap=justify == "right", overflow="fold")
        for cells, last in lines:
            t.add_row(*(cells[i] for i in shown), end_section=last)
        console.print(t)
        for n in notes:
            console.print(n)
        _print_cuts(model, _by_model_and_point(rows)[model], names)
    loaded = [r for r in rows if r.get("load")]
    if loaded:
        _print_load(loaded, names)
    console.print()
    for line in (_legend(names), escape("quality: metric (change from the untransformed model, in points of %, "
                                        "[its 95 % interval])"),
                 "placement: left out, the terminal is too narrow" if narrow else "",
                 f"per host and per link, bytes, exits: testbed results show {out} --detail"):
        if line:
            console.print(f"[dim]{line}[/]")


def _slo_text(slo: dict) -> str:
    """'p99 ✓' / 'p99 ✗ 130ms': each target met or not (with what was measured when not)."""
    out = []
    for k, s in slo.items():
        if s["met"]:
            out.append(f"{k} [green]met[/]")
        else:
            got = "no answer" if s["measured_ms"] is None else f"{_ms(s['measured_ms'])}"
            out.append(f"{k} [red]missed[/] ({got})")
    return "\n".join(out) or "-"


def _print_load(rows: list[dict], names: dict[str, str]) -> None:
    """Under load: per cell, the offered and answered rates and the latency tail, counting
    requests that got no answer as slower than all others (``testbed.load``)."""
    from testbed.load import qps_text

    for model, points in _by_model_and_point(rows).items():
        t = Table(title=f"\n[bold]{model}[/] under load", title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, padding=(0, 1), collapse_padding=True, pad_edge=False)
        columns = (["point"] if names else []) + ["strategy", "scenario", "offered\nreq/s", "answered\nreq/s",
                                                   "p50", "p99", "p99.9", "queue\n%", "late\np99", "SLO"]
        for c in columns:
            t.add_column(c, justify="left" if c in ("point", "strategy", "scenario", "SLO") else "right",
                         overflow="fold")
        # in rising rate, so that a search's runs (tried in another order) read as a curve
        for group in sorted(points.values(), key=lambda g: g[0]["load"].get("target_qps") or 0):
            for i, (r, point) in enumerate(zip(group, _point_cells(group, names))):
                f = r["load"]
                lat = f["latency_ms"]
                scenario = f["scenario"] + (f" {qps_text(f['target_qps'])}/s" if f.get("target_qps") else
                                            f" ×{f['concurrency']}" if f.get("concurrency") else "")
                cells = ([point] if names else []) + [
                    r["strategy"], scenario, qps_text(f.get("offered_qps")), qps_text(f.get("throughput_rps")),
                    _ms(lat.get("p50")), _ms(lat.get("p99")), _ms(lat.get("p99.9")),
                    "-" if f.get("queue_share") is None else f"{f['queue_share'] * 100:.0f}",
                    _ms(f.get("late_p99_ms")), _slo_text(f.get("slo") or {})]
                t.add_row(*cells, end_section=i == len(group) - 1)
        console.print(t)
    _print_capacities(rows, names)
    console.print("[dim]under load: latency from each request's scheduled time, ms; a request without an "
                  "answer counts as slower than every answer (-: the percentile has no answer)[/]")


def _print_capacities(rows: list[dict], names: dict[str, str]) -> None:
    """The highest rate meeting the targets, per strategy (from the rates tried: a search, or
    a sweep over load.qps)."""
    from testbed.load import UNSURE, capacities, reach_text, targets_text
    from testbed.summary import point_labels

    found = capacities(rows)
    if not found:
        return
    console.print()
    for c in found:
        at = ", ".join(point_labels(c["point"], names))
        unsure = "" if c["sure"] else f" [yellow]({UNSURE})[/]"
        console.print(f"{c['model']} / {c['strategy']}{f' at {at}' if at else ''}: {targets_text(c['targets'])} "
                      f"{reach_text(c)}{unsure}")


def print_run_detail(name: str, rows: list[dict], out: str) -> None:
    """Every measured column of each cell, several lines a row: compute per host,
    transmission per link direction, the compute / transmission / other split, bytes, exits,
    quality with its baseline and the share of answers equal to the reference model's, and the
    requests per status. A table per model and sweep point; hosts by their initials (a legend
    says which is which) so that a row fits 100 columns; notes under the table as in
    :func:`print_run_summary`."""
    from testbed.summary import host_names

    names = _axes(rows)
    hosts = host_names(h for r in rows for k in (*r["compute"], *r["transmission"]) for h in k.split(">"))
    initials = ", ".join(f"{short} = {h}" for h, short in hosts.items() if short != h)
    console.print(f"[bold]{name}[/]: per request, medians in ms (results in {out})")
    for model, points in _by_model_and_point(rows).items():
        for group in points.values():
            at = ", ".join(_labels(group[0], names))
            t = Table(title=f"\n[bold]{model}[/]" + (f" at [bold]{at}[/]" if at else ""), title_justify="left",
                      box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1), collapse_padding=True, pad_edge=False)
            for c in ("strategy", "e2e\np50", "e2e\np90", "compute", "transm.", "c/t/o %", "bytes", "exits",
                      "quality", "requests"):
                # nothing is cut short: a cell too wide for a narrow terminal folds onto another line
                t.add_column(c, justify="right" if c.startswith(("e2e", "bytes", "exits")) else "left",
                             overflow="fold")
            notes = []
            for r in group:
                shares = r["shares"]
                quality = "-" if r["metric"] is None else _quality_detail(r)
                if r["match"] is not None:
                    quality += f"\nsame {r['match']:.0%}"
                here = _notes(r, counts=False)
                if here:
                    notes.append(f"! {r['strategy']}: " + "; ".join(here))
                t.add_row(r["strategy"] + ("!" if here else "") + f"\n[dim]{r['placement'].replace('>', '→')}[/]",
                          _ms(r["e2e_p50"]), _ms(r["e2e_p90"]), _per(r["compute"], hosts),
                          _per(r["transmission"], hosts),
                          "-" if shares is None else "/".join(f"{shares[k] * 100:.0f}" for k in
                                                              ("compute", "transmission", "other")),
                          "-" if r["bytes"] is None else _bytes(int(r["bytes"])),
                          "-" if r["exit_rate"] is None else f"{r['exit_rate']:.0%}", quality,
                          "\n".join(f"{n} {s}" for s, n in r["counts"].items() if n or s == "ok"),
                          end_section=True)
            console.print(t)
            for n in notes:
                console.print(n)
    console.print()
    for line in (_legend(names), initials and f"hosts: {initials}",
                 "c/t/o %: shares of the end-to-end time: compute, transmission, the rest (serialisation, harness)",
                 "quality: the metric, the untransformed model's (base), base - metric (loss), each with its 95 % "
                 "interval; answers equal to the untransformed model's (same)"):
        if line:
            console.print(f"[dim]{line}[/]")


class _RunBar(_Bar):
    def __init__(self, progress, task, cells: int | None):
        super().__init__(progress, task)
        self._cells, self._done = cells, 0
        self._p.update(self._t, cells=self._count())

    def _count(self) -> str:
        """Cells done, of how many (unknown ahead for a search: as many as its rates tried)."""
        return f"{self._done}/{self._cells}" if self._cells is not None else str(self._done)

    def finish_cell(self, unmeasured: int, cells: int = 1) -> None:
        """``cells`` ended (or were skipped): count the requests they will not send as done."""
        self._done += cells
        self._p.update(self._t, cells=self._count())
        if unmeasured > 0:
            self._p.advance(self._t, unmeasured)


class run_progress(progress):  # noqa: N801
    """Progress of `testbed run`: one step per measured request; cells done of all, the
    current cell or stage, and the time left at the pace so far."""

    def __init__(self, total: int | None, cells: int | None):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._progress = Progress(TextColumn("cells {task.fields[cells]}"), TextColumn("{task.description}"),
                                  BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True),
                                  transient=False)
        self._total, self._cells = total, cells

    def __enter__(self) -> _RunBar:
        self._progress.start()
        return _RunBar(self._progress, self._progress.add_task("starting", total=self._total, cells=""),
                       self._cells)


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


def print_dry_run(name: str, cells: list, total_s: float, unknown: int) -> None:
    from testbed.estimate import FACTORY, FASTEST
    from testbed.experiment import point_label

    t = Table(title=f"{name}: {len(cells)} cells (dry run: nothing is run)")
    fastest = any(c.cut is not None or c.no_estimate == FASTEST for c in cells)
    for col in ("sweep point", "model", "strategy", "placement", *(("cut",) if fastest else ()), "request", "cell",
                "status"):
        t.add_column(col)
    for c in cells:
        cut = (escape(c.cut) if c.cut else "?" if c.no_estimate == FASTEST else "-",) if fastest else ()
        t.add_row(point_label(c.point) if c.point else "-", c.model, c.strategy,
                  " → ".join(c.placement), *cut, "?" if c.request_ms is None else f"{_ms(c.request_ms)} ms",
                  "?" if c.seconds is None else _duration(c.seconds), "done (kept)" if c.done else "to run")
    console.print(t)
    todo = sum(not c.done for c in cells)
    factory = sum(not c.done and c.no_estimate == FACTORY for c in cells)
    unchosen = [c for c in cells if not c.done and c.no_estimate == FASTEST]
    note = ""
    if unknown - factory - len(unchosen):
        note += (f"; {unknown - factory - len(unchosen)} cells have no estimate (artifact not prepared: run testbed "
                 "prepare first)")
    if unchosen:
        note += f"; {len(unchosen)} cells of cut: fastest have no cut yet ({escape(unchosen[0].cut_why or '')})"
    elif fastest:
        note += "; cut: the candidate of least predicted p50 at that point (testbed plan's prediction)"
    if factory:
        note += (f"; {factory} cells of models from a Python factory have no estimate (a dry run imports and "
                 "calls no factory)")
    if any(c.search for c in cells):
        note += ("; a search for the highest rate meeting load.slo is counted at its most, every run it may try "
                 "(most end sooner)")
    console.print(f"to run: {todo} of {len(cells)} cells, about {_duration(total_s)} (networks and deployment "
                  f"included; preparing artifacts not included){note}")


def print_profiles(name: str, rows: list[dict], links: dict | None = None) -> None:
    t = Table(title=f"compute profiles of {name}", caption="per-request compute of each part on its host under its "
                                                          "limits (ms), requests back to back and after 50-150 ms "
                                                          "idle; reused: measured before, from the cache")
    for c in ("part", "host", "limits", "requests", "back to back p10 / p50 / p90", "after idle p10 / p50 / p90",
              "measured"):
        t.add_column(c)
    for r in rows:
        t.add_row(escape(r["part"]), r["host"], r["limits"], str(r["requests"]),
                  " / ".join(_ms(r[k]) for k in ("p10_ms", "p50_ms", "p90_ms")),
                  " / ".join(_ms(r[k]) for k in ("idle_p10_ms", "idle_p50_ms", "idle_p90_ms")),
                  f"reused ({r['measured_at']})" if r["reused"] else "now")
    console.print(t)
    if links:
        t = Table(title="one pass through a link's emulation", caption="one way, beyond the link's rate and delay "
                  "(ms), by pings on a two-host network; line: through a delay line or netem, plain: forwarding only")
        for c in ("class", "pings 1 ms apart p10 / p50 / p90", "after 100 ms idle p10 / p50 / p90", "measured"):
            t.add_column(c)
        for cls, regimes in links["classes"].items():
            t.add_row(cls, *(" / ".join(_ms(regimes[r][k]) for k in ("p10_ms", "p50_ms", "p90_ms"))
                             for r in ("warm", "idle")),
                      f"reused ({links['measured_at']})" if links.get("reused") else "now")
        console.print(t)


def print_plan(plan) -> None:
    """Per model: each point's predicted p50 (p90) per strategy with the winner marked, the
    crossovers, and for a two-axis grid the map of winners."""
    rows, winners = plan.rows, plan.winners
    names = _axes(rows)
    pct = f"{plan.tolerance * 100:g} %"
    for model, points in _by_model_and_point(rows).items():
        strategies = list(dict.fromkeys(r["strategy"] for group in points.values() for r in group))
        loaded = any("load" in r for group in points.values() for r in group)
        t = Table(title=f"{model}: predicted end-to-end latency, " + ("p50 / p99 ms under the load, and the rate "
                  "where the bottleneck saturates" if loaded else "p50 (p90) ms"),
                  caption=("*: the winner, the lowest p99 meeting the latency targets (the highest rate within them "
                           "when the run searches)" if loaded else "*: the winner, fastest")
                          + f" within {pct} quality loss by its 95 % interval; "
                          "x: its loss is beyond the tolerance or cannot be told from it")
        t.add_column("point")
        for s in strategies:
            t.add_column(escape(s), justify="right")
        t.add_column("winner")
        wins = {json.dumps(w["point"], sort_keys=True): w for w in winners if w["model"] == model}
        for key, group in points.items():
            w = wins[key]
            by = {r["strategy"]: r for r in group}
            cells = []
            for s in strategies:
                r = by.get(s)
                if r is None:
                    cells.append("-")
                    continue
                mark = "*" if s == w["winner"] else ("x" if r["tolerance_verdict"] not in (None, "within") else "")
                cells.append(mark + (_load_cell(r["load"]) if "load" in r else f"{_ms(r['p50_ms'])} ({_ms(r['p90_ms'])})"))
            t.add_row(", ".join(_labels(group[0], names)) or "-", *cells, escape(w["winner"] or "none within"))
        console.print(t)
        _print_cuts(model, points, names)
        legend = _legend(names)
        if legend:
            console.print(legend)
        _print_winner_map(plan, model, names)
        for c in (c for c in plan.crossovers if c["model"] == model):
            console.print(f"crossover: {escape(c['below'])} -> {escape(c['above'])}{_crossing_at(c, names)}")
        for c in (c for c in plan.cut_crossovers if c["model"] == model):
            console.print(f"cut change: {escape(c['strategy'])} from {escape(c['below'])} to {escape(c['above'])}"
                          f"{_crossing_at(c, names)}")
    console.print(f"planned {len(winners)} point(s) x model(s), {len(rows)} predictions in {plan.seconds:.2f} s; "
                  "from the compute profiles and the links' arithmetic (no jitter or loss): check it against "
                  "measurement (testbed plan --verify N, or testbed report of a run)")


def _crossing_at(c: dict, names: dict[str, str]) -> str:
    """' at Mobile-Edge 23.4Mbit (with Edge-Cloud 50Mbit)' for a crossover of `testbed.plan`."""
    where = ", ".join(f"{names.get(k, k)} {v}" for k, v in c["at"].items())
    return f" at {names.get(c['path'], c['path'])} {c['bandwidth']}" + (f" (with {where})" if where else "")


def _load_cell(load: dict) -> str:
    """A strategy's predictions under a server scenario's load, in one cell."""
    most = f"saturates at {load['saturation_qps']:.1f}/s"
    if "max_qps" in load:
        return f"{load['max_qps']:.1f}/s within targets ({most})"
    if load.get("saturated"):
        return f"saturated ({most})"
    if "p50_ms" not in load:
        return most
    missed = [k for k, v in (load.get("slo") or {}).items() if not v["met"]]
    return f"{_ms(load['p50_ms'])} / p99 {_ms(load['p99_ms'])} ({most})" + (f" misses {', '.join(missed)}" if missed else "")


def indistinguishable_text(checked: dict) -> str:
    """'; at K more ... not significantly faster' for :func:`testbed.verify.compare`'s winners,
    '' when every miss is a real one."""
    more = checked.get("agreed_or_indistinguishable", checked["agreed"]) - checked["agreed"]
    if more <= 0:
        return ""
    return (f"; at {more} more the measured winner was not significantly faster than the predicted one "
            f"(Mann-Whitney U, p >= {checked['alpha']:g})")


def print_verify(checked: dict) -> None:
    """`testbed plan --verify N`: per measured point and model, the predicted winner against
    the measured one, and the error of the predictions there (cells under a server scenario's
    load: :func:`_print_verify_load`)."""
    from testbed.verify import cpu_summary_text, miss_text

    load = checked.get("load")
    if load and not checked["cells"] and not checked["unmatched"]:
        return _print_verify_load(checked, load)
    _print_checked_winners(
        f"the plan checked at its {len(checked['points'])} least sure point(s)",
        f"measured into {checked['out']}; margin: how much faster the predicted winner was predicted than the "
        "runner-up; measured p50 of both winners where they differ", checked["winners"], "measured_ms", "none",
        lambda w: "yes (a tie)" if w["tie"] else "yes", miss_text)
    err = checked["median_abs_error"]
    agreement = checked["agreement"]
    console.print(f"winners right at {checked['agreed']} of {checked['compared']} (point, model)"
                  + ("" if agreement is None else f" ({agreement * 100:.0f} %)") + indistinguishable_text(checked)
                  + ("" if err is None else f"; median |predicted - measured| / measured of p50 {err * 100:.1f} % "
                                            f"over {len(checked['cells'])} cells")
                  + cpu_summary_text(checked)
                  + (f"; {len(checked['unmatched'])} measured cell(s) without a prediction" if checked["unmatched"] else "")
                  + f"; `testbed report {checked['out']}` shows every cell")
    if load:
        _print_verify_load(checked, load)


def _print_checked_winners(title: str, caption: str, winners: list[dict], measured: str, none: str,
                           agreed: Callable[[dict], str], why: Callable[[dict], str]) -> None:
    """A table of `testbed plan --verify`'s winners: per (point, model) the margin, the
    predicted and the measured winner, and whether they agree (else both winners' measured
    ``measured`` numbers and ``why(w)``)."""
    from testbed.experiment import point_label

    t = Table(title=title, caption=caption)
    for c in ("model", "point", "margin", "predicted winner", "measured winner", "agree"):
        t.add_column(c)
    for w in winners:
        both = ", ".join(f"{escape(k)} {_ms(v)}" for k, v in w[measured].items()) if not w["agree"] else ""
        t.add_row(w["model"], escape(point_label(w["point"])) or "-",
                  "-" if w.get("margin_ms") is None else f"{_ms(w['margin_ms'])} ms",
                  escape(w["predicted"] or none), escape(w["measured"] or none),
                  agreed(w) if w["agree"] else f"no ({'; '.join(x for x in (both, why(w)) if x)})")
    console.print(t)


def _print_verify_load(checked: dict, load: dict) -> None:
    """The least sure points under load: per point and model the predicted winner (lowest p99
    among those within the targets) against the measured one, and the errors of p50 and p99."""
    _print_checked_winners(
        f"the plan under load checked at its {len(checked['points'])} least sure point(s)",
        f"measured into {checked['out']}; margin: how much lower the predicted winner's p99 was predicted than the "
        "runner-up's; measured p99 of both winners where they differ", load["winners"], "measured_p99_ms",
        "none within the targets", lambda w: "yes", lambda w: "")
    errors = [(k, load[f"median_abs_error{s}"]) for k, s in (("p50", ""), ("p99", "_p99"))]
    known = [f"{k} {v * 100:.1f} %" for k, v in errors if v is not None]
    console.print(f"winners under load right at {load['agreed']} of {load['compared']} (point, model)"
                  + (f"; median |predicted - measured| / measured: {', '.join(known)}" if known else "")
                  + f" over {len(load['cells'])} cells"
                  + (f"; {len(load['unmatched'])} measured cell(s) without a prediction" if load["unmatched"] else "")
                  + f"; `testbed report {checked['out']}` shows every cell")


def _print_cuts(model: str, points: dict, names: dict[str, str]) -> None:
    """The cut each ``cut: fastest`` strategy deploys at each point, and ``auto``'s beside it."""
    fastest = list(dict.fromkeys(r["strategy"] for group in points.values() for r in group if r.get("cut")))
    if not fastest:
        return
    t = Table(title=f"{model}: the cut of least predicted p50 (cut: fastest), its prediction in ms, and auto's cut",
              box=box.SIMPLE)
    t.add_column("point")
    for s in fastest:
        t.add_column(escape(s))
    for group in points.values():
        by = {r["strategy"]: r for r in group}
        cells = []
        for s in fastest:
            choice = by[s]["choice"] if s in by else None
            if choice is None:
                cells.append("-")
                continue
            auto = next(c for c in choice["candidates"] if c["auto"])
            cells.append(escape(f"{choice['cut']} {_ms(choice['p50_ms'])}" + (
                "" if auto["tensor"] == choice["cut"] else f" (auto {auto['tensor']} {_ms(auto['p50_ms'])})")))
        t.add_row(", ".join(_labels(group[0], names)) or "-", *cells)
    console.print(t)


def _print_winner_map(plan, model: str, names: dict[str, str]) -> None:
    """For a grid of two axes or more: winners with the first two axes as rows and columns
    (further axes: one map per combination)."""
    axes = [a.path for a in plan.axes]
    if len(axes) < 2:
        return
    a, b = axes[0], axes[1]
    rest = axes[2:]
    mine = [w for w in plan.winners if w["model"] == model]
    groups: dict[str, list[dict]] = {}
    for w in mine:
        groups.setdefault(json.dumps({k: w["point"][k] for k in rest}), []).append(w)
    for key, group in groups.items():
        cols = list(dict.fromkeys(w["point"][b] for w in group))
        t = Table(title=f"{model}: winner by {names.get(a, a)} (rows) and {names.get(b, b)} (columns)"
                  + (f", {key}" if rest else ""), box=box.SIMPLE)
        t.add_column(names.get(a, a))
        for c in cols:
            t.add_column(str(c))
        by = {(w["point"][a], w["point"][b]): w["winner"] or "-" for w in group}
        for r in dict.fromkeys(w["point"][a] for w in group):
            t.add_row(str(r), *(escape(by.get((r, c), "-")) for c in cols))
        console.print(t)
