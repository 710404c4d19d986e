"""Unit tests of the delay line (no root): nfnetlink_queue message layout, parsing, the FIFO
delay schedule, and the JSON control protocol."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from emulation import nfqueue as nfq  # noqa: E402
from emulation.delayline import DelayLine, DelaySchedule, build_parser, parse_queue_spec  # noqa: E402


def nlhdr(buf: bytes, off: int = 0):
    return struct.unpack_from("=IHHII", buf, off)


# --- message building ----------------------------------------------------------------------
def test_attr_length_and_padding():
    a = nfq.build_attr(7, b"\x01\x02\x03\x04\x05")
    assert len(a) == 12  # 4 header + 5 payload, padded to 4
    assert struct.unpack_from("=HH", a) == (9, 7)  # nla_len excludes padding
    assert a[4:9] == b"\x01\x02\x03\x04\x05" and a[9:] == b"\0\0\0"
    assert nfq.build_attr(1, b"abcd") == struct.pack("=HH", 8, 1) + b"abcd"
    assert nfq.build_attr(1, b"") == struct.pack("=HH", 4, 1)


def test_bind_message_layout():
    m = nfq.build_config_message(0x0102, cmd=nfq.NFQNL_CFG_CMD_BIND, seq=42)
    assert len(m) == 16 + 4 + 8
    length, mtype, flags, seq, pid = nlhdr(m)
    assert length == len(m)
    assert mtype == (3 << 8) | 2 == 0x0302  # NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG
    assert flags == nfq.NLM_F_REQUEST | nfq.NLM_F_ACK
    assert (seq, pid) == (42, 0)
    # nfgenmsg: family AF_UNSPEC, version 0, res_id = queue in network byte order
    assert m[16:20] == bytes([0, 0, 0x01, 0x02])
    assert struct.unpack_from("=HH", m, 20) == (8, nfq.NFQA_CFG_CMD)
    assert m[24:28] == bytes([nfq.NFQNL_CFG_CMD_BIND, 0, 0, 0])  # command, pad, pf (be16) = 0


def test_params_maxlen_flags_layout():
    m = nfq.build_config_message(5, copy_mode=nfq.NFQNL_COPY_PACKET, copy_range=0x01020304,
                                 maxlen=65536, flags=nfq.NFQA_CFG_F_GSO)
    assert nlhdr(m)[0] == len(m) == 16 + 4 + 12 + 8 + 8 + 8
    off = 20
    # NFQA_CFG_PARAMS: packed struct of 5 bytes -> nla_len 9, padded to 12
    assert struct.unpack_from("=HH", m, off) == (9, nfq.NFQA_CFG_PARAMS)
    assert m[off + 4:off + 9] == b"\x01\x02\x03\x04" + bytes([nfq.NFQNL_COPY_PACKET])
    assert m[off + 9:off + 12] == b"\0\0\0"
    off += 12
    assert struct.unpack_from("=HH", m, off) == (8, nfq.NFQA_CFG_QUEUE_MAXLEN)
    assert m[off + 4:off + 8] == b"\x00\x01\x00\x00"  # be32 65536
    off += 8
    assert struct.unpack_from("=HH", m, off) == (8, nfq.NFQA_CFG_MASK)
    assert m[off + 4:off + 8] == b"\x00\x00\x00\x04"
    off += 8
    assert struct.unpack_from("=HH", m, off) == (8, nfq.NFQA_CFG_FLAGS)
    assert m[off + 4:off + 8] == b"\x00\x00\x00\x04"
    assert all(len(x) % 4 == 0 for x in (m,))


def test_meta_copy_and_explicit_mask():
    m = nfq.build_config_message(0, copy_mode=nfq.NFQNL_COPY_META, flags=0, mask=nfq.NFQA_CFG_F_GSO, ack=False)
    assert nlhdr(m)[2] == nfq.NLM_F_REQUEST
    assert m[24:29] == b"\0\0\0\0" + bytes([nfq.NFQNL_COPY_META])
    assert m[36:40] == b"\0\0\0\x04" and m[44:48] == b"\0\0\0\0"  # mask, then flags


def test_verdict_batch_layout():
    m = nfq.build_verdict_batch(1, 0xDEADBEEF, nfq.NF_ACCEPT)
    assert len(m) == 32
    length, mtype, flags, _seq, _pid = nlhdr(m)
    assert (length, mtype, flags) == (32, 0x0303, nfq.NLM_F_REQUEST)  # no ACK: one-way
    assert m[16:20] == b"\0\0\0\x01"
    assert struct.unpack_from("=HH", m, 20) == (12, nfq.NFQA_VERDICT_HDR)
    assert m[24:32] == b"\0\0\0\x01\xde\xad\xbe\xef"  # verdict be32, id be32
    single = nfq.build_verdict(1, 7, nfq.NF_DROP)
    assert nlhdr(single)[1] == 0x0301 and single[24:32] == b"\0\0\0\0\0\0\0\x07"


def test_queue_number_range_checked():
    with pytest.raises(ValueError):
        nfq.build_verdict_batch(70000, 1)
    with pytest.raises(ValueError):
        nfq.build_config_message(-1, cmd=nfq.NFQNL_CFG_CMD_BIND)


# --- parsing -------------------------------------------------------------------------------
def kernel_packet_msg(queue: int, packet_id: int, *, hdr_first: bool = True, seq: int = 0) -> bytes:
    """A PACKET message the way nfqnl_build_packet_message lays it out (COPY_META)."""
    attrs = [
        nfq.build_attr(nfq.NFQA_PACKET_HDR, struct.pack("!IHB", packet_id, 0x0800, 2)),  # 7 bytes
        nfq.build_attr(nfq.NFQA_IFINDEX_INDEV, struct.pack("!I", 3)),
        nfq.build_attr(nfq.NFQA_IFINDEX_OUTDEV, struct.pack("!I", 4)),
        nfq.build_attr(nfq.NFQA_SKB_INFO, struct.pack("!I", nfq.NFQA_SKB_GSO)),
        nfq.build_attr(nfq.NFQA_CAP_LEN, struct.pack("!I", 65226)),
    ]
    if not hdr_first:
        attrs = attrs[1:] + attrs[:1]
    body = struct.pack("!BBH", socket.AF_INET, 0, queue) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), nfq.MSG_PACKET, 0, seq, 0) + body


def nl_error(err: int, seq: int) -> bytes:
    body = struct.pack("=i", -err) + struct.pack("=IHHII", 28, nfq.MSG_CONFIG, 5, seq, 0)
    return struct.pack("=IHHII", 16 + len(body), nfq.NLMSG_ERROR, 0, seq, 0) + body


def test_parse_packet_message():
    m = kernel_packet_msg(0x0102, 0x01020304)
    assert len(m) % 4 == 0
    [p] = nfq.parse_messages(m)
    assert isinstance(p, nfq.Packet)
    assert (p.queue, p.packet_id, p.hw_protocol, p.hook) == (0x0102, 0x01020304, 0x0800, 2)
    assert p.attrs[nfq.NFQA_IFINDEX_INDEV] == b"\0\0\0\x03"
    assert struct.unpack("!I", p.attrs[nfq.NFQA_SKB_INFO])[0] & nfq.NFQA_SKB_GSO
    assert len(p.attrs[nfq.NFQA_PACKET_HDR]) == 7  # padding stripped


def test_parse_several_messages_errors_and_truncation():
    buf = kernel_packet_msg(1, 10) + nl_error(0, 5) + kernel_packet_msg(1, 11, hdr_first=False) + nl_error(1, 6)
    items = nfq.parse_messages(buf)
    assert [type(i).__name__ for i in items] == ["Packet", "NlError", "Packet", "NlError"]
    assert items[1] == nfq.NlError(0, 5) and items[3] == nfq.NlError(1, 6)  # ACK, EPERM
    assert items[2].packet_id == 11
    # a truncated trailing message is ignored, as is data after an explicit length
    assert len(nfq.parse_messages(buf[:-3])) == 3
    assert len(nfq.parse_messages(bytearray(buf), len(kernel_packet_msg(1, 10)))) == 1
    assert nfq.parse_messages(b"") == [] and nfq.parse_messages(b"\x03\0\0\0" * 3) == []


def test_scan_packets_matches_parse():
    buf = kernel_packet_msg(2, 1) + kernel_packet_msg(2, 2, hdr_first=False) + nl_error(22, 9) + nl_error(0, 10)
    ids, errs = [], []
    nfq.scan_packets(buf, len(buf), ids.append, errs.append)
    assert ids == [1, 2] and errs == [22]


def test_single_packet_fast_path_takes_only_a_lone_packet_message():
    one = bytearray(kernel_packet_msg(2, 0xA1B2C3D4))
    assert nfq.single_packet_id(one, len(one)) == 0xA1B2C3D4
    assert nfq.packet_fields(one, len(one)) == (None, 65226, 0, 0)   # CAP_LEN, no stamp, no payload
    two = bytearray(kernel_packet_msg(2, 1) + kernel_packet_msg(2, 2))
    for buf, n in ((two, len(two)), (one, len(one) - 4)):           # several messages; a short read
        assert nfq.single_packet_id(buf, n) is None
    late_hdr = bytearray(kernel_packet_msg(2, 3, hdr_first=False))
    error = bytearray(nl_error(22, 9))
    assert nfq.single_packet_id(late_hdr, len(late_hdr)) is None and nfq.single_packet_id(error, len(error)) is None


def test_proc_stats_parser(tmp_path):
    f = tmp_path / "nfnetlink_queue"
    f.write_text("    0  12345     3 1 65531     7     9     1234  1\n    1 -4000     0 2  64 0 0 0  1\n")
    st = nfq.read_proc_stats(str(f))
    assert st[0] == {"portid": 12345, "kernel_queued": 3, "kernel_queue_dropped": 7,
                     "kernel_user_dropped": 9, "id_sequence": 1234}
    assert st[1]["portid"] == -4000
    assert nfq.read_proc_stats(str(tmp_path / "missing")) == {}


# --- schedule ------------------------------------------------------------------------------
def test_schedule_without_jitter():
    s = DelaySchedule(10.0)
    assert s.push(1.0, "a") == pytest.approx(1.010)
    assert s.push(1.002, "b") == pytest.approx(1.012)
    assert s.next_due() == pytest.approx(1.010) and len(s) == 2
    assert s.pop_due(1.0099) == []
    assert s.pop_due(1.011) == ["a"]
    assert s.pop_due(5.0) == ["b"] and s.next_due() is None and len(s) == 0


def test_schedule_fifo_with_jitter():
    rng = random.Random(1)
    s = DelaySchedule(5.0, 4.0, random.Random(2))
    t, prev, rel = 0.0, -1.0, []
    for i in range(5000):
        t += rng.expovariate(1000.0)  # ~1 ms apart: jitter would reorder without the FIFO rule
        r = s.push(t, i)
        assert r >= prev  # never overtakes the previous packet
        assert r >= t + 0.001 - 1e-12  # never less than delay - jitter
        assert r <= max(t + 0.009, prev) + 1e-12  # never more than delay + jitter, or FIFO wait
        prev = r
        rel.append(r)
    out = []
    for now in [x / 1000 for x in range(0, int(t * 1000) + 20)]:
        out += s.pop_due(now)
    assert out == list(range(5000))  # released in arrival order


def test_jitter_uniform_and_clamped():
    s = DelaySchedule(10.0, 5.0, random.Random(3))
    samples = [s.push(i * 1.0, i) - i * 1.0 for i in range(4000)]  # sparse: no FIFO coupling
    assert min(samples) >= 0.005 and max(samples) <= 0.015
    assert sum(samples) / len(samples) == pytest.approx(0.010, abs=0.0003)
    assert min(samples) < 0.0055 and max(samples) > 0.0145  # covers the whole range
    c = DelaySchedule(1.0, 5.0, random.Random(4))  # jitter > delay: clamped at zero
    d = [c.push(i * 1.0) - i * 1.0 for i in range(2000)]
    assert min(d) == 0.0 and max(d) <= 0.006 and sum(x == 0.0 for x in d) > 500


def test_seeded_schedule_is_reproducible():
    a = DelaySchedule(10, 3, random.Random(9))
    b = DelaySchedule(10, 3, random.Random(9))
    assert [a.push(i * 0.1) for i in range(50)] == [b.push(i * 0.1) for i in range(50)]


def test_set_affects_new_packets_only_and_keeps_fifo():
    s = DelaySchedule(100.0)
    assert s.push(0.0, "old") == pytest.approx(0.1)
    s.set(10.0, 0.0)
    assert s.push(0.001, "new") == pytest.approx(0.1)  # would be 0.011, but may not overtake
    assert s.push(0.2, "later") == pytest.approx(0.21)
    assert s.pop_due(0.1) == ["old", "new"]
    assert s.pop_all() == ["later"]
    with pytest.raises(ValueError):
        s.set(-1)
    with pytest.raises(ValueError):
        s.set(float("nan"))


# --- control protocol ----------------------------------------------------------------------
@pytest.fixture
def dl():
    return DelayLine({0: (10.0, 0.0), 3: (5.0, 1.0)}, seed=1)


def test_set_and_stats(dl):
    r = dl.handle_line('{"op": "set", "queue": 0, "delay_ms": 25, "jitter_ms": 2.5}')
    none = {"rate_bps": None, "queue_bytes": None}
    assert r == {"ok": True, "queue": 0, "delay_ms": 25.0, "jitter_ms": 2.5, **none}
    assert dl.schedules[0].delay_ms == 25.0
    r = dl.handle_line(b'{"op": "set", "queue": 3, "delay_ms": 7}\n')  # jitter unchanged
    assert r == {"ok": True, "queue": 3, "delay_ms": 7.0, "jitter_ms": 1.0, **none}
    r = dl.handle_line('{"op": "set", "queue": 3, "rate_bps": 1000000, "queue_bytes": 15140}')
    assert r == {"ok": True, "queue": 3, "delay_ms": 7.0, "jitter_ms": 1.0, "rate_bps": 1_000_000, "queue_bytes": 15140}
    assert dl.handle_line('{"op": "set", "queue": 3, "rate_bps": null}')["rate_bps"] is None
    assert dl.schedules[3].queue_bytes == 15140  # unchanged when not given
    st = dl.handle_line('{"op":"stats"}')
    assert st["ok"] is True and set(st["stats"]) == {"0", "3"}
    assert st["stats"]["0"] == {"packets": 0, "held": 0, "released": 0, "dropped_enobufs": 0, "dropped_queue": 0,
                                "verdict_errors": 0, "delay_ms": 25.0, "jitter_ms": 2.5, **none, "bytes": 0,
                                "unsized": 0, "release_batches": 0, "late_us_mean": None, "late_us_max": None}
    dl.schedules[3].push(0.0, 1)
    assert dl.handle_line('{"op":"stats"}')["stats"]["3"]["held"] == 1
    json.dumps(st)  # replies are JSON-serialisable


@pytest.mark.parametrize("line", [
    "", "not json", "[1, 2]", "42", '"set"', '{"op": "nope"}', '{"queue": 0}',
    '{"op": "set", "queue": 9, "delay_ms": 1}',            # unknown queue
    '{"op": "set", "queue": "zero", "delay_ms": 1}',
    '{"op": "set", "queue": true, "delay_ms": 1}',
    '{"op": "set", "delay_ms": 1}',
    '{"op": "set", "queue": 0, "delay_ms": -1}',
    '{"op": "set", "queue": 0, "delay_ms": NaN}',
    '{"op": "set", "queue": 0, "delay_ms": Infinity}',
    '{"op": "set", "queue": 0, "delay_ms": "10"}',
    '{"op": "set", "queue": 0, "delay_ms": true}',
    '{"op": "set", "queue": 0, "jitter_ms": -0.5}',
    '{"op": "set", "queue": 0, "delay_ms": 1e12}',
    '{"op": "set", "queue": 0, "delay": 5}',
    b"\xff\xfe\x00",
])
def test_bad_control_lines(dl, line):
    r = dl.handle_line(line)
    assert r["ok"] is False and isinstance(r["error"], str) and r["error"]
    json.dumps(r)
    assert dl.schedules[0].delay_ms == 10.0 and not dl.stopping  # nothing changed
    assert dl.schedules[0].rate_bps is None and dl.schedules[0].queue_bytes is None


def test_quit_and_queue_as_string(dl):
    assert dl.handle_line('{"op": "set", "queue": "3", "delay_ms": 0}')["ok"] is True
    assert dl.handle_line('{"op": "quit"}') == {"ok": True} and dl.stopping


def test_queue_specs_and_parser():
    assert parse_queue_spec("0:10:2.5") == (0, 10.0, 2.5, None, None)
    assert parse_queue_spec("7:3") == (7, 3.0, 0.0, None, None)
    assert parse_queue_spec("65535") == (65535, 0.0, 0.0, None, None)
    assert parse_queue_spec("1:0:0:1000000:15140") == (1, 0.0, 0.0, 1_000_000, 15140)
    assert parse_queue_spec("1:5::2000000") == (1, 5.0, 0.0, 2_000_000, None)
    for bad in ("x:1", "70000:1", "1:-5", "1:2:3:4:5:6", "1:nan", "1:2:3:0", "1:2:3:1.5e6", "1:2:3:100:-4"):
        with pytest.raises(Exception):
            parse_queue_spec(bad)
    a = build_parser().parse_args(["--queue", "0:10:1", "--queue", "1:20", "--maxlen", "100", "--seed", "3"])
    assert a.queue == [(0, 10.0, 1.0, None, None), (1, 20.0, 0.0, None, None)] and a.maxlen == 100 and a.seed == 3
    assert a.mtu == 1500
    with pytest.raises(ValueError):
        DelayLine({})


def test_cli_rejects_bad_arguments():
    for argv in (["--queue", "x"], [], ["--queue", "0:1", "--queue", "0:2"], ["--queue", "0:1", "--maxlen", "0"],
                 ["--queue", "0:1", "--mtu", "20"]):
        p = subprocess.run([sys.executable, "-m", "emulation.delayline", *argv], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 2, (argv, p.stderr)


def test_imports_only_the_standard_library():
    code = ("import sys, json; before = set(sys.modules); import emulation.delayline; "
            "print(json.dumps({m: getattr(sys.modules[m], '__file__', None) for m in set(sys.modules) - before}))")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    mods = json.loads(p.stdout)
    stdlib = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
    foreign = {m: f for m, f in mods.items()
               if f and not f.startswith(stdlib) and not m.startswith("emulation")}
    assert foreign == {}


# --- the event loop, without netlink (no root needed) ---------------------------------------
LOOP = ("import json, os, sys; from emulation.delayline import DelayLine; "
        "dl = DelayLine({0: (10, 0), 1: (0, 0)}); "
        "os.write(1, b'{\"ready\": true}\\n'); dl.run(); dl.close(); sys.exit(0)")


class LoopProc:
    def __init__(self):
        self.p = subprocess.Popen([sys.executable, "-c", LOOP], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buf = b""
        assert self.read() == {"ready": True}

    def read(self, timeout=10.0):
        fd = self.p.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([fd], [], [], left)[0], "no reply"
            chunk = os.read(fd, 4096)
            assert chunk, self.p.stderr.read()
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def send(self, raw: bytes):
        self.p.stdin.write(raw)
        self.p.stdin.flush()

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            try:
                f.close()
            except OSError:
                pass


def test_event_loop_control_and_eof_exit():
    lp = LoopProc()
    try:
        # split writes, several lines in one write, blank lines, a bad line
        lp.send(b'{"op": "set", "queue": 0, ')
        time.sleep(0.05)
        lp.send(b'"delay_ms": 3}\n\n{"op": "stats"}\nbogus\n')
        assert lp.read() == {"ok": True, "queue": 0, "delay_ms": 3.0, "jitter_ms": 0.0, "rate_bps": None,
                             "queue_bytes": None}
        st = lp.read()
        assert st["ok"] and st["stats"]["0"]["delay_ms"] == 3.0
        assert lp.read()["ok"] is False
        assert lp.p.poll() is None  # still running after a bad line
        lp.send(b'{"op": "stats"}')  # no newline: handled at EOF
        lp.p.stdin.close()
        assert lp.read()["ok"] is True
        assert lp.p.wait(timeout=5) == 0
    finally:
        lp.close()


@pytest.mark.parametrize("how", ["sigterm", "sigint", "quit"])
def test_event_loop_exits_zero_on_signal_or_quit(how):
    lp = LoopProc()
    try:
        assert lp.send(b'{"op": "stats"}\n') is None and lp.read()["ok"]
        if how == "quit":
            lp.send(b'{"op": "quit"}\n')
            assert lp.read() == {"ok": True}
        else:
            lp.p.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
        assert lp.p.wait(timeout=5) == 0
    finally:
        lp.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the unprivileged failure path")
def test_unprivileged_start_reports_not_ready():
    p = subprocess.run([sys.executable, "-m", "emulation.delayline", "--queue", "0:1"], cwd=REPO_ROOT,
                       input="", capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    reply = json.loads(p.stdout.splitlines()[0])
    assert reply["ready"] is False and "nfqueue 0" in reply["error"]


def _packet_message(stamp: tuple[int, int] | None = None, cap_len: int | None = None,
                    payload: bytes | None = None) -> bytearray:
    attrs = nfq.build_attr(nfq.NFQA_PACKET_HDR, struct.pack(">IHB", 7, 0x0800, 2))
    if stamp is not None:
        attrs += nfq.build_attr(nfq.NFQA_TIMESTAMP, struct.pack(">QQ", *stamp))
    if cap_len is not None:
        attrs += nfq.build_attr(nfq.NFQA_CAP_LEN, struct.pack(">I", cap_len))
    if payload is not None:
        attrs += nfq.build_attr(nfq.NFQA_PAYLOAD, payload)
    body = struct.pack("=BBH", 2, 0, 0) + attrs
    return bytearray(struct.pack("=IHHII", 16 + len(body), nfq.MSG_PACKET, 0, 0, 0) + body)


def _ipv4_tcp_head(tcp_header: int = 32) -> bytes:
    ip = bytes([0x45, 0]) + b"\0" * 7 + bytes([6]) + b"\0" * 10  # version 4, ihl 5, protocol TCP
    tcp = b"\0" * 12 + bytes([(tcp_header // 4) << 4]) + b"\0" * (tcp_header - 13)
    return ip + tcp


def test_arrival_age_comes_from_the_kernels_packet_stamp():
    from emulation import delayline as dl

    buf = _packet_message((1000, 250_000))
    assert dl.packet_info(buf, len(buf), 1000.25008)[0] == pytest.approx(80e-6, abs=1e-7)
    unstamped = _packet_message()
    assert dl.packet_info(unstamped, len(unstamped), 1000.3)[0] == 0.0
    # a stamp from the future or from long ago is a clock step, not a wake-up: ignored
    assert dl.packet_info(buf, len(buf), 1000.0)[0] == 0.0
    assert dl.packet_info(buf, len(buf), 1001.0)[0] == 0.0


def test_packet_length_is_the_kernels_cap_len_plus_ethernet():
    from emulation import delayline as dl

    head = _ipv4_tcp_head()
    buf = _packet_message((1000, 0), cap_len=1500, payload=head)  # a full frame, copy truncated
    assert dl.packet_info(buf, len(buf), 1000.0) == (0.0, 1514)
    small = _packet_message(payload=head + b"x" * 20)  # shorter than the copy range: no CAP_LEN
    assert dl.packet_info(small, len(small), 0.0)[1] == len(head) + 20 + 14
    assert dl.packet_info(_packet_message(), 28, 0.0)[1] is None  # nothing says how long it is


def test_gso_super_packet_counts_every_segments_headers():
    from emulation import delayline as dl

    head = _ipv4_tcp_head(32)  # 20 + 32 (timestamps): 1448 payload bytes per 1500-byte segment
    # 10 segments of 1448 bytes, one set of headers: the wire carries 10 frames of 1514 bytes
    assert dl.wire_bytes(head, 0, len(head), 52 + 10 * 1448) == 10 * 1514
    assert dl.wire_bytes(head, 0, len(head), 52 + 10 * 1448 + 1) == 10 * 1514 + 1 + 52 + 14
    assert dl.wire_bytes(head, 0, len(head), 52 + 1448, mtu=9000) == 1514  # fits a jumbo frame
    udp = bytearray(head)
    udp[9] = 17
    assert dl.wire_bytes(udp, 0, len(udp), 3000) == 3014  # no TCP header: one frame (the tbf backs it)
    v6 = bytes([0x60, 0, 0, 0, 0, 0, 6, 64]) + b"\0" * 32 + head[20:]
    assert dl.wire_bytes(v6, 0, len(v6), 72 + 2 * 1428) == 2 * 1514


def test_serialization_at_the_rate_then_delay():
    s = DelaySchedule(10.0, rate_bps=1_000_000)
    # three 1514-byte frames at once on a 1 Mbit/s link: 12.112 ms each, one after the other
    times = [s.push(0.0, i, 1514) for i in range(3)]
    assert times == pytest.approx([0.012112 + 0.010, 0.024224 + 0.010, 0.036336 + 0.010])
    # a message of 4.5 kB takes its 36 ms however it is cut, not one frame's time
    t = DelaySchedule(0.0, rate_bps=1_000_000)
    assert max(t.push(1.0, i, n) for i, n in enumerate((1514, 1514, 1514, 58))) == pytest.approx(1.0 + 4600 * 8 / 1e6)
    # an idle transmitter starts at the arrival
    assert t.push(5.0, "late", 125) == pytest.approx(5.001)


def test_serialization_queue_drops_tail_beyond_its_bytes():
    s = DelaySchedule(0.0, rate_bps=8_000_000, queue_bytes=3000)  # 1 byte per us
    assert s.push(0.0, "a", 1500) == pytest.approx(0.0015)
    assert s.push(0.0, "b", 1500) == pytest.approx(0.0030)  # 1500 waiting + 1500 = 3000: fits
    assert s.push(0.0, "c", 1500) is None                    # 4500 > 3000: dropped
    assert len(s) == 2
    assert s.push(0.0015, "d", 1500) == pytest.approx(0.0045)  # "a" has left: room again
    s.set_rate(None)
    assert s.push(0.0016, "e", 1500) == pytest.approx(0.0045)  # no rate: delay only, still FIFO


def test_a_new_rate_applies_to_the_packets_still_waiting_for_the_transmitter():
    """As on a real link, a rate change re-times what is queued: the packet being sent finishes
    its remaining bytes at the new rate, those behind it follow at the new rate; a packet
    already sent keeps its release (it is propagating)."""
    s = DelaySchedule(10.0, rate_bps=8_000_000)           # 1 byte per us
    assert [s.push(0.0, k, 1000) for k in "abc"] == pytest.approx([0.011, 0.012, 0.013])
    s.set_rate(800_000, now=0.0015)                        # 0.1 byte per us, halfway through "b"
    assert [round(entry[0], 9) for entry in s._q] == pytest.approx([0.011, 0.0165, 0.0265])
    assert s.push(0.002, "d", 1000) == pytest.approx(0.0365)   # behind "c", at the new rate
    assert s.pop_due(0.02) == ["a", "b"]
    s.set_rate(8_000_000, now=0.02)        # faster again: "c" is sent (propagating), "d" has 650 bytes left
    assert [round(entry[0], 9) for entry in s._q] == pytest.approx([0.0265, 0.02 + 0.00065 + 0.010])
    assert s.push(0.02, "e", 1000) == pytest.approx(0.02 + 0.00065 + 0.001 + 0.010)
    assert s.pop_all() == ["c", "d", "e"]


def test_retiming_keeps_each_delay_sample_and_the_fifo_order():
    s = DelaySchedule(5.0, 4.0, random.Random(7), rate_bps=1_000_000)
    for k in range(40):
        s.push(k * 0.0005, k, 1514)                        # arrivals faster than the link: a queue builds
    delays = {e[1]: e[5] for e in s._q}
    s.set_rate(10_000_000, now=0.01)
    entries = list(s._q)
    assert {e[1]: e[5] for e in entries} == delays
    assert [e[1] for e in entries] == list(range(40))
    assert all(a[0] <= b[0] for a, b in zip(entries, entries[1:]))
    assert all(e[0] >= e[4] + e[5] - 1e-12 for e in entries)   # released after its serialization and delay
    assert entries[-1][4] == pytest.approx(0.01 + (40 * 1514 - 0.01 * 125_000) * 8 / 10e6, rel=0.05)
    s2 = DelaySchedule(5.0, rate_bps=1_000_000)
    times = [s2.push(0.0, k, 1514) for k in range(3)]
    s2.set_rate(2_000_000)                                  # no ``now``: scheduled packets keep their times
    assert [e[0] for e in s2._q] == times


def test_the_set_op_retimes_what_the_queue_holds():
    line = DelayLine({0: (0.0, 0.0, 1_000_000, None)})
    now = time.monotonic()
    for k in range(5):
        line.schedules[0].push(now, k, 1514)               # 5 frames at 1 Mbit/s: 60.6 ms
    assert line.schedules[0].next_due() > now + 0.012
    assert line.handle_line('{"op": "set", "queue": 0, "rate_bps": 100000000}')["ok"]
    assert line.schedules[0]._q[-1][0] < time.monotonic() + 0.012   # the rest at 100 Mbit/s: well under 1 ms


def test_delay_line_drops_tail_and_counts_bytes():
    line = DelayLine({0: (0.0, 0.0, 8_000_000, 1500)})
    sent = []

    class Sock:
        def send(self, data):
            sent.append(data)

    line.socks[0] = Sock()
    for pid in (1, 2):
        line._queue_packet(0, line.schedules[0].push, line.stats_[0], 0.0, pid, 1500)
    line._queue_packet(0, line.schedules[0].push, line.stats_[0], 0.0, 3, None)
    st = line.stats()["0"]
    assert (st["packets"], st["bytes"], st["dropped_queue"], st["unsized"], st["held"]) == (3, 3000, 1, 1, 2)
    assert sent == [nfq.build_verdict(0, 2, nfq.NF_DROP)]  # the second packet found the queue full
