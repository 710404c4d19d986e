"""``partition: {cut: fastest}`` as users run it (root): `testbed run` profiles the candidate
cuts it has no profile for, on the emulated hosts, then deploys at each sweep point the cut
of least predicted latency, and stores which cut and why. EfficientNet-Lite0 from mobile (a
quarter of a core) to edge (one core): at 1 Mbit/s the bytes crossing the cut decide, at
1 Gbit/s the slow mobile's compute does, so the two points deploy different cuts.

(fmnist_cnn, the first model this test used, computes in 10-300 us of CPU per request on
this 2-core VM whatever the cut, by how cold the caches are after the request's idle time,
while its cuts differ by ~30 us: at 1 Gbit/s its three candidates were predicted 0.8-1.8 ms,
the chosen one measured 3.3-4.1 ms, and a CI run chose the head cut there. EfficientNet's
cuts differ by milliseconds: at 1 Gbit/s the head cut was predicted 20-27 ms, the earliest
12.8 ms.)"""
from __future__ import annotations

import json
import statistics
import subprocess

import pytest

from emulation.cleanup import find_leftovers
from testbed.fastest import MAX_CANDIDATES
from tests.integration.test_run import REPO, TESTBED, _rows
from workloads.cache import default_root

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

EXPERIMENT = """\
name: it-fastest
topology: three_tier
hosts:
  mobile: {cpus: 0.25}
  edge: {cpus: 1.0}
models: [efficientnet_lite0]
strategies:
  - {name: me-fastest, operators: [{partition: {cut: fastest}}], placement: [mobile, edge]}
source: mobile
requests: {warmup: 2, repeat: 10, inputs: 3, timeout: 20s}
sweep:
  links.mobile-edge.bandwidth: [1Mbit, 1Gbit]
"""


def test_run_profiles_the_candidates_then_deploys_a_different_cut_per_bandwidth_and_stores_why(tmp_path):
    import os

    # the user's prepared models and artifacts (content-keyed: safe to share), profiles of its own
    cache = tmp_path / "cache"
    cache.mkdir()
    for kind in ("artifacts", "checkpoints", "datasets", "evaluations", "models", "trained", "weights"):
        (default_root() / kind).mkdir(parents=True, exist_ok=True)
        (cache / kind).symlink_to(default_root() / kind)
    exp = tmp_path / "fastest.yaml"
    exp.write_text(EXPERIMENT)
    env = {**os.environ, "TESTBED_CACHE": str(cache), "COLUMNS": "200"}
    dry = subprocess.run(TESTBED + ["run", str(exp), "--dry-run", "--json"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert [c["cut"] for c in json.loads(dry.stdout)["cells"]] == [None, None]      # no profiles yet
    out = tmp_path / "out"
    p = subprocess.run(TESTBED + ["run", str(exp), "--out", str(out), "--json"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=780)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["status"] == "done"
    db = out / "results.sqlite"
    cells = {json.loads(c["point_json"])["links.mobile-edge.bandwidth"]: c
             for c in _rows(db, "SELECT cell, status, point_json, operators, choice_json FROM cells")}
    assert set(cells) == {"1Mbit", "1Gbit"} and all(c["status"] == "done" for c in cells.values())
    why = {bw: json.loads(c["choice_json"]) for bw, c in cells.items()}
    n = len(why["1Mbit"]["candidates"])
    assert 3 <= n <= MAX_CANDIDATES and [k["tensor"] for k in why["1Mbit"]["candidates"]] == \
        [k["tensor"] for k in why["1Gbit"]["candidates"]]
    # every candidate's two parts were profiled by the run, on mobile and on edge, and the
    # machine's links once (one pass through a link's emulation)
    stored = [json.loads(f.read_text()) for f in (cache / "profiles").glob("*/profile.json")]
    assert len([s for s in stored if "classes" not in s]) == 2 * n and len([s for s in stored if "classes" in s]) == 1
    for bw, c in cells.items():
        (partition,) = json.loads(c["operators"])
        assert partition["partition"]["cut"] == why[bw]["cut"]           # the chain stored is the one deployed
        assert "least predicted p50" in why[bw]["rule"]
        assert why[bw]["p50_ms"] == min(k["p50_ms"] for k in why[bw]["candidates"])
    chosen = {bw: next(k for k in w["candidates"] if k["tensor"] == w["cut"]) for bw, w in why.items()}
    assert chosen["1Mbit"]["tensor"] != chosen["1Gbit"]["tensor"]
    # slow link: the cut with the fewest bytes; fast link: less of the model on the slow mobile
    assert chosen["1Mbit"]["bytes"] == min(k["bytes"] for k in why["1Mbit"]["candidates"])
    assert chosen["1Gbit"]["fraction"] < chosen["1Mbit"]["fraction"]

    # what crossed mobile -> edge is the chosen cut's tensor (plus the frame's header and trace)
    for bw, c in cells.items():
        sent = _rows(db, f"SELECT bytes FROM hops WHERE cell = '{c['cell']}' AND kind = 'link' AND src = 'mobile' "
                         "AND dst = 'edge' AND direction = 'request'")
        assert sent and all(chosen[bw]["bytes"] < h["bytes"] < chosen[bw]["bytes"] + 1024 for h in sent), (bw, sent)
        measured = statistics.median(r["e2e_ms"] for r in _rows(
            db, f"SELECT e2e_ms FROM requests WHERE cell = '{c['cell']}' AND status = 'ok'"))
        print(bw, "predicted", round(chosen[bw]["p50_ms"], 3), "measured", round(measured, 3),
              {k["tensor"]: round(k["p50_ms"], 3) for k in why[bw]["candidates"]})
    # profiled now: a dry run names the same cuts
    dry = subprocess.run(TESTBED + ["run", str(exp), "--dry-run", "--json"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert [c["cut"] for c in json.loads(dry.stdout)["cells"]] == [why["1Mbit"]["cut"], why["1Gbit"]["cut"]]
    assert find_leftovers() == []
