"""Bounded servers (issue 19): what a peer can make a host server allocate and hold. Every test
runs live server processes started as the runner starts them (``ServerConfig.to_argv``), on
loopback, with tiny ONNX artifacts; memory is read from ``/proc/PID/status`` (VmHWM: the peak
resident set, so an allocation freed again still counts)."""
from __future__ import annotations

import json
import random
import resource
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.tiny import tiny_artifact
from tests.unit.test_serving import Servers, _free_port
from workloads.codec import MAGIC, PREFIX, CodecError, Limits, Message, encode, read_message, send_message
from workloads.runtime import ArtifactRunner, Declared, declared_io
from workloads.serving import LIMIT_MARGIN, Client, ServerConfig

PY = sys.executable
X = np.ones((1, 4), np.float32)          # the tiny artifact's input: 16 B


def _vm(pid: int, key: str) -> int:
    """VmRSS / VmHWM of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class Live(Servers):
    """Servers started the way the runner starts them (a ServerConfig's argv); stopped by PID
    (SIGTERM), and what each printed when it stopped kept."""

    def __init__(self):
        super().__init__()
        self.stopped: list[dict] = []       # the lines each printed after its ready line

    def start(self, art, part: int = 0, host: str = "edge", next_port: int | None = None, **cfg) -> tuple[int, dict]:
        port = _free_port()
        config = ServerConfig(str(art), part, host, [("127.0.0.1", port)],
                              ("127.0.0.1", next_port) if next_port else None, **cfg)
        return port, self.launch([PY, "-m", "workloads.serving", *config.to_argv()])

    def stop(self) -> None:
        running = [p for p in self.procs if not p.stdout.closed]
        for p in running:
            if p.poll() is None:
                p.terminate()
        for p in running:
            p.wait(timeout=10)
            self.stopped += [json.loads(line) for line in p.stdout.read().splitlines() if line.strip()]
            p.stdout.close()


@pytest.fixture
def live():
    s = Live()
    yield s
    s.stop()


def _state(port: int, codec: str = "binary") -> dict:
    """The server's counters, from a pong (on a connection of its own, closed again)."""
    c = Client(("127.0.0.1", port), "probe", codec=codec)
    try:
        return c.ping(5)
    finally:
        c.close()


def _until(done, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "not within 5 s"
        time.sleep(0.02)


def _ok(port: int, rid: int = 1, codec: str = "binary") -> float:
    """A valid request answered correctly; returns how long it took (s)."""
    c = Client(("127.0.0.1", port), "mobile", codec=codec, timeout_s=10)
    t0 = time.monotonic()
    r = c.request(rid, {"X": X})
    took = time.monotonic() - t0
    c.close()
    assert r["status"] == "ok", r
    return took


# ---- limits derived from the artifact -------------------------------------------------------

def test_declared_io_reads_what_onnx_declares_without_onnx(tmp_path):
    """The server reads its part's declared inputs and outputs from the ONNX protobuf itself (a
    host imports no onnx); the weights are skipped, including external ones."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Identity", ["s"], ["s2"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("s", TensorProto.STRING, [2]),
         helper.make_tensor_value_info("m", TensorProto.INT64, None),              # no shape
         helper.make_tensor_value_info("u", TensorProto.FLOAT16, [None, "n", 7])],  # axis 0 unknown, 1 symbolic
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("s2", TensorProto.STRING, [2]),
         helper.make_tensor_value_info("b", TensorProto.BOOL, [0, 5])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.data", size_threshold=0)
    got = declared_io(tmp_path / "m.onnx")
    assert got == {"x": Declared(4, ("batch", 4)), "s": Declared(None, (2,)), "m": Declared(8, None),
                   "u": Declared(2, (None, "n", 7)), "y": Declared(4, ("batch", 3)),
                   "s2": Declared(None, (2,)), "b": Declared(1, (0, 5))}
    assert [got[n].nbytes() for n in ("x", "s", "m", "u", "y", "b")] == [16, None, None, None, 12, 0]
    assert got["x"].nbytes(batch=8) == 128
    (tmp_path / "bad.onnx").write_bytes(b"\x3a\xff\xff\xff\xff\x0f")        # graph field running past the end
    with pytest.raises(ValueError, match=r"bad.onnx: not a readable ONNX model \(field 7 runs past its message"):
        declared_io(tmp_path / "bad.onnx")


def test_the_largest_legitimate_request_and_answer_of_each_part(tmp_path):
    """Part 0 takes the model's inputs (X: 16 B), a relay what the part before sends on
    (H1: 32 B); an answer is the model's output (Y: 12 B) or a later exit head's logits. A cut
    whose declaration is open falls back to the bytes prepare recorded for it."""
    import onnx

    art, _, _ = tiny_artifact(tmp_path / "a", parts=3)
    runner = ArtifactRunner(art)
    assert [runner.largest_request(p) for p in range(3)] == [(16, ""), (32, ""), (32, "")]
    assert runner.largest_answer(0) == (12, "") and runner.largest_answer(1) == (12, "")
    # the cut H1 declared [batch, n] in both segments, as exporters with a symbolic batch write it
    for seg, where in (("seg0.onnx", "output"), ("seg1.onnx", "input")):
        m = onnx.load(str(art / seg))
        value = next(v for v in getattr(m.graph, where) if v.name == "H1")
        value.type.tensor_type.shape.dim[1].dim_param = "n"
        onnx.save(m, str(art / seg))
    assert ArtifactRunner(art).largest_request(1) == (
        None, "tensor H1 has the open shape [1, 'n'] in the artifact's segment files")
    manifest = json.loads((art / "artifact.json").read_text())
    manifest["report"] = {"partition": {"cuts": [{"tensor": "H1", "bytes": 32}, {"tensor": "H2", "bytes": 32}]}}
    (art / "artifact.json").write_text(json.dumps(manifest))
    assert ArtifactRunner(art).largest_request(1) == (32, "")


def test_a_server_states_its_limits_and_a_part_without_a_size_keeps_the_default(tmp_path, live):
    import onnx

    art, _, _ = tiny_artifact(tmp_path / "a", parts=2, exit_threshold=0.99)
    port1, ready1 = live.start(art, 1, "cloud")
    port0, ready0 = live.start(art, 0, "edge", port1)
    assert ready0["payload_limit"] == LIMIT_MARGIN * 16 and ready0["answer_limit"] == LIMIT_MARGIN * 12
    assert ready1["payload_limit"] == LIMIT_MARGIN * 32 and ready1["answer_limit"] is None
    assert ready0["limits_note"] == ready1["limits_note"] == ""
    assert _ok(port0) < 5
    # a cut whose declarations leave its size open (and no record of it): the codec's default
    # limit, and the ready line says why
    for seg, where in (("seg0.onnx", "output"), ("seg1.onnx", "input")):
        m = onnx.load(str(art / seg))
        next(v for v in getattr(m.graph, where) if v.name == "H1").type.tensor_type.shape.dim[1].dim_param = "width"
        onnx.save(m, str(art / seg))
    _, ready = live.start(art, 1, "cloud")
    assert ready["payload_limit"] == Limits().max_payload_bytes
    assert ready["limits_note"] == ("requests: tensor H1 has the open shape [1, 'width'] in the artifact's segment "
                                    "files, so the default limit applies")


# ---- oversize frames --------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["binary", "json-base64"])
def test_a_frame_declaring_a_gigabyte_gets_an_error_frame_naming_the_limit_and_costs_no_memory(tmp_path, live, codec):
    """Issue 19: a ~100-byte header declaring a 1 GiB tensor made a server zero-fill 1 GiB (and a
    json-base64 prefix ~1.4 GB), then wait forever for a sender that never sends it."""
    art, _, _ = tiny_artifact(tmp_path / "a", parts=1)
    port, ready = live.start(art, codec=codec, timeout_s=30)
    pid = ready["pid"]
    assert _ok(port, codec=codec) < 5
    peak = _vm(pid, "VmHWM")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        if codec == "binary":
            header = json.dumps({"kind": "request", "id": 5, "meta": {},
                                 "tensors": [{"name": "X", "dtype": "float32", "shape": [1, 1 << 28]}]}).encode()
            sock.sendall(PREFIX.pack(MAGIC, 1, 0, 0, len(header), 1 << 30, 0) + header)   # then nothing
            limit = "limit is 32 B"
        else:
            sock.sendall(PREFIX.pack(MAGIC, 1, 1, 0, 1_400_000_000, 0, 0) + b'{"kind": "request", ')
            limit = f"limit is {Limits().max_header_bytes + 4 * -(-32 // 3)} B"
        msg = read_message(sock)            # (before: no answer within 5 s, 1 GiB held)
    assert msg.kind == "error" and limit in msg.meta["error"], msg.meta
    assert _vm(pid, "VmHWM") - peak < 50 << 20
    assert _ok(port, 2, codec=codec) < 5
    assert _state(port, codec)["bad_frames"] == 1


def test_a_relay_bounds_requests_by_its_cut_and_answers_by_the_models_output(tmp_path, live):
    """Part 1 takes at most twice the cut (H1: 32 B); part 0 takes back at most twice the
    model's output (Y: 12 B) from its next hop, here a fake one answering 1 GiB."""
    art, _, _ = tiny_artifact(tmp_path / "a", parts=2)
    port1, ready1 = live.start(art, 1, "cloud")
    with socket.create_connection(("127.0.0.1", port1), timeout=5) as sock:
        header = json.dumps({"kind": "request", "id": 5, "meta": {},
                             "tensors": [{"name": "H1", "dtype": "float32", "shape": [1, 1 << 28]}]}).encode()
        sock.sendall(PREFIX.pack(MAGIC, 1, 0, 0, len(header), 1 << 30, 0) + header)
        msg = read_message(sock)
    assert msg.kind == "error" and "limit is 64 B" in msg.meta["error"]

    fake = socket.socket()
    fake.bind(("127.0.0.1", 0))
    fake.listen(4)

    def answer_a_gigabyte() -> None:
        conn, _ = fake.accept()
        with conn:
            req = read_message(conn)
            header = json.dumps({"kind": "response", "id": req.id, "meta": {"trace": []},
                                 "tensors": [{"name": "Y", "dtype": "float32", "shape": [1, 1 << 28]}]}).encode()
            conn.sendall(PREFIX.pack(MAGIC, 1, 0, 0, len(header), 1 << 30, 0) + header)
            time.sleep(6)                    # and never the payload

    t = threading.Thread(target=answer_a_gigabyte, daemon=True)
    t.start()
    port0, ready0 = live.start(art, 0, "edge", fake.getsockname()[1], timeout_s=5)
    peak = _vm(ready0["pid"], "VmHWM")
    c = Client(("127.0.0.1", port0), "mobile", timeout_s=10)
    r = c.request(1, {"X": X})
    c.close()
    fake.close()
    assert r["status"] == "error" and "limit is 24 B" in r["error"], r
    assert _vm(ready0["pid"], "VmHWM") - peak < 50 << 20


# ---- stalls, idle connections, the connection cap ---------------------------------------------

def test_slow_loris_holds_at_most_the_cap_valid_requests_are_answered_and_stalled_frames_are_closed(tmp_path, live):
    art, _, _ = tiny_artifact(tmp_path / "a", parts=1)
    port, ready = live.start(art, timeout_s=1.0, max_connections=8)
    assert ready["max_connections"] == 8 and ready["stall_timeout_s"] == 1.0
    assert _ok(port, 1) < 5                                # (the first inference is the slow one)
    frame = encode(Message("request", 9, {"X": X})).to_bytes()
    loris = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(6)]
    quiet = threading.Event()

    def trickle() -> None:            # a byte every 0.3 s on each: under the stall timeout, never a whole frame
        for i in range(len(frame) - 1):
            if quiet.wait(0.3):
                return
            for s in loris:
                s.send(frame[i:i + 1])

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        time.sleep(0.4)
        assert _ok(port, 2) < 0.5                    # on the 7th slot: answered in normal time
        keep = Client(("127.0.0.1", port), "mobile")
        _until(lambda: keep.ping(5)["connections"] == 7)   # the loris and this one (the 7th is closed)
        extra = Client(("127.0.0.1", port), "mobile", timeout_s=5)
        beyond = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        refusals = [read_message(s) for s in beyond[1:]]
        r = extra.request(2, {"X": X})          # the 8th slot was taken by beyond[0]: refused too
        assert r["status"] == "error" and "edge: refused: 8 connections are open" in r["error"], r
        assert refusals[0].kind == "error" and "the most serving.max_connections allows" in refusals[0].meta["error"]
        beyond[0].close()
        time.sleep(1.3)                              # the loris have trickled for 1.7 s: more than the timeout
        state = keep.ping(5)
        assert state["stalled"] == 0 and state["refused"] == 2 and state["connections"] == 7, state
    finally:
        quiet.set()
        sender.join()
    t0 = time.monotonic()
    for s in loris:                                  # silent now: closed within the stall timeout, cleanly
        assert s.recv(100) == b""
    assert time.monotonic() - t0 < 2.5
    state = keep.ping(5)
    assert state["stalled"] == 6 and state["connections"] == 1, state
    keep.close()
    for s in loris + beyond[1:]:
        s.close()
    assert _ok(port, 3) < 0.5
    live.stop()
    assert live.stopped == [{"stopped": True, "served": 3, "connections": 0, "refused": 2, "stalled": 6,
                             "bad_frames": 0, "internal_errors": 0, "uncaught": 0}]
    assert ("stopped after 3 requests; 2 connections refused beyond serving.max_connections (8); 6 closed stalled"
            in live.logged())


def test_a_slow_frame_is_answered_and_an_idle_connection_is_kept(tmp_path, live):
    """The stall timeout is not a deadline: a frame that takes twice as long as it in all, but
    is never silent for it, is answered; between frames a connection may idle longer."""
    art, ref, _ = tiny_artifact(tmp_path / "a", parts=1)
    port, _ = live.start(art, timeout_s=1.0)
    frame = encode(Message("request", 3, {"X": X}, {"trace": []})).to_bytes()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        t0 = time.monotonic()
        for i in range(0, len(frame), -(-len(frame) // 5)):
            sock.sendall(frame[i:i + -(-len(frame) // 5)])
            time.sleep(0.45)
        msg = read_message(sock)
        assert time.monotonic() - t0 > 2 and msg.kind == "response"
        np.testing.assert_allclose(msg.tensors["Y"], ref(X), rtol=1e-5)
        time.sleep(2.2)
        send_message(sock, Message("request", 4, {"X": X}))
        assert read_message(sock).kind == "response"
    assert _state(port)["stalled"] == 0


def test_a_peer_that_stops_taking_answers_is_closed_after_the_stall_timeout(tmp_path, live):
    """SO_SNDTIMEO: requests keep coming, answers are never read; once the socket buffers are
    full the server's send makes no progress, and after the timeout the connection is closed
    (before: that thread waited forever)."""
    art, _, _ = tiny_artifact(tmp_path / "a", parts=1)
    port, _ = live.start(art, timeout_s=1.0)
    big = {"trace": [{"host": "x" * 200, "stage": "client"}] * 2000}      # ~430 kB echoed in every answer
    frame = encode(Message("request", 1, {"X": X}, big)).to_bytes()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)        # before connecting: a small window
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sent = 0
    try:
        for _ in range(200):
            sock.sendall(frame)
            sent += 1
    except OSError:               # the server stopped reading (its send blocks), then closed
        pass
    deadline = time.monotonic() + 10
    while _state(port)["stalled"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    sock.close()
    assert _state(port)["stalled"] == 1 and sent < 200
    assert _ok(port) < 1


def _open_files(argv: list[str], soft: int, hard: int) -> list[str]:
    """The server's limit on open files (soft, hard) once it is ready, started under these."""
    s = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    try:
        ready = json.loads(s.stdout.readline())
        with open(f"/proc/{ready['pid']}/limits") as f:
            return next(line.split()[3:5] for line in f if line.startswith("Max open files"))
    finally:
        s.terminate()
        s.wait(10)
        s.stdout.close()


def _may_raise_hard_limits() -> bool:
    """CAP_SYS_RESOURCE (bit 24) among this process's effective capabilities (root in a
    container may lack it)."""
    with open("/proc/self/status") as f:
        caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return bool(caps >> 24 & 1)


def test_the_connection_cap_gets_the_open_files_it_needs_or_says_why_not_in_one_line(tmp_path):
    art, _, _ = tiny_artifact(tmp_path / "a", parts=1)
    argv = [PY, "-m", "workloads.serving", *ServerConfig(str(art), 0, "edge", [("127.0.0.1", _free_port())],
                                                         max_connections=3000).to_argv()]
    assert _open_files(argv, 1024, 4096) == ["3128", "4096"]       # under the hard limit: the soft one is raised
    if _may_raise_hard_limits():                                   # then the hard one is raised too
        assert _open_files(argv, 1024, 2048) == ["3128", "3128"]
    else:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 2048)))
        assert p.returncode == 2 and ("edge: 3000 connections (serving.max_connections) need 3128 open files, but "
                                      "this process may open at most 2048 (ulimit -Hn) and cannot raise that") in p.stderr
    with open("/proc/sys/fs/nr_open") as f:
        beyond = int(f.read()) + 1                                 # more than any process may open
    argv[argv.index("--max-connections") + 1] = str(beyond)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert (f"edge: {beyond} connections (serving.max_connections) need {beyond + 128} open files, but this "
            "process may open at most ") in p.stderr
    assert "(ulimit -Hn) and cannot raise that: lower serving.max_connections or raise the limit" in p.stderr
    argv[argv.index("--max-connections") + 1] = "0"
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--max-connections 0: expected a whole number >= 1" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    argv[argv.index("--max-connections") + 1] = "8"
    argv[argv.index("--timeout") + 1] = "0"                        # the stall timeout must be one
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--timeout 0.0: expected seconds above 0, at most a day" in p.stderr


# ---- fuzz ---------------------------------------------------------------------------------------

def _mutated(rng: random.Random) -> bytes:
    """A frame broken one of many ways: prefix fields, lengths, header JSON, truncation,
    garbage; some stay valid."""
    spec = {"name": "X", "dtype": "float32", "shape": [1, 4]}
    header = {"kind": "request", "id": rng.randrange(1 << 20), "tensors": [spec], "meta": {"trace": []}}
    payload = X.tobytes()
    k = rng.randrange(10)
    if k == 0:                                       # a header field replaced by something odd
        odd = rng.choice([None, -1, 2 ** 64, 1.5, "x", [], {}, [[1]], "\u00e9" * 300, True])
        where = rng.choice(["kind", "id", "tensors", "meta", "trace", "name", "dtype", "shape", "dim"])
        if where in ("kind", "id", "tensors", "meta"):
            header[where] = odd
        elif where == "trace":
            header["meta"]["trace"] = odd
        elif where == "dim":
            spec["shape"][rng.randrange(2)] = odd
        else:
            spec[where] = odd
    elif k == 1:                                     # a big shape, the payload declared to match
        spec["shape"] = [1, rng.choice([1 << 20, 1 << 26, (1 << 28) - 1])]
        return _pack(header, b"", payload_len=4 * spec["shape"][1])
    elif k == 2:                                     # random prefix lengths
        raw = json.dumps(header).encode()
        return PREFIX.pack(MAGIC, 1, 0, 0, rng.choice([0, 1, len(raw) - 1, len(raw) + 7, 1 << 20, (1 << 32) - 1]),
                           rng.choice([0, 15, 17, 1 << 30, (1 << 64) - 1]), 0) + raw + payload
    elif k == 3:                                     # bits flipped anywhere
        frame = bytearray(_pack(header, payload))
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        return bytes(frame)
    elif k == 4:                                     # cut short
        frame = _pack(header, payload)
        return frame[:rng.randrange(len(frame))]
    elif k == 5:                                     # garbage after a valid frame
        return _pack(header, payload) + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    elif k == 6:                                     # pure garbage
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
    elif k == 7:                                     # another kind, or the other codec
        header["kind"] = rng.choice(["ping", "pong", "response", "error"])
        return _pack(header, payload, codec=rng.choice([0, 1]))
    elif k == 8:                                     # tensors renamed, doubled, retyped
        header["tensors"] = rng.choice([[{**spec, "name": "Z"}], [spec, spec], [{**spec, "dtype": "int8"}],
                                        [{**spec, "shape": [4]}], []])
        payload = payload if header["tensors"] and header["tensors"][0]["dtype"] == "float32" else payload[:4]
    return _pack(header, payload)


def _pack(header: dict, payload: bytes, codec: int = 0, payload_len: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return PREFIX.pack(MAGIC, 1, codec, 0, len(raw), len(payload) if payload_len is None else payload_len, 0) \
        + raw + payload


def test_fuzz_2000_mutated_frames_each_gets_an_answer_or_a_clean_close_and_no_thread_dies(tmp_path, live):
    """Issue 19: 2,000 frames left a server alive with 71 connection threads dead of uncaught
    exceptions. Each frame goes on a connection of its own, whose sending side is then shut:
    every one must end in an answer (response or error frame) or a close, the server's own
    count of connections ended by an exception stays 0, and its memory stays bounded."""
    art, _, _ = tiny_artifact(tmp_path / "a", parts=1)
    port, ready = live.start(art, timeout_s=5)
    pid = ready["pid"]
    assert _ok(port) < 5
    peak = _vm(pid, "VmHWM")
    rng = random.Random(19)
    outcomes: dict[str, int] = {}
    for i in range(2000):
        frame = _mutated(rng)
        got: list[str] = []
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                sock.sendall(frame)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass                    # refused already (an error frame waits), or closed
            while True:
                try:
                    got.append(read_message(sock).kind)
                except CodecError as e:          # ConnectionClosed: the end
                    if "closed before a frame began" not in str(e):
                        raise AssertionError(f"frame {i} {frame[:80]!r}: {e}") from None
                    break
                except ConnectionResetError:     # closed with our bytes unread, after its answer
                    assert got, f"frame {i} {frame[:80]!r}: reset without an answer"
                    break
        key = "+".join(got) or "closed"
        outcomes[key] = outcomes.get(key, 0) + 1
    state = _state(port)
    assert state["internal_errors"] == 0 and state["uncaught"] == 0, (state, live.logged()[-3000:])
    assert _vm(pid, "VmHWM") - peak < 50 << 20
    assert "Traceback" not in live.logged() and "internal error" not in live.logged()
    # the mix: answered, refused with an error frame, and closed without one (a frame cut short)
    assert outcomes.get("response", 0) > 100 and outcomes.get("error", 0) > 1000, outcomes
    assert sum(outcomes.values()) == 2000 and state["bad_frames"] > 500
    assert _ok(port, 2) < 5
