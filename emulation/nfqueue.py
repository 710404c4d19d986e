"""Minimal nfnetlink_queue client: stdlib only (``socket`` + ``struct``).

Implements just what the delay line needs: bind a queue, configure it (copy mode, queue
length, flags), receive packet notifications and issue (batch) verdicts. Layouts follow
``linux/netlink.h``, ``linux/netfilter/nfnetlink.h`` and
``linux/netfilter/nfnetlink_queue.h``:

* ``struct nlmsghdr`` (16 bytes): len u32, type u16, flags u16, seq u32, pid u32 -- host
  byte order.
* ``struct nfgenmsg`` (4 bytes): family u8, version u8, res_id **be16** (the queue number).
* attributes: ``struct nlattr`` (len u16, type u16, host order), payload padded to 4 bytes.
  The nfnetlink_queue payloads themselves are **big-endian** (packet id, verdict, copy
  range, maxlen, flags, mask, ...).

The message builders and :func:`parse_messages` are pure functions (unit-testable without
root), as are the readers for a hot path that builds no objects (:func:`scan_packets`,
:func:`single_packet_id`, :func:`packet_fields`: the delay line's, which needs no layout of
its own); :class:`QueueSocket` wraps one ``AF_NETLINK``/``NETLINK_NETFILTER`` socket bound to
one queue number (verdicts must come from the socket that bound the queue).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import NamedTuple

# --- constants ---------------------------------------------------------------------------
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
SO_RCVBUFFORCE = 33

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLMSG_HDRLEN = 16
NLA_HDRLEN = 4
NLA_TYPE_MASK = 0x3FFF  # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

NFNETLINK_V0 = 0
NFGENMSG_LEN = 4
NFNL_SUBSYS_QUEUE = 3

NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3

# enum nfqnl_attr_type
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_TIMESTAMP = 4
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_OUTDEV = 6
NFQA_PAYLOAD = 10
NFQA_CAP_LEN = 13
NFQA_SKB_INFO = 14

# enum nfqnl_attr_config
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5

# enum nfqnl_msg_config_cmds
NFQNL_CFG_CMD_NONE = 0
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2

# enum nfqnl_config_mode
NFQNL_COPY_NONE = 0
NFQNL_COPY_META = 1
NFQNL_COPY_PACKET = 2

NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFQA_CFG_F_CONNTRACK = 1 << 1
NFQA_CFG_F_GSO = 1 << 2

NFQA_SKB_GSO = 1 << 1

NF_DROP = 0
NF_ACCEPT = 1

MSG_PACKET = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
MSG_VERDICT = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
MSG_CONFIG = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
MSG_VERDICT_BATCH = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT_BATCH

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")  # family, version: u8; res_id: be16
_NLATTR = struct.Struct("=HH")
_BE32 = struct.Struct("!I")
_I32 = struct.Struct("=i")
_PKT_HDR = struct.Struct("!IHB")  # struct nfqnl_msg_packet_hdr (packed, 7 bytes)
_VERDICT_HDR = struct.Struct("!II")  # struct nfqnl_msg_verdict_hdr
_CFG_CMD = struct.Struct("!BBH")  # struct nfqnl_msg_config_cmd: command u8, _pad u8, pf be16
_CFG_PARAMS = struct.Struct("!IB")  # struct nfqnl_msg_config_params (packed, 5 bytes)
_TIMESTAMP = struct.Struct("!QQ")  # struct nfqnl_msg_packet_timestamp: sec, usec


def nla_align(n: int) -> int:
    return (n + 3) & ~3


def build_attr(attr_type: int, payload: bytes) -> bytes:
    """One netlink attribute: header (len = 4 + payload, unpadded) + payload + zero padding."""
    length = NLA_HDRLEN + len(payload)
    return _NLATTR.pack(length, attr_type) + payload + b"\0" * (nla_align(length) - length)


def build_nfmsg(msg_type: int, queue: int, attrs: bytes, *, flags: int = NLM_F_REQUEST,
                seq: int = 0, family: int = socket.AF_UNSPEC) -> bytes:
    """nlmsghdr + nfgenmsg(res_id = queue, big-endian) + already built attributes."""
    if not 0 <= queue <= 0xFFFF:
        raise ValueError(f"queue number {queue} out of range 0..65535")
    body = _NFGENMSG.pack(family, NFNETLINK_V0, queue) + attrs
    return _NLMSGHDR.pack(NLMSG_HDRLEN + len(body), msg_type, flags, seq & 0xFFFFFFFF, 0) + body


def build_config_message(queue: int, *, cmd: int | None = None, copy_mode: int | None = None,
                         copy_range: int = 0, maxlen: int | None = None, flags: int | None = None,
                         mask: int | None = None, seq: int = 0, ack: bool = True) -> bytes:
    """NFQNL_MSG_CONFIG for ``queue``. Any of: command (BIND/UNBIND), params (copy mode and
    range), queue max length, flags (+ mask; mask defaults to the flags themselves)."""
    attrs = b""
    if cmd is not None:
        attrs += build_attr(NFQA_CFG_CMD, _CFG_CMD.pack(cmd, 0, 0))
    if copy_mode is not None:
        attrs += build_attr(NFQA_CFG_PARAMS, _CFG_PARAMS.pack(copy_range, copy_mode))
    if maxlen is not None:
        attrs += build_attr(NFQA_CFG_QUEUE_MAXLEN, _BE32.pack(maxlen))
    if flags is not None:
        attrs += build_attr(NFQA_CFG_MASK, _BE32.pack(flags if mask is None else mask))
        attrs += build_attr(NFQA_CFG_FLAGS, _BE32.pack(flags))
    return build_nfmsg(MSG_CONFIG, queue, attrs, seq=seq,
                       flags=NLM_F_REQUEST | (NLM_F_ACK if ack else 0))


def build_verdict(queue: int, packet_id: int, verdict: int = NF_ACCEPT, *, seq: int = 0) -> bytes:
    """NFQNL_MSG_VERDICT: verdict for exactly one packet id."""
    return build_nfmsg(MSG_VERDICT, queue,
                       build_attr(NFQA_VERDICT_HDR, _VERDICT_HDR.pack(verdict, packet_id & 0xFFFFFFFF)),
                       seq=seq)


def build_verdict_batch(queue: int, packet_id: int, verdict: int = NF_ACCEPT, *, seq: int = 0) -> bytes:
    """NFQNL_MSG_VERDICT_BATCH: verdict for every packet on ``queue`` whose id is <= ``packet_id``
    (serial-number comparison in the kernel, so id wrap-around is fine)."""
    return build_nfmsg(MSG_VERDICT_BATCH, queue,
                       build_attr(NFQA_VERDICT_HDR, _VERDICT_HDR.pack(verdict, packet_id & 0xFFFFFFFF)),
                       seq=seq)


# --- parsing -----------------------------------------------------------------------------
class Packet(NamedTuple):
    queue: int
    packet_id: int
    hw_protocol: int
    hook: int
    attrs: dict  # attr type -> raw bytes (payload without padding)


class NlError(NamedTuple):
    error: int  # positive errno, 0 = ACK
    seq: int


class NlOther(NamedTuple):
    msg_type: int
    flags: int
    seq: int
    payload: bytes


def parse_attrs(buf, start: int, end: int) -> dict:
    attrs = {}
    off = start
    while off + NLA_HDRLEN <= end:
        alen, atype = _NLATTR.unpack_from(buf, off)
        if alen < NLA_HDRLEN or off + alen > end:
            break
        attrs[atype & NLA_TYPE_MASK] = bytes(buf[off + NLA_HDRLEN:off + alen])
        off += nla_align(alen)
    return attrs


def parse_messages(buf, length: int | None = None) -> list:
    """Split a received netlink buffer into :class:`Packet`, :class:`NlError` (errors and ACKs)
    and :class:`NlOther` items. Truncated trailing data is ignored."""
    end = len(buf) if length is None else length
    out: list = []
    off = 0
    while off + NLMSG_HDRLEN <= end:
        mlen, mtype, mflags, seq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if mlen < NLMSG_HDRLEN or off + mlen > end:
            break
        if mtype == MSG_PACKET and mlen >= NLMSG_HDRLEN + NFGENMSG_LEN:
            _fam, _ver, queue = _NFGENMSG.unpack_from(buf, off + NLMSG_HDRLEN)
            attrs = parse_attrs(buf, off + NLMSG_HDRLEN + NFGENMSG_LEN, off + mlen)
            hdr = attrs.get(NFQA_PACKET_HDR)
            if hdr is not None and len(hdr) >= _PKT_HDR.size:
                pid, proto, hook = _PKT_HDR.unpack_from(hdr)
                out.append(Packet(queue, pid, proto, hook, attrs))
        elif mtype == NLMSG_ERROR and mlen >= NLMSG_HDRLEN + 4:
            (err,) = _I32.unpack_from(buf, off + NLMSG_HDRLEN)
            out.append(NlError(-err, seq))
        else:
            out.append(NlOther(mtype, mflags, seq, bytes(buf[off + NLMSG_HDRLEN:off + mlen])))
        off += nla_align(mlen)
    return out


def scan_packets(buf, length: int, on_packet, on_error) -> None:
    """Hot-path variant of :func:`parse_messages`: calls ``on_packet(packet_id)`` for each packet
    message and ``on_error(errno)`` for each non-zero netlink error, without building objects.
    The packet header is the first attribute the kernel emits, so it is looked up directly."""
    off = 0
    unpack_hdr = _NLMSGHDR.unpack_from
    while off + NLMSG_HDRLEN <= length:
        mlen, mtype, _f, _s, _p = unpack_hdr(buf, off)
        if mlen < NLMSG_HDRLEN or off + mlen > length:
            return
        if mtype == MSG_PACKET:
            a = off + NLMSG_HDRLEN + NFGENMSG_LEN
            if a + 8 <= off + mlen and (_NLATTR.unpack_from(buf, a)[1] & NLA_TYPE_MASK) == NFQA_PACKET_HDR:
                on_packet(_BE32.unpack_from(buf, a + NLA_HDRLEN)[0])
            else:
                hdr = parse_attrs(buf, a, off + mlen).get(NFQA_PACKET_HDR)
                if hdr is not None and len(hdr) >= 4:
                    on_packet(_BE32.unpack_from(hdr)[0])
        elif mtype == NLMSG_ERROR and mlen >= NLMSG_HDRLEN + 4:
            err = -_I32.unpack_from(buf, off + NLMSG_HDRLEN)[0]
            if err:
                on_error(err)
        off += nla_align(mlen)


def single_packet_id(buf, n: int) -> int | None:
    """The packet id when ``buf[:n]`` is exactly one packet message whose first attribute is
    its packet header (as the kernel queues them one by one: a reader's fast path); None for
    anything else (several messages, errors, ACKs: read those with :func:`scan_packets`)."""
    if n < NLMSG_HDRLEN + NFGENMSG_LEN + NLA_HDRLEN + 4:
        return None
    mlen, mtype = _NLMSGHDR.unpack_from(buf, 0)[:2]
    if mlen == n and mtype == MSG_PACKET and _NLATTR.unpack_from(buf, 20)[1] == NFQA_PACKET_HDR:
        return _BE32.unpack_from(buf, 24)[0]
    return None


def packet_fields(buf, n: int) -> tuple[float | None, int | None, int, int]:
    """What one packet message in ``buf[:n]`` says of its packet, read without building objects:
    ``(stamp, length, payload_offset, payload_length)``. ``stamp``: when the kernel received it
    (NFQA_TIMESTAMP, seconds of the real-time clock) or None; ``length``: the whole packet's
    (NFQA_CAP_LEN, which the kernel sends only when the copy is shorter) or None; the copied
    bytes are ``buf[payload_offset:payload_offset + payload_length]`` (0, 0 when none came)."""
    off = NLMSG_HDRLEN + NFGENMSG_LEN
    stamp = length = None
    poff = plen = 0
    unpack_attr = _NLATTR.unpack_from
    while off + NLA_HDRLEN <= n:
        alen, atype = unpack_attr(buf, off)
        if alen < NLA_HDRLEN:
            break
        atype &= NLA_TYPE_MASK
        if atype == NFQA_TIMESTAMP and alen >= NLA_HDRLEN + _TIMESTAMP.size:
            sec, usec = _TIMESTAMP.unpack_from(buf, off + NLA_HDRLEN)
            stamp = sec + usec * 1e-6
        elif atype == NFQA_CAP_LEN and alen >= NLA_HDRLEN + 4:
            length = _BE32.unpack_from(buf, off + NLA_HDRLEN)[0]
        elif atype == NFQA_PAYLOAD:
            poff, plen = off + NLA_HDRLEN, min(alen - NLA_HDRLEN, n - off - NLA_HDRLEN)
        off += (alen + 3) & ~3
    return stamp, length, poff, plen


# --- socket ------------------------------------------------------------------------------
class NetlinkError(OSError):
    pass


class QueueSocket:
    """One netlink socket bound to one nfqueue number."""

    def __init__(self, queue: int, *, rcvbuf: int = 8 << 20):
        self.queue = queue
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.bind((0, 0))
            for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
                    break
                except OSError:
                    continue
        except BaseException:
            self.sock.close()
            raise
        self.portid = self.sock.getsockname()[0]
        self._seq = 0
        self.bound = False
        self.copy_mode = None
        self.flags = 0
        self.notes: list[str] = []
        self.pending: list[int] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self, msg_builder, timeout: float = 2.0) -> int:
        """Send a config request with NLM_F_ACK, wait for its ACK; return 0 or a positive errno.
        Packet notifications received meanwhile are kept (ids in ``self.pending``) so that the
        caller can still give them a verdict."""
        self._seq += 1
        seq = self._seq
        self.sock.settimeout(timeout)
        try:
            self.sock.send(msg_builder(seq))
            buf = bytearray(65536)
            while True:
                n = self.sock.recv_into(buf)
                for item in parse_messages(buf, n):
                    if isinstance(item, NlError) and item.seq == seq:
                        return item.error
                    if isinstance(item, Packet):
                        self.pending.append(item.packet_id)
        except socket.timeout:
            return errno.ETIMEDOUT
        finally:
            self.sock.setblocking(False)

    def setup(self, *, maxlen: int = 65536, gso: bool = True, fail_open: bool = False,
              copy_range: int | None = None, copy_range_fallback: int = 64) -> None:
        """Bind and configure. ``copy_range``: copy that many bytes of each packet to us
        (COPY_PACKET); None: metadata only (COPY_META, or COPY_PACKET ``copy_range_fallback``
        where the kernel refuses it). Raises NetlinkError if the queue cannot be bound or the
        copy mode cannot be set; records in ``self.notes`` any feature the kernel refused
        (and the fallback used)."""
        q = self.queue
        err = self.request(lambda s: build_config_message(q, cmd=NFQNL_CFG_CMD_BIND, seq=s))
        if err:
            hint = ""
            if err == errno.EPERM and os.geteuid() != 0:
                hint = " (needs CAP_NET_ADMIN in the network namespace)"
            elif err in (errno.EBUSY, errno.EPERM):
                hint = " (already bound by another process in this network namespace?)"
            raise NetlinkError(err, f"binding nfqueue {q}: {os.strerror(err)}{hint}")
        self.bound = True
        if copy_range is None:
            err = self.request(lambda s: build_config_message(q, copy_mode=NFQNL_COPY_META, seq=s))
            if err == 0:
                self.copy_mode = "meta"
            else:
                self.notes.append(f"COPY_META refused ({os.strerror(err)}), using COPY_PACKET range {copy_range_fallback}")
                copy_range = copy_range_fallback
        if self.copy_mode is None:
            err = self.request(lambda s: build_config_message(q, copy_mode=NFQNL_COPY_PACKET, copy_range=copy_range, seq=s))
            if err:
                raise NetlinkError(err, f"setting copy mode packet:{copy_range} on nfqueue {q}: {os.strerror(err)}")
            self.copy_mode = f"packet:{copy_range}"
        err = self.request(lambda s: build_config_message(q, maxlen=maxlen, seq=s))
        if err:
            self.notes.append(f"queue maxlen {maxlen} refused ({os.strerror(err)})")
        want = (NFQA_CFG_F_GSO if gso else 0) | (NFQA_CFG_F_FAIL_OPEN if fail_open else 0)
        if want:
            err = self.request(lambda s: build_config_message(q, flags=want, seq=s))
            if err == 0:
                self.flags = want
            else:
                self.notes.append(f"flags {want:#x} refused ({os.strerror(err)}), trying one by one")
                for f in (NFQA_CFG_F_GSO, NFQA_CFG_F_FAIL_OPEN):
                    if want & f:
                        err = self.request(lambda s: build_config_message(q, flags=f, seq=s))
                        if err == 0:
                            self.flags |= f
                        else:
                            self.notes.append(f"flag {f:#x} refused ({os.strerror(err)})")
        self.sock.setblocking(False)

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def unbind(self) -> None:
        if self.bound:
            q = self.queue
            self.request(lambda s: build_config_message(q, cmd=NFQNL_CFG_CMD_UNBIND, seq=s), timeout=1.0)
            self.bound = False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def read_proc_stats(path: str = "/proc/net/netfilter/nfnetlink_queue") -> dict[int, dict]:
    """Per-queue kernel counters of the current network namespace (empty if unreadable).
    Columns: queue, peer portid, queue total, copy mode, copy range, queue dropped,
    user dropped, id sequence, 1."""
    out: dict[int, dict] = {}
    try:
        with open(path) as f:
            for line in f:
                cols = line.split()
                if len(cols) >= 8:
                    out[int(cols[0])] = {"portid": int(cols[1]), "kernel_queued": int(cols[2]),
                                         "kernel_queue_dropped": int(cols[5]),
                                         "kernel_user_dropped": int(cols[6]),
                                         "id_sequence": int(cols[7])}
    except (OSError, ValueError):
        pass
    return out
