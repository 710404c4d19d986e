"""The host server and the request client, for real: server processes started the way the
runner starts them (``python -m workloads.serving serve``), on loopback (no root needed), with
tiny ONNX artifacts run by ONNX Runtime."""
from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import MISSING, fields

import numpy as np
import pytest

from tests.tiny import tiny_artifact
from workloads.codec import MAGIC, PREFIX, CodecError, Limits, Message, read_message, send_message
from workloads.serving import Client, ServerConfig, _args, check_output, load_inputs, save_inputs
from workloads.trace import FIELDS, STAGES, breakdown

PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Servers:
    """Start part servers last part first, like the runner; stop them by PID."""

    def __init__(self):
        import tempfile

        self.procs: list[subprocess.Popen] = []
        self.log = tempfile.TemporaryFile("w+")     # a pipe nobody reads would fill and block the server

    def start(self, artifact, part: int, host: str, nxt: int | None = None, *extra: str) -> tuple[int, dict]:
        port = _free_port()
        argv = [PY, "-m", "workloads.serving", "serve", "--artifact", str(artifact), "--part", str(part),
                "--host", host, "--listen", f"127.0.0.1:{port}", *extra]
        if nxt is not None:
            argv += ["--next", f"127.0.0.1:{nxt}"]
        return port, self.launch(argv)

    def launch(self, argv: list[str]) -> dict:
        """Start one server; its ready line."""
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.procs.append(p)
        line = p.stdout.readline()
        assert line, self.logged()
        return json.loads(line)

    def logged(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            p.wait(timeout=10)


@pytest.fixture
def servers():
    s = Servers()
    yield s
    s.stop()


def _chain(servers, art, hosts, *extra):
    nxt = None
    for part in reversed(range(len(hosts))):
        nxt, ready = servers.start(art, part, hosts[part], nxt, *extra)
        assert ready["ready"] and ready["part"] == part and ready["host"] == hosts[part]
    return nxt


def _documented(trace: list[dict]) -> bool:
    """Every record's stage and fields are in workloads.trace's schema."""
    names = {f.name for f in FIELDS}
    return all(rec["stage"] in STAGES and set(rec) <= names for rec in trace)


def test_two_part_chain_answers_like_the_whole_model_and_traces_every_hop(tmp_path, servers):
    art, ref, _ = tiny_artifact(tmp_path / "a", parts=2)
    port = _chain(servers, art, ["edge", "cloud"])
    c = Client(("127.0.0.1", port), "mobile")
    pong = c.ping(5)
    assert pong["host"] == "edge" and pong["part"] == 0
    x = np.random.default_rng(1).standard_normal((1, 4)).astype(np.float32)
    r = c.request(7, {"X": x})
    c.close()
    assert r["status"] == "ok", r
    np.testing.assert_allclose(r["output"], ref(x), rtol=1e-5, atol=1e-5)
    hosts = [(t["host"], t["stage"]) for t in r["trace"]]
    assert hosts == [("mobile", "client"), ("edge", "request"), ("cloud", "request"),
                     ("edge", "response"), ("mobile", "response")]
    assert _documented(r["trace"])
    b = breakdown(r["trace"])
    links = [(h["src"], h["dst"], h["direction"]) for h in b.hops if h["kind"] == "link"]
    assert links == [("mobile", "edge", "request"), ("edge", "cloud", "request"),
                     ("cloud", "edge", "response"), ("edge", "mobile", "response")]
    assert [(h["src"], h["part"]) for h in b.hops if h["kind"] == "compute"] == [("edge", 0), ("cloud", 1)]
    # every stamp is on one clock: the pieces are positive and add up to at most end-to-end
    assert all(h["ms"] > 0 for h in b.hops)
    assert 0 < b.compute_ms + b.transmission_ms + b.serialization_ms <= b.e2e_ms
    assert b.overhead_ms >= 0
    assert b.bytes_sent == sum(t["bytes"] for t in r["trace"][1:])
    # each frame holds its tensors (X: 16 B, H1: 32 B, Y: 12 B) after a 28-byte prefix
    sizes = {(h["src"], h["dst"]): h["bytes"] for h in b.hops if h["kind"] == "link"}
    assert sizes[("mobile", "edge")] >= 28 + 16 and sizes[("edge", "cloud")] >= 28 + 32
    assert sizes[("cloud", "edge")] >= 28 + 12 and sizes[("edge", "mobile")] > sizes[("cloud", "edge")]


def test_exit_head_answers_at_the_first_part_and_nothing_is_sent_on(tmp_path, servers):
    art, _, exit_logits = tiny_artifact(tmp_path / "a", parts=2, exit_threshold=0.0)   # always exits
    port = _chain(servers, art, ["edge", "cloud"])
    c = Client(("127.0.0.1", port), "mobile")
    x = np.ones((1, 4), np.float32)
    r = c.request(1, {"X": x})
    c.close()
    assert r["status"] == "ok" and r["exit"] == 0
    np.testing.assert_allclose(r["output"], exit_logits(x), rtol=1e-5, atol=1e-5)
    assert [t["host"] for t in r["trace"]] == ["mobile", "edge", "mobile"]
    assert breakdown(r["trace"]).exit_segment == 0


def test_per_request_connections_and_json_base64_codec_give_the_same_answers(tmp_path, servers):
    art, ref, _ = tiny_artifact(tmp_path / "a", parts=3)
    port = _chain(servers, art, ["mobile", "edge", "cloud"], "--codec", "json-base64",
                  "--connection", "per-request")
    c = Client(("127.0.0.1", port), "mobile", codec="json-base64", connection="per-request")
    x = np.arange(4, dtype=np.float32)[None]
    for rid in range(1, 4):
        r = c.request(rid, {"X": x})
        assert r["status"] == "ok", r
        np.testing.assert_allclose(r["output"], ref(x), rtol=1e-5, atol=1e-5)
        assert c.sock is None                              # closed after every request
        b = breakdown(r["trace"])
        # the client and every forwarding server opened a connection for this request
        assert sum(1 for t in r["trace"] if "conn1" in t) == 3
        assert _documented(r["trace"])


def test_a_dead_next_hop_is_an_error_answer_not_a_hang(tmp_path, servers):
    art, _, _ = tiny_artifact(tmp_path / "a", parts=2)
    dead = _free_port()                                    # nothing listens there
    port, _ = servers.start(art, 0, "edge", dead, "--timeout", "2")
    c = Client(("127.0.0.1", port), "mobile", timeout_s=5)
    r = c.request(1, {"X": np.ones((1, 4), np.float32)})
    assert r["status"] == "error" and "edge: next hop" in r["error"], r
    assert [t["host"] for t in r["trace"]] == ["mobile", "edge", "mobile"]
    # and the server is still there for the next request
    assert c.ping(2)["host"] == "edge"


def test_wrong_inputs_are_error_answers_and_the_server_stays_up(tmp_path, servers):
    art, ref, _ = tiny_artifact(tmp_path / "a", parts=1)
    port, _ = servers.start(art, 0, "edge")
    c = Client(("127.0.0.1", port), "mobile", timeout_s=5)
    r = c.request(1, {"Z": np.ones((1, 4), np.float32)})
    assert r["status"] == "error" and "lacks tensors ['X']" in r["error"]
    r = c.request(2, {"X": np.ones((1, 5), np.float32)})
    assert r["status"] == "error" and "inference failed" in r["error"]
    r = c.request(3, {"X": np.ones((1, 4), np.float32)})
    assert r["status"] == "ok"


def test_request_timeout_is_a_timeout_status(tmp_path):
    """A first hop that accepts and never answers: the client gives up after its timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    c = Client(listener.getsockname(), "mobile", timeout_s=0.3)
    t0 = time.monotonic()
    r = c.request(1, {"X": np.ones((1, 4), np.float32)})
    assert r["status"] == "timeout" and 0.3 <= time.monotonic() - t0 < 3
    listener.close()
    c.close()


def _frames(rng: random.Random, n: int):
    """Valid and invalid frames mixed: garbage, truncated, oversized claims, bad headers."""
    good_header = json.dumps({"kind": "request", "id": 1, "tensors": [{"name": "X", "dtype": "float32",
                                                                       "shape": [1, 4]}], "meta": {}}).encode()
    payload = np.ones((1, 4), np.float32).tobytes()
    for _ in range(n):
        k = rng.randrange(7)
        if k == 0:      # garbage bytes
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))), False
        elif k == 1:    # a payload far over the limit
            yield PREFIX.pack(MAGIC, 1, 0, 0, 10, 1 << 40, 0) + b"x" * 10, False
        elif k == 2:    # a header over the limit
            yield PREFIX.pack(MAGIC, 1, 0, 0, (1 << 31), 0, 0), False
        elif k == 3:    # wrong dtype / shape / not JSON
            bad = rng.choice([good_header.replace(b"float32", b"object"), good_header.replace(b"[1, 4]", b"[1, -4]"),
                              b"{not json", good_header.replace(b'"request"', b'"exec"')])
            yield PREFIX.pack(MAGIC, 1, 0, 0, len(bad), len(payload), 0) + bad + payload, False
        elif k == 4:    # truncated valid frame, then the connection ends
            frame = PREFIX.pack(MAGIC, 1, 0, 0, len(good_header), len(payload), 0) + good_header + payload
            yield frame[:rng.randrange(1, len(frame))], False
        elif k == 5:    # wrong size: header says 16 B, payload is 12 B
            yield PREFIX.pack(MAGIC, 1, 0, 0, len(good_header), 12, 0) + good_header + payload[:12], False
        else:           # a valid request
            yield PREFIX.pack(MAGIC, 1, 0, 0, len(good_header), len(payload), 0) + good_header + payload, True


def test_fuzz_10000_frames_the_server_answers_or_closes_and_stays_up(tmp_path, servers):
    art, ref, _ = tiny_artifact(tmp_path / "a", parts=1)
    port, ready = servers.start(art, 0, "edge")
    pid = ready["pid"]
    rng = random.Random(1234)
    answered = rejected = 0
    sock = None
    for frame, valid in _frames(rng, 10_000):
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            sock.sendall(frame)
            if not valid:
                sock.shutdown(socket.SHUT_WR)      # a truncated frame ends the connection
            msg = read_message(sock)
        except (CodecError, OSError):
            msg = None
        if valid:
            assert msg is not None and msg.kind == "response", msg
            np.testing.assert_allclose(msg.tensors["Y"], ref(np.ones((1, 4), np.float32)), rtol=1e-5)
            answered += 1
        else:
            assert msg is None or msg.kind == "error"
            rejected += 1
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    assert answered > 1000 and rejected > 8000
    proc = servers.procs[-1]
    assert proc.poll() is None, "the server died"
    # it stayed small: no 1 TiB allocation was attempted (RSS well under 1 GiB)
    rss = int(open(f"/proc/{pid}/statm").read().split()[1]) * 4096
    assert rss < 1 << 30
    c = Client(("127.0.0.1", port), "mobile")
    assert c.request(1, {"X": np.ones((1, 4), np.float32)})["status"] == "ok"
    c.close()


def test_sigterm_stops_the_server_cleanly(tmp_path):
    art, _, _ = tiny_artifact(tmp_path / "a", parts=1)
    s = Servers()
    s.start(art, 0, "edge")
    p = s.procs[0]
    p.terminate()
    assert p.wait(timeout=5) == 0
    assert "stopped after 0 requests" in s.logged()


WIDE = 20_000      # a tiny artifact this wide computes ~0.1 ms; paced to 1/200 of a core: ~20 ms


def _at_once(port: int, inputs: list[np.ndarray], timeout_s: float = 30) -> list[dict]:
    """One request per input, each from its own client and connection, all sent at the same
    moment (the connections are opened and pinged first); the answers in input order."""
    clients = [Client(("127.0.0.1", port), f"client{i}", timeout_s=timeout_s) for i in range(len(inputs))]
    for c in clients:
        c.ping(5)
    go = threading.Barrier(len(inputs))
    out: list[dict | None] = [None] * len(inputs)

    def send(i: int) -> None:
        go.wait()
        out[i] = clients[i].request(i + 1, {"X": inputs[i]})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 5)
    for c in clients:
        c.close()
    assert all(r is not None for r in out), "a client never got its answer"
    return out


def test_concurrent_requests_compute_one_at_a_time_in_arrival_order_and_the_trace_shows_the_wait(tmp_path, servers):
    k = 6
    art, ref, _ = tiny_artifact(tmp_path / "a", parts=1, width=WIDE)
    port, _ = servers.start(art, 0, "edge", None, "--threads", "1", "--pace", "0.005")
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((1, WIDE)).astype(np.float32) for _ in range(k)]
    warm = Client(("127.0.0.1", port), "mobile")
    assert warm.request(99, {"X": inputs[0]})["status"] == "ok"        # the first inference is slower
    warm.close()
    answers = _at_once(port, inputs)
    for x, r in zip(inputs, answers):       # each client got its own answer
        assert r["status"] == "ok", r
        np.testing.assert_allclose(r["output"], ref(x), rtol=1e-4, atol=1e-2)   # sums of 20k products
        assert _documented(r["trace"])
    recs = sorted((r["trace"][1] for r in answers), key=lambda rec: rec["comp0"])
    assert all(rec["host"] == "edge" and rec["stage"] == "request" for rec in recs)
    # one inference at a time: each starts after the one before it ended, and without idling
    for before, after in zip(recs, recs[1:]):
        assert after["comp0"] >= before["comp1"]
        assert after["comp0"] - before["comp1"] < 50e6
    # in arrival order: computed in the order the frames were decoded, and queued behind each other
    assert [rec["dec1"] for rec in recs] == sorted(rec["dec1"] for rec in recs)
    assert [rec["queued"] for rec in recs] == list(range(k)), recs       # all came in while the first computed
    compute = [(rec["comp1"] - rec["comp0"]) / 1e6 for rec in recs]
    wait = [(rec["comp0"] - rec["dec1"]) / 1e6 for rec in recs]
    assert min(compute) > 5            # paced: long enough for the others to queue
    for rec in recs:                   # ... by the CPU time of the thread that ran the inference
        cpu, paced = int(rec["cpu"]), int(rec["paced"])
        assert cpu > 10_000 and paced > 0 and rec["comp1"] - rec["comp0"] >= 0.95 * 200 * cpu
    spread = (recs[-1]["dec1"] - recs[0]["dec1"]) / 1e6     # the last arrived this long after the first
    for i in range(1, k):
        # waited at least for the compute of every request ahead of it (less how late it came)
        assert wait[i] >= sum(compute[:i]) - spread - 0.5, (i, wait, compute, spread)
        assert wait[i] >= compute[i - 1] - spread - 0.5
    for r in answers:
        b = breakdown(r["trace"])
        rec = r["trace"][1]
        assert b.queue_ms == (rec["comp0"] - rec["dec1"]) / 1e6 and b.late_ms == 0
        assert [h["kind"] for h in b.hops] == ["link", "queue", "compute", "link"]
        assert b.overhead_ms >= 0       # the wait is counted once
    # the server answered pings meanwhile and says nothing is queued now
    c = Client(("127.0.0.1", port), "mobile")
    assert c.ping(5)["queued"] == 0
    c.close()


def test_sigterm_stops_the_server_promptly_with_requests_queued(tmp_path, servers):
    k = 6
    art, _, _ = tiny_artifact(tmp_path / "a", parts=1, width=WIDE)
    port, _ = servers.start(art, 0, "edge", None, "--threads", "1", "--pace", "0.0002")    # ~0.5 s each
    p = servers.procs[-1]
    answers: list = []
    sender = threading.Thread(target=lambda: answers.extend(
        _at_once(port, [np.ones((1, WIDE), np.float32)] * k, timeout_s=20)))
    sender.start()
    probe = Client(("127.0.0.1", port), "mobile")
    deadline = time.monotonic() + 10
    while probe.ping(5)["queued"] < k and time.monotonic() < deadline:     # pings are not queued
        time.sleep(0.01)
    assert probe.ping(5)["queued"] == k, "the requests did not queue up"
    probe.close()
    t0 = time.monotonic()
    p.terminate()
    assert p.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 2            # not after the queue's ~3 s of compute
    sender.join(5)          # the queued requests were failed or their connections closed: no client waits
    assert not sender.is_alive() and len(answers) == k
    assert all(r["status"] in ("ok", "error") for r in answers), answers
    done = sum(r["status"] == "ok" for r in answers)
    assert done <= 1 and f"stopped after {done} requests" in servers.logged()


@pytest.mark.parametrize("threads", [1, 3])
def test_the_ready_line_reads_back_the_threads_onnx_runtime_really_started(tmp_path, servers, threads):
    art, _, _ = tiny_artifact(tmp_path / "a", parts=1)
    _, ready = servers.start(art, 0, "edge", None, "--threads", str(threads))
    # counted from /proc/self/task around the sessions' creation, not echoed from the flag
    assert ready["threads"] == threads and ready["sessions"] >= 1
    assert ready["pool_threads"] == ready["sessions"] * (threads - 1)
    assert len(list((tmp_path / "a").glob("*.onnx"))) >= ready["sessions"]


def test_server_refuses_a_part_layout_that_cannot_work(tmp_path):
    art, _, _ = tiny_artifact(tmp_path / "a", parts=2)
    p = subprocess.run([PY, "-m", "workloads.serving", "serve", "--artifact", str(art), "--part", "0",
                        "--host", "edge", "--listen", "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--next is needed" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_the_host_side_imports_neither_torch_nor_onnx():
    code = ("import sys, workloads.serving, workloads.runtime, workloads.codec; "
            "bad = [m for m in ('torch', 'onnx', 'transformers') if m in sys.modules]; print(bad)")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_inputs_file_round_trip_and_output_check(tmp_path):
    samples = [{"a": np.full((1, 2), i, np.float32), "m": np.ones((1, 2), np.int64)} for i in range(3)]
    refs = [np.array([[0.1, 0.9]], np.float32), None, np.array([[1.0, 0.0]], np.float32)]
    save_inputs(str(tmp_path / "in.npz"), samples, refs)
    got, got_refs = load_inputs(str(tmp_path / "in.npz"))
    assert len(got) == 3 and list(got[0]) == ["a", "m"]
    np.testing.assert_array_equal(got[2]["a"], samples[2]["a"])
    assert got_refs[1] is None
    assert check_output(np.array([[0.2, 0.8]]), refs[0]) == (True, pytest.approx(0.1))
    assert check_output(np.array([[0.9, 0.1]]), refs[0])[0] is False
    assert check_output(np.zeros((1, 3)), refs[0]) == (False, None)
    assert check_output(None, refs[0]) == (None, None)


def _rec(host, stage, **stamps):
    return {"host": host, "stage": stage, **stamps}


def test_breakdown_arithmetic_on_a_known_trace():
    ms = 1_000_000
    trace = [
        _rec("mobile", "client", start=0, enc0=1 * ms),
        _rec("edge", "request", part=0, sent=2 * ms, recv0=3 * ms, recv1=12 * ms, dec1=13 * ms, bytes=1000,
             comp0=14 * ms, comp1=24 * ms, conn0=25 * ms, conn1=27 * ms, enc0=28 * ms, exit=None),
        _rec("cloud", "request", part=1, sent=29 * ms, recv0=30 * ms, recv1=49 * ms, dec1=50 * ms, bytes=500,
             comp0=50 * ms, comp1=55 * ms, enc0=56 * ms, exit=None),
        _rec("edge", "response", sent=57 * ms, recv0=58 * ms, recv1=60 * ms, dec1=61 * ms, bytes=100, enc0=62 * ms),
        _rec("mobile", "response", sent=63 * ms, recv0=64 * ms, recv1=66 * ms, dec1=67 * ms, bytes=100),
    ]
    b = breakdown(trace)
    assert b.e2e_ms == 67
    assert b.compute_ms == 10 + 5
    # links: 12-2, (49-29) + 2 connect, 60-57, 66-63
    assert b.transmission_ms == 10 + 22 + 3 + 3
    # encode: 2-1, 29-28, 57-56, 63-62; decode: 1 each
    assert b.serialization_ms == 4 + 4
    # edge began computing 1 ms after it decoded the frame (14 - 13), cloud at once: queue waits
    assert b.queue_ms == 1 and b.late_ms == 0
    assert [(h["kind"], h["src"], h["ms"]) for h in b.hops if h["kind"] != "link"] == [
        ("queue", "edge", 1), ("compute", "edge", 10), ("queue", "cloud", 0), ("compute", "cloud", 5)]
    assert b.overhead_ms == 67 - 15 - 38 - 8 - 1
    assert b.bytes_sent == 1700
    local = breakdown([_rec("edge", "client", start=0, enc0=0),
                       _rec("edge", "request", part=0, sent=ms, recv0=ms, recv1=2 * ms, dec1=2 * ms, bytes=10,
                            comp0=2 * ms, comp1=5 * ms, enc0=5 * ms),
                       _rec("edge", "response", sent=6 * ms, recv0=6 * ms, recv1=7 * ms, dec1=7 * ms, bytes=10)])
    assert local.transmission_ms == 0 and local.compute_ms == 3      # same-host hops are not links
    # ... they are the host's own work: links 2-1 and 7-6, encode 6-5 (the client's: 1-0 = 1)
    assert local.serialization_ms == 1 + 1 + 1 + 1 and local.overhead_ms == 0
    # a receiver that waited 4 ms for its quota on the last bytes: those 4 ms leave the link
    # (19-2 = 17 ms) for the receiving host's serialisation (decode 1 + stall 4)
    stalled = breakdown([_rec("mobile", "client", start=0, enc0=1 * ms),
                         _rec("edge", "request", part=0, sent=2 * ms, recv0=3 * ms, recv1=19 * ms, dec1=20 * ms,
                              bytes=1000, stall=f"{4 * ms:013d}", comp0=20 * ms, comp1=30 * ms, enc0=30 * ms),
                         _rec("mobile", "response", sent=31 * ms, recv0=32 * ms, recv1=33 * ms, dec1=33 * ms,
                              bytes=100, stall=f"{0:013d}")])
    assert stalled.transmission_ms == 13 + 2 and stalled.serialization_ms == 1 + 5 + 1 + 0
    assert stalled.hops[0]["ms"] == 13 and stalled.hops[0]["decode_ms"] == 5
    assert stalled.overhead_ms == 33 - 10 - 15 - 7
    incomplete = breakdown([_rec("mobile", "client", start=0, enc0=0)])
    assert incomplete.e2e_ms is None and incomplete.hops == []


def test_breakdown_of_a_scheduled_request_that_queued_counts_from_when_it_was_due():
    """A load scenario scheduled the request at 0 and the client began it at 3 ms (late); the
    server had 2 requests ahead and computed 10 ms after it decoded the frame."""
    from workloads.trace import client_record

    ms = 1_000_000
    trace = [
        _rec("mobile", "client", due=0, start=3 * ms, enc0=4 * ms),
        _rec("edge", "request", part=0, sent=5 * ms, recv0=6 * ms, recv1=8 * ms, dec1=9 * ms, bytes=1000,
             queued=2, comp0=19 * ms, comp1=25 * ms, enc0=26 * ms, exit=None),
        _rec("mobile", "response", sent=27 * ms, recv0=28 * ms, recv1=30 * ms, dec1=31 * ms, bytes=100),
    ]
    b = breakdown(trace)
    assert b.e2e_ms == 31                                  # from due, not from start (28 ms)
    assert b.late_ms == 3 and b.queue_ms == 10 and b.compute_ms == 6
    assert b.transmission_ms == 3 + 3                       # 8-5, 30-27
    assert b.serialization_ms == (1 + 1) + (1 + 1)          # encode 5-4, 27-26; decode 9-8, 31-30
    assert b.overhead_ms == 31 - 6 - 6 - 4 - 10 - 3 == 2    # 3 -> 4 at the client, 25 -> 26 at edge
    assert [(h["kind"], h["src"], h["dst"], h["direction"], h["part"], h["ms"]) for h in b.hops] == [
        ("link", "mobile", "edge", "request", None, 3), ("queue", "edge", "edge", "request", 0, 10),
        ("compute", "edge", "edge", "request", 0, 6), ("link", "edge", "mobile", "response", None, 3)]
    assert b.hops[1]["bytes"] is None and b.hops[1]["decode_ms"] is None and b.hops[1]["encode_ms"] is None
    # without due: from start, nothing late
    unscheduled = breakdown([{k: v for k, v in trace[0].items() if k != "due"}] + trace[1:])
    assert unscheduled.e2e_ms == 28 and unscheduled.late_ms == 0 and unscheduled.overhead_ms == 2
    assert "due" not in client_record("mobile") and client_record("mobile", due=123)["due"] == 123
    assert _documented(trace)


def test_a_record_holds_the_frames_stamps_and_its_size_does_not_depend_on_the_stall():
    from workloads.trace import fixed_ns, record

    frame = Message("request", 3, sent_ns=10, recv_start_ns=11, recv_end_ns=15, decode_end_ns=16, stall_ns=2,
                    nbytes=1000)
    rec = record("edge", "request", frame, part=0)
    assert list(rec.items()) == [("host", "edge"), ("stage", "request"), ("part", 0), ("sent", 10), ("recv0", 11),
                                 ("recv1", 15), ("dec1", 16), ("bytes", 1000), ("stall", "0000000000002")]
    assert "part" not in record("mobile", "response", frame)
    long_stall = record("edge", "request", Message("request", stall_ns=9_999_999_999_999), part=0)
    assert len(json.dumps(long_stall)) == len(json.dumps(record("edge", "request", Message("request"), part=0)))
    assert fixed_ns(0) == "0" * 13 and int(fixed_ns(123)) == 123


FULL_CONFIG = ServerConfig("/cache/ab cd/artifact", 2, "edge", [("10.0.0.1", 7070), ("10.0.1.1", 7071)],
                           ("10.0.2.1", 7072), threads=3, codec="json-base64", connection="per-request",
                           timeout_s=0.1234567891, pace=1 / 3, max_connections=12345)


def test_the_full_config_sets_every_option_away_from_its_default():
    """So that the round trip below covers every option a server takes (frame limits have none)."""
    defaults = {f.name: f.default for f in fields(ServerConfig) if f.default is not MISSING}
    assert defaults and all(getattr(FULL_CONFIG, n) != d for n, d in defaults.items())


@pytest.mark.parametrize("cfg", [FULL_CONFIG, ServerConfig("a.onnx", 0, "cloud", [("127.0.0.1", 1)])],
                         ids=["every-option", "defaults"])
def test_a_servers_command_line_parses_back_to_its_config(cfg):
    argv = cfg.to_argv()
    assert argv[0] == "serve"
    assert ServerConfig.from_args(_args(argv)) == cfg


def test_frame_limits_have_no_command_line_and_are_refused():
    cfg = ServerConfig("a.onnx", 0, "cloud", [("127.0.0.1", 1)], limits=Limits(max_tensors=2))
    with pytest.raises(ValueError, match="no option for frame limits"):
        cfg.to_argv()


def _raw_frame(header: dict, payload: bytes = b"") -> bytes:
    """A binary frame built by hand (the codec's own encoder refuses what these tests send)."""
    from workloads.codec import _codec_id, _pack_prefix

    raw = json.dumps(header).encode()
    return _pack_prefix(_codec_id("binary"), len(raw), len(payload), 0) + raw + payload


@pytest.mark.parametrize("shape", [[0, 2 ** 64], [0, 10 ** 30], [2 ** 40, 0, 2 ** 40]])
def test_a_shape_of_zero_bytes_with_a_huge_dimension_is_an_error_frame_not_a_dead_thread(tmp_path, servers, shape):
    """Issue 19: such shapes passed the size check as 0 B and numpy's zeros() then raised
    ValueError in the connection's thread, which died without an answer."""
    art, _, _ = tiny_artifact(tmp_path / "a", parts=1)
    port, _ = servers.start(art, 0, "edge")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_raw_frame({"kind": "request", "id": 7, "meta": {},
                                 "tensors": [{"name": "X", "dtype": "float32", "shape": shape}]}))
        msg = read_message(sock)
    assert msg.kind == "error" and f"shape[{shape.index(max(shape))}]" in msg.meta["error"]
    c = Client(("127.0.0.1", port), "mobile")
    assert c.request(1, {"X": np.ones((1, 4), np.float32)})["status"] == "ok"
    c.close()
    assert "Traceback" not in servers.logged() and "Exception in thread" not in servers.logged()


def test_an_answer_whose_trace_outgrows_the_header_limit_is_an_error_answer(tmp_path, servers):
    """Issue 19: a request whose trace fills the header to just under 1 MiB was computed, and
    the reply (its trace one record longer) raised CodecError where only OSError was caught."""
    art, _, _ = tiny_artifact(tmp_path / "a", parts=1)
    port, _ = servers.start(art, 0, "edge")
    from workloads.codec import encode

    entry = {"host": "x" * 200, "stage": "client"}
    x = np.ones((1, 4), np.float32)

    def header(n: int) -> int:
        roomy = Limits(max_header_bytes=4 << 20)          # to measure, not to send
        return len(encode(Message("request", 3, {"X": x}, {"trace": [entry] * n}), limits=roomy).header)

    # the longest trace whose request still fits: the server's record (a few hundred bytes)
    # then takes the answer's header over the limit
    n = (Limits().max_header_bytes - 1000) // (header(2) - header(1))
    while header(n) > Limits().max_header_bytes:
        n -= 1
    while header(n + 1) <= Limits().max_header_bytes:
        n += 1
    filler = [entry] * n
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        send_message(sock, Message("request", 3, {"X": x}, {"trace": filler}))
        msg = read_message(sock)
        assert msg.kind == "error" and msg.id == 3 and "the answer cannot be sent" in msg.meta["error"]
        send_message(sock, Message("request", 4, {"X": x}, {"trace": []}))     # the connection goes on
        assert read_message(sock).kind == "response"
    assert "Traceback" not in servers.logged() and "Exception in thread" not in servers.logged()
