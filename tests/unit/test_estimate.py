"""The dry-run estimate's arithmetic: bytes at each link's bandwidth plus its delay along the
topology's path, compute divided by a host's CPU share below one core, cut tensors between
parts, and one network bring-up for points of the same shape (live changes after it)."""
from __future__ import annotations

import json

import pytest

from testbed import estimate as est
from testbed.experiment import load_experiment_dict

GiB = 1 << 30


def _exp(sweep=None):
    data = {"name": "e", "topology": "three_tier", "models": ["fmnist_cnn"],
            "links": {"mobile-edge": {"bandwidth": "8Mbit", "delay": "2ms"},
                      "edge-cloud": {"bandwidth": "1Mbit", "delay": "10ms"}},
            "hosts": {"mobile": {"cpus": 0.25}, "edge": {"cpus": 0.5}, "cloud": {"cpus": 2.0}},
            "strategies": [{"name": "cloud", "placement": "cloud"},
                           {"name": "ec", "operators": ["partition"], "placement": ["edge", "cloud"]}],
            "source": "mobile", "requests": {"warmup": 1, "repeat": 9, "inputs": 2}}
    if sweep:
        data["sweep"] = sweep
    return load_experiment_dict(data, [], cores=2.0, memory_bytes=24 * GiB, source="<test>", base_dir=".")


def test_a_dry_runs_message_crosses_the_links_as_the_plan_sends_it():
    topo = _exp().topology
    # 1000 bytes: one 1066-byte frame (headers) at 8 Mbit/s + 2 ms; to the cloud the slowest
    # link (1 Mbit/s) carries it, the other one frame, plus both delays
    frame_ms = 1066 * 8 / 8e6 * 1000
    assert est.transfer_ms(topo, "mobile", "edge", 1000) == pytest.approx(frame_ms + 2.0)
    assert est.transfer_ms(topo, "mobile", "cloud", 1000) == pytest.approx(1066 * 8 / 1e6 * 1000 + frame_ms + 12.0)
    assert est.transfer_ms(topo, "edge", "edge", 10**6) == 0.0


def test_a_request_adds_compute_by_cpu_share_and_the_cut_tensor():
    exp = _exp()
    ec = exp.strategies[1]
    manifest = {"compute_ms": [1.0, 3.0], "report": {"partition": {"cuts": [{"bytes": 500}]}}}
    inp = est._input_bytes(exp.models[0])                  # 1x1x28x28 float32
    assert inp == 28 * 28 * 4
    t = est.transfer_ms
    want = (t(exp.topology, "mobile", "edge", inp) + 1.0 / 0.5 + t(exp.topology, "edge", "cloud", 500)
            + 3.0 + t(exp.topology, "cloud", "mobile", 64) + est.OVERHEAD_MS * 3)
    assert est.request_ms(exp, exp.models[0], ec, manifest) == pytest.approx(want)


def test_the_answer_is_the_models_outputs_read_from_the_artifact(tmp_path):
    from tests.tiny import tiny_artifact

    folder, _, _ = tiny_artifact(tmp_path / "a", parts=2)      # Y: [1, 3] float32
    manifest = json.loads((folder / "artifact.json").read_text())
    assert est._answer_bytes(manifest, str(folder)) == 12
    assert est._answer_bytes(manifest, None) == 64


def test_points_of_one_shape_pay_one_bring_up_then_live_changes(monkeypatch, tmp_path):
    from tests.tiny import tiny_artifact

    folder, _, _ = tiny_artifact(tmp_path / "a", parts=2)
    manifest = json.loads((folder / "artifact.json").read_text())
    (folder / "artifact.json").write_text(json.dumps({**manifest, "compute_ms": [1.0, 1.0], "report": {}}))
    monkeypatch.setattr("workloads.prepare.cached_artifact", lambda *a, **k: folder)
    exp = _exp({"links.edge-cloud.bandwidth": ["1Mbit", "2Mbit", "4Mbit"]})
    cells, total, unknown = est.estimate(exp, done=set())
    assert len(cells) == 6 and unknown == 0
    cell_s = sum(c.seconds for c in cells)
    assert total == pytest.approx(cell_s + est.BRING_UP_S + 2 * est.RECONFIGURE_S)
    # cells already done are skipped, and a point with nothing left costs no network
    done = {c.key for c in cells[:2]}
    cells2, total2, _ = est.estimate(exp, done=done)
    assert [c.done for c in cells2] == [True, True, False, False, False, False]
    assert total2 == pytest.approx(sum(c.seconds for c in cells2[2:]) + est.BRING_UP_S + est.RECONFIGURE_S)
