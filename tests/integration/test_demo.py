"""The README's main job: `testbed run examples/demo.yaml`, as scripts/demo.sh runs it
(fewer requests, to keep the suite short). Artifacts come from the default cache, which
tests/workloads fills too, so they are built once per machine."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from emulation.cleanup import find_leftovers

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_study_runs_every_cell_and_prints_a_summary(tmp_path):
    out = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "run", "examples/demo.yaml", "--out", str(out),
                        "--set", "requests.repeat=3", "--set", "requests.warmup=1", "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=3000)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout)
    cells = summary["cells"]
    # 2 models x 7 strategies x 2 bandwidths
    assert summary["status"] == "done" and len(cells) == 28
    assert all(c["status"] == "done" and c["counts"]["ok"] == 3 for c in cells), \
        [(c["cell"], c["counts"], c["error"]) for c in cells if c["counts"]["ok"] != 3]
    by = {(c["model"], c["strategy"], c["point"]["links.edge-cloud.bandwidth"]): c for c in cells}
    # the large input is sent over the uplink in full by `cloud`: ten times the bandwidth,
    # about a tenth of the transmission time on that path
    slow = by[("efficientnet_lite0", "cloud", "5Mbit")]["transmission"]["mobile>cloud"]
    fast = by[("efficientnet_lite0", "cloud", "50Mbit")]["transmission"]["mobile>cloud"]
    assert 5 < slow / fast < 11
    # a partition sends the cut tensor, not the 600 kB input, over mobile->edge
    cut = by[("efficientnet_lite0", "me-partition", "5Mbit")]["transmission"]["mobile>edge"]
    whole = by[("efficientnet_lite0", "edge", "5Mbit")]["transmission"]["mobile>edge"]
    assert cut < whole / 5
    assert find_leftovers() == []
