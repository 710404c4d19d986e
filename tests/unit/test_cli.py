"""The CLI as a user meets it: one-line errors, JSON shapes (no root needed)."""
from __future__ import annotations

import json

import pytest

from click.testing import CliRunner

from testbed.cli import cli


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_doctor_json_has_the_documented_keys():
    res = run("doctor", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    for key in ("root", "cgroup_version", "delay_mechanism", "loss_mechanism", "mininet", "cpus", "memory_bytes"):
        assert key in data
    assert data["cpus"] >= 1 and data["memory_bytes"] > 0


def test_doctor_table_names_the_delay_mechanism():
    res = run("doctor")
    assert res.exit_code == 0
    assert "delay / jitter" in res.output


def test_unknown_topology_is_one_line():
    res = run("up", "no_such_topology")
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        "Error: no_such_topology: no such topology file or built-in; allowed: a .yaml, .yml or .py file, "
        "or a built-in: three_tier, star, multi_edge"]


def test_bad_set_value_names_the_path_and_the_allowed_units():
    res = run("calibrate", "three_tier", "--set", "links.mobile-edge.bandwidth=5Mbs")
    assert res.exit_code == 1
    assert res.output.strip() == ("Error: --set: links.mobile-edge.bandwidth: unknown unit 'Mbs'; "
                                  "allowed: bit, kbit, Mbit, Gbit, Tbit (or bps, kbps, Mbps, Gbps, Tbps)")


def test_set_without_equals_is_a_usage_error():
    res = run("up", "three_tier", "--set", "hosts.mobile.cpus")
    assert res.exit_code == 2
    assert "expected PATH=VALUE" in res.output


def test_bad_topology_file_error_has_file_and_line(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("hosts:\n  a: {cpus: 0.5}\n  b: {cpus: -1}\nlinks:\n  a-b: {bandwidth: 10Mbit}\n")
    res = run("up", str(f))
    assert res.exit_code == 1
    line = res.output.strip()
    assert line.startswith(f"Error: {f}:3: hosts.b.cpus:") and "\n" not in line


def test_models_cuts_of_a_user_onnx_file_and_one_line_errors(tmp_path):
    import io

    torch = pytest.importorskip("torch")
    from click.testing import CliRunner

    from testbed.cli import cli

    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    buf = io.BytesIO()
    torch.onnx.export(m, (torch.randn(1, 3, 16, 16),), buf, dynamo=False, opset_version=17)
    path = tmp_path / "user.onnx"
    path.write_bytes(buf.getvalue())
    env = {"TESTBED_CACHE": str(tmp_path / "cache")}
    r = CliRunner().invoke(cli, ["models", "cuts", str(path), "--json"], env=env)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [c["tensor"] for c in out["cuts"]] == ["/0/Conv_output_0", "/1/Relu_output_0"]
    assert out["cuts"][0]["bytes"] == 4 * 4 * 14 * 14
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    r = CliRunner().invoke(cli, ["models", "cuts", str(bad)], env=env)
    assert r.exit_code == 1 and "Error: " in r.output and "not a valid ONNX model" in r.output
