"""The README's demo study, prepared for real through the CLI (no root needed; slow when the
cache is cold: it trains the Fashion-MNIST CNN and exports EfficientNet-Lite0)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_cli(*args, check=True):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "testbed.cli", *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=3000)
    if check and p.returncode != 0:
        raise AssertionError(f"testbed {' '.join(args)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


def test_models_list_names_the_offline_models_and_their_inputs():
    rows = {r["name"]: r for r in json.loads(run_cli("models", "list", "--json").stdout)}
    for name in ("fmnist_cnn", "fmnist_segnet", "efficientnet_lite0", "minilm_sentiment"):
        assert rows[name]["offline"] is True
    assert rows["efficientnet_lite0"]["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert rows["wide_resnet101_2"]["offline"] is False


@pytest.mark.timeout(3000)
def test_demo_study_prepares_every_artifact_and_a_second_run_is_served_from_the_cache():
    out = json.loads(run_cli("prepare", "examples/offline-demo.yaml", "--json").stdout)
    arts = {(a["model"], a["operators"], a["parts"]): a for a in out["artifacts"]}
    # 2 models x (fp32, quantize, early exit, QEE, 2-part partition, QEE 2-part, 3-part partition)
    assert len(arts) == 14
    fm = arts[("fmnist_cnn", "none", 1)]
    assert fm["metric"] == "accuracy" and fm["value"] >= 0.88
    q = arts[("fmnist_cnn", "quantize", 1)]
    assert abs(q["value"] - q["baseline"]) < 0.02
    eff = arts[("efficientnet_lite0", "none", 1)]
    assert eff["metric"] == "agreement" and eff["value"] == 1.0
    for a in out["artifacts"]:
        man = json.loads((Path(a["path"]) / "artifact.json").read_text())
        assert len({s["part"] for s in man["segments"]}) == a["parts"]
        if a["parts"] > 1:
            assert man["report"]["partition"]["max_abs_diff"] <= 1e-5
    again = json.loads(run_cli("prepare", "examples/offline-demo.yaml", "--json").stdout)
    assert all(a["cached"] for a in again["artifacts"])


def test_cuts_of_a_model_and_a_bad_cut_name_lists_valid_ones(tmp_path):
    cuts = json.loads(run_cli("models", "cuts", "fmnist_cnn", "--json").stdout)
    assert cuts["cuts"] and all(c["bytes"] > 0 for c in cuts["cuts"])
    exp = tmp_path / "bad.yaml"
    exp.write_text("name: bad\nmodels: [fmnist_cnn]\nstrategies:\n"
                   "  - {name: p, operators: [{partition: {cut: nope}}], placement: [mobile, edge]}\n")
    p = run_cli("prepare", str(exp), check=False)
    assert p.returncode == 1
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: ") and "nope" in line and cuts["cuts"][0]["tensor"] in line
