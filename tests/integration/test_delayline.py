"""Integration tests of the NFQUEUE delay line (root: namespaces, veths, iptables).

Topology: A -- D -- B, three Mininet hosts. D forwards (ip_forward=1); its FORWARD chain
sends what enters from A to queue 0 and what enters from B to queue 1; the delay line runs
inside D. Everything is created under a per-module random interface prefix and torn down
in ``finally`` blocks; traffic only flows between these namespaces.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulation.network import DELAYLINE_RT_PRIORITY

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, iptables)"),
    pytest.mark.skipif(not Path("/usr/bin/mnexec").exists() and not Path("/usr/local/bin/mnexec").exists(),
                       reason="mininet's mnexec is not installed"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
A_IP, D_IP_A, D_IP_B, B_IP = "10.77.1.1", "10.77.1.2", "10.77.2.2", "10.77.2.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def steal_ms() -> float:
    """CPU time the hypervisor took from this VM, all CPUs (``steal`` in /proc/stat), in ms."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) * 1000 / CLK_TCK


def unless_stolen(measure, within):
    """``measure()`` once; when its reading misses (``within(reading)`` false) and the
    hypervisor stole time from this VM meanwhile, once more: a stopped VM stops every
    process at any priority, the delay line too. A reading without stolen time is judged as
    it is, so a delay line late on its own still fails. Returns (reading, stolen ms)."""
    for _ in range(2):
        steal0 = steal_ms()
        reading = measure()
        stolen = steal_ms() - steal0
        if within(reading) or stolen == 0:
            break
    return reading, stolen


class Topo:
    def __init__(self):
        from mininet.net import Mininet

        self.prefix = "tbdl" + "".join(random.choices(string.ascii_lowercase + string.digits, k=4))
        p = self.prefix
        self.if_a, self.if_da, self.if_db, self.if_b = p + "a0", p + "d0", p + "d1", p + "b0"
        self.net = Mininet(controller=None, switch=None, build=False)
        try:
            self._build()
        except BaseException:
            self.net.stop()
            raise
        self.pids = [h.pid for h in (self.a, self.d, self.b)]

    def _build(self):
        p = self.prefix
        self.a = self.net.addHost(p + "A", ip=None)
        self.d = self.net.addHost(p + "D", ip=None)
        self.b = self.net.addHost(p + "B", ip=None)
        self.net.addLink(self.a, self.d, intfName1=self.if_a, intfName2=self.if_da)
        self.net.addLink(self.d, self.b, intfName1=self.if_db, intfName2=self.if_b)
        self.a.cmd(f"ip addr add {A_IP}/24 dev {self.if_a}; ip link set {self.if_a} up; "
                   f"ip link set lo up; ip route add default via {D_IP_A}")
        self.b.cmd(f"ip addr add {B_IP}/24 dev {self.if_b}; ip link set {self.if_b} up; "
                   f"ip link set lo up; ip route add default via {D_IP_B}")
        self.d.cmd(f"ip addr add {D_IP_A}/24 dev {self.if_da}; ip link set {self.if_da} up; "
                   f"ip addr add {D_IP_B}/24 dev {self.if_db}; ip link set {self.if_db} up; "
                   "ip link set lo up; sysctl -qw net.ipv4.ip_forward=1")
        out = self.d.cmd(f"iptables -w -A FORWARD -i {self.if_da} -j NFQUEUE --queue-num 0 && "
                         f"iptables -w -A FORWARD -i {self.if_db} -j NFQUEUE --queue-num 1 && echo RULES-OK")
        assert "RULES-OK" in out, out

    def stop(self):
        self.net.stop()


class Daemon:
    """The delay line running inside D, with a line reader on its stdout."""

    def __init__(self, host, *queues: str, extra=()):
        argv = [sys.executable, "-m", "emulation.delayline"]
        for q in queues:
            argv += ["--queue", q]
        argv += list(extra)
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.p = host.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=str(REPO_ROOT), env=env)
        self._buf = b""
        t0 = time.monotonic()
        self.ready = self.read(timeout=15)
        self.startup_s = time.monotonic() - t0

    def read(self, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"no reply from delay line within {timeout}s")
            chunk = os.read(fd, 65536)
            if not chunk:
                err = self.p.stderr.read().decode(errors="replace") if self.p.poll() is not None else ""
                raise EOFError(f"delay line exited (rc={self.p.poll()}): {err[-2000:]}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, msg: dict) -> dict:
        self.p.stdin.write((json.dumps(msg) + "\n").encode())
        self.p.stdin.flush()
        return self.read()

    def set(self, queue: int, delay_ms: float, jitter_ms: float = 0.0) -> None:
        r = self.call({"op": "set", "queue": queue, "delay_ms": delay_ms, "jitter_ms": jitter_ms})
        assert r == {"ok": True, "queue": queue, "delay_ms": delay_ms, "jitter_ms": jitter_ms, "rate_bps": None,
                     "queue_bytes": None}, r

    def cpu_s(self) -> float:
        with open(f"/proc/{self.p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def stop(self) -> int | None:
        if self.p.poll() is None:
            try:
                self.p.stdin.close()
            except OSError:
                pass
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=5)
        for f in (self.p.stdout, self.p.stderr, self.p.stdin):
            try:
                f.close()
            except OSError:
                pass
        return self.p.returncode


@pytest.fixture(scope="module")
def topo():
    t = None
    try:
        t = Topo()
        yield t
    finally:
        if t is not None:
            t.stop()
            # nothing of ours may remain: host shells gone (their namespaces with them)
            deadline = time.monotonic() + 5
            while any(os.path.exists(f"/proc/{pid}") for pid in t.pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = [pid for pid in t.pids if os.path.exists(f"/proc/{pid}")]
            assert not left, f"mininet host shells still running: {left}"
            links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
            assert t.prefix not in links


@pytest.fixture
def daemon_factory(topo):
    started: list[Daemon] = []

    def start(*queues, extra=()):
        d = Daemon(topo.d, *queues, extra=extra)
        started.append(d)
        return d

    try:
        yield start
    finally:
        for d in started:
            d.stop()
        # the queues are unbound again (every daemon gone)
        assert topo.d.cmd("cat /proc/net/netfilter/nfnetlink_queue").strip() == ""


def ping_rtt(host, dst: str, count: int = 20, interval: float = 0.05, rt_priority: int = 0) -> dict:
    """ping's summary. ``rt_priority``: run ping at SCHED_FIFO, so that the measuring tool is
    not preempted between stamping a request and sending it (which reads as a late packet)."""
    chrt = f"chrt -f {rt_priority} " if rt_priority else ""
    out = host.cmd(f"{chrt}ping -c {count} -i {interval} -W 2 -q {dst}")
    m = re.search(r"(\d+) received", out)
    r = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", out)
    assert m and r, out
    mn, avg, mx, mdev = map(float, r.groups())
    return {"received": int(m.group(1)), "min": mn, "avg": avg, "max": mx, "mdev": mdev}


def icmp_in_echos(host) -> int:
    lines = [l.split() for l in host.cmd("cat /proc/net/snmp").splitlines() if l.startswith("Icmp:")]
    return int(lines[1][lines[0].index("InEchos")])


@pytest.mark.timeout(120)
def test_ready_message_and_kernel_features(daemon_factory):
    d = daemon_factory("0:0:0", "1:0:0")
    assert d.ready["ready"] is True and d.ready["queues"] == [0, 1]
    print(f"ready: {d.ready} (startup {d.startup_s * 1000:.0f} ms)")
    # this kernel accepts COPY_META and NFQA_CFG_F_GSO; if a kernel refuses them the daemon
    # falls back (COPY_PACKET with a small range / segmented GSO) and says so in notes
    assert set(d.ready["copy_mode"]) == {"0", "1"}
    st = d.call({"op": "stats"})
    assert st["ok"] and set(st["stats"]) == {"0", "1"}


@pytest.mark.timeout(120)
def test_rtt_matches_configured_delay(topo, daemon_factory):
    # at the real-time priority EmulatedNetwork gives its delay lines
    d = daemon_factory("0:0:0", "1:0:0", extra=("--rt-priority", str(DELAYLINE_RT_PRIORITY)))
    assert d.ready["sched"] == {"policy": "SCHED_FIFO", "priority": DELAYLINE_RT_PRIORITY}
    base = ping_rtt(topo.a, B_IP)
    assert base["received"] == 20
    print(f"\nbase RTT through the (zero-delay) delay line: {base['avg']:.3f} ms")
    for delay in (1, 10, 50, 100):
        d.set(0, delay)
        d.set(1, delay)
        expected = 2 * delay + base["avg"]
        tol = max(0.5, 0.03 * expected)
        r, stolen = unless_stolen(lambda: ping_rtt(topo.a, B_IP),
                                  lambda r: abs(r["avg"] - expected) <= tol and r["min"] >= 2 * delay - 0.05)
        print(f"delay {delay:>3} ms each way: RTT avg {r['avg']:.3f} ms (min {r['min']:.3f}, max {r['max']:.3f}),"
              f" expected {expected:.3f} +- {tol:.2f}; stolen {stolen:.0f} ms")
        assert r["received"] == 20
        assert abs(r["avg"] - expected) <= tol, (delay, r, expected)
        assert r["min"] >= 2 * delay - 0.05, (delay, r)
    st = d.call({"op": "stats"})["stats"]
    assert st["0"]["packets"] >= 100 and st["0"]["held"] == 0
    assert st["0"]["dropped_enobufs"] == 0 and st["0"]["verdict_errors"] == 0


@pytest.mark.timeout(120)
def test_asymmetric_delay_and_live_change(topo, daemon_factory):
    d = daemon_factory("0:10:0", "1:0:0")
    r1 = ping_rtt(topo.a, B_IP)
    d.set(0, 40)
    d.set(1, 20)
    r2 = ping_rtt(topo.a, B_IP)
    st = d.call({"op": "stats"})["stats"]
    print(f"\n10+0 ms: RTT {r1['avg']:.3f} ms; live change to 40+20 ms: RTT {r2['avg']:.3f} ms")
    assert abs(r1["avg"] - 10) <= 0.5 + 0.3  # + base RTT (~0.1-0.3 ms)
    assert abs(r2["avg"] - 60) <= 0.03 * 60
    assert (st["0"]["delay_ms"], st["1"]["delay_ms"]) == (40.0, 20.0)


@pytest.mark.timeout(120)
def test_jitter_bounds_without_reordering(topo, daemon_factory):
    # at SCHED_FIFO 10, as every network runs its delay lines: at the normal scheduler one
    # ping in 420 (7 runs) came back 9 ms past the bound, the daemon not scheduled in time.
    # ping runs at SCHED_FIFO 5 (below the line), so the measuring tool is not preempted
    # either. One CI run saw one ping in 60 come back 10.7 ms past the bound, the cause not
    # recorded: a stop of the VM by the hypervisor is the likely one, hence unless_stolen
    def measure():
        d = daemon_factory("0:20:5", "1:0:0", extra=["--seed", "7", "--rt-priority", "10"])
        r = ping_rtt(topo.a, B_IP, count=60, interval=0.02, rt_priority=5)
        st = d.call({"op": "stats"})["stats"]
        d.stop()
        return r, st, max(st["0"]["late_us_max"], st["1"]["late_us_max"])

    def within(reading):
        r, _, late_us = reading
        return late_us <= 1500 and r["min"] >= 15 - 0.05 and r["max"] <= 25 + 1.5

    (r, st, late_us), stolen = unless_stolen(measure, within)
    print(f"\n20 ms +- 5 ms jitter: RTT min {r['min']:.3f} avg {r['avg']:.3f} max {r['max']:.3f} mdev {r['mdev']:.3f}"
          f"; delay line late max {st['0']['late_us_max']} / {st['1']['late_us_max']} us; stolen {stolen:.0f} ms")
    assert r["received"] == 60
    # the line's own counter: no packet left more than 1.5 ms after its due time
    assert late_us <= 1500, (st, stolen)
    # and what ping reads; on failure the line's counters above tell a late delay line from
    # a packet delayed elsewhere
    assert r["min"] >= 15 - 0.05 and r["max"] <= 25 + 1.5, (r, late_us, stolen)
    assert r["mdev"] > 1.0  # uniform on +-5 ms has sd 2.9 ms
    assert abs(r["avg"] - 20) < 2.5


@pytest.mark.timeout(120)
def test_tcp_throughput_with_10ms_each_way(topo, daemon_factory):
    d = daemon_factory("0:10:0", "1:10:0")
    port = random.randint(20000, 60000)
    server = topo.b.popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        rtt = ping_rtt(topo.a, B_IP, count=5)
        cpu0, t0 = d.cpu_s(), time.monotonic()
        out = topo.a.cmd(f"iperf3 -c {B_IP} -p {port} -t 3 -J")
        cpu1, t1 = d.cpu_s(), time.monotonic()
        res = json.loads(out[out.index("{"):])
        bps = res["end"]["sum_received"]["bits_per_second"]
        tcp_rtt_ms = res["end"]["streams"][0]["sender"]["mean_rtt"] / 1000
        st = d.call({"op": "stats"})["stats"]
        print(f"\nRTT {rtt['avg']:.2f} ms; iperf3 TCP A->B, 10 ms each way: {bps / 1e9:.2f} Gbit/s, "
              f"TCP mean RTT {tcp_rtt_ms:.1f} ms; "
              f"delay line CPU {100 * (cpu1 - cpu0) / (t1 - t0):.0f}% of one core over the run; "
              f"queued skbs fwd {st['0']['packets']} rev {st['1']['packets']}, "
              f"enobufs {st['0']['dropped_enobufs']}/{st['1']['dropped_enobufs']}, "
              f"kernel drops {st['0'].get('kernel_queue_dropped')}/{st['1'].get('kernel_queue_dropped')}")
        # Measured on the 2-core development VM (kernel 6.18, AMD EPYC): 4.1-4.2 Gbit/s with
        # TCP mean RTT 20.5 ms and the delay line at ~40-46% of one core (GSO skbs of ~60 KB;
        # with --no-gso the same run gave 1.5 Gbit/s, 57 ms RTT and 86% CPU). The bound is set
        # 4x below the measurement so a slower or busier machine still passes.
        assert bps > 1e9
        # the delay really applies under load, and the daemon keeps up (little queueing)
        assert 19.5 <= tcp_rtt_ms <= 40, tcp_rtt_ms
        assert st["0"]["dropped_enobufs"] == 0 and st["0"].get("kernel_queue_dropped", 0) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=5)
        for f in (server.stdout, server.stderr):
            if f:
                f.close()


@pytest.mark.timeout(120)
def test_stdin_eof_releases_held_packets_and_exits(topo, daemon_factory):
    d = daemon_factory("0:3000:0", "1:0:0")
    before = icmp_in_echos(topo.b)
    topo.a.cmd(f"ping -c 1 -W 1 {B_IP} >/dev/null 2>&1 &")
    deadline = time.monotonic() + 5
    while d.call({"op": "stats"})["stats"]["0"]["held"] < 1:
        assert time.monotonic() < deadline, "echo request never reached the delay line"
        time.sleep(0.05)
    assert icmp_in_echos(topo.b) == before  # still held (3 s delay)
    t0 = time.monotonic()
    d.p.stdin.close()
    assert d.p.wait(timeout=5) == 0
    # released at exit, long before its 3 s were up
    while icmp_in_echos(topo.b) == before and time.monotonic() - t0 < 2:
        time.sleep(0.02)
    assert icmp_in_echos(topo.b) == before + 1
    assert time.monotonic() - t0 < 2
    assert topo.d.cmd("cat /proc/net/netfilter/nfnetlink_queue").strip() == ""


@pytest.mark.timeout(120)
def test_sigterm_releases_and_exits_zero(topo, daemon_factory):
    d = daemon_factory("0:3000:0", "1:0:0")
    before = icmp_in_echos(topo.b)
    topo.a.cmd(f"ping -c 1 -W 1 {B_IP} >/dev/null 2>&1 &")
    deadline = time.monotonic() + 5
    while d.call({"op": "stats"})["stats"]["0"]["held"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    d.p.send_signal(signal.SIGTERM)
    assert d.p.wait(timeout=5) == 0
    deadline = time.monotonic() + 2
    while icmp_in_echos(topo.b) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert icmp_in_echos(topo.b) == before + 1


@pytest.mark.timeout(120)
def test_second_daemon_on_same_queue_fails_cleanly(daemon_factory):
    first = daemon_factory("0:0:0", "1:0:0")
    second = daemon_factory("1:0:0")  # queue 1 is bound already
    assert second.ready["ready"] is False and "already bound" in second.ready["error"], second.ready
    assert second.p.wait(timeout=5) == 1
    assert first.call({"op": "stats"})["ok"] is True


@pytest.mark.timeout(120)
def test_enobufs_is_counted_and_survived(topo, daemon_factory):
    # a tiny netlink receive buffer and no GSO: a TCP burst overflows the socket, the kernel
    # drops those packets and reports ENOBUFS; the daemon counts it and keeps serving
    d = daemon_factory("0:0:0", "1:0:0", extra=["--rcvbuf", "1", "--no-gso"])
    port = random.randint(20000, 60000)
    server = topo.b.popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        topo.a.cmd(f"iperf3 -c {B_IP} -p {port} -t 1 -J >/dev/null 2>&1")
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=5)
        for f in (server.stdout, server.stderr):
            if f:
                f.close()
    st = d.call({"op": "stats"})["stats"]
    print(f"\nrcvbuf 1: {st['0']}")
    assert d.p.poll() is None
    assert st["0"]["dropped_enobufs"] > 0
    assert st["0"].get("kernel_user_dropped", 1) > 0
    assert ping_rtt(topo.a, B_IP, count=5)["received"] == 5
