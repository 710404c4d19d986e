"""Per-cell summaries of a result store: what `testbed run` prints at the end and `testbed
results show` prints later. Pure functions over the store's rows (numpy, and the topology
fields' parsers for short sweep labels)."""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np

from topologies.errors import TopologyError
from topologies.fields import DIRECTION_FIELDS, DIRECTIONS, HOST_FIELDS

STATUSES = ("ok", "timeout", "oom", "error")


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _p90(values: list[float]) -> float | None:
    return float(np.percentile(values, 90)) if values else None


def load_flags(load: dict | None) -> list[str]:
    """Under load, a cell whose computing hosts may use more cores together than the machine has."""
    f = load or {}
    cpus, cores = f.get("host_cpus"), f.get("machine_cores")
    if cpus is not None and cores and cpus > cores:
        return [f"its hosts may use {cpus:g} cores together, the machine has {cores:g}: under load they may "
                "compute slower than promised (see compute.slowdown)"]
    return []


def host_flags(hosts: dict | None) -> list[str]:
    """'host: why' for every host of a cell whose compute per request missed its share's
    promise, and for every server that refused connections beyond its cap or lost one to an
    internal error (its counters, ``hosts[h].server``)."""
    out = []
    for name, h in (hosts or {}).items():
        judged = (h or {}).get("compute") or {}
        if judged.get("within") is False:
            out.append(f"{name}: {judged.get('note')}")
        server = (h or {}).get("server") or {}
        if server.get("refused"):
            out.append(f"{name}: refused {server['refused']} connections beyond serving.max_connections "
                       f"({h.get('max_connections')})")
        errors = (server.get("internal_errors") or 0) + (server.get("uncaught") or 0)
        if errors:
            out.append(f"{name}: {errors} connections ended by an internal error (a bug: see logs/{name}.log)")
    return out


def trace_flags(trace: dict | None) -> list[str]:
    """A traced cell whose replay did not keep to its trace: steps missed (never applied, so
    the link skipped that state), read-backs that found the link otherwise, a replay that
    failed (``cells.trace_json``)."""
    out = []
    for d in (trace or {}).get("directions") or []:
        what = []
        if d.get("missed"):
            what.append(f"{d['missed']} of {d['steps']} trace steps missed")
        if d.get("mismatches"):
            what.append(f"{d['mismatches']} read-backs differed ({d.get('first_mismatch')})")
        if d.get("error"):
            what.append(f"replay failed: {d['error']}")
        if what:
            lag = (d.get("lag_ms") or {}).get("p99")
            out.append(f"{d['link']} {d['direction']}: " + "; ".join(what)
                       + (f" (apply lag p99 {lag:.1f} ms)" if lag is not None else ""))
    return out


NO_INTERVAL = "no interval (stored before intervals, or too few evaluation samples)"


def interval(cell: dict, which: str) -> list[float] | None:
    """``[low, high]`` of a stored cell's 95 % interval of ``which`` (``value``, ``baseline``
    or ``loss``), or None when it has none."""
    column = "metric" if which == "value" else which
    low, high = cell.get(f"{column}_ci_low"), cell.get(f"{column}_ci_high")
    return None if low is None or high is None else [low, high]


def summarize(cells: list[dict], requests: list[dict], hops: list[dict]) -> list[dict]:
    """One row per cell, in the order cells were stored:

    - ``e2e_p50`` / ``e2e_p90``: end-to-end ms over the ``ok`` requests;
    - ``compute``: host -> median compute ms per request (a host that ran nothing for a request
      because an exit fired earlier counts 0 for it);
    - ``transmission``: ``"src>dst"`` -> median ms per request of that link direction (the
      response's way back is its own direction), emulated links only;
    - ``shares``: fractions of the summed end-to-end time spent in compute, transmission and
      the rest (serialisation + harness), over the ``ok`` requests;
    - ``bytes``: median bytes moved per request (every hop, both ways);
    - ``compute_p50`` / ``transmission_p50``: median ms per request of compute (all hosts)
      and of transmission (all links), over the ``ok`` requests;
    - ``exit_rate``: fraction of ``ok`` requests answered by an exit head;
    - ``match``: fraction of checked answers equal (argmax) to the reference model's;
    - ``counts``: requests per status; and the cell's metric, value and baseline;
    - ``value_ci``, ``baseline_ci``, ``loss_ci``: ``[low, high]``, the 95 % intervals of the
      value, the baseline and the loss (baseline − value), None when the cell has none (a
      store written before intervals, or too few evaluation samples); ``quality_samples``:
      the evaluation samples behind them;
    - ``host_flags``: one line per host whose per-request compute fell outside the tolerance of
      what its CPU share promises (the runner's ``hosts[h].compute``), saying by how much,
      and one per traced direction whose replay missed steps, read the link back otherwise, or
      failed (:func:`trace_flags`);
    - ``load``: a load scenario's figures (``testbed.load.figures``: offered and achieved
      rate, latency percentiles counting failures, queue share, SLO), None for single-stream;
    - ``cut`` and ``choice``: a ``cut: fastest`` cell's chosen cut and why (its
      ``choice_json``: every candidate's predicted latency), None for other strategies.
    """
    by_cell_req: dict[str, list[dict]] = defaultdict(list)
    for r in requests:
        by_cell_req[r["cell"]].append(r)
    by_cell_hop: dict[str, list[dict]] = defaultdict(list)
    for h in hops:
        by_cell_hop[h["cell"]].append(h)
    rows = []
    for c in cells:
        reqs = by_cell_req.get(c["cell"], [])
        ok = [r for r in reqs if r["status"] == "ok" and r["e2e_ms"] is not None]
        e2e = [r["e2e_ms"] for r in ok]
        ok_seqs = {r["seq"] for r in ok}
        compute: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        links: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        for h in by_cell_hop.get(c["cell"], []):
            if h["seq"] not in ok_seqs:
                continue
            if h["kind"] == "compute":
                compute[h["src"]][h["seq"]] += h["ms"]
            elif h["src"] != h["dst"]:
                links[f"{h['src']}>{h['dst']}"][h["seq"]] += h["ms"]
        total = sum(e2e)
        comp = sum(r["compute_ms"] or 0.0 for r in ok)
        trans = sum(r["transmission_ms"] or 0.0 for r in ok)
        checked = [r["output_match"] for r in ok if r["output_match"] is not None]
        rows.append({
            "cell": c["cell"], "model": c["model"], "strategy": c["strategy"], "placement": c["placement"],
            "point": c["point"], "status": c["status"], "error": c["error"],
            "counts": {s: sum(1 for r in reqs if r["status"] == s) for s in STATUSES},
            "e2e_p50": _median(e2e), "e2e_p90": _p90(e2e),
            "compute_p50": _median([r["compute_ms"] for r in ok if r["compute_ms"] is not None]),
            "transmission_p50": _median([r["transmission_ms"] for r in ok if r["transmission_ms"] is not None]),
            "compute": {h: _median([per.get(s, 0.0) for s in ok_seqs]) for h, per in compute.items()},
            "transmission": {k: _median([per.get(s, 0.0) for s in ok_seqs]) for k, per in links.items()},
            "shares": ({"compute": comp / total, "transmission": trans / total,
                        "other": max(0.0, 1 - (comp + trans) / total)} if total > 0 else None),
            "bytes": _median([r["bytes_sent"] for r in ok if r["bytes_sent"] is not None]),
            "exit_rate": (sum(1 for r in ok if r["exit_segment"] is not None) / len(ok)) if ok else None,
            "match": (sum(checked) / len(checked)) if checked else None,
            "metric": c["metric"], "value": c["metric_value"], "baseline": c["baseline_value"],
            **{f"{k}_ci": interval(c, k) for k in ("value", "baseline", "loss")},
            "quality_samples": c.get("quality_samples"),
            "host_flags": host_flags(c.get("hosts")) + load_flags(c.get("load")) + trace_flags(c.get("trace")),
            "load": c.get("load"),
            # a cut: fastest cell: the cut it deployed and why (testbed.fastest)
            "cut": (c.get("choice") or {}).get("cut"), "choice": c.get("choice"),
        })
    return rows


# --- short labels of sweep points -----------------------------------------------------------
# A sweep path becomes a short name plus a compact value: links.edge-cloud.bandwidth=5Mbit is
# "EC 5Mbit". The field's own parser and formatter make the value compact (5000kbit is 5Mbit);
# a mark says which field when the unit alone would not (jitter and delay are both in ms); a
# field without one here is marked by its name.
_LINK_MARKS = {"bandwidth": ("", ""), "delay": ("", ""), "jitter": ("±", "")}
_HOST_MARKS = {"cpus": ("", "cpu"), "memory": ("", ""), "cpu_period": ("period ", "")}


def host_initials(host: str) -> str:
    """'edge' -> 'E', 'mobile12' -> 'M12', 'edge_gw2' -> 'EG2': the first letter of each
    '_'-separated word, upper case, and the trailing number (host names never contain '-')."""
    digits = re.search(r"\d*$", host).group()
    return "".join(w[0] for w in host[:len(host) - len(digits)].split("_") if w).upper() + digits


def host_names(hosts: Iterable[str]) -> dict[str, str]:
    """Host -> its initials (:func:`host_initials`), or its full name where two hosts share them."""
    hosts = list(dict.fromkeys(hosts))
    count = defaultdict(int)
    for h in hosts:
        count[host_initials(h)] += 1
    return {h: host_initials(h) if count[host_initials(h)] == 1 else h for h in hosts}


def _axis(path: str) -> tuple[str, str, str]:
    """(short name, long name, field) of a sweep path: links.<a-b>.<field> is ('AB', 'a-b',
    field), one direction of it ('A→B' or 'B→A', 'a→b', field); hosts.<h>.<field> is (h, h,
    field); anything else is (its last word, the whole path, '')."""
    parts = path.split(".")
    if parts[0] == "links" and len(parts) in (3, 4) and parts[-1] in DIRECTION_FIELDS and "-" in parts[1]:
        ends = parts[1].split("-")
        if len(parts) == 4:
            if parts[2] not in DIRECTIONS:
                return parts[-1], path, ""
            ends = ends if parts[2] == DIRECTIONS[0] else ends[::-1]
            return "→".join(host_initials(e) for e in ends), "→".join(ends), parts[-1]
        return "".join(host_initials(e) for e in ends), parts[1], parts[-1]
    if parts[0] == "hosts" and len(parts) == 3 and parts[2] in HOST_FIELDS:
        return parts[1], parts[1], parts[2]
    return parts[-1], path, ""


def axis_names(paths: Iterable[str]) -> dict[str, str]:
    """Sweep path -> the short name its labels start with: link names by their hosts'
    initials ('EC'), host names as they are, other paths by their last word ('threshold').
    When one short name would stand for two things (links edge-cloud and east-core, or two
    strategies' thresholds), those get their long names instead (the link's full name, the
    whole path), so that no two axes read alike."""
    axes = {p: _axis(p) for p in dict.fromkeys(paths)}
    meanings: dict[str, set[str]] = defaultdict(set)
    for short, long, _ in axes.values():
        meanings[short].add(long)
    return {p: short if len(meanings[short]) == 1 else long for p, (short, long, _) in axes.items()}


def _compact(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_compact(v) for v in value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}:{_compact(v)}" for k, v in value.items())
    return str(value).replace(" ", "")


def value_label(path: str, value) -> str:
    """The value of one sweep axis, compact, with its field's mark: '5Mbit', '±2ms',
    'loss 0.1%', '0.5cpu', '1GiB', 'period 10ms'; a word, or a value its field cannot read,
    after the field's name ('bandwidth unlimited'); any other path's value as written (a
    placement as 'mobile>edge')."""
    _, _, field = _axis(path)
    fields, marks = (DIRECTION_FIELDS, _LINK_MARKS) if path.startswith("links.") else (HOST_FIELDS, _HOST_MARKS)
    if not field:
        return ">".join(map(_compact, value)) if path.endswith(".placement") and isinstance(value, list) \
            else _compact(value)
    _, parse, fmt = fields[field]
    try:
        text = _compact(fmt(parse(value)))
    except (TopologyError, TypeError, ValueError):      # a value the field cannot read: as written
        return f"{field} {_compact(value)}"
    if not re.search(r"\d", text):     # 'unlimited', 'auto': the word alone would not say of what
        return f"{field} {text}"
    before, after = marks.get(field, (f"{field} ", ""))
    return f"{before}{text}{after}"


def point_labels(point: Mapping[str, object], names: Mapping[str, str] | None = None) -> list[str]:
    """One short label per swept value of ``point``, in its order: ``{'links.edge-cloud.
    bandwidth': '5Mbit'}`` -> ``['EC 5Mbit']``. ``names`` (from :func:`axis_names` over every
    point shown together) keeps labels apart; without it the point's own paths are used."""
    names = names if names is not None else axis_names(point)
    return [f"{names[p]} {value_label(p, v)}" for p, v in point.items()]
