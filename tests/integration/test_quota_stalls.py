"""A host's CPU-quota stalls while it receives are measured per frame (workloads.pacing.QuotaStalls
through the codec's BufferedReceiver), on a real cgroup: the quota's wait, not the link's."""
from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

from emulation import process
from emulation.network import EmulatedNetwork
from topologies import load_topology
from workloads.codec import Message, send_message

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RECEIVER = r"""
import json, os, signal, socket, sys, time
from workloads.pacing import QuotaStalls
from workloads.codec import BufferedReceiver, read_message
fd, busy, n = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
os.sched_setaffinity(0, {0})        # one CPU's share of the cgroup: the busy loop's runtime is the receiver's
child = os.fork() if busy else -1
if child == 0:                      # burns the host's quota while its parent waits for frames
    end = time.monotonic() + 60
    while time.monotonic() < end:
        pass
    os._exit(0)
sock = socket.socket(fileno=fd)
stalls = QuotaStalls()
reader = BufferedReceiver(sock, stalls=stalls)
print(json.dumps({"enabled": stalls.enabled, "path": stalls.path}), flush=True)
for _ in range(n):
    m = read_message(reader)
    print(json.dumps([m.stall_ns, m.recv_end_ns - m.sent_ns]), flush=True)
if child > 0:
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
"""


def _receive(net: EmulatedNetwork, busy: bool, n: int = 30) -> tuple[dict, list[tuple[float, float]]]:
    """``n`` frames sent from outside mobile's cgroup (0.25 cores, 8 ms period: a 2 ms quota)
    to a receiver inside it, with a busy loop beside it on its CPU or not, 31.3 ms apart (every
    phase of the period): (its QuotaStalls, [(stall ms, late ms)])."""
    ours, theirs = socket.socketpair()
    p = process.popen([sys.executable, "-c", RECEIVER, str(theirs.fileno()), "1" if busy else "0", str(n)],
                      netns_pid=None, cgroup_procs=net.cgroups["mobile"].procs_files(), run_id=net.run_id,
                      pass_fds=(theirs.fileno(),), stdout=subprocess.PIPE, text=True)
    theirs.close()
    try:
        head = json.loads(p.stdout.readline())
        time.sleep(0.1)     # the quota its start-up spent (imports) comes back
        for i in range(n):
            send_message(ours, Message("request", i, {"x": np.zeros(256, np.float32)}))
            time.sleep(0.0313)   # frames do not queue behind each other, and land at every phase of the period
        rows = [json.loads(p.stdout.readline()) for _ in range(n)]
        p.wait(timeout=30)
    finally:
        ours.close()
        if p.poll() is None:
            p.kill()
            p.wait()
    return head, [(s / 1e6, late / 1e6) for s, late in rows]


def test_a_receiver_waiting_for_its_quota_is_measured_and_an_idle_one_is_not(caps):
    with EmulatedNetwork(load_topology("three_tier", cores=2.0, memory_bytes=24 << 30), caps=caps) as net:
        assert net.cgroups["mobile"].read_back().cpu_period_us == 8000
        idle_head, idle = _receive(net, busy=False)
        head, busy = _receive(net, busy=True)
    assert head["enabled"] and idle_head["enabled"] and head["path"].endswith("/mobile/cpu.stat"), head
    # alone in its cgroup, the receiver is never throttled: no wait counts as the quota's
    assert all(s == 0 for s, _ in idle), idle
    # beside a busy loop that spends the quota, most frames arrive while the cgroup is
    # throttled (6 ms of every 8) and are read when the next period begins. The stall measured
    # is that lateness, never more
    late = [late for _, late in busy]
    assert statistics.median(late) > 1.0, busy
    assert all(s <= late + 0.05 for s, late in busy), busy
    base = statistics.median([x for _, x in idle])
    assert sum(s for s, _ in busy) >= 0.8 * sum(max(0.0, x - base) for x in late), busy
