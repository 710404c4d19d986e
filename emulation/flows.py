"""Timed traffic across a running network: what arrived at the receiver, and when, on the
monotonic clock every host of the machine shares (so it lines up with a trace's replay).

- :func:`flow` sends one flow from ``src`` to ``dst`` for a while and returns every receive
  at ``dst`` as (monotonic ns, payload bytes): a UDP flood at a fixed rate (the link's
  capacity then shows whatever TCP would do), or one TCP connection sending as fast as it
  may (with the machine's or a chosen congestion control);
- :func:`echoes` sends a small UDP probe every few milliseconds and returns each one's
  (sent ns, round-trip ns): the round-trip time over time.

The programs run in the hosts' namespaces but outside their CPU quotas (they measure the
link, as :mod:`emulation.calibrate` does), and write their stamps to a file the caller reads.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import EmulationError

PORT = 5301
UDP_PAYLOAD = 1472          # a full 1500-byte IP packet: 1514 bytes on the wire
UDP_WIRE = UDP_PAYLOAD + 42

RECEIVER = r"""
import array, socket, sys, time
proto, addr, port, seconds, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
stamps, sizes = array.array("q"), array.array("i")
buf = bytearray(1 << 18)
if proto == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((addr, port))
    conn = s
else:
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(1)
    ls.settimeout(seconds)          # a sender that never comes: give up, do not hang
print("ready", flush=True)
if proto == "tcp":
    conn, _ = ls.accept()
end = time.monotonic_ns() + int(seconds * 1e9)
conn.settimeout(0.2)
recv, now = conn.recv_into, time.monotonic_ns
while now() < end:
    try:
        n = recv(buf)
    except socket.timeout:
        continue
    if not n:
        break
    stamps.append(now())
    sizes.append(n)
with open(out, "wb") as f:
    f.write(len(stamps).to_bytes(8, "little"))
    stamps.tofile(f)
    sizes.tofile(f)
"""

SENDER = r"""
import socket, sys, time
proto, addr, port, seconds, rate, cc = (sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]),
                                        float(sys.argv[5]), sys.argv[6])
end = time.monotonic() + seconds
if proto == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    payload = b"x" * %(payload)d
    per_s = rate / 8 / %(wire)d
    sent, t0 = 0, time.monotonic()
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - t0) * per_s)
        while sent < due:
            try:
                s.sendto(payload, (addr, port))
            except OSError:
                pass
            sent += 1
        time.sleep(0.0005)
else:
    s = socket.create_connection((addr, port), timeout=10)
    if cc != "-":
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    chunk = b"x" * 65536
    while time.monotonic() < end:
        s.sendall(chunk)
    s.close()
""" % {"payload": UDP_PAYLOAD, "wire": UDP_WIRE}

ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(64)
    s.sendto(data, peer)
"""

PINGER = r"""
import array, socket, sys, time
addr, port, seconds, every, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0)
sent, rtt = array.array("q"), array.array("q")
end = time.monotonic_ns() + int(seconds * 1e9)
nxt = time.monotonic_ns()
pending = {}
import select
while True:
    now = time.monotonic_ns()
    if now >= end:
        break
    if now >= nxt:
        k = len(sent)
        sent.append(now)
        rtt.append(-1)
        s.sendto(k.to_bytes(8, "little") + bytes(56), (addr, port))
        nxt += int(every * 1e9)
    r, _, _ = select.select([s], [], [], max(0.0, (nxt - time.monotonic_ns()) / 1e9))
    if r:
        data = s.recv(64)
        back = time.monotonic_ns()
        k = int.from_bytes(data[:8], "little")
        if 0 <= k < len(rtt):
            rtt[k] = back - sent[k]
with open(out, "wb") as f:
    f.write(len(sent).to_bytes(8, "little"))
    sent.tofile(f)
    rtt.tofile(f)
"""


def _read_pairs(path: Path, second: str):
    """Two arrays of equal length from a stamp file: int64 stamps, then ``second``'s type."""
    import numpy as np

    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    first = np.frombuffer(data, dtype=np.int64, count=n, offset=8)
    return first, np.frombuffer(data, dtype=np.dtype(second), count=n, offset=8 + 8 * n)


def _ready(p: subprocess.Popen, what: str) -> None:
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        err = p.communicate()[1]
        raise EmulationError(f"{what} did not start: {(err or line).strip()[-300:]}")


def flow(net, src: str, dst: str, seconds: float, proto: str = "udp", rate_bps: float | None = None,
         congestion: str | None = None, port: int = PORT):
    """One flow ``src`` -> ``dst`` for ``seconds``; returns (receive stamps in monotonic ns,
    payload bytes each) as numpy arrays. ``proto`` "udp": a flood of full-size datagrams at
    ``rate_bps`` on the wire; "tcp": one connection sending all it can (``congestion``: its
    congestion control, default the machine's)."""
    if proto not in ("udp", "tcp"):
        raise EmulationError(f"proto must be udp or tcp, not {proto!r}")
    if proto == "udp" and not rate_bps:
        raise EmulationError("a UDP flow needs its rate")
    with tempfile.TemporaryDirectory(prefix="tb-flow-") as tmp:
        out = Path(tmp) / "arrivals.bin"
        rx = net.popen(dst, [sys.executable, "-c", RECEIVER, proto, net.address(dst), str(port), f"{seconds + 1:g}",
                             str(out)], limited=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _ready(rx, f"receiver on {dst}")
            tx = net.run(src, [sys.executable, "-c", SENDER, proto, net.address(dst), str(port), f"{seconds:g}",
                               str(rate_bps or 0), congestion or "-"], timeout=seconds + 30, limited=False)
            if tx.returncode != 0:
                raise EmulationError(f"sender on {src} failed: {tx.stderr.strip()[-300:]}")
            try:
                _, err = rx.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                raise EmulationError(f"receiver on {dst} did not end 30 s after its sender") from None
            if rx.returncode != 0:
                raise EmulationError(f"receiver on {dst} failed: {err.strip()[-300:]}")
        finally:
            if rx.poll() is None:
                rx.kill()
                rx.communicate()
        return _read_pairs(out, "int32")


def echoes(net, src: str, dst: str, seconds: float, every_s: float = 0.005, port: int = PORT + 1):
    """A 64-byte UDP probe from ``src`` to an echo on ``dst`` every ``every_s`` for ``seconds``;
    returns (send stamps in monotonic ns, round-trip ns; -1 where no answer came)."""
    with tempfile.TemporaryDirectory(prefix="tb-echo-") as tmp:
        out = Path(tmp) / "echoes.bin"
        echo = net.popen(dst, [sys.executable, "-c", ECHO, net.address(dst), str(port)], limited=False,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _ready(echo, f"echo on {dst}")
            res = net.run(src, [sys.executable, "-c", PINGER, net.address(dst), str(port), f"{seconds:g}",
                                f"{every_s:g}", str(out)], timeout=seconds + 30, limited=False)
            if res.returncode != 0:
                raise EmulationError(f"prober on {src} failed: {res.stderr.strip()[-300:]}")
        finally:
            echo.kill()
            echo.communicate()
        return _read_pairs(out, "int64")

