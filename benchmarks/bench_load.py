#!/usr/bin/env python3
"""Benchmark of the load generator: how faithful and how strong ``workloads.loadgen`` is,
against a null model on loopback (no root, no emulated network).

    .venv/bin/python benchmarks/bench_load.py [--quick] [--only SECTION ...] [--seed S]

The system under test is an ONNX Identity of X[1, 16] float32 (64 B in and out) served by a
real ``workloads.serving serve`` process (1 thread), driven by real ``workloads.loadgen``
processes, one per row, one after the other, whose stdout goes to a file (so that reading it
costs the generator nothing). Sections:

- ``rate``: the server scenario (open loop, seeded Poisson arrivals) at 1, 10, 100, 300 and
  1000 req/s. Per rate: the achieved rate from the actual send stamps (``trace[0].start``,
  n - 1 gaps over their span) / the scheduled rate from the due stamps (``trace[0].due``),
  goal within 2 %; achieved / the nominal target (the schedule's own Poisson spread is in it:
  no goal); a Kolmogorov-Smirnov test of the actual inter-send gaps against the exponential
  of the target rate, goal p > 0.01, beside the same test of the scheduled gaps.
- ``lateness``: the same runs: send-time error ``start - due`` p50 / p99 / max; goal p99 <= 1 ms.
  Beside it, a sleep-only baseline: a process that sleeps to the same schedule as the
  generator's dispatcher and stamps its wake-ups (what the OS gives a sleeping thread here).
- ``capacity``: the server scenario at 500, 1000, 2000, ... 16000 req/s, up to the first rate
  the generator no longer sends (achieved / target < 0.9): achieved / target, lateness p99,
  answered requests/s, e2e p50 / p99, the generator's workers, and the CPU (cores) of the
  generator, of the server and of everything else on the machine over the run; the harness
  capacity is the highest rate with achieved / target >= 0.98 and lateness p99 <= 1 ms. Then
  the closed loop (multi-stream, concurrency 1, 4, 16): requests/s against the null server,
  its ceiling.

Writes ``benchmarks/results/load-generator.json`` and ``.md`` (with ``--only``:
``load-generator-<sections>.*``) and prints the markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import (PY, Procs, errors_markdown, log, machine_state, null_artifact,  # noqa: E402
                               proc_cpu_s, run_sections, sigterm_as_interrupt, write_results)

RESULTS = REPO / "benchmarks" / "results"
STEM = "load-generator"
SECTIONS = ("rate", "lateness", "capacity")
PAYLOAD_FLOATS = 16                 # 64 B in and out
WARMUP = 20
RATE_GOAL = 0.02                    # |achieved / scheduled - 1|
KS_GOAL = 0.01                      # p of the actual gaps against Exp(target)
LATE_GOAL_MS = 1.0                  # lateness p99, at every rate up to 1000 req/s
CAPACITY_RATIO = 0.98               # achieved / target, with lateness p99 <= LATE_GOAL_MS
SHORT_GAP_S = 100e-6                # gaps this short show the dispatcher's own cost per send

# (target req/s, requests): about 60 s at 1 req/s down to 10 s at 1000 req/s (full), so that
# each rate has at least 60 arrivals and the faster ones 3000-10000 (the KS test's power)
RATES = ((1, 60), (10, 300), (100, 3000), (300, 6000), (1000, 10000))
RATES_QUICK = ((1, 10), (10, 100), (100, 1000), (300, 1500), (1000, 3000))
# capacity: at least 10000 requests (the schedule's own rate is then within ~1 % of the
# target: Poisson spread), 2 s worth above 5000 req/s; the ladder stops after the first rate
# the generator no longer sends (achieved / target below SENDS_RATE)
CAPACITY_RATES = (500, 1000, 2000, 4000, 8000, 16000)
SENDS_RATE = 0.9
CONCURRENCY = (1, 4, 16)


def capacity_requests(rate: float, quick: bool) -> int:
    return max(3000, int(rate)) if quick else max(10000, int(2 * rate))


# ---- the figures (pure: tested in tests/unit/test_load_bench.py) ------------------------------

def rate_of(stamps_ns) -> float | None:
    """Events per second of a set of stamps (ns): n - 1 intervals over their span."""
    s = np.sort(np.asarray(stamps_ns, dtype=np.int64))
    if len(s) < 2 or s[-1] == s[0]:
        return None
    return (len(s) - 1) / ((s[-1] - s[0]) / 1e9)


def ks_exponential(stamps_ns, rate: float) -> dict:
    """Kolmogorov-Smirnov test of the gaps between consecutive stamps (sorted) against the
    exponential distribution of mean 1 / ``rate``: {d, p, n (gaps), short (share of gaps
    under SHORT_GAP_S), min_gap_us}."""
    from scipy import stats

    gaps = np.diff(np.sort(np.asarray(stamps_ns, dtype=np.int64))) / 1e9
    if len(gaps) < 2:
        return {"d": None, "p": None, "n": int(len(gaps)), "short": None, "min_gap_us": None}
    r = stats.kstest(gaps, "expon", args=(0, 1.0 / rate))
    return {"d": float(r.statistic), "p": float(r.pvalue), "n": int(len(gaps)),
            "short": float(np.mean(gaps < SHORT_GAP_S)), "min_gap_us": float(gaps.min() * 1e6)}


def percentiles(values, qs=(50, 99)) -> dict:
    """{"p50": .., "p99": .., "max": ..} of ``values`` (None for each when empty)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    out = {f"p{q:g}": (float(np.percentile(v, q)) if len(v) else None) for q in qs}
    out["max"] = float(v.max()) if len(v) else None
    return out


def send_figures(starts_ns, dues_ns, target_qps: float | None) -> dict:
    """How faithfully a run sent its schedule: achieved rate (from the send stamps), scheduled
    rate (from the due stamps), their ratios to each other and to the target, the KS tests of
    the actual and of the scheduled gaps against Exp(target), and the lateness (start - due,
    ms) p50 / p99 / max."""
    starts = np.asarray(starts_ns, dtype=np.int64)
    dues = np.asarray(dues_ns, dtype=np.int64)
    achieved, scheduled = rate_of(starts), rate_of(dues)
    out = {"achieved_rps": achieved, "scheduled_rps": scheduled,
           "achieved_over_scheduled": achieved / scheduled if achieved and scheduled else None,
           "achieved_over_target": achieved / target_qps if achieved and target_qps else None,
           "scheduled_over_target": scheduled / target_qps if scheduled and target_qps else None,
           "late_ms": percentiles((starts - dues) / 1e6),
           # the first request due: the generator's start-up shows there
           "late_first_ms": float(starts[np.argmin(dues)] - dues.min()) / 1e6 if len(dues) else None}
    if target_qps:
        out["ks_actual"] = ks_exponential(starts, target_qps)
        out["ks_scheduled"] = ks_exponential(dues, target_qps)
    return out


def meets_capacity(row: dict) -> bool:
    """A capacity row holds: achieved / target >= CAPACITY_RATIO, lateness p99 <= LATE_GOAL_MS,
    every request answered."""
    ratio, late = row.get("achieved_over_target"), (row.get("late_ms") or {}).get("p99")
    return (ratio is not None and late is not None and ratio >= CAPACITY_RATIO and late <= LATE_GOAL_MS
            and row.get("failed", 0) == 0)


def harness_capacity(rows: list[dict]) -> float | None:
    """The highest target rate whose row meets :func:`meets_capacity` (None: none does)."""
    ok = [r["target_qps"] for r in rows if meets_capacity(r)]
    return max(ok) if ok else None


def capacity_every_rate_below(rows: list[dict]) -> float | None:
    """The highest target rate up to which every row holds (:func:`meets_capacity`): the
    conservative reading when a lower rate missed and a higher one held (None: the lowest
    missed)."""
    best = None
    for r in sorted(rows, key=lambda r: r["target_qps"]):
        if not meets_capacity(r):
            break
        best = r["target_qps"]
    return best


def why_missed(row: dict, max_workers: int) -> list[str]:
    """What a row's own numbers say about why it missed the capacity criterion."""
    out = []
    if row.get("failed"):
        out.append(f"{row['failed']} requests failed")
    if row.get("workers", 0) >= max_workers:
        out.append(f"the generator reached MAX_WORKERS ({max_workers}): later requests waited for a worker")
    gen, srv = row.get("generator_cores"), row.get("server_cores")
    if gen is not None and gen >= 0.9:
        out.append(f"the generator used {gen:.2f} core (one interpreter: GIL-bound)")
    if srv is not None and srv >= 0.9:
        out.append(f"the server used {srv:.2f} core (its own throughput)")
    others = row.get("other_cores")
    if others is not None and others >= 0.25:
        out.append(f"other processes used {others:.2f} core meanwhile")
    sched = row.get("scheduled_over_target")
    if sched is not None and sched < CAPACITY_RATIO:
        out.append(f"the schedule itself (seeded Poisson draw) came to {sched:.3f} of the target")
    sent, answered = row.get("achieved_rps"), row.get("answered_rps")
    if sent and answered is not None and answered < CAPACITY_RATIO * sent:
        out.append(f"answers came back at {answered:.0f}/s, below the {sent:.0f}/s sent")
    return out


# ---- running the generator ------------------------------------------------------------------

# The generator's dispatcher alone: the same schedule (arrivals, seed), the same timer slack,
# switch interval and sleep (loadgen's own _sleep_until), a stamp on waking instead of a send.
# Its lateness is what the OS and the interpreter give a sleeping thread here; the generator's
# minus this is what handing the request to a worker and starting it adds.
SLEEPER = r"""
import json, sys, time
import numpy as np
from workloads import pacing
from workloads.loadgen import SWITCH_INTERVAL_S, _sleep_until, arrivals
qps, n, seed = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
times = arrivals(qps, seed=seed, count=n)
pacing.sharp_timers()
sys.setswitchinterval(SWITCH_INTERVAL_S)
t0 = time.monotonic_ns() + 20_000_000
woke = np.empty(n, np.int64)
for k, at in enumerate(times):
    _sleep_until(t0 + int(at * 1e9))
    woke[k] = time.monotonic_ns()
due = t0 + (times * 1e9).astype(np.int64)
print(json.dumps({"late": ((woke - due) / 1e6).tolist(), "woke": woke.tolist()}))
"""


def busy_cpu_s() -> float:
    """CPU time the whole machine has spent busy (every core, all but idle and iowait), s."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _tail(path: Path, nbytes: int = 4096) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - nbytes))
        return f.read().decode(errors="replace")


class Bench:
    """The null server (one for the whole run) and the generator runs, cached by arguments so
    that sections sharing a run (rate and lateness, the capacity's first rate) measure it once."""

    def __init__(self, work: Path, seed: int):
        self.work, self.seed = work, seed
        self.procs = Procs()
        art = null_artifact(work / "identity", "identity")
        from workloads.serving import save_inputs

        xs = [np.random.default_rng(i).standard_normal((1, PAYLOAD_FLOATS)).astype(np.float32) for i in range(4)]
        self.inputs = work / "in.npz"
        save_inputs(str(self.inputs), [{"X": x} for x in xs], xs)    # Identity: the answer is the input
        self.port = self.procs.server(art, 0, threads=1)
        self.server_pid = self.procs.procs[-1].pid
        self.runs: dict[tuple, dict] = {}       # (qps, requests) -> summarized row
        self.count = 0
        self.max_workers = _max_workers()

    def close(self) -> None:
        self.procs.close()

    def generate(self, *args: str, expect_s: float) -> dict:
        """One generator process with ``args`` (after the target/inputs/host); its lines
        parsed, plus the CPU (cores) of the generator, of the server and of everything else on
        the machine between its hello and its done line (sampled every 20 ms)."""
        self.count += 1
        out = self.work / f"gen{self.count}.jsonl"
        err = self.work / f"gen{self.count}.err"
        argv = [PY, "-m", "workloads.loadgen", "--target", f"127.0.0.1:{self.port}", "--inputs", str(self.inputs),
                "--host", "gen", "--warmup", str(WARMUP), "--timeout", "60", *args]
        with open(out, "w") as fo, open(err, "w") as fe:
            p = subprocess.Popen(argv, stdout=fo, stderr=fe, cwd=REPO)
        deadline = time.monotonic() + 3 * expect_s + 120
        hello = done = None           # (monotonic, generator cpu, server cpu, machine busy)
        try:
            while p.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"generator {' '.join(args)} ran past {3 * expect_s + 120:.0f} s")
                time.sleep(0.02)
                if hello is None and out.stat().st_size > 0:
                    hello = (time.monotonic(), proc_cpu_s(p.pid), proc_cpu_s(self.server_pid), busy_cpu_s())
                elif hello is not None and done is None and '"done": true' in _tail(out):
                    done = (time.monotonic(), proc_cpu_s(p.pid), proc_cpu_s(self.server_pid), busy_cpu_s())
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
        if p.returncode != 0:
            raise RuntimeError(f"generator {' '.join(args)} exited {p.returncode}: {err.read_text()[-1500:]}")
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        cores = {}
        if hello and done and done[0] > hello[0]:
            wall = done[0] - hello[0]
            for i, name in ((1, "generator_cores"), (2, "server_cores"), (3, "machine_cores")):
                if hello[i] is not None and done[i] is not None:
                    cores[name] = (done[i] - hello[i]) / wall
            if len(cores) == 3:     # everything else the machine ran meanwhile (this process: ~0)
                cores["other_cores"] = max(0.0, cores["machine_cores"] - cores["generator_cores"]
                                           - cores["server_cores"])
        out.unlink()
        return {"lines": lines, **cores}

    def server_run(self, qps: float, requests: int) -> dict:
        """The server scenario at ``qps`` for ``requests``, summarized (a copy of the cached row
        when a section ran the same before)."""
        key = (qps, requests)
        if key not in self.runs:
            run = self.generate("--scenario", "server", "--qps", f"{qps:g}", "--requests", str(requests),
                                "--seed", str(self.seed), expect_s=requests / qps)
            self.runs[key] = summarize(run, qps)
        return json.loads(json.dumps(self.runs[key]))

    def sleeper_run(self, qps: float, requests: int) -> dict:
        """:data:`SLEEPER` on the first ``requests`` arrivals of the schedule at ``qps`` (once
        per rate and length): its wake-up lateness p50 / p99 / max (ms), and the KS test of
        its wake-up gaps (what a perfect sender that sleeps could reach on this machine)."""
        key = ("sleeper", qps, requests)
        if key not in self.runs:
            p = subprocess.run([PY, "-c", SLEEPER, f"{qps:g}", str(requests), str(self.seed)], cwd=REPO,
                               capture_output=True, text=True, timeout=3 * requests / qps + 60)
            if p.returncode != 0:
                raise RuntimeError(f"sleeper exited {p.returncode}: {p.stderr[-1500:]}")
            got = json.loads(p.stdout)
            self.runs[key] = {"requests": requests, **percentiles(got["late"]), "first": got["late"][0],
                              "ks": ks_exponential(got["woke"], qps)}
        return self.runs[key]

    def closed_run(self, concurrency: int, duration_s: float) -> dict:
        run = self.generate("--scenario", "multi-stream", "--concurrency", str(concurrency),
                            "--duration", f"{duration_s:g}", expect_s=duration_s)
        row = summarize(run, None)
        row["concurrency"] = concurrency
        row["duration_s"] = duration_s
        return row


def _max_workers() -> int:
    from workloads.loadgen import MAX_WORKERS
    return MAX_WORKERS


def summarize(run: dict, qps: float | None) -> dict:
    """One generator run's figures (see :func:`send_figures`), with its answers: how many,
    answered per second (up to the last answer), e2e p50 / p99 (from due), the done line."""
    from workloads.trace import breakdown

    reqs = [m for m in run["lines"] if "seq" in m]
    done = next((m for m in run["lines"] if m.get("done")), {})
    starts = [r["trace"][0]["start"] for r in reqs]
    dues = [r["trace"][0]["due"] for r in reqs]
    ok = [r for r in reqs if r["status"] == "ok"]
    e2e = [breakdown(r["trace"]).e2e_ms for r in ok]
    ends = [r["due_ms"] + e for r, e in zip(ok, e2e) if e is not None]
    row = {"target_qps": qps, "requests": len(reqs), "ok": len(ok), "failed": len(reqs) - len(ok),
           "mismatched": sum(1 for r in ok if r.get("match") is False),
           **send_figures(starts, dues, qps),
           "answered_rps": len(ok) / (max(ends) / 1000) if ends and max(ends) > 0 else None,
           "e2e_ms": percentiles(e2e), "workers": done.get("workers"),
           "done": {k: v for k, v in done.items() if k not in ("done", "source")},
           "generator_cores": run.get("generator_cores"), "server_cores": run.get("server_cores"),
           "other_cores": run.get("other_cores")}
    return row


# ---- sections ---------------------------------------------------------------------------------

def _rate_rows(bench: Bench, quick: bool) -> list[dict]:
    rows = []
    for qps, n in (RATES_QUICK if quick else RATES):
        row = bench.server_run(qps, n)
        # the baseline over the same schedule and length (the KS test's power depends on n);
        # none below 10 req/s, where it would only add a minute of sleeping
        row["sleep_only"] = bench.sleeper_run(qps, n) if qps >= 10 else None
        rows.append(row)
        log(f"rate {qps} req/s x {n}: achieved/scheduled {row['achieved_over_scheduled']:.4f}, "
            f"KS p {row['ks_actual']['p']:.3g} (schedule {row['ks_scheduled']['p']:.3g}), "
            f"late p99 {row['late_ms']['p99']:.3f} ms")
    return rows


def rate(quick: bool, bench: Bench) -> dict:
    rows = _rate_rows(bench, quick)
    for r in rows:
        r["pass_rate"] = abs(r["achieved_over_scheduled"] - 1) <= RATE_GOAL
        r["pass_ks"] = r["ks_actual"]["p"] is not None and r["ks_actual"]["p"] > KS_GOAL
        base = (r.get("sleep_only") or {}).get("ks") or {}
        # a miss where sleeping alone misses too is the machine's timers, not the generator
        r["ks_machine_limit"] = not r["pass_ks"] and base.get("p") is not None and base["p"] <= KS_GOAL
    return {"goal": {"achieved_over_scheduled_within": RATE_GOAL, "ks_p_above": KS_GOAL}, "rows": rows}


def lateness(quick: bool, bench: Bench) -> dict:
    rows = _rate_rows(bench, quick)
    out = []
    for r in rows:
        qps = r["target_qps"]
        base = r["sleep_only"]
        out.append({"target_qps": qps, "requests": r["requests"], "late_ms": r["late_ms"],
                    "late_first_ms": r["late_first_ms"], "done_late_p99_ms": r["done"].get("late_p99_ms"),
                    "sleep_only_ms": base, "other_cores": r.get("other_cores"),
                    "pass": r["late_ms"]["p99"] is not None and r["late_ms"]["p99"] <= LATE_GOAL_MS})
        if base:
            log(f"sleep only {qps} req/s x {base['requests']}: late p99 {base['p99']:.3f} ms (generator {r['late_ms']['p99']:.3f})")
    return {"goal": {"late_p99_ms_at_most": LATE_GOAL_MS}, "rows": out}


def capacity(quick: bool, bench: Bench) -> dict:
    rows = []
    for qps in CAPACITY_RATES:
        # the rate section's 1000 req/s run is reused when its length is the same
        row = bench.server_run(qps, capacity_requests(qps, quick))
        row["meets"] = meets_capacity(row)
        row["why"] = [] if row["meets"] else why_missed(row, bench.max_workers)
        rows.append(row)
        log(f"capacity {qps} req/s: achieved/target {row['achieved_over_target']:.3f}, late p99 "
            f"{row['late_ms']['p99']:.3f} ms, answered {row['answered_rps'] or 0:.0f}/s, workers {row['workers']}, "
            f"cores gen {row.get('generator_cores') or 0:.2f} / server {row.get('server_cores') or 0:.2f} / "
            f"others {row.get('other_cores') or 0:.2f}")
        if (row["achieved_over_target"] or 0) < SENDS_RATE:
            break
    closed = []
    for c in CONCURRENCY:
        row = bench.closed_run(c, 1.0 if quick else 3.0)
        closed.append(row)
        log(f"closed loop, concurrency {c}: {row['answered_rps'] or 0:.0f} req/s, e2e p50 {row['e2e_ms']['p50']:.3f} ms")
    return {"criterion": {"achieved_over_target_at_least": CAPACITY_RATIO, "late_p99_ms_at_most": LATE_GOAL_MS},
            "rows": rows, "capacity_qps": harness_capacity(rows), "max_workers": bench.max_workers,
            "closed_loop": closed}


# ---- machine and report -------------------------------------------------------------------------

def machine() -> dict:
    from workloads.quantize import cpu_features

    feats = cpu_features()
    return {"cpu": feats.get("model") or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "kernel": platform.release(), "python": platform.python_version(), "numpy": np.__version__}


def code_version() -> dict:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"git_head": git("rev-parse", "HEAD"),
            "dirty": git("status", "--short", "workloads", "benchmarks").splitlines()}


def _f(x, fmt: str = ".3f", none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _v(ok) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "**FAIL**")


def markdown(res: dict) -> str:
    m, st0, st1 = res["machine"], res["state_start"], res.get("state_end") or {}
    la0, la1 = st0["loadavg"], st1.get("loadavg") or [None] * 3
    others = sorted(set(st0["other_testbed_runs"]) | set(st1.get("other_testbed_runs", [])))
    L = ["# Load generator benchmark (workloads.loadgen against a null server, loopback)", "",
         f"Run {time.strftime('%Y-%m-%d %H:%M', time.gmtime(res['started']))} UTC, "
         f"{'quick' if res['quick'] else 'full'} run, {res['seconds']:.0f} s; {m['cores']} cores, {m['cpu']}, "
         f"Python {m['python']}, kernel {m['kernel']}; load average (1 min) {_f(la0[0], '.2f')} at start, "
         f"{_f(la1[0], '.2f')} at end; other testbed runs alive: {', '.join(others) or 'none'}; "
         f"seed {res['seed']}.", "",
         f"System under test: an ONNX Identity of {PAYLOAD_FLOATS} float32 (64 B in and out), one "
         "`workloads.serving serve` process (1 thread); one `workloads.loadgen` process per row, one row "
         f"at a time, after {WARMUP} warm-up requests, its stdout to a file.", ""]
    if "rate" in res:
        L += ["## 1. Rate accuracy (server scenario, Poisson arrivals)", "",
              "Achieved rate: n - 1 gaps over the span of the actual send stamps (`trace[0].start`); scheduled: "
              "the same over the due stamps (`trace[0].due`). KS: Kolmogorov-Smirnov test of the sorted gaps "
              "against the exponential of the target rate, for the actual sends and for the schedule itself "
              f"(what the generator adds is the difference). Gaps < {SHORT_GAP_S * 1e6:.0f} µs: their share, "
              "actual / scheduled.", "",
              "| target (req/s) | requests | scheduled (req/s) | achieved (req/s) | achieved / scheduled | "
              f"goal ±{RATE_GOAL:.0%} | achieved / target | KS p actual | KS p schedule | KS p sleep only | "
              f"goal p > {KS_GOAL} | gaps < {SHORT_GAP_S * 1e6:.0f} µs |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["rate"]["rows"]:
            ka, ks = r["ks_actual"], r["ks_scheduled"]
            kb = (r.get("sleep_only") or {}).get("ks") or {}
            verdict = _v(r["pass_ks"]) + (" (sleeping alone fails too: the machine's timers)"
                                          if r.get("ks_machine_limit") else "")
            L.append(f"| {r['target_qps']:g} | {r['requests']} | {_f(r['scheduled_rps'], '.2f')} | "
                     f"{_f(r['achieved_rps'], '.2f')} | {_f(r['achieved_over_scheduled'], '.4f')} | "
                     f"{_v(r['pass_rate'])} | {_f(r['achieved_over_target'], '.3f')} | {_f(ka['p'], '.3g')} | "
                     f"{_f(ks['p'], '.3g')} | {_f(kb.get('p'), '.3g')} | {verdict} | "
                     f"{_f(ka['short'], '.2%')} / {_f(ks['short'], '.2%')} |")
        L.append("")
    if "lateness" in res:
        L += ["## 2. Send-time error (start - due)", "",
              f"The same runs as section 1. Goal: p99 <= {LATE_GOAL_MS:g} ms at every rate up to 1000 req/s. "
              "'first request': the lateness of the first request due (the generator's start-up lands on it). "
              "'done p99': the generator's own figure from its done line (the same stamps). 'Sleep only': a "
              "baseline process that sleeps to the same schedule as the generator's dispatcher does (same "
              "seed, timer slack, switch interval and sleep function) and stamps its wake-up instead of sending, "
              "over the same arrivals: what the OS gives a "
              "sleeping Python thread here; the generator's lateness above it is its hand-off to a worker.", "",
              "| target (req/s) | requests | p50 (ms) | p99 (ms) | max (ms) | first request (ms) | done p99 (ms) | "
              "goal | other cores | sleep only: requests | p50 (ms) | p99 (ms) | max (ms) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["lateness"]["rows"]:
            lm, b = r["late_ms"], r["sleep_only_ms"] or {}
            L.append(f"| {r['target_qps']:g} | {r['requests']} | {_f(lm['p50'])} | {_f(lm['p99'])} | {_f(lm['max'])} | "
                     f"{_f(r['late_first_ms'])} | {_f(r['done_late_p99_ms'])} | {_v(r['pass'])} | "
                     f"{_f(r.get('other_cores'), '.2f')} | "
                     f"{b.get('requests', '-')} | {_f(b.get('p50'))} | {_f(b.get('p99'))} | {_f(b.get('max'))} |")
        L.append("")
    if "capacity" in res:
        c = res["capacity"]
        cap = c["capacity_qps"]
        L += ["## 3. Harness capacity (server scenario against the null server)", "",
              f"Rates doubled up to the first one the generator no longer sends (achieved / target < {SENDS_RATE}). "
              f"A row holds when achieved / target >= {CAPACITY_RATIO} and lateness p99 <= {LATE_GOAL_MS:g} ms (and "
              "every request is answered). Cores: CPU time of the generator, of the server and of every other "
              "process on the machine between the generator's hello and done lines, over that wall time. "
              "Answered/s: answers up to the last one's arrival. Workers: the generator's worker threads (each "
              f"with its own connection), at most {c['max_workers']}.", "",
              "| target (req/s) | requests | achieved / target | schedule / target | late p99 (ms) | answered/s | "
              "e2e p50 (ms) | e2e p99 (ms) | workers | generator cores | server cores | other cores | holds |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in c["rows"]:
            L.append(f"| {r['target_qps']:g} | {r['requests']} | {_f(r['achieved_over_target'])} | "
                     f"{_f(r['scheduled_over_target'])} | {_f(r['late_ms']['p99'])} | {_f(r['answered_rps'], '.0f')} | "
                     f"{_f(r['e2e_ms']['p50'])} | {_f(r['e2e_ms']['p99'])} | {r['workers']} | "
                     f"{_f(r.get('generator_cores'), '.2f')} | {_f(r.get('server_cores'), '.2f')} | "
                     f"{_f(r.get('other_cores'), '.2f')} | {_v(r['meets'])} |")
        every = capacity_every_rate_below(c["rows"])
        L += ["", f"**Harness capacity on this machine: {f'{cap:g} req/s' if cap else 'none of the rates'}** "
                  "(the highest rate that holds)" + ("." if every == cap else
                  f"; every rate holds up to {f'{every:g} req/s' if every else 'none of them'} (a lower rate "
                  "missed where a higher one held: the verdict is at the edge of its goal there).")]
        missed = [r for r in c["rows"] if not r["meets"]]
        if missed:
            L += ["", "Why rows missed (from their own numbers):", ""]
            L += [f"- {r['target_qps']:g} req/s: " + ("; ".join(r["why"]) or "lateness or rate alone (no CPU, "
                  "worker or answer limit reached)") for r in missed]
        L += ["", "Closed loop (multi-stream): each of `concurrency` workers sends its next request when its "
                  "answer is back; the ceiling of generator + null server together.", "",
              "| concurrency | seconds | requests | requests/s | e2e p50 (ms) | e2e p99 (ms) | generator cores | "
              "server cores | other cores |", "|---|---|---|---|---|---|---|---|---|"]
        for r in c["closed_loop"]:
            L.append(f"| {r['concurrency']} | {r['duration_s']:g} | {r['requests']} | {_f(r['answered_rps'], '.0f')} | "
                     f"{_f(r['e2e_ms']['p50'])} | {_f(r['e2e_ms']['p99'])} | {_f(r.get('generator_cores'), '.2f')} | "
                     f"{_f(r.get('server_cores'), '.2f')} | {_f(r.get('other_cores'), '.2f')} |")
        L.append("")
    L += errors_markdown(res["errors"])
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests per rate, shorter runs (1-2 minutes)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS)
    ap.add_argument("--seed", type=int, default=0, help="the arrival schedule's seed (default 0)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--render", metavar="JSON", help="write the markdown of a saved run's JSON again (no run)")
    args = ap.parse_args()
    if args.render:
        src = Path(args.render)
        md = markdown(json.loads(src.read_text()))
        src.with_suffix(".md").write_text(md + "\n")
        print(md)
        return 0
    sigterm_as_interrupt()
    started, t0 = time.time(), time.monotonic()
    res: dict = {"started": started, "quick": args.quick, "seed": args.seed, "machine": machine(),
                 "code": code_version(), "state_start": machine_state(), "errors": {}}
    sections = args.only or list(SECTIONS)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        bench = Bench(Path(tmp), args.seed)
        try:
            run_sections(res, sections, lambda sec: globals()[sec](args.quick, bench))
        finally:
            bench.close()
    res["state_end"] = machine_state()
    res["seconds"] = time.monotonic() - t0
    # a partial run (--only) writes beside the full run's files, never over them
    stem = STEM if not args.only else STEM + "-" + "-".join(sections)
    write_results(Path(args.out), stem, res, markdown(res))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
