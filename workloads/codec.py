"""The wire codec: how tensors travel between the testbed's processes over a stream socket.

Imports only the standard library and numpy, so a host server can load it without torch.

Frame
-----
Every message is one *frame*: a fixed 28-byte prefix, a header, then a payload::

    offset  size  field        (big-endian, struct "!4sBBHIQQ")
    0       4     magic        b"TBF1"
    4       1     version      1
    5       1     codec id     0 = binary, 1 = json-base64
    6       2     flags        0 (no flags are defined; anything else is an error)
    8       4     header_len   bytes of header that follow the prefix
    12      8     payload_len  bytes of payload that follow the header
    20      8     sent_ns      the sender's time.monotonic_ns() taken just before the
                               first byte of the frame was written (all processes run on
                               one machine, so they share the monotonic clock)

The header is a UTF-8 JSON object with the keys ``kind`` (one of ``request``, ``response``,
``error``, ``ping``, ``pong``; required), ``id`` (an integer 0 <= id < 2**63; default 0),
``tensors`` (a list; default empty) and ``meta`` (an object of the caller's own: traces,
error text, exit information; default empty). No other key is allowed, nor a key twice in
any object. Each entry of ``tensors`` is ``{"name": str, "dtype": str, "shape": [int, ...]}``
with

* ``name``: 1 to 256 characters, unique within the frame;
* ``dtype``: one of ``float32``, ``float16``, ``float64``, ``int64``, ``int32``, ``int8``,
  ``uint8``, ``bool``; data are always little-endian on the wire, and ``bool`` bytes are
  0 or 1;
* ``shape``: at most 8 integers >= 0 (``[]`` is a scalar).

Codecs (their names and ids are defined in :mod:`workloads.wire`):

* ``binary`` (0): the payload is the raw bytes of each tensor in header order, C order,
  concatenated without padding; ``payload_len`` equals the sum of prod(shape) * itemsize.
* ``json-base64`` (1): the slow transport of the published studies, kept for comparison.
  Each tensor entry also holds ``"data"``: the standard base64 (with padding) of its raw
  bytes; ``payload_len`` is 0.

Limits (:class:`Limits`, the defaults in brackets) bound what a reader allocates: the
binary header [1 MiB], the tensor bytes of one frame [1 GiB; for json-base64 the decoded
bytes], tensors per frame [64], dimensions [8] and name length [256]. A json-base64 header
may be as long as the binary limit plus the base64 of the payload limit. A reader checks
the prefix before it allocates the header, and the whole header before it allocates the
payload, so a frame that claims more than the limits costs no memory.

Errors
------
A frame that breaks the format or the limits raises :class:`CodecError`, whose text is one
line saying what was wrong (and the limit, where one applies). The connection is then out
of step and should be closed; nothing else needs cleaning up. :class:`ConnectionClosed` (a
CodecError) means the peer closed cleanly between frames. A socket timeout (``settimeout``,
or the kernel's ``SO_RCVTIMEO`` / ``SO_SNDTIMEO``) is a ``TimeoutError``:
:class:`IdleTimeout` when no byte of a frame had arrived yet (the connection is idle and in
step: reading may go on), :class:`StallTimeout` when a frame stopped arriving, or a peer
took no bytes of one being sent, for that long (out of step: close it). Other ``OSError``
(e.g. ``ConnectionResetError``) propagate unchanged.

Use
---
``send_message(sock, Message("request", 7, {"x": array}))`` on one side,
``read_message(sock)`` on the other. A received tensor is a (writable) view on the frame's
payload buffer where its bytes are aligned for its dtype, a copy otherwise. `encode` does
not copy arrays that are already C-contiguous and little-endian, so such an array must not
change between `encode` and `send_frame`. ``meta`` must be JSON data as Python's json module
writes it (numpy scalars in it are written as Python numbers).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from topologies.errors import TestbedError

from .wire import CODECS

__all__ = [
    "MAGIC", "VERSION", "PREFIX", "CODECS", "DTYPES", "KINDS",
    "Limits", "CodecError", "ConnectionClosed", "IdleTimeout", "StallTimeout", "Message", "Frame",
    "encode", "send_frame", "send_message", "read_message", "BufferedReceiver",
]

MAGIC = b"TBF1"
VERSION = 1
PREFIX = struct.Struct("!4sBBHIQQ")  # magic, version, codec id, flags, header_len, payload_len, sent_ns
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
KINDS = ("request", "response", "error", "ping", "pong")

_CODEC_NAMES = {number: name for name, number in CODECS.items()}
_WIRE_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in DTYPES}
_MAX_ID = 1 << 63
_HEADER_KEYS = ("kind", "id", "tensors", "meta")
_SPEC_KEYS = {"binary": ("name", "dtype", "shape"), "json-base64": ("name", "dtype", "shape", "data")}
_U32 = (1 << 32) - 1
try:
    _IOV_MAX = max(16, min(1024, os.sysconf("SC_IOV_MAX")))
except (AttributeError, ValueError, OSError):
    _IOV_MAX = 16


class CodecError(TestbedError):
    """A frame that breaks the format or the limits; ``str()`` is one line saying what."""


class ConnectionClosed(CodecError):
    """The peer closed the connection cleanly before a frame began (0 bytes read)."""


class IdleTimeout(TimeoutError):
    """The socket's receive timeout passed before any byte of a frame arrived: the connection
    is idle and still in step."""


class StallTimeout(TimeoutError):
    """The socket's timeout passed in the middle of a frame (no bytes arrived, or the peer
    took none of a frame being sent): the connection is out of step and should be closed."""


@dataclass(frozen=True)
class Limits:
    """What one frame may hold; a reader allocates nothing beyond these."""

    max_header_bytes: int = 1 << 20  # binary header limit
    max_payload_bytes: int = 1 << 30  # tensor bytes per frame (json-base64: the decoded bytes)
    max_tensors: int = 64
    max_dims: int = 8
    max_name: int = 256

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 0:
                raise ValueError(f"Limits.{f.name} is {value!r}; allowed: an int >= 0")

    def header_limit(self, codec: str) -> int:
        """The longest header a frame of ``codec`` may declare."""
        _codec_id(codec)
        if codec == "binary":
            return self.max_header_bytes
        return self.max_header_bytes + 4 * -(-self.max_payload_bytes // 3)


@dataclass
class Message:
    """One frame's content, plus the receive-side stamps that `read_message` fills in."""

    kind: str
    id: int = 0
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    # set by read_message (0 otherwise):
    codec: str = "binary"
    sent_ns: int = 0  # the sender's monotonic_ns, from the prefix
    recv_start_ns: int = 0  # right after the first bytes of the prefix arrived
    recv_end_ns: int = 0  # right after the last byte of the frame was read
    decode_end_ns: int = 0  # right after the tensors were built
    stall_ns: int = 0  # the receiver's quota stall on the frame's last bytes (BufferedReceiver with stalls)
    nbytes: int = 0  # the whole frame on the wire: prefix + header + payload


@dataclass
class Frame:
    """An encoded message but its prefix, which `send_frame` stamps and writes."""

    codec: str
    header: bytes
    payload: list = field(default_factory=list)  # buffers of tensor bytes, in header order

    @property
    def payload_len(self) -> int:
        return sum(memoryview(p).nbytes for p in self.payload)

    @property
    def nbytes(self) -> int:
        """Prefix + header + payload bytes."""
        return PREFIX.size + len(self.header) + self.payload_len

    def prefix(self, sent_ns: int = 0) -> bytes:
        """The 28-byte prefix of this frame with ``sent_ns`` in it."""
        return _pack_prefix(_codec_id(self.codec), len(self.header), self.payload_len, sent_ns)

    def to_bytes(self, sent_ns: int = 0) -> bytes:
        """The whole frame as one bytes object (a copy; for tests and tools)."""
        return b"".join([self.prefix(sent_ns), self.header, *self.payload])


# ----------------------------------------------------------------------------- helpers


def _codec_id(codec: str) -> int:
    if not isinstance(codec, str) or codec not in CODECS:
        raise CodecError(f"unknown codec {_short(codec)}; allowed: {', '.join(CODECS)}")
    return CODECS[codec]


def _pack_prefix(codec_id: int, header_len: int, payload_len: int, sent_ns: int) -> bytes:
    if header_len > _U32:
        raise CodecError(f"header of {header_len} B does not fit the prefix; limit is {_U32} B")
    return PREFIX.pack(MAGIC, VERSION, codec_id, 0, header_len, payload_len, sent_ns)


def _short(value: Any, limit: int = 60) -> str:
    """A one-line, bounded repr of a value taken from a frame."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # e.g. an int past sys.get_int_max_str_digits() inside a list
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _num(n: int) -> str:
    return str(n) if n.bit_length() <= 128 else f"about 2**{n.bit_length() - 1}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _valid_id(value: Any) -> bool:
    return type(value) is int and 0 <= value < _MAX_ID


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj: dict = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON data")


# one of each, made once: building a JSON codec per frame costs more than using it
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default)
# dtype (any byte order) -> (wire name, little-endian dtype): one dict lookup per tensor
_DTYPE_INFO = {np.dtype(name).newbyteorder(order): (name, _WIRE_DTYPES[name])
               for name in DTYPES for order in "<>=|"}


def _byte_view(buf: Any) -> memoryview:
    view = memoryview(buf)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


# ----------------------------------------------------------------------------- encode / send


def encode(msg: Message, codec: str = "binary", limits: Limits = Limits()) -> Frame:
    """The frame for ``msg``, checked against the same rules and ``limits`` as a reader uses.

    Arrays that are not C-contiguous little-endian are converted (copied); others are
    referenced, not copied. numpy scalars and 0-d arrays are tensors of shape ``[]``.
    """
    _codec_id(codec)
    if not isinstance(msg.kind, str) or msg.kind not in KINDS:
        raise CodecError(f"message kind {_short(msg.kind)} is not one of {', '.join(KINDS)}")
    msg_id = msg.id
    if isinstance(msg_id, np.integer):
        msg_id = int(msg_id)
    if not _valid_id(msg_id):
        raise CodecError(f"message id {_short(msg.id)} is not an int in 0..2**63-1")
    if not isinstance(msg.meta, dict):
        raise CodecError(f"message meta is a {type(msg.meta).__name__}, not a dict")
    if not isinstance(msg.tensors, Mapping):
        raise CodecError(f"message tensors is a {type(msg.tensors).__name__}, not a dict of arrays")
    if len(msg.tensors) > limits.max_tensors:
        raise CodecError(f"message has {len(msg.tensors)} tensors; limit is {limits.max_tensors}")

    specs: list[dict[str, Any]] = []
    arrays: list[np.ndarray] = []
    total = 0
    for name, value in msg.tensors.items():
        if not isinstance(name, str) or not 1 <= len(name) <= limits.max_name:
            what = f"{len(name)} characters" if isinstance(name, str) else f"of type {type(name).__name__}"
            raise CodecError(f"tensor name {_short(name)} is {what}; allowed: a str of "
                             f"1..{limits.max_name} characters")
        if not isinstance(value, (np.ndarray, np.generic)):
            raise CodecError(f"tensor {_short(name)} is a {type(value).__name__}; allowed: a numpy "
                             "array or scalar")
        array = value if type(value) is np.ndarray else np.asarray(value)
        info = _DTYPE_INFO.get(array.dtype)
        if info is None:
            raise CodecError(f"tensor {_short(name)} has dtype {array.dtype}; allowed: {', '.join(DTYPES)}")
        dtype, wire = info
        if array.ndim > limits.max_dims:
            raise CodecError(f"tensor {_short(name)} has {array.ndim} dims; limit is {limits.max_dims}")
        if array.dtype != wire or not array.flags.c_contiguous:
            array = np.asarray(array, dtype=wire, order="C")
        if dtype == "bool" and array.size and array.view(np.uint8).max() > 1:
            raise CodecError(f"tensor {_short(name)} is bool but holds bytes other than 0 and 1")
        total += array.nbytes
        if total > limits.max_payload_bytes:
            raise CodecError(f"message tensors hold {total} B (through {_short(name)}); limit is "
                             f"{limits.max_payload_bytes} B")
        specs.append({"name": name, "dtype": dtype, "shape": list(array.shape)})
        arrays.append(array)

    payload: list = []
    for spec, array in zip(specs, arrays):
        data = memoryview(array.reshape(-1).view(np.uint8))
        if codec == "json-base64":
            spec["data"] = base64.b64encode(data).decode("ascii")
        elif array.nbytes:
            payload.append(data)
    try:
        header = _ENCODER.encode({"kind": msg.kind, "id": msg_id, "tensors": specs, "meta": msg.meta}
                                 ).encode("ascii")
    except (TypeError, ValueError, RecursionError) as e:
        raise CodecError(f"message meta is not JSON data: {_one_line(e)}") from None
    limit = limits.header_limit(codec)
    if len(header) > limit:
        raise CodecError(f"message makes a {codec} header of {len(header)} B; limit is {limit} B")
    return Frame(codec, header, payload)


def _send_all(sock: socket.socket, buffers: list[memoryview]) -> None:
    views = [v for v in buffers if len(v)]
    sendmsg = getattr(sock, "sendmsg", None)
    if sendmsg is None:
        for view in views:
            sock.sendall(view)
        return
    i = 0
    while i < len(views):
        try:
            sent = sendmsg(views[i:i + _IOV_MAX])
        except BlockingIOError:       # SO_SNDTIMEO passed (or a non-blocking socket is full)
            raise StallTimeout(f"the peer took no bytes for the send timeout, "
                               f"{sum(len(v) for v in views[i:])} B of the frame left") from None
        while sent:
            size = len(views[i])
            if sent >= size:
                sent -= size
                i += 1
            else:
                views[i] = views[i][sent:]
                sent = 0


def send_frame(sock: socket.socket, frame: Frame) -> tuple[int, int]:
    """Stamp ``sent_ns`` into the prefix and write the whole frame.

    Returns ``(send_start_ns, send_end_ns)``; ``send_start_ns`` is the ``sent_ns`` stamped.
    """
    codec_id = _codec_id(frame.codec)
    views = [_byte_view(frame.header)] + [_byte_view(p) for p in frame.payload]
    payload_len = sum(len(v) for v in views[1:])
    _pack_prefix(codec_id, len(views[0]), payload_len, 0)  # fail before stamping
    start = time.monotonic_ns()
    views.insert(0, memoryview(_pack_prefix(codec_id, len(views[0]), payload_len, start)))
    _send_all(sock, views)
    return start, time.monotonic_ns()


def send_message(sock: socket.socket, msg: Message, codec: str = "binary",
                 limits: Limits = Limits()) -> tuple[int, int, int, int]:
    """`encode` then `send_frame`: ``(encode_start_ns, encode_end_ns, send_start_ns, send_end_ns)``."""
    encode_start = time.monotonic_ns()
    frame = encode(msg, codec, limits)
    encode_end = time.monotonic_ns()
    send_start, send_end = send_frame(sock, frame)
    return encode_start, encode_end, send_start, send_end


# ----------------------------------------------------------------------------- read

class BufferedReceiver:
    """``recv_into`` for :func:`read_message` with fewer system calls: small reads (a prefix,
    a header) are served from one buffer filled by a single ``recv``; reads as large as the
    buffer go straight into the caller's memory. Bytes of a following frame stay buffered
    for the next read. Wrap a connection once and read every frame through the wrapper.

    With ``stalls`` (a :class:`workloads.pacing.QuotaStalls`), each read from the kernel also
    notes how long the calling thread waited for a CPU while it was in it (``last_wait_ns``):
    :func:`read_message` turns the wait of the read that brought the frame's last bytes into
    the frame's ``stall_ns``."""

    def __init__(self, sock: socket.socket, size: int = 65536, stalls=None):
        self.sock = sock
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self.stalls = stalls if stalls is not None and stalls.enabled else None
        self.last_wait_ns = 0

    def _kernel_recv(self, view: memoryview, want: int) -> int:
        if self.stalls is None:
            return self.sock.recv_into(view, want)
        w0 = self.stalls.wait_ns()
        got = self.sock.recv_into(view, want)
        self.last_wait_ns = self.stalls.wait_ns() - w0
        return got

    def recv_into(self, view: memoryview, nbytes: int = 0) -> int:
        want = len(view) if not nbytes else min(nbytes, len(view))
        if self._start == self._end:
            if want >= len(self._buf):
                return self._kernel_recv(view, want)
            self._start, self._end = 0, self._kernel_recv(self._view, len(self._view))
            if not self._end:
                return 0
        n = min(want, self._end - self._start)
        view[:n] = self._view[self._start:self._start + n]
        self._start += n
        return n



@dataclass
class _Spec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    data: str | None = None  # json-base64 only


def _recv_exact(sock: socket.socket, view: memoryview, done: int, what: str) -> None:
    size = len(view)
    while done < size:
        try:
            got = sock.recv_into(view[done:])
        except (TimeoutError, BlockingIOError):     # settimeout, or SO_RCVTIMEO on a blocking socket
            raise StallTimeout(f"the frame stalled: no bytes for the receive timeout after {done} of "
                               f"{size} B of the {what}") from None
        if not got:
            raise CodecError(f"truncated frame: the connection closed after {done} of {size} B of "
                             f"the {what}")
        done += got


def _where(i: int, name: str) -> str:
    return f"tensor {i} ({_short(name, 40)})"


def _parse_header(raw: bytearray, codec: str, payload_len: int,
                  limits: Limits) -> tuple[str, int, list[_Spec], dict]:
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError as e:
        raise CodecError(f"header is not valid UTF-8: {e.reason} at byte {e.start}") from None
    try:
        obj = _DECODER.decode(text)
    except _DuplicateKey as e:
        raise CodecError(f"header JSON has the key {_short(e.key)} twice in one object") from None
    except json.JSONDecodeError as e:
        raise CodecError(f"header is not valid JSON: {e.msg} at char {e.pos}") from None
    except (ValueError, RecursionError) as e:
        raise CodecError(f"header is not valid JSON: {_one_line(e)}") from None
    del text
    if not isinstance(obj, dict):
        raise CodecError(f"header JSON is {_json_type(obj)}, not an object")
    for key in obj:
        if key not in _HEADER_KEYS:
            raise CodecError(f"header has unknown key {_short(key)}; allowed: {', '.join(_HEADER_KEYS)}")

    if "kind" not in obj:
        raise CodecError(f"header has no 'kind'; allowed: {', '.join(KINDS)}")
    kind = obj["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise CodecError(f"header kind {_short(kind)} is not one of {', '.join(KINDS)}")
    msg_id = obj.get("id", 0)
    if not _valid_id(msg_id):
        raise CodecError(f"header id {_short(msg_id)} is not an integer in 0..2**63-1")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise CodecError(f"header meta is {_json_type(meta)}, not an object")
    tensors = obj.get("tensors", [])
    if not isinstance(tensors, list):
        raise CodecError(f"header tensors is {_json_type(tensors)}, not an array")
    if len(tensors) > limits.max_tensors:
        raise CodecError(f"header lists {len(tensors)} tensors; limit is {limits.max_tensors}")

    keys = _SPEC_KEYS[codec]
    specs: list[_Spec] = []
    names: set[str] = set()
    total = 0
    limit = limits.max_payload_bytes
    for i, entry in enumerate(tensors):
        if type(entry) is not dict:
            raise CodecError(f"tensor {i} is {_json_type(entry)}, not an object")
        if len(entry) != len(keys) or any(key not in entry for key in keys):
            for key in entry:
                if key not in keys:
                    raise CodecError(f"tensor {i} has unknown key {_short(key)}; allowed in {codec}: "
                                     f"{', '.join(keys)}")
            missing = next(key for key in keys if key not in entry)
            raise CodecError(f"tensor {i} has no {missing!r}")
        name = entry["name"]
        if type(name) is not str or not 1 <= len(name) <= limits.max_name:
            what = f"{len(name)} characters" if isinstance(name, str) else _json_type(name)
            raise CodecError(f"tensor {i}: name is {what}; allowed: a string of 1..{limits.max_name} "
                             "characters")
        if name in names:
            raise CodecError(f"tensor {i}: name {_short(name)} is used twice")
        names.add(name)
        dtype = entry["dtype"]
        wire = _WIRE_DTYPES.get(dtype) if type(dtype) is str else None
        if wire is None:
            raise CodecError(f"{_where(i, name)}: dtype {_short(dtype)} is not one of {', '.join(DTYPES)}")
        shape = entry["shape"]
        if type(shape) is not list:
            raise CodecError(f"{_where(i, name)}: shape is {_json_type(shape)}, not an array")
        if len(shape) > limits.max_dims:
            raise CodecError(f"{_where(i, name)}: shape has {len(shape)} dims; limit is {limits.max_dims}")
        for d, dim in enumerate(shape):
            # a dim above the payload limit holds nothing a frame may carry (only beside a 0, and
            # numpy refuses such shapes: [0, 2**64] would pass the size check as 0 B)
            if type(dim) is not int or not 0 <= dim <= limit:
                raise CodecError(f"{_where(i, name)}: shape[{d}] is {_short(dim)}; allowed: an integer 0..{limit}")
        nbytes = math.prod(shape) * wire.itemsize
        if nbytes > limit:
            raise CodecError(f"{_where(i, name)}: shape {_short(shape)} of {dtype} holds {_num(nbytes)} B; "
                             f"limit is {limit} B")
        total += nbytes
        if total > limit:
            raise CodecError(f"header tensors hold {total} B (through tensor {i}); limit is {limit} B")
        data = None
        if codec == "json-base64":
            data = entry["data"]
            if not isinstance(data, str):
                raise CodecError(f"{_where(i, name)}: data is {_json_type(data)}, not a base64 string")
            need = 4 * -(-nbytes // 3)
            if len(data) != need:
                raise CodecError(f"{_where(i, name)}: base64 data has {len(data)} characters; {nbytes} B of "
                                 f"{dtype} take {need}")
        specs.append(_Spec(name, dtype, tuple(shape), nbytes, data))
    if codec == "binary" and total != payload_len:
        raise CodecError(f"header tensors hold {total} B but the prefix declares a payload of "
                         f"{payload_len} B")
    return kind, msg_id, specs, meta


def _decode_base64(specs: list[_Spec]) -> bytearray:
    payload = bytearray(sum(s.nbytes for s in specs))
    offset = 0
    for i, spec in enumerate(specs):
        try:
            data = binascii.a2b_base64(spec.data or "", strict_mode=True)
        except (binascii.Error, ValueError) as e:
            raise CodecError(f"tensor {i} ({_short(spec.name, 40)}): invalid base64: "
                             f"{_one_line(e)}") from None
        if len(data) != spec.nbytes:
            raise CodecError(f"tensor {i} ({_short(spec.name, 40)}): base64 decodes to {len(data)} B; "
                             f"shape and dtype need {spec.nbytes} B")
        payload[offset:offset + spec.nbytes] = data
        spec.data = None
        offset += spec.nbytes
    return payload


def _build_tensors(payload: bytearray, specs: list[_Spec]) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(specs):
        dtype = _WIRE_DTYPES[spec.dtype]
        if spec.nbytes == 0:
            array = np.zeros(spec.shape, dtype)
        else:
            if spec.dtype == "bool":
                raw = np.frombuffer(payload, np.uint8, spec.nbytes, offset)
                if raw.max() > 1:
                    raise CodecError(f"tensor {i} ({_short(spec.name, 40)}): bool data holds bytes "
                                     "other than 0 and 1")
            array = np.frombuffer(payload, dtype, spec.nbytes // dtype.itemsize, offset)
            array = array.reshape(spec.shape)
            if not array.flags.aligned:
                array = array.copy()
        tensors[spec.name] = array
        offset += spec.nbytes
    return tensors


def read_message(sock: "socket.socket | BufferedReceiver", limits: Limits = Limits(), codec: str | None = None) -> Message:
    """Read exactly one frame from ``sock``.

    ``codec``, if given, is the only codec accepted. Raises :class:`ConnectionClosed` when the
    peer closed before a frame began, :class:`CodecError` for anything that breaks the format
    or ``limits`` (the connection should then be closed); the socket's receive timeout raises
    :class:`IdleTimeout` before a frame began (nothing was consumed: call again to wait on)
    and :class:`StallTimeout` in the middle of one (close the connection); other OSError
    propagate unchanged. Memory beyond ``limits`` is never allocated: the prefix is checked
    before the header is read, and the whole header before the payload is.
    """
    expected = None if codec is None else _codec_id(codec)
    stalls = getattr(sock, "stalls", None)
    throttled0 = stalls.throttled_ns() if stalls is not None else 0
    prefix = bytearray(PREFIX.size)
    view = memoryview(prefix)
    try:
        got = sock.recv_into(view)
    except (TimeoutError, BlockingIOError):     # settimeout, or SO_RCVTIMEO on a blocking socket
        raise IdleTimeout("no frame began within the receive timeout") from None
    if not got:
        raise ConnectionClosed("the connection closed before a frame began")
    recv_start = time.monotonic_ns()
    _recv_exact(sock, view, got, "prefix")
    magic, version, codec_id, flags, header_len, payload_len, sent_ns = PREFIX.unpack(prefix)

    if magic != MAGIC:
        raise CodecError(f"bad magic {magic!r}; expected {MAGIC!r} (not a testbed frame)")
    if version != VERSION:
        raise CodecError(f"frame version {version} is not supported; expected {VERSION}")
    if codec_id not in _CODEC_NAMES:
        known = ", ".join(f"{number} ({name})" for number, name in _CODEC_NAMES.items())
        raise CodecError(f"unknown codec id {codec_id}; known: {known}")
    name = _CODEC_NAMES[codec_id]
    if expected is not None and codec_id != expected:
        raise CodecError(f"frame uses codec {name}; this connection expects {codec}")
    if flags:
        raise CodecError(f"frame flags are 0x{flags:04x}; allowed: 0 (no flags are defined)")
    header_limit = limits.header_limit(name)
    if header_len > header_limit:
        raise CodecError(f"frame prefix declares a {name} header of {header_len} B; limit is "
                         f"{header_limit} B")
    if name == "binary" and payload_len > limits.max_payload_bytes:
        raise CodecError(f"frame header declares payload of {payload_len} B; limit is "
                         f"{limits.max_payload_bytes} B")
    if name == "json-base64" and payload_len:
        raise CodecError(f"json-base64 frame declares a payload of {payload_len} B; allowed: 0 "
                         "(the tensors are in the header)")

    header = bytearray(header_len)
    _recv_exact(sock, memoryview(header), 0, "header")
    recv_end = time.monotonic_ns()
    kind, msg_id, specs, meta = _parse_header(header, name, payload_len, limits)
    del header
    if name == "binary":
        payload = bytearray(payload_len)
        _recv_exact(sock, memoryview(payload), 0, "payload")
        recv_end = time.monotonic_ns()
    else:
        payload = _decode_base64(specs)
    stall = 0
    if stalls is not None:   # the last read's wait for a CPU, as far as the quota explains it
        stall = max(0, min(sock.last_wait_ns, stalls.throttled_ns() - throttled0))
    tensors = _build_tensors(payload, specs)
    decode_end = time.monotonic_ns()
    return Message(kind, msg_id, tensors, meta, codec=name, sent_ns=sent_ns,
                   recv_start_ns=recv_start, recv_end_ns=recv_end, decode_end_ns=decode_end,
                   nbytes=PREFIX.size + header_len + payload_len, stall_ns=stall)
