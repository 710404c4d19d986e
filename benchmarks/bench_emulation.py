#!/usr/bin/env python3
"""Benchmarks of the emulation core, side by side with plain Mininet + TCLink.

Run from the repository root, as root::

    sudo .venv/bin/python benchmarks/bench_emulation.py [--quick] [--only SECTION ...]

Sections (all in ONE run, so the testbed and TCLink columns share the machine's state):

- ``goodput``: TCP goodput / configured bandwidth on mobile->edge at 1, 10, 100, 200,
  1000 Mbit/s and 10 Gbit/s (target [0.93, 1.02]; 10 Gbit/s reported only).
- ``rtt``: ping RTT at configured RTT 1, 10, 50, 100, 500 ms (one-way delay RTT/2 on each
  direction; target |measured - configured| <= max(0.5 ms, 3 %)), and TCP goodput at
  10 Mbit/s while delayed (target [0.93, 1.02]).
- ``cpu``: cores a busy loop gets under a quota of 0.25, 0.5, 1 and 2 cores (target 5 %).
- ``time``: three_tier up+down (warm, in this process; and cold, in a fresh interpreter),
  target < 1 s warm; star:mobiles=50 up+down, target < 10 s; a 3-host TCLink line.

The measuring code is the project's own (``emulation.calibrate``) for BOTH columns: plain
Mininet hosts are wrapped in a small adapter that offers the ``address/popen/run`` methods
``calibrate`` uses, so iperf3 and ping run with identical arguments on both sides.

Writes ``benchmarks/results/emulation.json`` and ``benchmarks/results/emulation.md`` and
prints the markdown. Touches only namespaces, interfaces, cgroups and processes it (or the
project code it calls) created; never runs ``mn -c``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import secrets
import statistics
import string
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import machine_state, proc_cpu_s, sigterm_as_interrupt  # noqa: E402
from emulation import calibrate, registry  # noqa: E402
from emulation.calibrate import measure_cpus, measure_rtt_ms  # noqa: E402
from emulation.network import EmulatedNetwork  # noqa: E402
from emulation.probe import capabilities  # noqa: E402
from topologies import apply_overrides, load_topology  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"

# Targets from the issue (kept here, independent of the project's own constants).
# the targets are the calibration's own tolerances: one definition for both
GOODPUT_RANGE = calibrate.GOODPUT_RANGE
RTT_ABS_MS, RTT_REL = calibrate.RTT_ABS_MS, calibrate.RTT_REL
CPU_REL = calibrate.CPU_REL
THREE_TIER_TARGET_S = 1.0
STAR50_TARGET_S = 10.0

RATES_BPS = [1_000_000, 10_000_000, 100_000_000, 200_000_000, 1_000_000_000, 10_000_000_000]
REPORT_ONLY_RATES = {10_000_000_000}
RTTS_MS = [1.0, 10.0, 50.0, 100.0, 500.0]
DELAYED_RATE_BPS = 10_000_000
QUOTAS = [0.25, 0.5, 1.0, 2.0]
TCLINK_MAX_MBIT = 1000  # TCIntf.bwParamMax

# At 500 ms RTT a stream needs ~8 RTTs (4 s) of slow start to reach 10 Mbit/s, and since the
# rate is enforced at the wire (a real bottleneck that drops), the slow-start overshoot is then
# repaired by loss recovery until ~8-9 s (traced with iperf3 -i 1 on the receiver, bbr and
# cubic alike): omit 20 RTTs so that the delayed goodput is the steady state.
OMIT_RTTS = 20
# A 1514-byte frame carries 1448 bytes of TCP payload (MTU 1500, TCP timestamps): the highest
# goodput / configured-rate ratio a perfectly shaped link can show.
PAYLOAD_CEILING = 1448 / 1514

SRC, DST = "mobile", "edge"
LINK = "mobile-edge"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt_rate(bps: float | None) -> str:
    if bps is None:
        return "-"
    for unit, div in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= div:
            v = bps / div
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{bps:.0f} bit/s"


rtt_tol = calibrate.rtt_tolerance_ms


def in_range(ratio: float | None) -> bool | None:
    return None if ratio is None else GOODPUT_RANGE[0] <= ratio <= GOODPUT_RANGE[1]


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "**FAIL**")


def code_version() -> dict:
    """Which code ran: HEAD plus a digest of the (possibly uncommitted) emulation/topologies files."""
    import hashlib

    out: dict = {}
    try:
        out["git_head"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                         text=True, timeout=10).stdout.strip()
        out["git_dirty"] = subprocess.run(["git", "status", "--short", "emulation", "topologies"], cwd=REPO,
                                          capture_output=True, text=True, timeout=10).stdout.split("\n")
    except Exception as e:  # noqa: BLE001
        out["git_error"] = str(e)
    h = hashlib.sha256()
    for f in sorted(list((REPO / "emulation").glob("*.py")) + list((REPO / "topologies").glob("*.py"))):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    out["sources_sha256"] = h.hexdigest()[:16]
    return out


def iperf_goodput(net, src: str, dst: str, t: float, omit: int = 1, extra: list[str] | None = None) -> dict:
    """iperf3 exactly as ``calibrate.measure_goodput`` runs it (``-t T -O omit``, via
    ``calibrate._iperf``), keeping the receiver's goodput plus retransmits and the sender's
    congestion control for the diagnosis."""
    data = calibrate._iperf(net, src, dst, ["-t", f"{t:g}", "-O", str(omit), *(extra or [])], t + omit)
    end = data["end"]
    return {"goodput_bps": float(end["sum_received"]["bits_per_second"]),
            "measured_s": float(end["sum_received"]["seconds"]), "omit_s": omit, "duration_s": t,
            "retransmits": end.get("sum_sent", {}).get("retransmits"),
            "tcp_congestion": end.get("sender_tcp_congestion")}


PING_RE = r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms"


def ping_stats(net, src: str, dst: str, count: int = 30) -> dict | None:
    """min/avg/max/mdev of the same ping ``measure_rtt_ms`` runs (for the diagnosis only)."""
    import re

    res = net.run(src, ["ping", "-n", "-q", "-c", str(count), "-i", "0.02", "-W", "5", net.address(dst)],
                  timeout=60, limited=False)
    m = re.search(PING_RE, res.stdout)
    if not m:
        return None
    return dict(zip(("min_ms", "avg_ms", "max_ms", "mdev_ms"), map(float, m.groups())))


def netns_tcp(net, host: str) -> dict:
    """TCP settings inside a host's namespace (they are per namespace)."""
    out = {}
    for key in ("net.ipv4.tcp_congestion_control", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
                "net.core.rmem_max", "net.core.wmem_max"):
        try:
            r = net.run(host, ["sysctl", "-n", key], timeout=10, limited=False)
            out[key] = " ".join(r.stdout.split())
        except Exception as e:  # noqa: BLE001
            out[key] = f"? {e}"
    return out


def leftovers(run_ids: list[str]) -> dict:
    """What this benchmark's own runs (and TCLink hosts) left behind: must be nothing.

    Looked for directly, by run id, in the four places a run leaves things: registry
    records, cgroup directories, root-namespace interfaces and marked processes.
    """
    from emulation import cgroups

    mine = set(run_ids)
    found: list[str] = []
    try:
        for rid in sorted(mine):
            if (registry.REGISTRY_DIR / f"{rid}.json").exists():
                found.append(f"registry {rid}")
            found += [f"cgroup {d}" for d in cgroups.run_cgroup_dirs(rid) if d.is_dir()]
        ifaces = os.listdir("/sys/class/net")
        found += [f"interface {n}" for n in ifaces if n.split("-")[0] in mine]
        tclink_ifaces = [n for n in ifaces if n.startswith("tbbn")]
        shells = []
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            if pid == os.getpid():
                continue
            if registry.process_run_mark(pid) in mine:
                found.append(f"process {pid}")
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(c.startswith(b"mininet:tbbn") for c in cmd):
                shells.append(pid)
    except Exception as e:  # noqa: BLE001 - the check must never lose the results
        return {"runs": sorted(mine), "error": f"{type(e).__name__}: {e}"}
    return {"runs": sorted(mine), "testbed": found, "tclink_interfaces": tclink_ifaces, "tclink_shells": shells}


# --------------------------------------------------------------------------------------------
# the testbed side
# --------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, quick: bool):
        self.quick = quick
        t0 = time.monotonic()
        self.caps = capabilities()
        self.caps_s = time.monotonic() - t0
        self.cores = self.caps["cpus"]
        self.memory = self.caps["memory_bytes"]
        self.netns_tcp: dict = {}
        self.run_ids: list[str] = []
        try:
            avail = Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()
        except OSError:
            avail = []
        default = self.caps.get("tcp_congestion_control")
        self.alt_cc = next((c for c in ("cubic", "bbr") if c != default and c in avail), None)

    def emu(self, spec) -> EmulatedNetwork:
        net = EmulatedNetwork(spec, caps=self.caps)
        self.run_ids.append(net.run_id)
        return net

    def spec(self, ref: str = "three_tier", sets: dict | None = None):
        s = load_topology(ref, cores=self.cores, memory_bytes=self.memory)
        return apply_overrides(s, sets) if sets else s

    def goodput_duration(self, rate_bps: int) -> float:
        if self.quick:
            return 3.0 if rate_bps < 5e6 else 1.5
        return 5.0 if rate_bps < 5e6 else 3.0

    # -- 1. goodput ------------------------------------------------------------------------
    def goodput(self) -> list[dict]:
        rows = []
        # mobile-edge without delay/jitter/loss; the other link keeps its defaults
        s = self.spec(sets={f"links.{LINK}.bandwidth": "1Mbit", f"links.{LINK}.delay": "0ms",
                            f"links.{LINK}.jitter": "0ms", f"links.{LINK}.loss": "0%"})
        with self.emu(s) as net:
            self.netns_tcp = netns_tcp(net, SRC)
            for rate in RATES_BPS:
                row = {"rate_bps": rate, "report_only": rate in REPORT_ONLY_RATES}
                try:
                    net.set_link(LINK, rate_bps=rate)
                    applied = {(r["link"], r["direction"]): r for r in net.applied()["links"]}
                    a = applied[(LINK, f"{SRC}->{DST}")]
                    row["applied_bandwidth_bps"] = a["bandwidth_bps"]
                    row["applied_queue_bytes"] = a["queue_bytes"]
                    t = self.goodput_duration(rate)
                    row.update(iperf_goodput(net, SRC, DST, t))
                    g = row["goodput_bps"]
                    row["ratio"] = g / rate
                    row["pass"] = None if row["report_only"] else in_range(row["ratio"])
                except Exception as e:  # noqa: BLE001 - record and go on
                    row["error"] = f"{type(e).__name__}: {e}"
                    row["pass"] = False
                log(f"testbed goodput {fmt_rate(rate)}: {row.get('goodput_bps')} ratio {row.get('ratio')}")
                rows.append(row)
        return rows

    # -- 2. RTT and goodput while delayed ------------------------------------------------------
    def delayed_iperf(self, net, src: str, dst: str, rtt_ms: float) -> dict:
        """Goodput while delayed, with the machine's congestion control and with the other one
        of bbr/cubic: omit many RTTs so that slow start and its loss recovery are left out."""
        omit = max(1, math.ceil(OMIT_RTTS * rtt_ms / 1000.0))
        t = 2.0 if self.quick else (5.0 if rtt_ms >= 100 else 3.0)
        out = iperf_goodput(net, src, dst, t, omit)
        if self.alt_cc and not self.quick:
            try:
                alt = iperf_goodput(net, src, dst, t, omit, ["-C", self.alt_cc])
                alt["goodput_ratio"] = alt["goodput_bps"] / DELAYED_RATE_BPS
                alt["goodput_pass"] = in_range(alt["goodput_ratio"])
            except Exception as e:  # noqa: BLE001
                alt = {"error": f"{type(e).__name__}: {e}", "goodput_pass": False}
            out["alt_cc"] = dict(alt, cc=self.alt_cc)
        return out

    def rtt(self) -> dict:
        rows = []
        s = self.spec(sets={f"links.{LINK}.bandwidth": "10Mbit", f"links.{LINK}.delay": "0ms",
                            f"links.{LINK}.jitter": "0ms", f"links.{LINK}.loss": "0%"})
        out: dict = {"rate_bps": DELAYED_RATE_BPS}
        with self.emu(s) as net:
            out["baseline_rtt_ms"] = measure_rtt_ms(net, SRC, DST, count=30)
            out["baseline_ping"] = ping_stats(net, SRC, DST)
            log(f"testbed baseline RTT (no delay, 10 Mbit/s): {out['baseline_rtt_ms']:.3f} ms")
            # the delay line engaged with a negligible delay: what it adds by itself
            net.set_link(LINK, delay_ms=0.001)
            out["engaged_rtt_ms"] = measure_rtt_ms(net, SRC, DST, count=30)
            out["engaged_ping"] = ping_stats(net, SRC, DST)
            log(f"testbed RTT through the delay line at 1 us one-way: {out['engaged_rtt_ms']:.3f} ms")
            for rtt in RTTS_MS:
                row = {"configured_rtt_ms": rtt, "one_way_delay_ms": rtt / 2}
                try:
                    net.set_link(LINK, delay_ms=rtt / 2)
                    m = measure_rtt_ms(net, SRC, DST, count=30)
                    row["rtt_ms"] = m
                    row["ping"] = ping_stats(net, SRC, DST)
                    row["error_ms"] = m - rtt
                    row["tolerance_ms"] = rtt_tol(rtt)
                    row["rtt_pass"] = abs(m - rtt) <= rtt_tol(rtt)
                    wire = net.wires[LINK]
                    dl_pid = wire.delayline.pid if wire.delayline else None
                    c0, w0 = (proc_cpu_s(dl_pid) if dl_pid else None), time.monotonic()
                    ip = self.delayed_iperf(net, SRC, DST, rtt)
                    c1, w1 = (proc_cpu_s(dl_pid) if dl_pid else None), time.monotonic()
                    g = ip["goodput_bps"]
                    row.update(ip, goodput_ratio=g / DELAYED_RATE_BPS, goodput_pass=in_range(g / DELAYED_RATE_BPS))
                    if c0 is not None and c1 is not None:
                        row["delayline_cpu_cores"] = (c1 - c0) / (w1 - w0)
                except Exception as e:  # noqa: BLE001
                    row["error"] = f"{type(e).__name__}: {e}"
                    row.setdefault("rtt_pass", False)
                    row.setdefault("goodput_pass", False)
                log(f"testbed RTT {rtt} ms: {row.get('rtt_ms')} ms, goodput {row.get('goodput_bps')}")
                rows.append(row)
            wire = net.wires[LINK]
            if wire.delayline is not None:
                out["delayline_stats"] = wire.call({"op": "stats"})
        out["rows"] = rows
        if not self.quick:
            out["fast_rows"] = self.delayed_fast()
        return out

    def delayed_fast(self) -> list[dict]:
        """Extra (full mode): does a fast link hold its rate through the delay line?"""
        rows = []
        for rate, rtt in ((200_000_000, 20.0), (1_000_000_000, 10.0)):
            s = self.spec(sets={f"links.{LINK}.bandwidth": f"{rate // 1_000_000}Mbit",
                                f"links.{LINK}.delay": f"{rtt / 2:g}ms"})
            row = {"rate_bps": rate, "configured_rtt_ms": rtt}
            try:
                with self.emu(s) as net:
                    row["rtt_ms"] = measure_rtt_ms(net, SRC, DST, count=30)
                    pid = net.wires[LINK].delayline.pid
                    c0, w0 = proc_cpu_s(pid), time.monotonic()
                    ip = iperf_goodput(net, SRC, DST, 3.0, 1)
                    c1, w1 = proc_cpu_s(pid), time.monotonic()
                    stats = net.wires[LINK].line_stats()
                g = ip["goodput_bps"]
                row.update(ip, goodput_ratio=g / rate, goodput_pass=in_range(g / rate),
                           delayline_cpu_cores=(c1 - c0) / (w1 - w0), delayline_stats=stats)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"
                row["goodput_pass"] = False
            log(f"testbed delayed {fmt_rate(rate)} @ RTT {rtt} ms: {row.get('goodput_bps')}")
            rows.append(row)
        return rows

    # -- 3. CPU --------------------------------------------------------------------------------
    def cpu(self) -> list[dict]:
        rows = []
        dur = 1.5 if self.quick else 3.0
        with self.emu(self.spec()) as net:
            for q in QUOTAS:
                row = {"quota_cores": q, "duration_s": dur}
                try:
                    if q > self.cores:
                        raise RuntimeError(f"quota {q} exceeds the {self.cores:g} cores here")
                    net.set_host(SRC, cpus=q)
                    row["read_back_cpus"] = net.cgroups[SRC].read_back().cpus
                    row["loadavg_before"] = os.getloadavg()[0]
                    m = measure_cpus(net, SRC, dur)
                    row["measured_cores"] = m
                    row["ratio"] = m / q
                    row["pass"] = abs(m - q) <= CPU_REL * q
                except Exception as e:  # noqa: BLE001
                    row["error"] = f"{type(e).__name__}: {e}"
                    row["pass"] = False
                log(f"testbed cpu quota {q}: {row.get('measured_cores')}")
                rows.append(row)
        return rows

    # -- 4. time ---------------------------------------------------------------------------
    def up_down(self, spec) -> dict:
        t0 = time.monotonic()
        net = self.emu(spec)
        try:
            net.start()
            t1 = time.monotonic()
        finally:
            net.stop()
        t2 = time.monotonic()
        return {"up_s": t1 - t0, "down_s": t2 - t1, "total_s": t2 - t0,
                "delay_lines": sum(1 for w in net.wires.values() if w.delayline is not None),
                "namespaces": len(net.nodes)}

    def time(self) -> dict:
        out: dict = {}
        reps = 3 if self.quick else 5
        spec3 = self.spec()
        out["three_tier_warm"] = [self.up_down(spec3) for _ in range(reps)]
        log(f"three_tier warm: {[round(r['total_s'], 3) for r in out['three_tier_warm']]}")
        out["three_tier_cold"] = [self.cold() for _ in range(1 if self.quick else 2)]
        log(f"three_tier cold: {[round(r.get('process_wall_s', -1), 3) for r in out['three_tier_cold']]}")
        star = self.spec("star:mobiles=50")
        out["star50"] = [self.up_down(star) for _ in range(1 if self.quick else 2)]
        log(f"star50: {[round(r['total_s'], 3) for r in out['star50']]}")
        return out

    def cold(self) -> dict:
        code = r"""
import json, sys, time
t0 = time.monotonic()
sys.path.insert(0, sys.argv[1])
from topologies import load_topology
from emulation.network import EmulatedNetwork
from emulation.probe import capabilities
t1 = time.monotonic()
caps = capabilities()
t2 = time.monotonic()
spec = load_topology("three_tier", cores=caps["cpus"], memory_bytes=caps["memory_bytes"])
net = EmulatedNetwork(spec, caps=caps)
try:
    net.start()
    t3 = time.monotonic()
finally:
    net.stop()
t4 = time.monotonic()
print(json.dumps({"import_s": t1 - t0, "capabilities_s": t2 - t1, "up_s": t3 - t2,
                  "down_s": t4 - t3, "up_down_s": t4 - t2, "in_process_s": t4 - t0, "run_id": net.run_id}))
"""
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True,
                             timeout=120, cwd=str(REPO))
        wall = time.monotonic() - t0
        if res.returncode != 0:
            return {"error": res.stderr.strip()[-800:], "process_wall_s": wall}
        d = json.loads(res.stdout.strip().splitlines()[-1])
        self.run_ids.append(d["run_id"])
        d["process_wall_s"] = wall
        return d


# --------------------------------------------------------------------------------------------
# plain Mininet + TCLink
# --------------------------------------------------------------------------------------------
class MininetLog(logging.Handler):
    """Collects what Mininet reports (its 'ignoring' warnings and tc errors)."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage().strip())


class TCLinkNet:
    """Plain Mininet hosts joined by TCLinks; offers what ``emulation.calibrate`` calls."""

    def __init__(self, n_hosts: int, link_params: list[dict]):
        from mininet.link import TCLink
        from mininet.net import Mininet

        self.tag = "tbbn" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(4))
        self.names = [f"{self.tag}h{i}" for i in range(n_hosts)]
        self.addr: dict[str, str] = {}
        self.net = Mininet(controller=None, switch=None, link=TCLink, build=False)
        self.nodes: dict = {}
        self.procs: list[subprocess.Popen] = []
        try:
            for n in self.names:
                self.nodes[n] = self.net.addHost(n, ip=None)
            for i, params in enumerate(link_params):
                a, b = self.names[i], self.names[i + 1]
                ia, ib = f"{self.tag}-{i}a", f"{self.tag}-{i}b"
                self.net.addLink(self.nodes[a], self.nodes[b], cls=TCLink, intfName1=ia, intfName2=ib, **params)
                sub = f"10.213.{i}"
                self.nodes[a].cmd(f"ip addr add {sub}.1/24 dev {ia}; ip link set {ia} up")
                self.nodes[b].cmd(f"ip addr add {sub}.2/24 dev {ib}; ip link set {ib} up")
                self.addr.setdefault(a, f"{sub}.1")
                self.addr.setdefault(b, f"{sub}.2")
        except BaseException:
            self.stop()
            raise

    def host(self, i: int) -> str:
        return self.names[i]

    # the subset of EmulatedNetwork that emulation.calibrate uses
    def address(self, host: str) -> str:
        return self.addr[host]

    def popen(self, host: str, argv: list[str], limited: bool = False, **kw) -> subprocess.Popen:
        p = self.nodes[host].popen(argv, **kw)
        self.procs.append(p)
        return p

    def run(self, host: str, argv: list[str], timeout: float = 60.0, limited: bool = False):
        p = self.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise RuntimeError(f"{' '.join(argv)} on {host} ran past {timeout:g}s") from None
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def qdiscs(self, host: str) -> str:
        return self.nodes[host].cmd("tc qdisc show").strip()

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.net.stop()


class TCLinkBench:
    def __init__(self, bench: Bench):
        self.b = bench
        from mininet.log import lg

        self.lg = lg
        self.netns_tcp: dict = {}
        self.handler = MininetLog()
        lg.addHandler(self.handler)

    def _capture(self) -> int:
        return len(self.handler.lines)

    def _since(self, k: int) -> list[str]:
        return [l for l in self.handler.lines[k:] if l]

    def goodput(self) -> list[dict]:
        rows = []
        for rate in RATES_BPS:
            row = {"rate_bps": rate, "bw_param_mbit": rate / 1e6}
            k = self._capture()
            net = None
            try:
                net = TCLinkNet(2, [{"bw": rate / 1e6}])
                src, dst = net.host(0), net.host(1)
                row["qdiscs"] = net.qdiscs(src)
                t = self.b.goodput_duration(rate)
                row.update(iperf_goodput(net, src, dst, t))
                g = row["goodput_bps"]
                row["ratio"] = g / rate
                row["shaped"] = rate / 1e6 <= TCLINK_MAX_MBIT
                row["pass"] = None if rate in REPORT_ONLY_RATES else in_range(g / rate)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"
                row["pass"] = False
            finally:
                if net is not None:
                    net.stop()
            row["mininet_messages"] = self._since(k)
            log(f"TCLink goodput {fmt_rate(rate)}: {row.get('goodput_bps')} ratio {row.get('ratio')}")
            rows.append(row)
        return rows

    def rtt(self) -> dict:
        rows = []
        out: dict = {"rate_bps": DELAYED_RATE_BPS}
        for rtt in [0.0] + RTTS_MS:
            row = {"configured_rtt_ms": rtt, "delay_param": f"{rtt / 2:g}ms"}
            k = self._capture()
            net = None
            try:
                params = {"bw": DELAYED_RATE_BPS / 1e6}
                if rtt:
                    params["delay"] = f"{rtt / 2:g}ms"
                net = TCLinkNet(2, [params])
                src, dst = net.host(0), net.host(1)
                row["qdiscs"] = net.qdiscs(src)
                m = measure_rtt_ms(net, src, dst, count=30)
                row.update(rtt_ms=m, error_ms=m - rtt, tolerance_ms=rtt_tol(rtt),
                           rtt_pass=abs(m - rtt) <= rtt_tol(rtt), ping=ping_stats(net, src, dst))
                if rtt and not self.b.quick:  # quick: RTT only (TCLink adds no delay here anyway)
                    ip = self.b.delayed_iperf(net, src, dst, rtt)
                    g = ip["goodput_bps"]
                    row.update(ip, goodput_ratio=g / DELAYED_RATE_BPS, goodput_pass=in_range(g / DELAYED_RATE_BPS))
                elif not rtt:
                    self.netns_tcp = netns_tcp(net, src)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"
                row.setdefault("rtt_pass", False)
            finally:
                if net is not None:
                    net.stop()
            row["mininet_messages"] = self._since(k)
            log(f"TCLink RTT {rtt} ms: {row.get('rtt_ms')} ms, goodput {row.get('goodput_bps')}")
            if rtt == 0.0:
                out["baseline_rtt_ms"] = row.get("rtt_ms")
            else:
                rows.append(row)
        out["rows"] = rows
        return out

    def line_time(self, spec) -> list[dict]:
        """Up+down of a 3-host line with TCLinks at three_tier's link settings."""
        params = []
        for link in spec.links:
            p = {}
            d = link.forward
            if d.rate_bps is not None:
                p["bw"] = d.rate_bps / 1e6
            if d.delay_ms:
                p["delay"] = f"{d.delay_ms:g}ms"
            params.append(p)
        out = []
        for _ in range(3 if self.b.quick else 5):
            k = self._capture()
            t0 = time.monotonic()
            net = TCLinkNet(len(spec.links) + 1, params)
            t1 = time.monotonic()
            net.stop()
            t2 = time.monotonic()
            out.append({"up_s": t1 - t0, "down_s": t2 - t1, "total_s": t2 - t0, "link_params": params,
                        "mininet_messages": self._since(k)})
        log(f"TCLink line: {[round(r['total_s'], 3) for r in out]}")
        return out

    def close(self) -> None:
        self.lg.removeHandler(self.handler)


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def med(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def ceiling_mark(ratio) -> str:
    """'†' where a ratio lies above what a perfectly shaped link can carry as TCP payload."""
    return " †" if ratio is not None and PAYLOAD_CEILING * 1.003 < ratio <= 1.2 else ""


def f3(x, nd=3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def markdown(res: dict) -> str:
    caps = res["machine"]
    L: list[str] = []
    L.append("# Emulation core benchmarks\n")
    L.append(f"Run {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(res['started']))}, "
             f"mode **{'quick' if res['quick'] else 'full'}**, {res['elapsed_s']:.0f} s in all.\n")
    L.append("| machine | |\n|---|---|")
    L.append(f"| CPU | {caps.get('cpu_model')} |")
    L.append(f"| cores (affinity) | {caps.get('cpus'):g} |")
    L.append(f"| memory | {caps.get('memory_bytes', 0) / 2**30:.1f} GiB |")
    L.append(f"| kernel | {caps.get('kernel')} |")
    L.append(f"| delay mechanism | {caps.get('delay_mechanism')} (netem qdisc: {caps.get('qdiscs', {}).get('netem')}) |")
    L.append(f"| loss mechanism | {caps.get('loss_mechanism')} |")
    L.append(f"| shaping | {caps.get('shaping')} |")
    L.append(f"| cgroup | v{caps.get('cgroup_version')} |")
    L.append(f"| TCP congestion control | {caps.get('tcp_congestion_control')} |")
    L.append(f"| Mininet | {caps.get('mininet')} |")
    for side, d in (res.get("netns_tcp") or {}).items():
        if d:
            L.append(f"| TCP inside a {side} host namespace | cc {d.get('net.ipv4.tcp_congestion_control')}, "
                     f"rmem {d.get('net.ipv4.tcp_rmem')}, wmem {d.get('net.ipv4.tcp_wmem')} |")
    st, en = res["state_start"], res["state_end"]
    code = res.get("code") or {}
    L.append(f"| code | HEAD {code.get('git_head', '?')[:10]}, emulation+topologies sources sha256 {code.get('sources_sha256')} "
             f"({len([l for l in code.get('git_dirty', []) if l.strip()])} files changed since HEAD) |")
    L.append(f"| load average (start / end) | {st['loadavg'][0]:.2f} / {en['loadavg'][0]:.2f} |")
    others = sorted(set(st["other_testbed_runs"]) | set(en["other_testbed_runs"]))
    L.append(f"| other testbed runs alive during the run | {', '.join(others) if others else 'none seen'} |")
    L.append("")

    g = res.get("goodput")
    if g:
        L.append("## 1. TCP goodput / configured bandwidth (mobile -> edge, no delay)\n")
        L.append(f"Target: ratio within [{GOODPUT_RANGE[0]}, {GOODPUT_RANGE[1]}] (10 Gbit/s: reported only). "
                 f"iperf3 `-t T -O 1`, receiver's goodput. A perfectly shaped link reads {PAYLOAD_CEILING:.3f} "
                 "(1448 payload bytes per 1514-byte frame); † marks a ratio above that: the receiver got, inside "
                 "the window, data that crossed the link before it (held back by loss recovery across the "
                 "window's start), i.e. a measurement-window artifact, not a link faster than configured.\n")
        L.append("| configured | T (s) | testbed goodput | testbed ratio | testbed | retr. | TCLink goodput | TCLink ratio | TCLink | retr. | TCLink note |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        tcl = {r["rate_bps"]: r for r in (g.get("tclink") or [])}
        for r in g.get("testbed") or []:
            t = tcl.get(r["rate_bps"], {})
            note = ""
            if t.get("error"):
                note = "error: " + t["error"][:80]
            elif r["rate_bps"] / 1e6 > TCLINK_MAX_MBIT:
                note = "bw above 1000 Mbit ignored: link unshaped"
            tv = "n/a" if r["rate_bps"] in REPORT_ONLY_RATES else verdict(t.get("pass"))
            tbv = "report" if r["rate_bps"] in REPORT_ONLY_RATES else verdict(r.get("pass"))
            if r.get("error"):
                tbv += " (" + r["error"][:60] + ")"
            L.append(f"| {fmt_rate(r['rate_bps'])} | {r.get('duration_s', '-')} | {fmt_rate(r.get('goodput_bps'))} | "
                     f"{f3(r.get('ratio'))}{ceiling_mark(r.get('ratio'))} | {tbv} | {r.get('retransmits', '-')} | "
                     f"{fmt_rate(t.get('goodput_bps'))} | {f3(t.get('ratio'))}{ceiling_mark(t.get('ratio'))} | {tv} | "
                     f"{t.get('retransmits', '-')} | {note} |")
        L.append("")

    rt = res.get("rtt")
    if rt:
        tb, tc = rt.get("testbed") or {}, rt.get("tclink") or {}
        L.append("## 2. Round-trip time (ping mobile -> edge) at configured RTT, one-way delay RTT/2 each way\n")
        L.append(f"Target: |measured - configured| <= max({RTT_ABS_MS} ms, {RTT_REL:.0%}). Link rate 10 Mbit/s; "
                 f"ping `-c 30 -i 0.02`, average. Baseline RTT with no delay: testbed "
                 f"{f3(tb.get('baseline_rtt_ms'))} ms, TCLink {f3(tc.get('baseline_rtt_ms'))} ms.\n")
        if tb.get("engaged_rtt_ms") is not None:
            eg = tb.get("engaged_ping") or {}
            L.append(f"Delay line engaged with a 0.001 ms one-way delay (its own cost): RTT {f3(tb['engaged_rtt_ms'])} ms "
                     f"(a second ping: min/avg/max {f3(eg.get('min_ms'))}/{f3(eg.get('avg_ms'))}/{f3(eg.get('max_ms'))}), i.e. "
                     f"{f3(tb['engaged_rtt_ms'] - (tb.get('baseline_rtt_ms') or 0))} ms above the no-delay baseline.\n")
        dst = (tb.get("delayline_stats") or {})
        if dst.get("stats"):
            parts = []
            for q, d in sorted(dst["stats"].items()):
                extra = ", ".join(f"{k} {d[k]}" for k in ("late_us_mean", "late_us_max", "dropped_enobufs",
                                                          "kernel_queue_dropped") if k in d)
                parts.append(f"queue {q}: {d.get('packets')} packets, {extra}")
            L.append("Delay line after the sweep: " + "; ".join(parts) +
                     (f"; learnt wake-up lead {dst['wakeup_lead_us']} us" if "wakeup_lead_us" in dst else "") + ".\n")
        L.append("| configured RTT (ms) | tolerance (ms) | testbed RTT (ms) | error (ms) | testbed | 2nd ping min / avg / max (ms) | TCLink RTT (ms) | error (ms) | TCLink |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        tcr = {r["configured_rtt_ms"]: r for r in tc.get("rows", [])}
        for r in tb.get("rows", []):
            t = tcr.get(r["configured_rtt_ms"], {})
            pg = r.get("ping") or {}
            L.append(f"| {r['configured_rtt_ms']:g} | {f3(rtt_tol(r['configured_rtt_ms']), 2)} | {f3(r.get('rtt_ms'))} | "
                     f"{f3(r.get('error_ms'), 3)} | {verdict(r.get('rtt_pass'))} | {f3(pg.get('min_ms'))} / {f3(pg.get('avg_ms'))} / {f3(pg.get('max_ms'))} | {f3(t.get('rtt_ms'))} | "
                     f"{f3(t.get('error_ms'))} | {verdict(t.get('rtt_pass'))} |")
        L.append("")
        L.append("### TCP goodput at 10 Mbit/s while delayed\n")
        L.append(f"Target: ratio within [{GOODPUT_RANGE[0]}, {GOODPUT_RANGE[1]}]. iperf3 `-O` = max(1 s, {OMIT_RTTS} RTTs) "
                 "omitted (slow start and the loss recovery after it), then 3 s (5 s from 100 ms RTT; 2 s in quick "
                 "mode). † as in section 1.\n")
        cc = caps.get("tcp_congestion_control")
        alt = next((r["alt_cc"]["cc"] for r in tb.get("rows", []) if r.get("alt_cc", {}).get("cc")), None)
        L.append(f"Each cell: ratio, verdict, retransmits. First with the machine's congestion control ({cc}), "
                 f"then with {alt or 'no other'} (`iperf3 -C`).\n")
        L.append(f"| configured RTT (ms) | omitted (s) | testbed goodput ({cc}) | testbed {cc} | testbed {alt} | "
                 f"delay-line CPU (cores) | TCLink {cc} | TCLink {alt} |")
        L.append("|---|---|---|---|---|---|---|---|")
        def cell(d: dict) -> str:
            if not d:
                return "-"
            if d.get("error") and d.get("goodput_ratio") is None:
                return "error: " + d["error"][:60]
            return (f"{f3(d.get('goodput_ratio'))}{ceiling_mark(d.get('goodput_ratio'))} {verdict(d.get('goodput_pass'))}, "
                    f"{d.get('retransmits', '-')} retr.")

        for r in tb.get("rows", []):
            t = tcr.get(r["configured_rtt_ms"], {})
            L.append(f"| {r['configured_rtt_ms']:g} | {r.get('omit_s', '-')} | {fmt_rate(r.get('goodput_bps'))} | "
                     f"{cell(r)} | {cell(r.get('alt_cc') or {})} | {f3(r.get('delayline_cpu_cores'), 3)} | "
                     f"{cell(t)} | {cell(t.get('alt_cc') or {})} |")
        L.append("")
        if tb.get("fast_rows"):
            L.append("### Extra: fast links through the delay line (testbed only)\n")
            L.append("| rate | configured RTT (ms) | RTT (ms) | goodput | ratio | target | retransmits | delay-line CPU (cores) | delay-line drops (ENOBUFS / kernel queue) |")
            L.append("|---|---|---|---|---|---|---|---|---|")
            for r in tb["fast_rows"]:
                st = r.get("delayline_stats") or {}
                drops = " ; ".join(f"q{q}: {s.get('dropped_enobufs', '-')} / {s.get('kernel_queue_dropped', '-')}"
                                   for q, s in sorted(st.items()))
                L.append(f"| {fmt_rate(r['rate_bps'])} | {r['configured_rtt_ms']:g} | {f3(r.get('rtt_ms'))} | "
                         f"{fmt_rate(r.get('goodput_bps'))} | {f3(r.get('goodput_ratio'))} | {verdict(r.get('goodput_pass'))} | "
                         f"{r.get('retransmits', '-')} | {f3(r.get('delayline_cpu_cores'))} | {drops or r.get('error', '-')} |")
            L.append("")
        msgs = sorted({m for r in tc.get("rows", []) for m in r.get("mininet_messages", [])})
        if msgs:
            L.append("TCLink said (delay=): " + "; ".join(f"`{m[:160]}`" for m in msgs[:3]) + "\n")

    c = res.get("cpu")
    if c:
        L.append("## 3. CPU: cores a busy loop gets under a quota (host `mobile`)\n")
        L.append(f"Target: |measured - quota| <= {CPU_REL:.0%} of the quota. Measured from the cgroup's own "
                 "CPU accounting (`emulation.calibrate.measure_cpus`). Plain TCLink hosts have no CPU limit (n/a).\n")
        L.append("| quota (cores) | measured (cores) | measured / quota | testbed | load avg before |")
        L.append("|---|---|---|---|---|")
        for r in c:
            L.append(f"| {r['quota_cores']:g} | {f3(r.get('measured_cores'))} | {f3(r.get('ratio'))} | "
                     f"{verdict(r.get('pass'))}{' (' + r['error'][:60] + ')' if r.get('error') else ''} | "
                     f"{f3(r.get('loadavg_before'), 2)} |")
        L.append("")

    tm = res.get("time")
    if tm:
        L.append("## 4. Time to bring a network up and down\n")
        L.append("Median of the repetitions (all values in the JSON).\n")
        L.append("| what | reps | up (s) | down (s) | up+down (s) | target | verdict |")
        L.append("|---|---|---|---|---|---|---|")
        w = tm.get("three_tier_warm") or []
        if w:
            tot = med(w, "total_s")
            L.append(f"| testbed three_tier, warm ({w[0]['namespaces']} namespaces, {w[0]['delay_lines']} delay lines) | {len(w)} | "
                     f"{f3(med(w, 'up_s'))} | {f3(med(w, 'down_s'))} | {f3(tot)} | < {THREE_TIER_TARGET_S:g} s | {verdict(tot < THREE_TIER_TARGET_S)} |")
        cold = [r for r in tm.get("three_tier_cold") or [] if "error" not in r]
        if cold:
            L.append(f"| testbed three_tier, cold: up+down inside a fresh interpreter | {len(cold)} | {f3(med(cold, 'up_s'))} | "
                     f"{f3(med(cold, 'down_s'))} | {f3(med(cold, 'up_down_s'))} | (reported) | n/a |")
            L.append(f"| testbed three_tier, cold: whole process (interpreter + imports {f3(med(cold, 'import_s'))} s "
                     f"+ capabilities() {f3(med(cold, 'capabilities_s'))} s + up+down) | {len(cold)} | - | - | "
                     f"{f3(med(cold, 'process_wall_s'))} | (reported) | n/a |")
        for r in tm.get("three_tier_cold") or []:
            if "error" in r:
                L.append(f"| testbed three_tier, cold | 1 | - | - | - | - | error: {r['error'][:100]} |")
        s = tm.get("star50") or []
        if s:
            tot = med(s, "total_s")
            L.append(f"| testbed star:mobiles=50, warm ({s[0]['namespaces']} namespaces, {s[0]['delay_lines']} delay lines) | {len(s)} | "
                     f"{f3(med(s, 'up_s'))} | {f3(med(s, 'down_s'))} | {f3(tot)} | < {STAR50_TARGET_S:g} s | {verdict(tot < STAR50_TARGET_S)} |")
        t = tm.get("tclink_line") or []
        if t:
            tot = med(t, "total_s")
            L.append(f"| plain Mininet + TCLink, 3-host line (3 namespaces, params {t[0]['link_params']}) | {len(t)} | "
                     f"{f3(med(t, 'up_s'))} | {f3(med(t, 'down_s'))} | {f3(tot)} | (< {THREE_TIER_TARGET_S:g} s) | {verdict(tot < THREE_TIER_TARGET_S)} |")
        L.append("")

    lo = res.get("leftovers") or {}
    if lo:
        left = lo.get("testbed", []) + lo.get("tclink_interfaces", []) + lo.get("tclink_shells", [])
        what = f"check failed: {lo['error']}" if lo.get("error") else ("none" if not left else left)
        L.append(f"Leftovers after the run ({len(lo.get('runs', []))} testbed runs made, plus the TCLink hosts): {what}.\n")

    if res.get("errors"):
        L.append("## Errors\n")
        for k, v in res["errors"].items():
            L.append(f"- **{k}**: `{v.strip().splitlines()[-1][:300]}`")
        L.append("")

    rows = []
    for sec, items in (("goodput", [r for r in (g or {}).get("testbed", []) if r.get("pass") is not None]),
                       ("rtt", [r for r in ((rt or {}).get("testbed") or {}).get("rows", [])]),
                       ("cpu", c or [])):
        for r in items:
            for key in ("pass", "rtt_pass", "goodput_pass"):
                if key in r and r[key] is not None:
                    rows.append(bool(r[key]))
    if rows:
        L.append(f"**Testbed rows passing their target: {sum(rows)} / {len(rows)}** (goodput, RTT, delayed goodput, CPU rows).\n")
    return "\n".join(L)


# --------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter measurements, fewer repetitions (< 2 min)")
    ap.add_argument("--only", nargs="+", choices=["goodput", "rtt", "cpu", "time"], help="run only these sections")
    ap.add_argument("--no-tclink", action="store_true", help="leave out the plain Mininet + TCLink column")
    ap.add_argument("--out", default=str(RESULTS), help="results directory (default benchmarks/results)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root: sudo .venv/bin/python benchmarks/bench_emulation.py", file=sys.stderr)
        return 2

    sigterm_as_interrupt()
    started, t0 = time.time(), time.monotonic()
    state_start = machine_state()
    b = Bench(args.quick)
    res: dict = {"started": started, "quick": args.quick, "machine": dict(b.caps), "capabilities_s": b.caps_s,
                 "python": platform.python_version(), "state_start": state_start, "errors": {},
                 "code": code_version(),
                 "targets": {"goodput_ratio": list(GOODPUT_RANGE), "rtt_ms": f"max({RTT_ABS_MS}, {RTT_REL} x RTT)",
                             "cpu_rel": CPU_REL, "three_tier_up_down_s": THREE_TIER_TARGET_S,
                             "star50_up_down_s": STAR50_TARGET_S}}
    tcl = None if args.no_tclink else TCLinkBench(b)
    sections = args.only or ["goodput", "rtt", "cpu", "time"]
    try:
        for sec in sections:
            log(f"== {sec}")
            try:
                if sec == "goodput":
                    res["goodput"] = {"testbed": b.goodput()}
                    if tcl:
                        res["goodput"]["tclink"] = tcl.goodput()
                elif sec == "rtt":
                    res["rtt"] = {"testbed": b.rtt()}
                    if tcl:
                        res["rtt"]["tclink"] = tcl.rtt()
                elif sec == "cpu":
                    res["cpu"] = b.cpu()
                elif sec == "time":
                    res["time"] = b.time()
                    if tcl:
                        res["time"]["tclink_line"] = tcl.line_time(b.spec())
            except KeyboardInterrupt:
                raise
            except Exception:  # noqa: BLE001 - one broken section must not lose the others
                res["errors"][sec] = traceback.format_exc()
                log(f"section {sec} failed:\n{res['errors'][sec]}")
    finally:
        if tcl:
            tcl.close()
        res["state_end"] = machine_state()
        res["netns_tcp"] = {"testbed": b.netns_tcp, "tclink": tcl.netns_tcp if tcl else {}}
        res["leftovers"] = leftovers(b.run_ids)
        res["elapsed_s"] = time.monotonic() - t0
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "emulation.json").write_text(json.dumps(res, indent=1, default=str))
        md = markdown(res)
        (out / "emulation.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
