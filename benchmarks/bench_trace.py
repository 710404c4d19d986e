#!/usr/bin/env python3
"""How faithfully a link follows a trace (issue 17): apply lag, goodput per 100 ms window
against the trace, the time from a step to the new rate, and the RTT following delay steps.

Run from the repository root, as root (it builds an emulated network), on a quiet machine::

    sudo .venv/bin/python benchmarks/bench_trace.py [--only apply step random delay] [--cycles 3]
    .venv/bin/python benchmarks/bench_trace.py --render benchmarks/results/trace.json   # markdown again

One ``three_tier`` network (its mobile-edge link at 50 Mbit/s); every trace is replayed on
the link's forward direction (mobile -> edge) by :func:`emulation.replay.replay_link` while
:mod:`emulation.flows` sends across it, every arrival stamped on the monotonic clock the
replay uses.

1. **apply**: what one change costs: ``set_link`` (the live change of a sweep, read back
   whole), ``step_link`` (a trace step), ``check_direction`` (its read-back), each 100 times,
   20 ms apart, alternating 50 and 5 Mbit/s.
2. **step**: ``examples/traces/steps.csv`` (50 -> 5 -> 50 Mbit/s every 2 s), looped for
   ``--cycles`` periods, under a UDP flood at 60 Mbit/s (the link's capacity, whatever a
   transport would do), one TCP flow with the machine's congestion control and one with
   cubic; the flood once more with the replay at the normal scheduler.
3. **random**: the first 20 s of ``examples/traces/walk.csv`` (a log-normal walk, 100 ms
   steps) under a UDP flood at 1.2 x its highest rate.
4. **delay**: the forward delay stepping 10 -> 50 -> 10 ms every 2 s at 50 Mbit/s, probed by
   a 64-byte UDP echo every 5 ms.

Goals (the issue's): every step applied within 5 ms of its due time (p99); goodput within
+-5 % of the trace in every 100 ms window that starts 200 ms or more after a step (goodput
counts payload: the trace's rate x 1472/1514 for UDP, x 1448/1514 for TCP, the share of a
full frame that is payload). Writes ``benchmarks/results/trace.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import errors_markdown, log, machine_state, sigterm_as_interrupt, write_results  # noqa: E402
from emulation.flows import UDP_PAYLOAD, UDP_WIRE  # noqa: E402
from topologies.traces import Trace, load_trace  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SECTIONS = ("apply", "step", "random", "delay")
LINK, DIRECTION, SRC, DST = "mobile-edge", "forward", "mobile", "edge"
BASE_RATE = "50Mbit"
LAG_GOAL_MS = 5.0
GOODPUT_TOL = 0.05
SETTLE_AFTER_MS = 200.0
WINDOW_MS = 100.0
PAYLOAD_RATIO = {"udp": UDP_PAYLOAD / UDP_WIRE, "tcp": 1448 / 1514}
LEAD_S = 1.5                # a flow runs this long before the trace starts (its own start-up)
QUIET_LOAD = 1.5
RTT_TOL_MS = 1.0
DELAY_TRACE = "time,bandwidth,delay\n0s,50Mbit,10ms\n2s,50Mbit,50ms\n4s,50Mbit,10ms\n6s,50Mbit,50ms\n8s,50Mbit,10ms\n"


# ---- figures (pure: tests/unit/test_trace_bench.py) ---------------------------------------

def schedule_ms(trace: Trace, until_ms: float) -> list[tuple[float, object]]:
    """(time ms, step) of every step due before ``until_ms`` (repeating a looped trace)."""
    out, cycle = [], 0
    while True:
        for step in trace.steps:
            t = cycle * (trace.period_ms or 0.0) + step.at_ms
            if t >= until_ms:
                return out
            out.append((t, step))
        if trace.mode != "loop":
            return out
        cycle += 1


def changes_ms(trace: Trace, until_ms: float) -> list[tuple[float, int, int]]:
    """(time ms, rate before, rate after) of every step that changes the rate (the first step too)."""
    out, prev = [], None
    for t, step in schedule_ms(trace, until_ms):
        if prev is None or step.rate_bps != prev:
            out.append((t, prev, step.rate_bps))
        prev = step.rate_bps
    return out


def rate_over(trace: Trace, start_ms: float, end_ms: float) -> float:
    """The trace's bandwidth averaged over [start, end) (weighted by time)."""
    sched = schedule_ms(trace, end_ms)
    total = 0.0
    for k, (t, step) in enumerate(sched):
        t_end = sched[k + 1][0] if k + 1 < len(sched) else end_ms
        overlap = min(t_end, end_ms) - max(t, start_ms)
        if overlap > 0:
            total += overlap * step.rate_bps
    return total / (end_ms - start_ms)


def windows(stamps_ns: np.ndarray, sizes: np.ndarray, t0_ns: int, trace: Trace, until_ms: float, proto: str,
            width_ms: float = WINDOW_MS) -> list[dict]:
    """Goodput per window from the trace's start against the trace's rate x the payload share:
    each window's start, wanted and received bit/s, their ratio, the time since the last rate
    change and whether the window is judged (it starts >= 200 ms after a change, and none falls
    inside it)."""
    rel = (stamps_ns - t0_ns) / 1e6
    cuts = [t for t, _, _ in changes_ms(trace, until_ms + width_ms)]
    out = []
    for k in range(int(until_ms // width_ms)):
        a, b = k * width_ms, (k + 1) * width_ms
        got = float(sizes[(rel >= a) & (rel < b)].sum()) * 8 / (width_ms / 1000)
        want = rate_over(trace, a, b) * PAYLOAD_RATIO[proto]
        last = max(t for t in cuts if t <= a)
        nxt = min((t for t in cuts if t > a), default=float("inf"))
        out.append({"start_ms": a, "want_bps": want, "got_bps": got, "ratio": got / want,
                    "since_step_ms": a - last, "judged": a - last >= SETTLE_AFTER_MS and b <= nxt})
    return out


def window_figures(ws: list[dict]) -> dict:
    """Judged windows: how many, how many within +-5 %, ratio min / p50 / max."""
    judged = [w["ratio"] for w in ws if w["judged"]]
    every = [w["ratio"] for w in ws]
    return {"windows": len(ws), "judged": len(judged),
            "within": sum(abs(r - 1) <= GOODPUT_TOL for r in judged),
            "ratio_min": min(judged, default=None), "ratio_p50": float(np.median(judged)) if judged else None,
            "ratio_max": max(judged, default=None),
            "all_within": sum(abs(r - 1) <= GOODPUT_TOL for r in every)}


def new_rate_from(stamps_ns: np.ndarray, sizes: np.ndarray, t0_ns: int, trace: Trace, until_ms: float, proto: str,
                  packets: int = 20, slide_ms: float = 5.0, span_ms: float = 50.0) -> list[dict]:
    """For every rate change after the start: from how many ms after it the flow runs at the new
    rate (within +-5 %). UDP: the first packet after which the next ``packets`` arrive at the
    new rate (their wire bytes over their span); TCP: the first ``span_ms`` window, sliding by
    ``slide_ms``, whose goodput is the new rate x the payload share. None: not within the step."""
    rel = (stamps_ns - t0_ns) / 1e6
    cuts = changes_ms(trace, until_ms)
    out = []
    for k, (c, before, after) in enumerate(cuts):
        if before is None:
            continue
        end = cuts[k + 1][0] if k + 1 < len(cuts) else until_ms
        found = None
        if proto == "udp":
            idx = np.flatnonzero((rel >= c) & (rel < end))
            for j in range(len(idx) - packets):
                span = (rel[idx[j + packets]] - rel[idx[j]]) / 1000
                if span > 0 and abs(packets * UDP_WIRE * 8 / span / after - 1) <= GOODPUT_TOL:
                    found = float(rel[idx[j]] - c)
                    break
        else:
            want = after * PAYLOAD_RATIO["tcp"]
            a = c
            while a + span_ms <= end:
                got = float(sizes[(rel >= a) & (rel < a + span_ms)].sum()) * 8 / (span_ms / 1000)
                if abs(got / want - 1) <= GOODPUT_TOL:
                    found = a - c
                    break
                a += slide_ms
        out.append({"at_ms": c, "from_bps": before, "to_bps": after, "new_rate_from_ms": found})
    return out


def rtt_follow(sent_ns: np.ndarray, rtt_ns: np.ndarray, t0_ns: int, trace: Trace, until_ms: float, base_ms: float,
               run: int = 3) -> dict:
    """Per delay step: from how many ms after it the probes' RTT is the new forward delay + the
    path's own RTT (``base_ms``) within 1 ms (the first of ``run`` probes in a row that are: a
    lone probe late by a scheduling hiccup neither starts nor stops it); and, from there to the
    next step, how far the RTTs are from it (p50 / p99 of |error|)."""
    rel = (sent_ns - t0_ns) / 1e6
    rtt = rtt_ns / 1e6
    ok = rtt_ns >= 0
    sched = schedule_ms(trace, until_ms)
    steps, errors = [], []
    for k, (c, step) in enumerate(sched):
        end = sched[k + 1][0] if k + 1 < len(sched) else until_ms
        want = step.delay_ms + base_ms
        in_step = np.flatnonzero((rel >= c) & (rel < end) & ok)
        near = np.abs(rtt[in_step] - want) <= RTT_TOL_MS
        found = None
        for j in range(len(in_step) - run + 1):
            if near[j:j + run].all():
                found = float(rel[in_step[j]] - c)
                errors += list(np.abs(rtt[in_step[j:]] - want))
                break
        if k:
            steps.append({"at_ms": c, "from_ms": sched[k - 1][1].delay_ms, "to_ms": step.delay_ms,
                          "followed_from_ms": found})
    return {"steps": steps, "error_ms_p50": float(np.median(errors)) if errors else None,
            "error_ms_p99": float(np.percentile(errors, 99)) if errors else None,
            "lost": int((~ok).sum()), "probes": int(len(sent_ns))}


# ---- the runs ---------------------------------------------------------------------------------

def _spec():
    from emulation.probe import machine_cores, machine_memory_bytes
    from topologies import apply_overrides, load_topology

    s = load_topology("three_tier", cores=machine_cores(), memory_bytes=machine_memory_bytes())
    return apply_overrides(s, {f"links.{LINK}.bandwidth": BASE_RATE})


def _reset(net) -> None:
    net.set_link(LINK, DIRECTION, rate_bps=50_000_000, delay_ms=0.0, jitter_ms=0.0)
    net.wait_idle(LINK)


def _quantiles(xs: list[float]) -> dict:
    a = np.array(xs, dtype=float)
    return {"n": len(xs), "p50": float(np.median(a)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def run_apply(net, n: int = 100) -> dict:
    rates = (5_000_000, 50_000_000)
    out = {}
    for name, call in (("set_link", lambda r: net.set_link(LINK, DIRECTION, rate_bps=r)),
                       ("step_link", lambda r: net.step_link(LINK, DIRECTION, rate_bps=r)),
                       ("check_direction", lambda r: net.check_direction(LINK, DIRECTION))):
        for r in rates:
            net.prepare_step(LINK, DIRECTION, rate_bps=r)
        took = []
        for k in range(n):
            time.sleep(0.02)
            t = time.perf_counter()
            call(rates[k % 2])
            took.append((time.perf_counter() - t) * 1e3)
        out[name] = _quantiles(took)
        log(f"apply {name}: p50 {out[name]['p50']:.3f} ms, p99 {out[name]['p99']:.3f} ms")
    _reset(net)
    return out


def _replayed(net, trace: Trace, until_s: float, send, **replay_kw) -> tuple[dict, object, int]:
    """Replay ``trace`` from LEAD_S after ``send`` starts; returns (replay summary, what send
    returned, t0 ns)."""
    from emulation.replay import replay_link

    _reset(net)
    rp = replay_link(net, LINK, DIRECTION, trace, **replay_kw)
    t0 = time.monotonic_ns() + int((LEAD_S + 0.5) * 1e9)     # the flow's programs take ~0.5 s to start
    rp.start(t0, until_ns=t0 + int(until_s * 1e9))
    try:
        got = send(LEAD_S + 0.5 + until_s)
    finally:
        summary = rp.stop()
    records = [{"index": r.index, "cycle": r.cycle, "due_ms": (r.due_ns - t0) / 1e6, "lag_ms": r.lag_ms,
                "path": r.path, "problems": list(r.problems)} for r in rp.records]
    return {**summary, "records": records}, got, t0


def run_flows(net, trace: Trace, until_s: float, runs: list[tuple[str, str, dict]]) -> list[dict]:
    from emulation import flows

    out = []
    for name, proto, kw in runs:
        replay_kw = kw.pop("replay", {})
        log(f"{name}: {until_s:g} s of {trace.source}")
        summary, (stamps, sizes), t0 = _replayed(
            net, trace, until_s, lambda s, proto=proto, kw=kw: flows.flow(net, SRC, DST, s, proto, **kw), **replay_kw)
        ws = windows(stamps, sizes, t0, trace, until_s * 1000, proto)
        out.append({"run": name, "proto": proto, "flow": kw, "replay": summary, "goodput": window_figures(ws),
                    "windows": [{k: round(v, 4) if isinstance(v, float) else v for k, v in w.items()} for w in ws],
                    "new_rate": new_rate_from(stamps, sizes, t0, trace, until_s * 1000, proto)})
        g = out[-1]["goodput"]
        log(f"  lag p99 {summary['lag_ms']['p99']:.3f} ms, missed {summary['missed']}; judged windows within 5 %: "
            f"{g['within']}/{g['judged']}")
    return out


def run_step(net, cycles: int) -> list[dict]:
    trace = load_trace(REPO / "examples" / "traces" / "steps.csv", mode="loop")
    until = cycles * trace.period_ms / 1000
    cc = _machine_cc()
    return run_flows(net, trace, until, [
        ("udp flood 60 Mbit/s", "udp", {"rate_bps": 60e6}),
        (f"tcp ({cc})", "tcp", {}),
        ("tcp (cubic)", "tcp", {"congestion": "cubic"}),
        ("udp flood, replay at the normal scheduler", "udp", {"rate_bps": 60e6, "replay": {"rt_priority": 0}}),
    ])


def run_random(net, seconds: float = 20.0) -> list[dict]:
    trace = load_trace(REPO / "examples" / "traces" / "walk.csv", mode="once")
    top = max(s.rate_bps for s in trace.steps if s.at_ms < seconds * 1000)
    return run_flows(net, trace, seconds, [(f"udp flood {1.2 * top / 1e6:.0f} Mbit/s", "udp", {"rate_bps": 1.2 * top})])


def run_delay(net) -> dict:
    from emulation import flows

    trace = load_trace("delay-steps.csv", text=DELAY_TRACE, mode="once")
    _reset(net)
    s0, r0 = flows.echoes(net, SRC, DST, 2.0)
    base = float(np.median(r0[r0 >= 0])) / 1e6
    until = trace.steps[-1].at_ms / 1000 + 2.0
    summary, (sent, rtt), t0 = _replayed(net, trace, until, lambda s: flows.echoes(net, SRC, DST, s))
    follow = rtt_follow(sent, rtt, t0, trace, until * 1000, base)
    log(f"delay: base RTT {base:.3f} ms; followed from {[s['followed_from_ms'] for s in follow['steps']]} ms")
    return {"base_rtt_ms": base, "replay": summary, **follow}


def _machine_cc() -> str:
    try:
        return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        return "default"


def wait_quiet(limit_s: float) -> list[float]:
    """Wait (up to ``limit_s``) for the 1-minute load average to fall under QUIET_LOAD."""
    deadline = time.monotonic() + limit_s
    while os.getloadavg()[0] >= QUIET_LOAD and time.monotonic() < deadline:
        log(f"load {os.getloadavg()[0]:.2f} >= {QUIET_LOAD}: waiting")
        time.sleep(20)
    return list(os.getloadavg())


# ---- report -------------------------------------------------------------------------------------

def _f(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _trio(a, b, c) -> str:
    return " / ".join(_f(v, 3) for v in (a, b, c))


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# Trace replay fidelity ({res['when']})", "",
             f"{m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, delay mechanism {m['delay_mechanism']}; load "
             f"average at start {res['load_start'][0]:.2f} / {res['load_start'][1]:.2f} / {res['load_start'][2]:.2f}, "
             f"at end {res['load_end'][0]:.2f}; git {res['git']}. Command: `{res['command']}`.", "",
             f"Goals: apply lag p99 <= {LAG_GOAL_MS:g} ms; goodput within +-{GOODPUT_TOL:.0%} of the trace in every "
             f"{WINDOW_MS:g} ms window from {SETTLE_AFTER_MS:g} ms after a step (judged windows). Ratio: goodput / "
             "(the trace's rate x the payload share of a full frame: 1472/1514 UDP, 1448/1514 TCP). New rate from: "
             "the first moment after a step from which the flow runs at the new rate within 5 % (UDP: the next 20 "
             "datagrams; TCP: a 50 ms window sliding by 5 ms).", ""]
    if "apply" in res:
        lines += ["## What one change costs (ms, 100 each, 20 ms apart)", "", _row("call", "p50", "p99", "max"),
                  _row(*["---"] * 4)]
        lines += [_row(f"`{k}`", *(_f(v[q], 3) for q in ("p50", "p99", "max"))) for k, v in res["apply"].items()]
        lines.append("")
    for sec, title in (("step", "Step trace 50 -> 5 -> 50 Mbit/s every 2 s"), ("random", "Random trace (log-normal walk, 100 ms steps)")):
        if sec not in res:
            continue
        lines += [f"## {title}", "", _row("flow", "steps", "missed", "late", "lag p50 / p99 / max (ms)", "replay",
                                          "judged windows within +-5 %", "ratio min / p50 / max",
                                          "new rate from (ms after each step)"), _row(*["---"] * 9)]
        for r in res[sec]:
            rp, g = r["replay"], r["goodput"]
            lag = rp["lag_ms"]
            judged = (f"{g['within']}/{g['judged']}" + (" PASS" if g["judged"] and g["within"] == g["judged"] else " FAIL")
                      if g["judged"] else f"none judged (all windows: {g['all_within']}/{g['windows']} within)")
            steps = ", ".join(f"{s['from_bps'] / 1e6:g}->{s['to_bps'] / 1e6:g}: {_f(s['new_rate_from_ms'], 1)}"
                              for s in r["new_rate"][:6]) + (" ..." if len(r["new_rate"]) > 6 else "")
            if sec == "random":
                ms = [s["new_rate_from_ms"] for s in r["new_rate"] if s["new_rate_from_ms"] is not None]
                steps = (f"{len(ms)}/{len(r['new_rate'])} steps reached; p50 {_f(float(np.median(ms)), 1)}, "
                         f"max {_f(max(ms), 1)}" if ms else "none")
            lag_pass = "PASS" if lag["p99"] is not None and lag["p99"] <= LAG_GOAL_MS else "FAIL"
            lines.append(_row(r["run"], rp["steps"], rp["missed"], rp["late"],
                              f"{_trio(lag['p50'], lag['p99'], lag['max'])} {lag_pass}",
                              rp["sched"]["policy"] if rp["sched"] else "-", judged,
                              _trio(g["ratio_min"], g["ratio_p50"], g["ratio_max"]), steps))
        lines.append("")
    if "delay" in res:
        d = res["delay"]
        lines += ["## RTT following delay steps (forward delay, 64-byte UDP echo every 5 ms)", "",
                  f"Path RTT without delay {d['base_rtt_ms']:.3f} ms; apply lag p99 {_f(d['replay']['lag_ms']['p99'], 3)} ms; "
                  f"once followed, |RTT - (delay + path RTT)| p50 {_f(d['error_ms_p50'], 3)} ms, p99 "
                  f"{_f(d['error_ms_p99'], 3)} ms; {d['lost']} of {d['probes']} probes unanswered.", "",
                  _row("step", "RTT followed from (ms after the step)"), _row("---", "---")]
        lines += [_row(f"{s['from_ms']:g} -> {s['to_ms']:g} ms", _f(s["followed_from_ms"], 1)) for s in d["steps"]]
        lines.append("")
    lines += errors_markdown(res.get("errors", {}))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--cycles", type=int, default=3, help="periods of the step trace (4 s each)")
    ap.add_argument("--wait-quiet", type=float, default=600.0, help="seconds to wait for a load under 1.5")
    ap.add_argument("--render", metavar="JSON", help="write the markdown of an earlier run's JSON again; run nothing")
    a = ap.parse_args()
    if a.render:
        res = json.loads(Path(a.render).read_text())
        md = markdown(res)
        Path(a.render).with_suffix(".md").write_text(md + "\n")
        print(md)
        return 0
    sigterm_as_interrupt()
    from emulation.network import EmulatedNetwork
    from emulation.probe import capabilities

    caps = capabilities()
    res = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(["bench_trace.py", *sys.argv[1:]]),
           "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip(),
           "machine": {"cpu": caps.get("cpu_model") or platform.processor(), "cores": os.cpu_count(),
                       "kernel": platform.release(), "delay_mechanism": caps.get("delay_mechanism")}}
    res["load_start"] = wait_quiet(a.wait_quiet)
    res["state_start"] = machine_state()
    with EmulatedNetwork(_spec(), caps=caps) as net:
        for sec in a.only:
            log(f"== {sec}")
            try:
                res[sec] = {"apply": lambda: run_apply(net), "step": lambda: run_step(net, a.cycles),
                            "random": lambda: run_random(net), "delay": lambda: run_delay(net)}[sec]()
            except KeyboardInterrupt:
                raise
            except Exception:  # noqa: BLE001 - one broken section must not lose the others
                import traceback

                res.setdefault("errors", {})[sec] = traceback.format_exc()
                log(res["errors"][sec])
    res["load_end"] = list(os.getloadavg())
    stem = "trace" if set(a.only) == set(SECTIONS) else "trace-" + "-".join(a.only)
    write_results(RESULTS, stem, res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
