"""Per-request compute on a host, as a server there would see it (numpy + onnxruntime, no torch).

Started inside a host (its namespace and cgroup) by :func:`emulation.calibrate.measure_compute`
(through ``testbed calibrate``) and by ``benchmarks/bench_cpu.py``. It loads its work once, warms up, then runs ``--requests``
requests one at a time, each after an idle gap drawn uniformly from ``--gap-ms LO:HI`` (as a
server between requests: the quota of the period is whatever the gap left), and prints one
JSON line: ``{"ok": true, "wall_ms": [...], "cpu_ms": [...], "infer_cpu_ms": [...]}`` (wall
time and the process's CPU time per request, and the CPU time of the inference alone as a
part server's trace records it: its threads', without the pacing around it), or
``{"ok": false, "error": "..."}`` with exit status 1.

Work: ``--busy-ms X`` spins until the thread has used X ms of CPU (fixed work, whatever the
CPU); ``--onnx FILE [--threads N]`` runs one ONNX Runtime inference of FILE per request on
inputs made from its declared shapes (float: seeded normal; integer: zeros, a valid token id;
symbolic dimensions: 1), with N intra-op threads (the host's core budget); a later part of a
split model takes ``--after EARLIER.onnx`` (each part ahead of it, in order), run once to make
its inputs. ``--artifact FOLDER --part K [--inputs FILE.npz]`` runs part K of a prepared
artifact as its part server does: every segment of the part in order, an exit head answering
early when confident (an early-exit artifact has more segments than parts), on the run's
request inputs (cycled; those an earlier part answers never reach K and are left out), and
adds to the JSON line each request's input index and whether the part answered it by an exit.

``--pace SHARE`` runs each request through :class:`workloads.pacing.Pacer` as the part server
does (``serving.pace``), so what is measured is what a server on the host would compute.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from . import pacing
from .runtime import load_manifest, session


def _busy(ms: float):
    def run() -> None:
        end = time.thread_time() + ms / 1000.0
        while time.thread_time() < end:
            pass
    return run


def _feeds(sess, rng) -> dict:
    import numpy as np

    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        if "float" in i.type:
            dtype = np.float16 if "float16" in i.type else (np.float64 if "double" in i.type else np.float32)
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
        elif "bool" in i.type:
            feeds[i.name] = np.ones(shape, dtype=bool)
        else:
            dtype = {"tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(i.type, np.int64)
            feeds[i.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _onnx(path: str, threads: int, pool: list, spin: bool = True, before: tuple[str, ...] = ()):
    """One inference of ``path`` per call; ``before``: the ONNX files of the parts ahead of it,
    run once on generated inputs to make its own (a later part's input is a cut tensor)."""
    import numpy as np
    import onnxruntime  # noqa: F401  (its import starts threads of its own: count the pool's after it)

    rng = np.random.default_rng(0)
    env: dict = {}
    for i, earlier in enumerate(before):
        s = session(earlier)
        feeds = _feeds(s, rng) if i == 0 else {n.name: env[n.name] for n in s.get_inputs()}
        env.update(feeds)
        env.update(zip((o.name for o in s.get_outputs()), s.run(None, feeds)))
    tids = pacing.thread_ids()
    sess = session(path, threads, spin=spin)       # the options a part server's sessions get
    pool.extend(pacing.new_threads(tids))
    feeds = {n.name: env[n.name] for n in sess.get_inputs()} if before else _feeds(sess, rng)

    def run() -> None:
        sess.run(None, feeds)
    return run


def _artifact(folder: str, part: int, threads: int, pool: list, spin: bool, inputs: str | None):
    """Part ``part`` of the artifact in ``folder`` as its part server runs it (its segments in
    order, an exit head answering early when confident: `ArtifactRunner.run_part`), on the
    request inputs in ``inputs`` (an ``.npz`` as the run's client loads it) or, without, on
    inputs generated from the first segment's declared shapes. The parts ahead of it run once
    per input, on one thread, to make what it is fed; an input that one of them answers (an
    exit) never reaches this part and is left out. Returns (run(request) -> exited, the input
    indices that reach the part)."""
    import numpy as np
    import onnxruntime  # noqa: F401  (its import starts threads of its own: count the pool's after it)

    from .runtime import ArtifactRunner
    from .serving import load_inputs

    if inputs:
        samples = load_inputs(inputs)[0]
    else:
        first = session(str(Path(folder) / load_manifest(folder)["segments"][0]["file"]))
        samples = [_feeds(first, np.random.default_rng(0))]
    fed = []
    if part:
        ahead = ArtifactRunner(folder, parts=tuple(range(part)), threads=1)
        for i, x in enumerate(samples):
            tensors = x
            for k in range(part):
                res = ahead.run_part(k, dict(tensors) | {n: v for n, v in x.items() if n not in tensors})
                if res.done:
                    break
                tensors = res.tensors
            else:
                fed.append((i, dict(tensors) | {n: v for n, v in x.items() if n not in tensors}))
    else:
        fed = list(enumerate(samples))
    if not fed:
        raise ValueError(f"none of the {len(samples)} inputs reaches part {part}: the parts ahead answer every one")
    tids = pacing.thread_ids()
    runner = ArtifactRunner(folder, parts=(part,), threads=threads, spin=spin)   # as a part server's
    pool.extend(pacing.new_threads(tids))

    def run(request: int) -> bool:
        res = runner.run_part(part, fed[request % len(fed)][1])
        return res.exited_at is not None
    return run, [i for i, _ in fed]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workloads.computeprobe")
    work = ap.add_mutually_exclusive_group(required=True)
    work.add_argument("--busy-ms", type=float)
    work.add_argument("--onnx")
    work.add_argument("--artifact", help="an artifact's folder: run its part --part as the part server does")
    ap.add_argument("--part", type=int, default=0)
    ap.add_argument("--inputs", default=None, help="with --artifact: the request inputs (.npz), cycled")
    ap.add_argument("--after", action="append", default=[],
                    help="an ONNX part ahead of --onnx (repeat, in order): run once to make its inputs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--gap-ms", default="50:150")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pace", type=float, default=None, help="pace to this many cores (as serving.pace does)")
    a = ap.parse_args(argv)
    try:
        lo, hi = (float(x) for x in a.gap_ms.split(":"))
        pool: list[int] = []
        paced = pacing.pace_factor(a.pace, a.threads) is not None
        reached = None
        if a.artifact is not None:
            per_request, reached = _artifact(a.artifact, a.part, a.threads, pool, not paced, a.inputs)
        else:
            once = _busy(a.busy_ms) if a.busy_ms is not None else _onnx(a.onnx, a.threads, pool, not paced, tuple(a.after))
            per_request = lambda request: (once(), None)[1]      # noqa: E731
        pacer = pacing.Pacer(a.pace, a.threads, pool)
        pacing.sharp_timers()
        rng = random.Random(a.seed)

        def run(request: int):
            return pacer.run(per_request, request)
        for j in range(a.warmup):
            run(j)
        wall, cpu, infer_cpu, exited = [], [], [], []
        for j in range(a.requests):
            time.sleep(rng.uniform(lo, hi) / 1000.0)
            c0, t0 = time.process_time_ns(), time.perf_counter_ns()
            exited.append(run(j))
            t1, c1 = time.perf_counter_ns(), time.process_time_ns()
            wall.append(round((t1 - t0) / 1e6, 4))
            cpu.append(round((c1 - c0) / 1e6, 4))
            infer_cpu.append(round(pacer.last[0] / 1e6, 4))
    except Exception as e:  # noqa: BLE001 - one line back to the caller, whatever failed
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    got = {"ok": True, "wall_ms": wall, "cpu_ms": cpu, "infer_cpu_ms": infer_cpu}
    if reached is not None:      # which input each request was, and whether this part answered it by an exit
        got.update(inputs=[reached[j % len(reached)] for j in range(a.requests)], exited=exited, reached=reached)
    print(json.dumps(got), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
