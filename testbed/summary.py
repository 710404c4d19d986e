"""Per-cell summaries of a result store: what `testbed run` prints at the end and `testbed
results show` prints later. Pure functions over the store's rows (numpy only)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

STATUSES = ("ok", "timeout", "oom", "error")


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _p90(values: list[float]) -> float | None:
    return float(np.percentile(values, 90)) if values else None


def host_flags(hosts: dict | None) -> list[str]:
    """'host: why' for every host of a cell whose compute per request missed its share's promise."""
    out = []
    for name, h in (hosts or {}).items():
        judged = (h or {}).get("compute") or {}
        if judged.get("within") is False:
            out.append(f"{name}: {judged.get('note')}")
    return out


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
    - ``exit_rate``: fraction of ``ok`` requests answered by an exit head;
    - ``match``: fraction of checked answers equal (argmax) to the reference model's;
    - ``counts``: requests per status; and the cell's metric, value and baseline;
    - ``host_flags``: one line per host whose per-request compute fell outside the tolerance of
      what its CPU share promises (the runner's ``hosts[h].compute``), saying by how much.
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
        comp = sum(r["compute_ms"] for r in ok)
        trans = sum(r["transmission_ms"] for r in ok)
        checked = [r["output_match"] for r in ok if r["output_match"] is not None]
        rows.append({
            "cell": c["cell"], "model": c["model"], "strategy": c["strategy"], "placement": c["placement"],
            "point": c["point"], "status": c["status"], "error": c["error"],
            "counts": {s: sum(1 for r in reqs if r["status"] == s) for s in STATUSES},
            "e2e_p50": _median(e2e), "e2e_p90": _p90(e2e),
            "compute": {h: _median([per.get(s, 0.0) for s in ok_seqs]) for h, per in compute.items()},
            "transmission": {k: _median([per.get(s, 0.0) for s in ok_seqs]) for k, per in links.items()},
            "shares": ({"compute": comp / total, "transmission": trans / total,
                        "other": max(0.0, 1 - (comp + trans) / total)} if total > 0 else None),
            "bytes": _median([r["bytes_sent"] for r in ok]),
            "exit_rate": (sum(1 for r in ok if r["exit_segment"] is not None) / len(ok)) if ok else None,
            "match": (sum(checked) / len(checked)) if checked else None,
            "metric": c["metric"], "value": c["metric_value"], "baseline": c["baseline_value"],
            "host_flags": host_flags(c.get("hosts")),
        })
    return rows
