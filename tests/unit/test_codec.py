"""Unit and fuzz tests of the wire codec (workloads/codec.py) over real socket pairs."""
from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import time
import tracemalloc
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from workloads.codec import (CODECS, DTYPES, KINDS, MAGIC, PREFIX, VERSION, BufferedReceiver, CodecError,
                             ConnectionClosed, Frame, IdleTimeout, Limits, Message, StallTimeout, encode,
                             read_message, send_frame, send_message)

FUZZ = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
SMALL = Limits(max_header_bytes=8192, max_payload_bytes=1 << 16, max_tensors=8, max_dims=5, max_name=16)


# ----------------------------------------------------------------------------- helpers


class Sender(threading.Thread):
    """Runs ``send(sock)`` in a thread (for frames larger than the socket buffer), then shuts
    the write side; keeps an OSError it met in ``error``."""

    def __init__(self, sock: socket.socket, send: Callable[[socket.socket], Any], shut: bool = True):
        super().__init__(daemon=True)
        self.sock, self.send, self.shut = sock, send, shut
        self.result: Any = None
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            self.result = self.send(self.sock)
            if self.shut:
                self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.error = e


def feed(data: bytes, limits: Limits = Limits(), codec: str | None = None) -> Message:
    """Write ``data`` then EOF into a socket pair and read one message from the other end."""
    a, b = socket.socketpair()
    try:
        if len(data) <= 32768:
            b.sendall(data)
            b.shutdown(socket.SHUT_WR)
            return read_message(a, limits, codec)
        sender = Sender(b, lambda s: s.sendall(data))
        sender.start()
        try:
            return read_message(a, limits, codec)
        finally:
            a.close()
            sender.join(10)
    finally:
        a.close()
        b.close()


def raw_frame(header: Any = None, payload: bytes = b"", *, codec_id: int = 0, magic: bytes = MAGIC,
              version: int = VERSION, flags: int = 0, header_len: int | None = None,
              payload_len: int | None = None, sent_ns: int = 0) -> bytes:
    """A frame built by hand; ``header`` is a JSON-able object or raw bytes."""
    if not isinstance(header, (bytes, bytearray)):
        header = json.dumps({"kind": "request", "id": 1, "tensors": []} if header is None else header).encode()
    return PREFIX.pack(magic, version, codec_id, flags, len(header) if header_len is None else header_len,
                       len(payload) if payload_len is None else payload_len, sent_ns) + header + payload


def le(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C")


def same_tensors(got: dict[str, np.ndarray], want: dict[str, Any]) -> None:
    assert list(got) == list(want)
    for name, value in want.items():
        w = le(np.asarray(value))
        g = got[name]
        assert g.dtype == w.dtype and g.dtype.byteorder in "<=|", (name, g.dtype, w.dtype)
        assert g.shape == w.shape, name
        assert g.tobytes() == w.tobytes(), name


def canon(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True)


def round_trip(msg: Message, codec: str = "binary", limits: Limits = Limits()) -> tuple[Message, Frame]:
    frame = encode(msg, codec, limits)
    a, b = socket.socketpair()
    try:
        sender = Sender(b, lambda s: send_frame(s, frame))
        sender.start()
        got = read_message(a, limits)
        sender.join(10)
        assert sender.error is None
        return got, frame
    finally:
        a.close()
        b.close()


def assert_reencodes(msg: Message, limits: Limits) -> None:
    """A message read from a frame encodes again, and reads back the same."""
    assert msg.kind in KINDS and 0 <= msg.id < 2**63 and isinstance(msg.meta, dict)
    assert msg.codec in CODECS
    again, _ = round_trip(msg, msg.codec, limits)
    assert (again.kind, again.id, canon(again.meta)) == (msg.kind, msg.id, canon(msg.meta))
    same_tensors(again.tensors, msg.tensors)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype(dtype: str, codec: str) -> None:
    rng = np.random.default_rng(0)
    if dtype == "bool":
        a = rng.random((3, 5)) > 0.5
    elif dtype.startswith("float"):
        a = rng.standard_normal((3, 5)).astype(dtype)
        a[0, :3] = [np.nan, np.inf, -0.0]
    else:
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, (3, 5), dtype=dtype, endpoint=True)
    got, frame = round_trip(Message("response", 9, {"t": a}), codec)
    same_tensors(got.tensors, {"t": a})
    assert got.tensors["t"].dtype == np.dtype(dtype)
    assert (got.kind, got.id, got.codec, got.nbytes) == ("response", 9, codec, frame.nbytes)


@pytest.mark.parametrize("codec", list(CODECS))
def test_round_trip_scalars_empty_and_many(codec: str) -> None:
    tensors = {
        "scalar": np.float32(2.5),
        "zero_d": np.array(7, dtype=np.int64),
        "empty": np.zeros((2, 0, 3), np.float32),
        "empty1": np.zeros((0,), np.bool_),
        "bytes": np.arange(3, dtype=np.int8),  # leaves the next tensor unaligned in the payload
        "f64": np.linspace(0, 1, 7),
        "u8": np.arange(256, dtype=np.uint8).reshape(16, 16),
        "flags": np.array([True, False, True]),
    }
    got, _ = round_trip(Message("request", 2**63 - 1, tensors, {"x": 1}), codec)
    same_tensors(got.tensors, tensors)
    assert got.tensors["scalar"].shape == () and got.tensors["zero_d"].shape == ()
    assert got.id == 2**63 - 1
    for array in got.tensors.values():
        assert array.flags.writeable and array.flags.aligned and array.flags.c_contiguous


def test_round_trip_no_tensors_and_every_kind() -> None:
    for kind in KINDS:
        for codec in CODECS:
            got, frame = round_trip(Message(kind), codec)
            assert (got.kind, got.id, got.tensors, got.meta) == (kind, 0, {}, {})
            assert got.nbytes == frame.nbytes


@pytest.mark.parametrize("codec", list(CODECS))
def test_non_contiguous_and_big_endian_inputs(codec: str) -> None:
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    tensors = {
        "strided": base[::2, 1::3],
        "transposed": base.T,
        "big": np.arange(12, dtype=">i4").reshape(3, 4),
        "big_strided": np.arange(24, dtype=">f2").reshape(4, 6)[:, ::2],
        "negative_stride": np.arange(5, dtype=np.int32)[::-1],
    }
    got, _ = round_trip(Message("request", 1, tensors), codec)
    same_tensors(got.tensors, tensors)
    np.testing.assert_array_equal(got.tensors["big"], np.arange(12).reshape(3, 4))
    np.testing.assert_array_equal(got.tensors["big_strided"], np.arange(24).reshape(4, 6)[:, ::2])


def test_encode_is_zero_copy_for_contiguous_little_endian() -> None:
    a = np.arange(1000, dtype=np.float32)
    frame = encode(Message("request", 1, {"a": a, "b": a[::2]}))
    assert np.shares_memory(np.frombuffer(frame.payload[0], np.uint8), a)
    assert not np.shares_memory(np.frombuffer(frame.payload[1], np.uint8), a)
    assert frame.nbytes == PREFIX.size + len(frame.header) + 4000 + 2000


def test_meta_round_trip() -> None:
    meta = {"trace": [{"host": "edge", "t": [1, 2.5, None]}], "text": "µs ≤ ✓ \n\"q\"", "ok": True,
            "nested": {"a": {"b": {"c": []}}}, "np": np.int64(3), "npf": np.float32(0.5)}
    for codec in CODECS:
        got, _ = round_trip(Message("error", 3, {}, meta), codec)
        assert got.meta == {**meta, "np": 3, "npf": 0.5}
        assert type(got.meta["np"]) is int


def test_stamps_are_ordered_and_nbytes_matches() -> None:
    a, b = socket.socketpair()
    with a, b:
        for codec in CODECS:
            msg = Message("request", 4, {"x": np.ones((64, 64), np.float32)})
            before = time.monotonic_ns()
            enc0, enc1, send0, send1 = send_message(b, msg, codec)
            got = read_message(a)
            after = time.monotonic_ns()
            assert before <= enc0 <= enc1 <= send0 <= send1
            assert got.sent_ns == send0
            assert got.sent_ns <= got.recv_start_ns <= got.recv_end_ns <= got.decode_end_ns <= after
            assert got.nbytes == encode(msg, codec).nbytes
            assert got.codec == codec


def test_json_base64_is_about_four_thirds_of_binary() -> None:
    msg = Message("request", 1, {"x": np.random.default_rng(1).standard_normal((256, 256)).astype(np.float32)})
    binary, json_b64 = encode(msg, "binary").nbytes, encode(msg, "json-base64").nbytes
    assert json_b64 > binary
    assert 1.30 < json_b64 / binary < 1.36
    assert encode(msg, "json-base64").payload == []


def test_50mb_tensor_round_trip_with_sender_thread() -> None:
    x = np.random.default_rng(2).integers(0, 255, 50 * 1024 * 1024, dtype=np.uint8).reshape(-1, 1024)
    got, frame = round_trip(Message("request", 5, {"x": x, "y": np.float32(1)}))
    assert frame.nbytes > 50 * 1024 * 1024 and got.nbytes == frame.nbytes
    np.testing.assert_array_equal(got.tensors["x"], x)
    assert got.tensors["y"] == 1


def test_json_base64_large_round_trip_with_sender_thread() -> None:
    x = np.random.default_rng(3).standard_normal(1 << 20).astype(np.float32)  # 4 MiB
    got, _ = round_trip(Message("request", 5, {"x": x}), "json-base64")
    np.testing.assert_array_equal(got.tensors["x"], x)


def test_several_frames_in_sequence_then_connection_closed() -> None:
    a, b = socket.socketpair()
    with a, b:
        for i in range(5):
            send_message(b, Message("ping", i, {"v": np.full(i, i, np.int32)}), list(CODECS)[i % 2])
        b.shutdown(socket.SHUT_WR)
        for i in range(5):
            got = read_message(a)
            assert (got.kind, got.id, got.tensors["v"].tolist()) == ("ping", i, [i] * i)
        with pytest.raises(ConnectionClosed):
            read_message(a)


def test_send_frame_survives_partial_sends() -> None:
    class Trickle:
        """A socket that takes at most 7 bytes per sendmsg."""

        def __init__(self) -> None:
            self.out = bytearray()
            self.calls = 0

        def sendmsg(self, buffers: list) -> int:
            self.calls += 1
            room = 7
            for buf in buffers:
                take = bytes(buf[:room])
                self.out += take
                room -= len(take)
                if not room:
                    break
            return 7 - room

    msg = Message("request", 1, {"a": np.arange(10, dtype=np.int32), "b": np.arange(3.0)})
    frame = encode(msg)
    sock = Trickle()
    start, _ = send_frame(sock, frame)  # type: ignore[arg-type]
    assert bytes(sock.out) == frame.to_bytes(start) and sock.calls > 5
    got = feed(bytes(sock.out))
    same_tensors(got.tensors, msg.tensors)
    assert got.sent_ns == start


def test_codec_argument_of_read_message() -> None:
    frame = encode(Message("ping"), "json-base64").to_bytes()
    assert feed(frame, codec="json-base64").codec == "json-base64"
    with pytest.raises(CodecError, match="frame uses codec json-base64; this connection expects binary"):
        feed(frame, codec="binary")
    with pytest.raises(CodecError, match="unknown codec 'grpc'"):
        feed(frame, codec="grpc")


def test_limits_header_limit() -> None:
    limits = Limits(max_header_bytes=100, max_payload_bytes=10)
    assert limits.header_limit("binary") == 100
    assert limits.header_limit("json-base64") == 100 + 16
    assert Limits().header_limit("json-base64") == (1 << 20) + 4 * -(-(1 << 30) // 3)
    with pytest.raises(CodecError):
        limits.header_limit("xml")
    with pytest.raises(ValueError, match="max_tensors"):
        Limits(max_tensors=-1)


# ----------------------------------------------------------------------------- encode errors


class Opaque:
    pass


@pytest.mark.parametrize("msg, codec, limits, match", [
    (Message("reply"), "binary", Limits(), r"message kind 'reply' is not one of request, response"),
    (Message(3), "binary", Limits(), r"message kind 3 is not one of"),  # type: ignore[arg-type]
    (Message("ping", -1), "binary", Limits(), r"message id -1 is not an int in 0\.\.2\*\*63-1"),
    (Message("ping", True), "binary", Limits(), r"message id True is not an int"),
    (Message("ping", 2**63), "binary", Limits(), r"message id 9223372036854775808 is not an int"),
    (Message("ping", "7"), "binary", Limits(), r"message id '7' is not an int"),  # type: ignore[arg-type]
    (Message("ping", meta=[1]), "binary", Limits(), r"message meta is a list, not a dict"),  # type: ignore[arg-type]
    (Message("ping", meta={"o": Opaque()}), "binary", Limits(), r"meta is not JSON data: Opaque is not JSON"),
    (Message("ping", tensors={"x": [1, 2]}), "binary", Limits(), r"tensor 'x' is a list; allowed: a numpy"),  # type: ignore[dict-item]
    (Message("ping", tensors={"x": np.zeros(2, np.complex64)}), "binary", Limits(), r"dtype complex64; allowed"),
    (Message("ping", tensors={"x": np.array(["a"])}), "binary", Limits(), r"dtype <U1; allowed"),
    (Message("ping", tensors={"x": np.zeros(2, np.uint16)}), "binary", Limits(), r"dtype uint16; allowed"),
    (Message("ping", tensors={"": np.zeros(2)}), "binary", Limits(), r"tensor name '' is 0 characters"),
    (Message("ping", tensors={"n" * 257: np.zeros(2)}), "binary", Limits(), r"is 257 characters; allowed: a str of 1\.\.256"),
    (Message("ping", tensors={5: np.zeros(2)}), "binary", Limits(), r"tensor name 5 is of type int; allowed: a str of 1\.\.256 characters"),  # type: ignore[dict-item]
    (Message("ping", tensors={"x": np.zeros((1,) * 9)}), "binary", Limits(), r"has 9 dims; limit is 8"),
    (Message("ping", tensors={str(i): np.zeros(1) for i in range(65)}), "binary", Limits(), r"has 65 tensors; limit is 64"),
    (Message("ping", tensors={"x": np.zeros(100, np.uint8), "y": np.zeros(1, np.uint8)}), "binary",
     Limits(max_payload_bytes=100), r"tensors hold 101 B \(through 'y'\); limit is 100 B"),
    (Message("ping", meta={"pad": "x" * 200}), "binary", Limits(max_header_bytes=100), r"binary header of \d+ B; limit is 100 B"),
    (Message("ping", tensors={"x": np.zeros(1000, np.uint8)}, meta={"pad": "x" * 100}), "json-base64",
     Limits(max_header_bytes=100, max_payload_bytes=1000), r"json-base64 header of \d+ B; limit is 1436 B"),
    (Message("ping", tensors={"x": np.array([2], np.uint8).view(np.bool_)}), "binary", Limits(),
     r"tensor 'x' is bool but holds bytes other than 0 and 1"),
    (Message("ping"), "xml", Limits(), r"unknown codec 'xml'; allowed: binary, json-base64"),
])
def test_encode_rejects(msg: Message, codec: str, limits: Limits, match: str) -> None:
    with pytest.raises(CodecError, match=match) as info:
        encode(msg, codec, limits)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- read errors


def T(name: str = "x", dtype: str = "float32", shape: Any = (2,), **extra: Any) -> dict:
    return {"name": name, "dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape, **extra}


def H(tensors: list | None = None, **top: Any) -> dict:
    header = {"kind": "request", "id": 1, "tensors": tensors or []}
    header.update(top)
    return {k: v for k, v in header.items() if v is not DROP}


DROP = object()
B64 = dict(codec_id=1)

BAD_FRAMES = [
    ("bad_magic", raw_frame(magic=b"GET "), r"bad magic b'GET '; expected b'TBF1'"),
    ("bad_version", raw_frame(version=2), r"frame version 2 is not supported; expected 1"),
    ("unknown_codec", raw_frame(codec_id=7), r"unknown codec id 7; known: 0 \(binary\), 1 \(json-base64\)"),
    ("flags", raw_frame(flags=1), r"frame flags are 0x0001; allowed: 0"),
    ("header_too_long", raw_frame(header_len=(1 << 20) + 1),
     r"declares a binary header of 1048577 B; limit is 1048576 B"),
    ("b64_header_too_long", raw_frame(header_len=2**32 - 1, **B64),
     r"declares a json-base64 header of 4294967295 B; limit is 1432704344 B"),
    ("payload_too_long", raw_frame(payload_len=2**31),
     r"^frame header declares payload of 2147483648 B; limit is 1073741824 B$"),
    ("b64_payload", raw_frame(H(), b"\0", **B64), r"json-base64 frame declares a payload of 1 B; allowed: 0"),
    ("truncated_prefix", raw_frame()[:10], r"truncated frame: the connection closed after 10 of 28 B of the prefix"),
    ("truncated_header", raw_frame()[:40], r"truncated frame: .* after 12 of \d+ B of the header"),
    ("truncated_payload", raw_frame(H([T()]), bytes(8))[:-3], r"truncated frame: .* after 5 of 8 B of the payload"),
    ("not_utf8", raw_frame(b'{"kind":"\xff"}'), r"header is not valid UTF-8: invalid start byte at byte 9"),
    ("invalid_json", raw_frame(b'{"kind": "ping",}'), r"header is not valid JSON: Expecting property name"),
    ("empty_header", raw_frame(b""), r"header is not valid JSON: Expecting value at char 0"),
    ("deep_json", raw_frame(b"[" * 200000 + b"]" * 200000), r"header is not valid JSON"),
    ("huge_int", raw_frame(b'{"kind":"ping","id":' + b"9" * 5000 + b"}"), r"header is not valid JSON"),
    ("json_list", raw_frame([1, 2]), r"header JSON is an array, not an object"),
    ("json_string", raw_frame("ping"), r"header JSON is a string, not an object"),
    ("duplicate_key", raw_frame(b'{"kind":"ping","kind":"pong"}'), r"header JSON has the key 'kind' twice"),
    ("unknown_key", raw_frame(H(extra=1)), r"header has unknown key 'extra'; allowed: kind, id, tensors, meta"),
    ("no_kind", raw_frame(H(kind=DROP)), r"header has no 'kind'; allowed: request, response"),
    ("unknown_kind", raw_frame(H(kind="reply")), r"header kind 'reply' is not one of request"),
    ("kind_not_str", raw_frame(H(kind=["ping"])), r"header kind \['ping'\] is not one of"),
    ("id_negative", raw_frame(H(id=-1)), r"header id -1 is not an integer in 0\.\.2\*\*63-1"),
    ("id_bool", raw_frame(H(id=True)), r"header id True is not an integer"),
    ("id_str", raw_frame(H(id="1")), r"header id '1' is not an integer"),
    ("id_float", raw_frame(H(id=1.0)), r"header id 1\.0 is not an integer"),
    ("id_too_big", raw_frame(H(id=2**63)), r"header id 9223372036854775808 is not an integer"),
    ("id_huge", raw_frame(H(id=10**1000)), r"header id an integer of 3322 bits is not an integer"),
    ("meta_list", raw_frame(H(meta=[])), r"header meta is an array, not an object"),
    ("meta_null", raw_frame(H(meta=None)), r"header meta is null, not an object"),
    ("tensors_not_list", raw_frame(H(tensors={"x": 1})), r"header tensors is an object, not an array"),
    ("too_many_tensors", raw_frame(H([T(str(i), shape=[0]) for i in range(65)])),
     r"header lists 65 tensors; limit is 64"),
    ("tensor_not_object", raw_frame(H(["x"])), r"tensor 0 is a string, not an object"),
    ("tensor_unknown_key", raw_frame(H([T(data="")])), r"tensor 0 has unknown key 'data'; allowed in binary: name, dtype, shape"),
    ("tensor_no_shape", raw_frame(H([{"name": "x", "dtype": "int8"}])), r"tensor 0 has no 'shape'"),
    ("duplicate_names", raw_frame(H([T(shape=[0]), T(shape=[0])])), r"tensor 1: name 'x' is used twice"),
    ("empty_name", raw_frame(H([T("", shape=[0])])), r"tensor 0: name is 0 characters; allowed: a string of 1\.\.256"),
    ("long_name", raw_frame(H([T("n" * 257, shape=[0])])), r"tensor 0: name is 257 characters"),
    ("name_not_str", raw_frame(H([T(7, shape=[0])])), r"tensor 0: name is a number"),
    ("bad_dtype", raw_frame(H([T(dtype="complex64")])), r"tensor 0 \('x'\): dtype 'complex64' is not one of float32"),
    ("byte_order_dtype", raw_frame(H([T(dtype="<f4")])), r"dtype '<f4' is not one of"),
    ("shape_not_list", raw_frame(H([T(shape=3)])), r"tensor 0 \('x'\): shape is a number, not an array"),
    ("negative_dim", raw_frame(H([T(shape=[2, -1])])), r"shape\[1\] is -1; allowed: an integer 0\.\.1073741824"),
    ("bool_dim", raw_frame(H([T(shape=[True])])), r"shape\[0\] is True; allowed: an integer 0\.\.1073741824"),
    ("float_dim", raw_frame(H([T(shape=[2.0])])), r"shape\[0\] is 2\.0; allowed"),
    ("str_dim", raw_frame(H([T(shape=["2"])])), r"shape\[0\] is '2'; allowed"),
    ("too_many_dims", raw_frame(H([T(shape=[1] * 9)])), r"shape has 9 dims; limit is 8"),
    ("size_mismatch", raw_frame(H([T(shape=[3])]), bytes(8)), r"header tensors hold 12 B but the prefix declares a payload of 8 B"),
    ("tensor_over_limit", raw_frame(H([T(shape=[2**20, 2**20])])), r"shape \[1048576, 1048576\] of float32 holds "
     r"4398046511104 B; limit is 1073741824 B"),
    # a dimension beyond the payload limit is refused before any product is taken (with a 0
    # beside it the product is 0 B, and numpy refuses such a shape: issue 19)
    ("dim_over_limit", raw_frame(H([T(shape=[2**40, 2**40])])), r"shape\[0\] is 1099511627776; allowed: an integer "
     r"0\.\.1073741824"),
    ("dims_over_limit", raw_frame(H([T(shape=[10**300] * 8)])), r"shape\[0\] is an integer of 997 bits; allowed"),
    ("zero_beside_huge", raw_frame(H([T(shape=[0, 2**64])])), r"shape\[1\] is 18446744073709551616; allowed"),
    ("total_over_limit", raw_frame(H([T("a", "uint8", [2**29]), T("b", "uint8", [2**29]), T("c", "uint8", [1])])),
     r"header tensors hold 1073741825 B \(through tensor 2\); limit is 1073741824 B"),
    ("bool_data", raw_frame(H([T(dtype="bool", shape=[3])]), b"\x00\x01\x02"),
     r"tensor 0 \('x'\): bool data holds bytes other than 0 and 1"),
    ("b64_no_data", raw_frame(H([T()]), **B64), r"tensor 0 has no 'data'"),
    ("b64_data_not_str", raw_frame(H([T(data=[1])]), **B64), r"tensor 0 \('x'\): data is an array, not a base64 string"),
    ("b64_invalid", raw_frame(H([T(data="AAAA!AAAAAA=")]), **B64), r"tensor 0 \('x'\): invalid base64"),
    ("b64_not_ascii", raw_frame(H([T(data="AAAAÄAAAAAA=")]), **B64), r"tensor 0 \('x'\): invalid base64"),
    ("b64_length", raw_frame(H([T(data="AAAA")]), **B64), r"base64 data has 4 characters; 8 B of float32 take 12"),
    ("b64_padding", raw_frame(H([T(dtype="uint8", data="AA==")]), **B64),
     r"base64 decodes to 1 B; shape and dtype need 2 B"),
    ("b64_excess", raw_frame(H([T(dtype="uint8", shape=[1], data="A===")]), **B64), r"invalid base64"),
]


@pytest.mark.parametrize("data, match", [pytest.param(d, m, id=i) for i, d, m in BAD_FRAMES])
def test_read_rejects(data: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match) as info:
        feed(data)
    assert type(info.value) is CodecError
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_error_frames_are_valid_when_fixed() -> None:
    """The hand-built frames above are only wrong where they mean to be."""
    assert feed(raw_frame(H([T(dtype="bool", shape=[3])]), b"\x01\x00\x01")).tensors["x"].tolist() == [True, False, True]
    b64 = base64.b64encode(np.array([1.5, 2], "<f4").tobytes()).decode()
    assert feed(raw_frame(H([T(data=b64)]), **B64)).tensors["x"].tolist() == [1.5, 2.0]
    assert feed(raw_frame(H([T(shape=[3])]), bytes(12))).tensors["x"].shape == (3,)
    assert feed(raw_frame({"kind": "pong"})).id == 0  # id, tensors and meta may be left out


def test_connection_closed_only_at_a_frame_boundary() -> None:
    with pytest.raises(ConnectionClosed, match="the connection closed before a frame began"):
        feed(b"")
    with pytest.raises(CodecError, match="truncated") as info:
        feed(b"T")
    assert type(info.value) is CodecError


@pytest.mark.parametrize("kernel", [False, True], ids=["settimeout", "SO_RCVTIMEO"])
def test_a_receive_timeout_is_idle_before_a_frame_and_a_stall_inside_one(kernel: bool) -> None:
    """Issue 19: a server must tell an idle connection (wait on) from a frame that stopped
    arriving (close it), with the socket's own timeout or the kernel's on a blocking socket;
    both stay TimeoutErrors, as a client treats them."""
    a, b = socket.socketpair()
    with a, b:
        if kernel:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 50_000))
        else:
            a.settimeout(0.05)
        reader = BufferedReceiver(a)
        with pytest.raises(IdleTimeout):
            read_message(reader)
        frame = raw_frame(H([T()]), bytes(8))
        b.sendall(frame)                                  # nothing was consumed: the next read gets it whole
        assert read_message(reader).tensors["x"].tolist() == [0.0, 0.0]
        for cut in (10, PREFIX.size + 5, len(frame) - 4):  # in the prefix, the header, the payload
            b.sendall(frame[:cut])
            with pytest.raises(StallTimeout, match="the frame stalled: no bytes for the receive timeout after "):
                read_message(reader)
            b.sendall(frame[cut:])                         # out of step: drain the rest, as a new connection
            _drain(a, len(frame) - cut)
            reader = BufferedReceiver(a)
    assert issubclass(StallTimeout, TimeoutError) and issubclass(IdleTimeout, TimeoutError)


def _drain(sock: socket.socket, n: int) -> None:
    while n:
        n -= len(sock.recv(n))


def test_a_send_that_makes_no_progress_for_the_send_timeout_is_a_stall() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", 0, 50_000))
        big = np.zeros(1 << 22, np.uint8)                 # more than both socket buffers hold
        t0 = time.monotonic()
        with pytest.raises(StallTimeout, match=r"the peer took no bytes for the send timeout, \d+ B of the frame left"):
            send_message(a, Message("request", 1, {"x": big}))
        assert time.monotonic() - t0 < 2


def test_timeouts_and_os_errors_propagate_unchanged() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(0.05)
        with pytest.raises(TimeoutError):
            read_message(a)
        b.sendall(raw_frame(H([T()]), bytes(8))[:-4])  # a frame cut short, the peer still there
        with pytest.raises(TimeoutError):
            read_message(a)

    class Resets:
        def __init__(self, fail_after: int) -> None:
            self.data = memoryview(raw_frame(H([T()]), bytes(8)))
            self.fail_after = fail_after

        def recv_into(self, view: memoryview) -> int:
            if self.fail_after <= 0:
                raise ConnectionResetError(104, "Connection reset by peer")
            n = min(len(view), self.fail_after, 5)
            view[:n] = self.data[:n]
            self.data, self.fail_after = self.data[n:], self.fail_after - n
            return n

    for fail_after in (0, 10, 40):
        with pytest.raises(ConnectionResetError):
            read_message(Resets(fail_after))  # type: ignore[arg-type]


def test_caller_can_just_close_after_an_error() -> None:
    """A bad header with a large payload behind it: the reader raises, closes, and the
    sender blocked in the payload gets an OSError instead of hanging; a new connection works."""
    payload = bytes(8 << 20)
    data = raw_frame(H([T("x", "uint8", [len(payload) + 1])]), payload)
    a, b = socket.socketpair()
    sender = Sender(b, lambda s: s.sendall(data))
    sender.start()
    with pytest.raises(CodecError, match="but the prefix declares a payload"):
        read_message(a)
    a.close()
    sender.join(10)
    assert not sender.is_alive()
    assert isinstance(sender.error, (BrokenPipeError, ConnectionResetError))
    b.close()
    got, _ = round_trip(Message("ping", 1))
    assert got.kind == "ping"


# ----------------------------------------------------------------------------- no allocation beyond the limits


def peak_while(fn: Callable[[], Any]) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    error = None
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - returned to the test
        error = e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, error


@pytest.mark.parametrize("data, limits", [
    (raw_frame(b"garbage", header_len=2**32 - 1), Limits()),
    (raw_frame(b"garbage", payload_len=2**64 - 1), Limits()),
    (raw_frame(b"garbage", payload_len=300 << 20), Limits(max_payload_bytes=256 << 20)),
    (raw_frame(b"garbage", header_len=2**32 - 1, codec_id=1), Limits()),
    (raw_frame(b"garbage", header_len=6000, codec_id=1), Limits(max_header_bytes=1024, max_payload_bytes=3000)),
], ids=["header_len", "payload_len", "payload_over_small_limit", "b64_header_len", "b64_small_limit"])
def test_no_allocation_for_lengths_over_the_limit(data: bytes, limits: Limits) -> None:
    a, b = socket.socketpair()
    with a, b:
        b.sendall(data)
        b.shutdown(socket.SHUT_WR)
        peak, error = peak_while(lambda: read_message(a, limits))
    assert type(error) is CodecError and "limit is" in str(error)
    assert peak < 64 * 1024, peak


@pytest.mark.parametrize("header", [
    H([T("x", "uint8", [200 << 20])], kind="nope"),
    H([T("x", "uint8", [200 << 20]), T("x", "uint8", [0])]),
    H([T("x", "uint8", [100 << 20])]),  # size mismatch with the 200 MB the prefix claims
    b'{"kind": "request", "tensors": [',
])
def test_invalid_header_fails_before_a_200mb_payload_is_allocated(header: Any) -> None:
    data = raw_frame(header, payload_len=200 << 20)
    a, b = socket.socketpair()
    with a, b:
        b.sendall(data + bytes(1024))  # the peer stays open: no EOF to stop the reader early
        peak, error = peak_while(lambda: read_message(a, Limits(max_payload_bytes=256 << 20)))
    assert type(error) is CodecError, error
    assert peak < 1 << 20, peak


def test_valid_header_allocates_exactly_its_payload() -> None:
    """The control for the test above: a valid 200 MB claim does allocate it (then EOF)."""
    a, b = socket.socketpair()
    with a, b:
        b.sendall(raw_frame(H([T("x", "uint8", [200 << 20])]), payload_len=200 << 20) + bytes(10))
        b.shutdown(socket.SHUT_WR)
        peak, error = peak_while(lambda: read_message(a, Limits(max_payload_bytes=256 << 20)))
    assert type(error) is CodecError and "truncated" in str(error)
    assert 200 << 20 <= peak < (200 << 20) + (1 << 20)


# ----------------------------------------------------------------------------- fuzz

WIRE_DTYPES = [np.dtype(d) for d in DTYPES]
INPUT_DTYPES = WIRE_DTYPES + [d.newbyteorder(">") for d in WIRE_DTYPES if d.itemsize > 1]


def arrays(max_side: int = 5) -> st.SearchStrategy[np.ndarray]:
    return st.sampled_from(INPUT_DTYPES).flatmap(lambda dt: hnp.arrays(
        dt, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=max_side)))


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=8),
                         st.floats(allow_nan=False))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=8)

messages = st.builds(
    Message,
    kind=st.sampled_from(KINDS),
    id=st.integers(0, 2**63 - 1),
    tensors=st.dictionaries(st.text(min_size=1, max_size=6), arrays(), max_size=4),
    meta=st.dictionaries(st.text(max_size=6), json_values, max_size=4),
)


def read_or_codec_error(data: bytes, limits: Limits = SMALL) -> Message | None:
    try:
        msg = feed(data, limits)
    except CodecError as e:
        assert "\n" not in str(e)
        event(f"CodecError: {' '.join(str(e).split()[:3])}")
        return None
    event("read a message")
    return msg


@FUZZ
@given(st.one_of(
    st.binary(max_size=300),
    st.builds(lambda codec, hl, pl, rest: PREFIX.pack(MAGIC, VERSION, codec, 0, hl, pl, 0) + rest,
              st.integers(0, 1), st.integers(0, 400), st.integers(0, 400), st.binary(max_size=600)),
    st.builds(lambda body, rest: raw_frame(body, rest), st.binary(max_size=200), st.binary(max_size=100)),
))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    msg = read_or_codec_error(data)
    if msg is not None:
        assert msg.nbytes <= len(data)
        assert_reencodes(msg, SMALL)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    msg = draw(messages)
    if not msg.tensors and draw(st.booleans()):  # most frames carry a payload to damage
        msg.tensors = {"t": draw(arrays())}
    codec = draw(st.sampled_from(list(CODECS)))
    data = bytearray(encode(msg, codec, SMALL).to_bytes(draw(st.integers(0, 2**64 - 1))))
    header_end = PREFIX.size + PREFIX.unpack_from(data)[4]
    how = draw(st.sampled_from(["truncate", "flip", "flip_prefix", "flip_header", "flip_body_end",
                                "flip_payload", "header_len", "payload_len", "splice"]))
    if how == "truncate":
        return bytes(data[:draw(st.integers(1, len(data) - 1))])
    if how.startswith("flip"):
        lo, hi = {"flip": (0, len(data)), "flip_prefix": (0, PREFIX.size),
                  "flip_header": (PREFIX.size, header_end),
                  "flip_body_end": (max(PREFIX.size, len(data) - 64), len(data)),
                  # the tensor bytes, or sent_ns where there are none: both still read
                  "flip_payload": (header_end, len(data)) if header_end < len(data) else (20, 28)}[how]
        i = draw(st.integers(lo, hi - 1))
        data[i] ^= draw(st.integers(1, 255))
    elif how == "header_len":
        data[8:12] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    elif how == "payload_len":
        data[12:20] = draw(st.integers(0, 2**64 - 1)).to_bytes(8, "big")
    else:
        i = draw(st.integers(0, len(data)))
        data[i:i + draw(st.integers(0, 8))] = draw(st.binary(max_size=8))
    return bytes(data)


@FUZZ
@given(mutated_frames())
def test_fuzz_mutated_frames(data: bytes) -> None:
    msg = read_or_codec_error(data)
    if msg is not None:
        assert_reencodes(msg, SMALL)


MISSING = object()


def maybe(draw: st.DrawFn, valid: st.SearchStrategy, invalid: st.SearchStrategy) -> Any:
    """Mostly a valid value, one time in five an invalid one (or the key left out)."""
    return draw(invalid) if draw(st.integers(0, 4)) == 0 else draw(valid)


@st.composite
def random_headers(draw: st.DrawFn) -> bytes:
    """Headers that are valid in most fields and wrong in some, with a payload that mostly fits."""
    codec_id = draw(st.integers(0, 1))
    anything = st.one_of(json_values, st.just(MISSING))
    specs: list = []
    payload = b""
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 9)) == 0:
            specs.append(draw(json_values))
            continue
        dtype = maybe(draw, st.sampled_from(DTYPES), st.one_of(st.text(max_size=8), st.sampled_from(["<f4", "int16"]), anything))
        shape = maybe(draw, st.lists(st.integers(0, 4), max_size=4),
                      st.one_of(st.lists(st.one_of(st.integers(-3, 2**40), st.booleans(), st.floats(),
                                                   st.text(max_size=2)), max_size=10), anything))
        spec = {"name": maybe(draw, st.text(min_size=1, max_size=4), st.one_of(st.text(max_size=20), anything)),
                "dtype": dtype, "shape": shape}
        size = 0
        if dtype in DTYPES and isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape):
            n = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize if shape else np.dtype(dtype).itemsize
            size = n if n <= 1024 else draw(st.integers(0, 16))
        data = draw(st.binary(min_size=size, max_size=size))
        if dtype == "bool":
            data = bytes(b & 1 for b in data)
        if codec_id == 1:
            spec["data"] = maybe(draw, st.just(base64.b64encode(data).decode()), st.one_of(
                st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()), st.text(max_size=12), anything))
        else:
            payload += data
        if draw(st.integers(0, 9)) == 0:
            spec[draw(st.sampled_from(["extra", "data", "name"]))] = draw(json_values)
        specs.append({k: v for k, v in spec.items() if v is not MISSING})
    header = {
        "kind": maybe(draw, st.sampled_from(KINDS), st.one_of(st.text(max_size=8), anything)),
        "id": maybe(draw, st.integers(0, 2**63 - 1),
                    st.one_of(st.integers(-2, 2**64), st.booleans(), st.floats(), st.text(max_size=3), anything)),
        "tensors": maybe(draw, st.just(specs), anything),
        "meta": maybe(draw, st.dictionaries(st.text(max_size=4), json_values, max_size=3), anything),
    }
    if draw(st.integers(0, 9)) == 0:
        header[draw(st.text(max_size=5))] = draw(json_values)
    header = {k: v for k, v in header.items() if v is not MISSING}
    if codec_id == 1 and draw(st.integers(0, 9)) == 0:
        payload = draw(st.binary(min_size=1, max_size=8))
    elif codec_id == 0 and draw(st.integers(0, 4)) == 0:
        payload = draw(st.binary(max_size=300))
    return raw_frame(json.dumps(header).encode(), payload, codec_id=codec_id)


@FUZZ
@given(random_headers())
def test_fuzz_random_headers(data: bytes) -> None:
    msg = read_or_codec_error(data)
    if msg is not None:
        header = json.loads(data[PREFIX.size:PREFIX.size + PREFIX.unpack_from(data)[4]])
        assert header["kind"] == msg.kind and header.get("id", 0) == msg.id
        assert [t["name"] for t in header.get("tensors", [])] == list(msg.tensors)
        assert_reencodes(msg, SMALL)


@FUZZ
@given(st.dictionaries(st.text(min_size=1, max_size=6), arrays(max_side=6), max_size=5),
       st.sampled_from(list(CODECS)))
def test_fuzz_round_trip_arbitrary_arrays(tensors: dict[str, np.ndarray], codec: str) -> None:
    got, frame = round_trip(Message("request", 1, tensors), codec, SMALL)
    same_tensors(got.tensors, tensors)
    assert got.nbytes == frame.nbytes


def test_buffered_receiver_reads_back_to_back_frames_and_large_payloads():
    """Two frames arriving in one segment, then one bigger than the buffer: each is read
    whole, in order, through one BufferedReceiver (the servers' and client's reader)."""
    import threading

    from workloads.codec import BufferedReceiver

    a, b = socket.socketpair()
    small = [Message("request", i, {"x": np.full((3,), i, np.float32)}, {"n": i}) for i in (1, 2)]
    big = Message("response", 3, {"y": np.arange(300_000, dtype=np.float64)})
    frames = [encode(m).to_bytes() for m in small]
    sender = threading.Thread(target=lambda: (a.sendall(frames[0] + frames[1]), send_message(a, big), a.close()))
    sender.start()
    reader = BufferedReceiver(b, size=4096)
    got = [read_message(reader) for _ in range(3)]
    sender.join()
    assert [m.id for m in got] == [1, 2, 3]
    np.testing.assert_array_equal(got[1].tensors["x"], np.full((3,), 2, np.float32))
    np.testing.assert_array_equal(got[2].tensors["y"], big.tensors["y"])
    with pytest.raises(ConnectionClosed):
        read_message(reader)
    b.close()
