"""The compute probe's artifact mode (``python -m workloads.computeprobe --artifact``), as
`testbed profile` and `testbed calibrate EXPERIMENT` start it: a part runs as its part server
runs it, every segment of the part with its exit head, on the run's request inputs, and says
per request which input it was and whether the part answered it by an exit. Real ONNX
Runtime sessions on tiny artifacts (tests/tiny.py); no host or cgroup (those are the
integration tests')."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from tests.tiny import tiny_artifact
from workloads.runtime import softmax_confidence
from workloads.serving import save_inputs

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def _probe(*args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "workloads.computeprobe", *args, "--gap-ms", "0:0", "--warmup", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    return json.loads(p.stdout.strip().splitlines()[-1])


def _inputs(tmp_path, n: int, seed: int = 1):
    xs = [np.random.default_rng(seed + i).standard_normal((1, 4)).astype(np.float32) for i in range(n)]
    path = tmp_path / "inputs.npz"
    save_inputs(path, [{"X": x} for x in xs], [None] * n)
    return path, xs


def _threshold_between(exit_logits, xs) -> float:
    """A threshold that some inputs' exit confidence passes and others' do not."""
    conf = sorted(float(softmax_confidence(exit_logits(x))[0]) for x in xs)
    mid = len(conf) // 2
    return (conf[mid - 1] + conf[mid]) / 2


def test_each_request_says_its_input_and_whether_the_part_exited(tmp_path):
    path, xs = _inputs(tmp_path, 8)
    _, _, exit_logits = tiny_artifact(tmp_path / "probe", parts=2, exit_threshold=0.5)
    threshold = _threshold_between(exit_logits, xs)
    folder, _, _ = tiny_artifact(tmp_path / "a", parts=2, exit_threshold=threshold)
    want = [float(softmax_confidence(exit_logits(x))[0]) >= threshold for x in xs]
    assert 0 < sum(want) < len(want)
    first = _probe("--artifact", str(folder), "--part", "0", "--inputs", str(path), "--requests", "16")
    assert first["ok"] and first["inputs"] == [i % 8 for i in range(16)] and first["reached"] == list(range(8))
    assert first["exited"] == [want[i % 8] for i in range(16)]
    # part 1 gets only the inputs part 0 did not answer, cycled; it has no exit of its own
    second = _probe("--artifact", str(folder), "--part", "1", "--inputs", str(path), "--requests", "6")
    went_on = [i for i in range(8) if not want[i]]
    assert second["reached"] == went_on and second["inputs"] == [went_on[j % len(went_on)] for j in range(6)]
    assert second["exited"] == [False] * 6 and len(second["wall_ms"]) == 6
    # each request's CPU time: the process's, and the inference's own (as a part server's
    # trace records it, what the report sets beside the run's), which is part of it
    assert len(second["infer_cpu_ms"]) == len(second["cpu_ms"]) == 6
    assert all(0 < i <= c + 0.01 for i, c in zip(second["infer_cpu_ms"], second["cpu_ms"])), second


def test_a_part_of_several_segments_runs_them_all_with_the_exit_between(tmp_path):
    """An early-exit artifact has more segments than parts: here one part of two segments, the
    exit head at the end of the first. (Profiling ``seg<part>.onnx`` alone, as before, timed the
    first segment only and never saw an exit.)"""
    path, xs = _inputs(tmp_path, 8)
    _, _, exit_logits = tiny_artifact(tmp_path / "probe", parts=2, exit_threshold=0.5)
    threshold = _threshold_between(exit_logits, xs)
    folder, _, _ = tiny_artifact(tmp_path / "a", parts=2, exit_threshold=threshold)
    manifest = json.loads((folder / "artifact.json").read_text())
    manifest["parts"] = 1
    for s in manifest["segments"]:
        s["part"] = 0
    (folder / "artifact.json").write_text(json.dumps(manifest))
    got = _probe("--artifact", str(folder), "--part", "0", "--inputs", str(path), "--requests", "8")
    want = [float(softmax_confidence(exit_logits(x))[0]) >= threshold for x in xs]
    assert got["ok"] and got["exited"] == want


def test_without_inputs_the_probe_generates_one_from_the_declared_shapes(tmp_path):
    folder, _, _ = tiny_artifact(tmp_path / "a", parts=2)
    got = _probe("--artifact", str(folder), "--part", "1", "--requests", "3")
    assert got["ok"] and got["reached"] == [0] and got["inputs"] == [0, 0, 0] and got["exited"] == [False] * 3


def test_a_part_no_input_reaches_is_one_line_of_error(tmp_path):
    path, _ = _inputs(tmp_path, 3)
    folder, _, _ = tiny_artifact(tmp_path / "a", parts=2, exit_threshold=0.0)      # every input exits in part 0
    got = _probe("--artifact", str(folder), "--part", "1", "--inputs", str(path), "--requests", "3")
    assert not got["ok"] and "none of the 3 inputs reaches part 1" in got["error"]
