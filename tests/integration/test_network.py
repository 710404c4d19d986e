"""Real networks: built-ins come up and route, links and hosts hold their limits, live changes
read back, two networks coexist, and failures inside the `with` leave nothing behind."""
from __future__ import annotations

import re
import sys

import pytest

from emulation.calibrate import (expected_rtt_ms, measure_burst_slowdown, measure_compute, measure_cpus,
                                 measure_goodput, measure_rtt_ms, measure_udp_loss, memory_enforced)
from emulation.network import DELAYLINE_RT_PRIORITY
from emulation.network import EmulatedNetwork, EmulationError
from topologies import apply_overrides, load_topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

GiB = 1 << 30


def spec(ref: str, sets: dict | None = None):
    s = load_topology(ref, cores=2.0, memory_bytes=24 * GiB)
    return apply_overrides(s, sets) if sets else s


def ping_ok(net: EmulatedNetwork, src: str, dst: str) -> bool:
    res = net.run(src, ["ping", "-n", "-c", "1", "-W", "2", net.address(dst)], limited=False)
    return res.returncode == 0


@pytest.mark.parametrize("ref", ["three_tier", "star:mobiles=3", "multi_edge"])
def test_every_builtin_comes_up_routes_every_pair_and_reads_back(ref, caps):
    with EmulatedNetwork(spec(ref), caps=caps) as net:
        assert net.verify() == []
        hosts = net.plan.hosts
        for src in hosts:
            for dst in hosts:
                if src != dst:
                    assert ping_ok(net, src, dst), f"{src} cannot reach {dst}"


def test_traffic_follows_the_topology_path(caps):
    # mobile -> cloud must cross edge: TTL drops by one per router (edge and the two wires)
    with EmulatedNetwork(spec("three_tier"), caps=caps) as net:
        out = net.run("mobile", ["ping", "-n", "-c", "1", net.address("cloud")], limited=False).stdout
        ttl = int(re.search(r"ttl=(\d+)", out).group(1))
        # every link has a wire namespace, with netem too (the plan does not depend on it: the
        # shaping does); this said "no wires under netem" until the VM ran it with netem
        assert len(net.plan.wires) == 2
        assert ttl == 64 - 3


def test_bandwidth_is_enforced_in_each_direction_separately(caps):
    s = spec("three_tier", {"links.mobile-edge.forward.bandwidth": "20Mbit", "links.mobile-edge.reverse.bandwidth": "5Mbit"})
    with EmulatedNetwork(s, caps=caps) as net:
        up = shaped_goodputs(net, "mobile", "edge", 20_000_000, 2.0)
        down = shaped_goodputs(net, "edge", "mobile", 5_000_000, 2.0)
    assert max(up) / 20e6 >= 0.93 and all(r / 20e6 <= 1.02 for r in up), up
    assert max(down) / 5e6 >= 0.93 and all(r / 5e6 <= 1.02 for r in down), down


def shaped_goodputs(net, src: str, dst: str, rate_bps: int, seconds: float, tries: int = 2) -> list[float]:
    """Goodput readings over a link shaped to ``rate_bps``: one, and another (up to ``tries``)
    while the last fell short of 0.93 of the rate. Another process's burst on this 2-core
    machine (or the QEMU VM's emulated CPUs) can only take goodput away, never add it: a shaper
    that lets too much through shows in every reading (each is checked against 1.02), one that
    holds the rate in at least one. (The VM stage, netem under QEMU's emulated CPUs, read 18.03
    of 20 Mbit/s once, 0.90, and passed with the same code in the runs before and after.)"""
    readings = [measure_goodput(net, src, dst, rate_bps, seconds)]
    while len(readings) < tries and readings[-1] / rate_bps < 0.93:
        readings.append(measure_goodput(net, src, dst, rate_bps, seconds))
    return readings


def test_delay_without_netem_uses_nfqueue_line(caps):
    if caps["delay_mechanism"] != "nfqueue":
        pytest.skip("this kernel has netem: the delay line is not used")
    s = spec("three_tier", {"links.mobile-edge.delay": "10ms", "links.edge-cloud.bandwidth": "none"})
    with EmulatedNetwork(s, caps=caps) as net:
        assert net.wires["mobile-edge"].delayline is not None
        assert net.wires["edge-cloud"].delayline is None      # no delay, no rate: no daemon, no queue rule
        assert net.wires["edge-cloud"].rules == []
        # 20 ms, and a 98-byte ping frame serialized each way at 200 Mbit/s (4 us each)
        ideal = expected_rtt_ms(net.links["mobile-edge"].forward, net.links["mobile-edge"].reverse)
        assert ideal == pytest.approx(20.0 + 2 * 98 * 8 / 200e6 * 1000)
        rtt = measure_rtt_ms(net, "mobile", "edge")
        assert abs(rtt - ideal) <= 0.6, rtt
        rtt_cloud = measure_rtt_ms(net, "mobile", "cloud")
        assert abs(rtt_cloud - ideal) <= 0.6, rtt_cloud
        # the rate still holds while delayed. Three busy processes (iperf3 both ends and the
        # delay line) on 2 cores: a second reading when the first falls short (a CI run read
        # 0.916 once, after the demo's files were written back; alone, and beside a busy core, 0.95)
        readings = shaped_goodputs(net, "mobile", "edge", 200_000_000, 3.0)
        assert max(readings) / 200e6 >= 0.93 and all(r / 200e6 <= 1.02 for r in readings), readings


MESSAGE_CLIENT = r"""
import json, socket, sys, time
c = socket.create_connection((sys.argv[1], 9000))
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
out = {}
for n in [int(x) for x in sys.argv[2].split(",")]:
    took = []
    for _ in range(8):
        time.sleep(0.2)
        t = time.perf_counter()
        c.sendall(n.to_bytes(8, "big") + b"x" * n)
        c.recv(1)
        took.append((time.perf_counter() - t) * 1000)
    out[n] = sorted(took[1:])[3]
print(json.dumps(out))
"""
MESSAGE_SERVER = r"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    h = c.recv(8, socket.MSG_WAITALL)
    if len(h) < 8:
        break
    n, got = int.from_bytes(h, "big"), 0
    while got < n:
        got += len(c.recv(n - got))
    c.sendall(b"k")
"""


def test_small_messages_take_their_time_on_a_slow_link(caps):
    """A message of a few kB on a 1 Mbit/s link takes its bytes x 8 / rate, not one token
    bucket's burst less (the issue: a 4.5 kB reply crossed in 14 ms instead of 36). Each
    message is sent and answered with one byte; ideal = every frame's bytes at the rate both
    ways + the delay both ways. The median of 7 messages is judged (the first one, just after
    the connection opened, is left out)."""
    import subprocess
    s = spec("three_tier", {"links.edge-cloud.bandwidth": "1Mbit", "links.edge-cloud.delay": "5ms"})
    sizes = [1000, 4500, 20000]
    with EmulatedNetwork(s, caps=caps) as net:
        srv = net.popen("cloud", [sys.executable, "-c", MESSAGE_SERVER], limited=False,
                        stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout.readline().strip() == "listening"
            p = net.run("edge", [sys.executable, "-c", MESSAGE_CLIENT, net.address("cloud"),
                                 ",".join(map(str, sizes))], limited=False, timeout=60)
        finally:
            srv.kill()
            srv.wait()
    took = {int(k): v for k, v in __import__("json").loads(p.stdout).items()}
    for n in sizes:
        payload = n + 8
        frames = -(-payload // 1448)            # TCP segments of 1448 bytes (timestamps on)
        wire = payload + frames * 66 + 67       # + TCP/IP/Ethernet headers, + the 1-byte answer
        ideal = wire * 8 / 1e6 * 1000 + 10.0
        assert 0.97 <= took[n] / ideal <= 1.10, (n, took[n], ideal)


def test_a_message_over_two_slow_links_is_pipelined_frame_by_frame(caps):
    """Over two 1 Mbit/s links in a row a message's frames overlap: the second link sends
    frame k while the first sends frame k+1, so the message takes its bytes at the rate once
    plus one full frame on the other link, not its bytes twice. (Found: with 2-frame GSO
    lumps, each link sent a lump whole and 3355 B took 54.4 ms against 42.2.) Sent mobile ->
    cloud through the edge, the 1-byte answer back the same way; median of 7 messages."""
    import subprocess
    s = spec("three_tier", {"links.mobile-edge.bandwidth": "1Mbit", "links.edge-cloud.bandwidth": "1Mbit"})
    n = 3355
    with EmulatedNetwork(s, caps=caps) as net:
        srv = net.popen("cloud", [sys.executable, "-c", MESSAGE_SERVER], limited=False,
                        stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout.readline().strip() == "listening"
            p = net.run("mobile", [sys.executable, "-c", MESSAGE_CLIENT, net.address("cloud"), str(n)],
                        limited=False, timeout=60)
        finally:
            srv.kill()
            srv.wait()
    took = __import__("json").loads(p.stdout)[str(n)]
    payload = n + 8
    frames = -(-payload // 1448)
    wire = payload + frames * 66
    pipelined = (wire + 1514 + 2 * 67) * 8 / 1e6 * 1000     # once at the rate, one frame more, the answer twice
    whole_per_link = (2 * wire + 2 * 67) * 8 / 1e6 * 1000
    assert 0.97 <= took / pipelined <= 1.10, (took, pipelined, whole_per_link)


def test_loss_is_applied_per_direction(caps):
    s = spec("three_tier", {"links.mobile-edge.forward.loss": "10%"})
    with EmulatedNetwork(s, caps=caps) as net:
        loss, n, _ = measure_udp_loss(net, "mobile", "edge", 200_000_000, 2.0)
        # what the receiving socket dropped (its buffer full: iperf3's server not scheduled in
        # time, 365 of 2498 in one run here and 9 % in one CI run) is not the link's loss
        back, m, at_socket = measure_udp_loss(net, "edge", "mobile", 200_000_000, 1.0)
    print(f"\nloss forward {loss:.4f} of {n}, reverse {back:.4f} of {m} (+{at_socket} at the receiver's socket)")
    assert n > 2000 and m > 1000
    assert abs(loss - 0.10) < 0.03, loss
    assert back == 0.0


def test_cpu_quota_is_enforced(caps):
    with EmulatedNetwork(spec("three_tier"), caps=caps) as net:
        got = measure_cpus(net, "mobile", 1.5)
    assert abs(got - 0.25) <= 0.05 * 0.25 + 0.005, got


def test_cpu_period_is_read_back_and_decides_how_a_short_burst_is_throttled(caps):
    """Mobile has 0.25 cores. A 20 ms burst from idle fits in the 25 ms quota of the kernel's
    100 ms period (runs at full speed), but not in the 2 ms quota of the auto 8 ms period (runs
    at about a quarter of the speed); changed live, in both directions, and read back each time."""
    with EmulatedNetwork(spec("three_tier", {"hosts.mobile.cpu_period": "100ms"}), caps=caps) as net:
        assert net.cgroups["mobile"].read_back().cpu_period_us == 100_000
        assert net.applied()["hosts"][0]["cpu_period_us"] == 100_000
        long_period = measure_burst_slowdown(net, "mobile", burst_ms=20.0)
        assert net.reconfigure(spec("three_tier")) == ["host mobile"]
        assert net.cgroups["mobile"].read_back().cpu_period_us == 8_000 and net.verify() == []
        auto = measure_burst_slowdown(net, "mobile", burst_ms=20.0)
        net.set_host("mobile", cpu_period_us=100_000)
        assert net.cgroups["mobile"].read_back().cpu_period_us == 100_000 and net.verify() == []
        again = measure_burst_slowdown(net, "mobile", burst_ms=20.0)
    assert long_period < 1.5 and again < 1.5, (long_period, again)   # not throttled: the quota outlasts the burst
    assert auto > 2.5, auto                                          # about 1 / 0.25


def test_a_limited_host_computes_every_request_at_its_share(caps):
    """Per request, not only over a period: 11 ms of CPU on mobile (0.25 cores, the auto 8 ms
    period: a 2 ms quota), paced as its servers pace, takes about 44 ms at p10, p50 and p90 alike; the same
    work under the kernel's 100 ms period and the quota alone mostly runs at full speed (the
    bimodal host issue 13 measured)."""
    with EmulatedNetwork(spec("three_tier"), caps=caps) as net:
        assert net.cgroups["mobile"].read_back().cpu_period_us == 8000
        paced = measure_compute(net, "mobile", ["--busy-ms", "11"], requests=12)
        net.set_host("mobile", cpu_period_us=100_000)
        quota_alone = measure_compute(net, "mobile", ["--busy-ms", "11"], requests=12, pace=False)
    assert paced["paced"] and paced["cpu_period_us"] == 8000
    assert all(0.8 <= r <= 1.2 for r in paced["ratio_p10_p50_p90"]), paced
    assert not quota_alone["paced"] and quota_alone["ratio_p10_p50_p90"][1] < 0.5, quota_alone


def test_real_time_helpers_are_read_back_from_the_kernel_and_leave_with_the_network(caps):
    """Delay lines run at SCHED_FIFO 10; the optional CPU ticker (one SCHED_FIFO 1 thread per
    CPU) runs while a host has a CPU quota when asked for; both are read back from the kernel
    and gone after the network."""
    import os

    s = spec("three_tier", {"links.mobile-edge.delay": "2ms"})
    with EmulatedNetwork(s, caps=caps) as net:
        assert net.applied()["cpu_tick"] is None and net.ticker is None     # off by default
    with EmulatedNetwork(s, caps=caps, cpu_tick_us=2000) as net:
        applied = net.applied()
        assert applied["cpu_tick"] == {"interval_us": 2000, "policy": "SCHED_FIFO", "priority": 1}
        assert len(net.ticker_info["tids"]) == len(os.sched_getaffinity(0))
        for tid in net.ticker_info["tids"]:
            assert os.sched_getscheduler(tid) == os.SCHED_FIFO
        delayed = [l for l in applied["links"] if l["link"] == "mobile-edge"]
        if caps["delay_mechanism"] == "nfqueue":
            assert all(l["delay_line_sched"] == f"SCHED_FIFO {DELAYLINE_RT_PRIORITY}" for l in delayed)
            assert os.sched_getscheduler(net.wires["mobile-edge"].delayline.pid) == os.SCHED_FIFO
        assert net.verify() == []
        pids = [net.ticker.pid] + ([net.wires["mobile-edge"].delayline.pid] if net.wires["mobile-edge"].delayline else [])
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
    unlimited = spec("three_tier", {f"hosts.{h}.cpus": "none" for h in ("mobile", "edge", "cloud")})
    with EmulatedNetwork(unlimited, caps=caps, cpu_tick_us=2000) as net:
        assert net.applied()["cpu_tick"] is None     # nothing to tick for
        net.set_host("edge", cpus=0.5)               # a quota set live starts it
        assert net.applied()["cpu_tick"]["policy"] == "SCHED_FIFO" and net.verify() == []


def test_memory_limit_kills_and_the_oom_is_detected(caps):
    s = spec("three_tier", {"hosts.mobile.memory": "128MiB"})
    with EmulatedNetwork(s, caps=caps) as net:
        assert net.oom_kills("mobile") == 0
        assert memory_enforced(net, "mobile") is True
        assert net.oom_kills("mobile") >= 1
        # a process inside the limit survives
        ok = net.run("mobile", [sys.executable, "-c", "b = b'1' * (32 << 20); print('ok')"])
        assert ok.returncode == 0 and "ok" in ok.stdout


def test_live_change_of_link_and_host_reads_back_and_takes_effect(caps):
    with EmulatedNetwork(spec("three_tier"), caps=caps) as net:
        net.set_link("mobile-edge", rate_bps=8_000_000)
        applied = {(r["link"], r["direction"]): r for r in net.applied()["links"]}
        assert applied[("mobile-edge", "mobile->edge")]["bandwidth_bps"] == 8_000_000
        goodput = shaped_goodputs(net, "mobile", "edge", 8_000_000, 2.0)
        assert max(goodput) / 8e6 >= 0.93 and all(r / 8e6 <= 1.02 for r in goodput), goodput
        if caps["delay_mechanism"] == "nfqueue":
            link = net.set_link("edge-mobile", direction="reverse", delay_ms=15.0)  # either name order works
            # 15 ms one way, plus the ping's frame on the 8 Mbit/s wire each way (0.2 ms in all)
            want = expected_rtt_ms(link.forward, link.reverse)
            assert 15.19 < want < 15.2
            assert abs(measure_rtt_ms(net, "mobile", "edge") - want) <= 0.5
            net.set_link("mobile-edge", delay_ms=0.0)
            assert measure_rtt_ms(net, "mobile", "edge") < 1.0
        net.set_host("edge", cpus=1.0, memory_bytes=256 << 20)
        assert net.cgroups["edge"].read_back().cpus == 1.0
        assert net.cgroups["edge"].read_back().memory_bytes == 256 << 20
        assert net.verify() == []


def test_live_change_errors_name_the_problem(caps):
    with EmulatedNetwork(spec("three_tier"), caps=caps) as net:
        with pytest.raises(EmulationError, match="unknown link 'mobile-cloud'; links: mobile-edge, edge-cloud"):
            net.set_link("mobile-cloud", rate_bps=1)
        with pytest.raises(EmulationError, match="jitter 5.0ms exceeds delay 1.0ms"):
            net.set_link("mobile-edge", delay_ms=1.0, jitter_ms=5.0)
        with pytest.raises(EmulationError, match="exceeds the 2 cores"):
            net.set_host("edge", cpus=64.0)
        with pytest.raises(EmulationError, match="unknown host setting"):
            net.set_host("edge", gpus=1)


def test_reconfigure_reaches_another_spec_of_the_same_shape_live(caps):
    """A sweep's next point: only what differs changes, each read back; a spec of another
    shape, or one this machine cannot hold, is refused before anything changes."""
    a = spec("three_tier", {"links.edge-cloud.bandwidth": "50Mbit"})
    b = spec("three_tier", {"links.edge-cloud.bandwidth": "5Mbit", "links.edge-cloud.delay": "10ms",
                            "hosts.edge.cpus": 0.75})
    with EmulatedNetwork(a, caps=caps) as net:
        mobile_qdiscs = net._read_direction("mobile", "edge")
        assert net.reconfigure(b) == ["link edge-cloud", "host edge"]
        applied = {(r["link"], r["direction"]): r for r in net.applied()["links"]}
        assert applied[("edge-cloud", "edge->cloud")]["bandwidth_bps"] == 5_000_000
        assert applied[("edge-cloud", "cloud->edge")]["delay_ms"] == 10.0
        assert net.cgroups["edge"].read_back().cpus == 0.75
        assert net._read_direction("mobile", "edge") == mobile_qdiscs      # untouched
        assert net.verify() == [] and net.spec == b
        if caps["delay_mechanism"] == "nfqueue":     # it takes effect (its precision: test_delayline)
            assert 20.0 <= measure_rtt_ms(net, "edge", "cloud") < 23.0
        assert net.reconfigure(b) == []                                    # nothing differs
        with pytest.raises(EmulationError, match="has other hosts or links than the running network"):
            net.reconfigure(spec("star:mobiles=3"))
        with pytest.raises(EmulationError, match="exceeds the 2 cores"):
            net.reconfigure(spec("three_tier", {"hosts.edge.cpus": 64.0}))
        assert net.spec == b and net.verify() == []


def test_two_networks_at_once_do_not_collide(caps):
    with EmulatedNetwork(spec("three_tier"), caps=caps) as a, EmulatedNetwork(spec("three_tier"), caps=caps) as b:
        assert a.run_id != b.run_id
        assert ping_ok(a, "mobile", "cloud") and ping_ok(b, "mobile", "cloud")
        assert a.verify() == [] and b.verify() == []


def test_exception_inside_the_network_still_removes_everything(caps):
    with pytest.raises(RuntimeError, match="boom"):
        with EmulatedNetwork(spec("three_tier"), caps=caps) as net:
            net.popen("edge", ["sleep", "60"])
            raise RuntimeError("boom")


def test_host_limits_above_the_machine_are_refused_before_anything_is_made(caps):
    with pytest.raises(EmulationError, match="host cloud: cpus 64.0 exceeds the 2 cores"):
        EmulatedNetwork(spec("three_tier", {"hosts.cloud.cpus": "64"}), caps=caps).start()
