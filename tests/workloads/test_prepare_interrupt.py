"""Ctrl-C during a training operator in `testbed prepare`: no half-written artifact, a
checkpoint left behind, and the next run resumes from it (recorded in the report)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workloads.cache import Cache

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]

EXPERIMENT = """\
name: interrupt
models: [fmnist_cnn]
strategies:
  - {name: pruned, operators: [{prune: {ratio: 0.4, epochs: 3, lr: 0.0007}}], placement: edge}
"""


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXPERIMENT)
    # a cache of our own for what this test trains, sharing the default cache's trained
    # weights, exports and data sets (so the base model is not trained again)
    shared = Cache().root
    root = tmp_path / "cache"
    root.mkdir()
    for kind in ("weights", "models", "evaluations", "datasets"):
        (shared / kind).mkdir(parents=True, exist_ok=True)
        (root / kind).symlink_to(shared / kind)
    env = {**os.environ, "TESTBED_CACHE": str(root)}
    checkpoints, trained = root / "checkpoints", root / "trained"
    before: set = set()
    cmd = [sys.executable, "-m", "testbed.cli", "prepare", str(exp), "--json"]
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    seen = None
    while time.monotonic() < deadline and p.poll() is None:   # a checkpoint appears after epoch 1
        found = list(checkpoints.glob("*.pt")) if checkpoints.exists() else []
        if found:
            seen = found[0]
            break
        time.sleep(0.5)
    if seen is None:
        p.kill()
        pytest.fail(f"no checkpoint appeared: {p.communicate()[1][-2000:]}")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    assert seen.exists()                                         # kept for the next run
    after = set(trained.iterdir()) if trained.exists() else set()
    assert not [d for d in after - before if not d.name.startswith(".")]   # nothing half-built
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    art = Path(json.loads(done.stdout)["artifacts"][0]["path"])
    report = json.loads((art / "artifact.json").read_text())["report"]["prune"]
    assert report["history"]["resumed_at"] and report["history"]["stopped_by"] == "epochs"
    assert not seen.exists()
    assert os.path.isdir(art)
