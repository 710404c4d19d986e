#!/usr/bin/env python3
"""Per-request compute on CPU-limited hosts: the old default against the new, side by side.

Run from the repository root, as root::

    sudo .venv/bin/python benchmarks/bench_cpu.py [--quick] [--requests N]

For hosts of 0.25, 0.5 and 1 core (three_tier on this machine's 2 cores) and each piece of
work, the compute of every request (wall time of the work, started after an idle gap of
50-150 ms as a server between requests) is measured inside the host's cgroup and compared with
the same work unconstrained (the same host, outside its cgroup, right before): p10 / p50 / p90
of compute / (unconstrained p50 / cores). Goal (issue 13): p50 within 10 % and p10 / p90 within
20 % wherever the expected constrained compute is at least 20 ms.

Mechanisms, all in ONE run (each on a fresh network, in turn, twice, A B C D E A B C D E):

- ``kernel-100ms``: the old default: the kernel's 100 ms period, the quota alone;
- ``auto``: the auto period for the share (a 2 ms quota; before 2026-12-03 a 1 ms quota), the quota alone;
- ``auto+tick2ms``: that, plus the real-time CPU ticker (``emulation.ticker``, every 2 ms);
- ``auto+pace`` (the new default): the auto period, and each inference paced to its CPU time /
  cores (``workloads.pacing``, what servers do with ``serving.pace: true``);
- ``auto+tick2ms+pace``: both;
- ``auto+tick0.5ms+pace``: both, with the ticker every 0.5 ms (finer, and dearer).

Each row also gives the unconstrained p50 the ratios are taken against, per mechanism: the
ticker's wake-ups slow every host's compute a little, and that is its cost.

Work: a busy loop of 11 ms of CPU; EfficientNet-Lite0 whole, and the two parts of its
Mobile/Edge partition; MiniLM (sentiment) whole when it is in the artifact cache (its
fine-tuning takes minutes: ``testbed prepare`` it first) — all ONNX Runtime, one thread per
core of budget, the artifacts the demo runs.

Section ``rtt`` (``--only rtt``): the round-trip time of the delayed links of the issue's
calibrate command (mobile-edge 50 Mbit/s + 10 ms, edge-cloud 10 Mbit/s + 25 ms, mobile 0.5
cores) with the hosts idle and with every host busy at its full quota (as servers are in a
study), the delay lines at the normal scheduler and at SCHED_FIFO 10 (the default), side by
side; target |RTT - configured| <= max(0.5 ms, 3 %).

Writes ``benchmarks/results/cpu.json`` and ``benchmarks/results/cpu.md`` (``cpu-SECTION.*``
with ``--only``) and prints the markdown.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import sigterm_as_interrupt  # noqa: E402
from emulation.calibrate import COMPUTE_JUDGED_MS, COMPUTE_P50_REL, COMPUTE_TAIL_REL, measure_compute  # noqa: E402
from emulation.network import EmulatedNetwork  # noqa: E402
from emulation.probe import capabilities  # noqa: E402
from topologies import apply_overrides, load_topology  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
HOSTS = ("mobile", "edge", "cloud")
MECHANISMS = {  # name: (cpu_period override or None for auto, ticker interval or None, pace)
    "kernel-100ms": ("100ms", None, False),
    "auto": (None, None, False),
    "auto+tick2ms": (None, 2000, False),
    "auto+pace": (None, None, True),
    "auto+tick2ms+pace": (None, 2000, True),
    "auto+tick0.5ms+pace": (None, 500, True),
}


def works() -> list[tuple[str, list[str]]]:
    """(label, compute-probe arguments) for every piece of work measured."""
    from workloads.operators import parse_call
    from workloads.prepare import cached_artifact, prepare

    out = [("busy loop 11 ms", ["--busy-ms", "11"])]
    whole = prepare("efficientnet_lite0").path
    out.append(("EfficientNet-Lite0", ["--onnx", str(whole / "seg0.onnx")]))
    split = prepare("efficientnet_lite0", (parse_call({"partition": {"cut": "auto"}}, "bench"),), parts=2).path
    out.append(("EfficientNet-Lite0 part 1/2", ["--onnx", str(split / "seg0.onnx")]))
    out.append(("EfficientNet-Lite0 part 2/2", ["--onnx", str(split / "seg1.onnx"), "--after", str(split / "seg0.onnx")]))
    minilm = cached_artifact("minilm_sentiment")
    if minilm is not None:
        out.append(("MiniLM", ["--onnx", str(minilm / "seg0.onnx")]))
    return out


def run(requests: int, rounds: int) -> dict:
    caps = capabilities()
    base = load_topology("three_tier", cores=caps["cpus"], memory_bytes=caps["memory_bytes"])
    work = works()
    rows: list[dict] = []
    for rnd in range(rounds):
        for name, (period, tick, pace) in MECHANISMS.items():
            spec = base if period is None else apply_overrides(base, {f"hosts.{h}.cpu_period": period for h in HOSTS})
            t0 = time.monotonic()
            with EmulatedNetwork(spec, caps=caps, cpu_tick_us=tick) as net:
                for label, args in work:
                    for host in HOSTS:
                        r = measure_compute(net, host, args, requests=requests, seed=rnd, pace=pace)
                        r.update(mechanism=name, work_label=label, host=host, round=rnd)
                        rows.append(r)
                        print(f"round {rnd} {name:15s} {label:28s} {host:6s} expected {r['expected_ms']:7.2f} ms  "
                              f"p10/p50/p90 {r['ratio_p10_p50_p90']}", flush=True)
            print(f"-- {name} round {rnd}: {time.monotonic() - t0:.0f} s", flush=True)
    return {"rows": rows, "caps": caps}


RTT_SETS = {"links.mobile-edge.bandwidth": "50Mbit", "links.mobile-edge.delay": "10ms",
            "links.edge-cloud.bandwidth": "10Mbit", "links.edge-cloud.delay": "25ms", "hosts.mobile.cpus": "0.5"}
BUSY = "import time\nwhile True: pass\n"


def rtt(rounds: int) -> list[dict]:
    """RTT error of both delayed links, idle and with every host burning its quota, with the
    delay lines at the normal scheduler (0) and at real-time priority (10)."""
    import math
    import subprocess

    from emulation.calibrate import measure_rtt_ms, rtt_tolerance_ms

    caps = capabilities()
    spec = apply_overrides(load_topology("three_tier", cores=caps["cpus"], memory_bytes=caps["memory_bytes"]), RTT_SETS)
    out = []
    for rnd in range(rounds):
        for prio in (0, 10):
            with EmulatedNetwork(spec, caps=caps, delayline_priority=prio) as net:
                for load in ("idle", "busy"):
                    procs = []
                    if load == "busy":
                        for h in spec.hosts:
                            n = math.ceil(h.cpus or caps["cpus"]) + 1
                            procs += [net.popen(h.name, [sys.executable, "-c", BUSY], stdout=subprocess.DEVNULL)
                                      for _ in range(n)]
                        time.sleep(0.5)
                    try:
                        for src, dst, want in (("mobile", "edge", 20.0), ("edge", "cloud", 50.0)):
                            got = measure_rtt_ms(net, src, dst, count=50)
                            out.append({"round": rnd, "priority": prio, "load": load, "path": f"{src}->{dst}",
                                        "configured_ms": want, "rtt_ms": got, "error_ms": round(got - want, 3),
                                        "within": abs(got - want) <= rtt_tolerance_ms(want)})
                            print(f"rtt round {rnd} delay line priority {prio} {load}: {src}->{dst} {got:.3f} ms "
                                  f"for {want:g}", flush=True)
                    finally:
                        for p in procs:
                            p.kill()
                            p.wait()
    return out


def rtt_markdown(rows: list[dict]) -> str:
    lines = ["", "## Round-trip time beside busy hosts", "",
             "Ping (50 at 20 ms) across the delayed links of the issue's calibrate command; busy: every host runs "
             "ceil(cores) + 1 busy loops inside its quota (mobile 0.5, edge 0.5, cloud 1 core: the whole machine). "
             "Error = measured - configured; target within max(0.5 ms, 3 %). One value per round.", "",
             "| path (configured) | load | delay line at the normal scheduler | delay line at SCHED_FIFO 10 |",
             "|---|---|---|---|"]
    for path, want in (("mobile->edge", 20.0), ("edge->cloud", 50.0)):
        for load in ("idle", "busy"):
            cells = []
            for prio in (0, 10):
                g = [r for r in rows if (r["path"], r["load"], r["priority"]) == (path, load, prio)]
                text = ", ".join(f"{r['error_ms']:+.2f} ms" for r in g)
                cells.append(f"**{text}**" if g and all(r["within"] for r in g) else text)
            lines.append(f"| {path} ({want:g} ms) | {load} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def summarize(rows: list[dict]) -> list[dict]:
    """Per (work, host, mechanism): the rounds' ratios, and whether every round met the goal."""
    out = []
    keys = []
    for r in rows:
        k = (r["work_label"], r["host"], r["mechanism"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        group = [r for r in rows if (r["work_label"], r["host"], r["mechanism"]) == k]
        judged = all(r["expected_ms"] >= COMPUTE_JUDGED_MS for r in group)
        meets = [abs(r["ratio_p10_p50_p90"][1] - 1) <= COMPUTE_P50_REL and
                 all(abs(x - 1) <= COMPUTE_TAIL_REL for x in (r["ratio_p10_p50_p90"][0], r["ratio_p10_p50_p90"][2]))
                 for r in group]
        out.append({"work": k[0], "host": k[1], "mechanism": k[2], "cpus": group[0]["cpus"],
                    "cpu_period_us": group[0]["cpu_period_us"],
                    "expected_ms": [r["expected_ms"] for r in group],
                    "unconstrained_ms": [r["unconstrained_p50_ms"] for r in group],
                    "ratios": [r["ratio_p10_p50_p90"] for r in group],
                    "judged": judged, "meets": all(meets) if judged else None})
    return out


def markdown(res: dict) -> str:
    lines = [f"# Per-request compute under CPU limits ({res['when']}, {res['seconds']:.0f} s)", "",
             f"Machine: {res['machine']}. {res['requests']} requests per host and mechanism after an idle gap of "
             f"50-150 ms each, {res['rounds']} rounds (each mechanism on a fresh network, in turn). Cells: "
             "p10 / p50 / p90 of compute / expected, expected = unconstrained p50 / cores (unconstrained: the same "
             "work on the same host outside its cgroup, right before); one line per round. Goal where expected "
             f">= {COMPUTE_JUDGED_MS:g} ms: p50 within {COMPUTE_P50_REL:.0%}, p10 and p90 within {COMPUTE_TAIL_REL:.0%} "
             "(**bold**: every round meets it; below 20 ms the ratio is reported, not judged).", ""]
    mechs = list(MECHANISMS)
    lines.append("| work | host (cores) | unconstrained p50 ms, per mechanism | " + " | ".join(mechs) + " |")
    lines.append("|---|---|---|" + "---|" * len(mechs))
    summary = res["summary"]
    seen = []
    for s in summary:
        if (s["work"], s["host"]) in seen:
            continue
        seen.append((s["work"], s["host"]))
        cells, refs = [], []
        for m in mechs:
            g = next(x for x in summary if (x["work"], x["host"], x["mechanism"]) == (s["work"], s["host"], m))
            refs.append("/".join(f"{e:.1f}" for e in g["unconstrained_ms"]))
            text = "<br>".join("/".join(f"{v:.2f}" for v in r) for r in g["ratios"])
            cells.append(f"**{text}**" if g["meets"] else text)
        lines.append(f"| {s['work']} | {s['host']} ({s['cpus']:g}) | {' · '.join(refs)} | " + " | ".join(cells) + " |")
    lines += decomposition(res["rows"])
    return "\n".join(lines) + "\n"


def decomposition(rows: list[dict], mechanism: str = "auto+pace") -> list[str]:
    """Where a paced ratio's error comes from, per limited (work, host) and round: pacing's own
    fidelity (p50 wall / (p50 CPU time under the quota / cores)) and the work's CPU time under
    the quota against its unconstrained reference (p50 / p50). The ratio is about their product."""
    paced = [r for r in rows if r["mechanism"] == mechanism and r["cpus"] is not None and r["cpus"] < 1
             and r.get("cpu_p50_ms")]
    if not paced:
        return []
    out = ["", f"## Where the {mechanism} error comes from", "",
           "Per limited host and round: **pacing** = p50 wall / (p50 CPU time under the quota / cores), how "
           "exactly pacing turns the CPU time it measured into wall time; **CPU** = p50 CPU time under the quota "
           "/ unconstrained p50 wall, how much more (or less) CPU the same work took when sliced by the quota, "
           "or how far off the unconstrained reference was. Ratio p50 ~ pacing x CPU.", "",
           "| work | host | pacing, per round | CPU, per round |", "|---|---|---|---|"]
    keys = []
    for r in paced:
        if (r["work_label"], r["host"]) not in keys:
            keys.append((r["work_label"], r["host"]))
    for work, host in keys:
        g = [r for r in paced if (r["work_label"], r["host"]) == (work, host)]
        fid = ", ".join(f"{r['p50_ms'] / (r['cpu_p50_ms'] / r['cpus']):.3f}" for r in g)
        cpu = ", ".join(f"{r['cpu_p50_ms'] / r['unconstrained_p50_ms']:.3f}" for r in g)
        out.append(f"| {work} | {host} ({g[0]['cpus']:g}) | {fid} | {cpu} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 requests, one round (a smoke run)")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--only", choices=("compute", "rtt"), default=None, help="one section (default: both)")
    a = ap.parse_args()
    sigterm_as_interrupt()
    requests, rounds = (10, 1) if a.quick else (a.requests, a.rounds)
    t0 = time.monotonic()
    res = run(requests, rounds) if a.only != "rtt" else {"rows": [], "caps": capabilities()}
    res["rtt"] = rtt(rounds) if a.only != "compute" else []
    res.update(when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), seconds=time.monotonic() - t0,
               requests=requests, rounds=rounds,
               machine=f"{platform.processor() or platform.machine()}, {res['caps'].get('cpus')} cores, "
                       f"kernel {platform.release()}, cgroup v{res['caps'].get('cgroup_version')}")
    res["summary"] = summarize(res["rows"])
    md = (markdown(res) if res["rows"] else f"# CPU benchmark ({res['when']})\n") + (rtt_markdown(res["rtt"]) if res["rtt"] else "")
    a.out.mkdir(parents=True, exist_ok=True)
    stem = "cpu" if a.only is None else f"cpu-{a.only}"
    (a.out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str))
    (a.out / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
