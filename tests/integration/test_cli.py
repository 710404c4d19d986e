"""The CLI end to end as root (and as an ordinary user, who gets one clear line)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from testbed.cli import cli

from .conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SMALL = ["--set", "links.edge-cloud.bandwidth=20Mbit", "--set", "hosts.mobile.memory=96MiB",
         "--set", "hosts.edge.memory=128MiB", "--set", "hosts.cloud.memory=160MiB"]


def test_calibrate_json_measures_every_direction_and_host_and_passes():
    res = CliRunner().invoke(cli, ["calibrate", "three_tier", "--duration", "2", "--json", *SMALL])
    assert res.output.startswith("{"), (res.output, res.exception)
    data = json.loads(res.output)
    assert [(r["link"], r["direction"]) for r in data["links"]] == [
        ("mobile-edge", "mobile->edge"), ("mobile-edge", "edge->mobile"),
        ("edge-cloud", "edge->cloud"), ("edge-cloud", "cloud->edge")]
    for r in data["links"]:
        for key in ("bandwidth_bps", "goodput_bps", "delay_ms", "rtt_ms", "loss", "measured_loss"):
            assert key in r
        # the RTT judged is the median of the pings, with their spread beside it
        assert r["pings"] == 20 and r["rtt_p10_ms"] <= r["rtt_ms"] <= r["rtt_p90_ms"], r
        # every shaped direction is serialized by its delay line here (no netem): its counters
        # come with the direction, and they saw the goodput flow cross
        if not data["netem"]:
            line = r["delay_line"]
            assert line["packets"] > 1000 and line["dropped_enobufs"] == 0 and line["late_us_max"] is not None, line
    for h in data["hosts"]:
        for key in ("host", "cpus", "measured_cpus", "memory_bytes", "memory_enforced"):
            assert key in h
        assert h["memory_enforced"] is True
        assert h["cpu_period_us"] == {0.25: 8000, 0.5: 4000, 1.0: 10_000}[h["cpus"]]   # auto: a 2 ms quota below 1 core
        if h["cpus"] is not None and h["cpus"] < 2:       # a CPU-bound burst is never faster than the CPU
            assert set(h["burst_slowdown"]) == {"5", "50"} and min(h["burst_slowdown"].values()) >= 0.95
        # compute per request of a 20 ms busy loop, paced below one core, against unconstrained / cpus
        (c,) = h["compute"]
        assert c["label"] == "busy loop 20 ms" and c["paced"] is (h["cpus"] < 1) and c["requests"] == 30
        assert c["expected_ms"] >= 20 and h["checks"]["compute"] is True, c
    # what failed, named by its check and with the numbers judged (a row's dict is cut short)
    failed = [(r.get("direction") or r.get("host"), {k: v for k, v in r.items() if k != "delay_line"})
              for r in data["links"] + data["hosts"] if not r["pass"]]
    assert data["pass"] and res.exit_code == 0, "\n".join(
        f"{name}: checks {row['checks']}; {row}" for name, row in failed)


def test_calibrate_experiment_checks_each_host_on_the_parts_placed_there(tmp_path):
    """`testbed calibrate EXPERIMENT`: the experiment's topology (its overrides and --set
    applied), and each CPU-limited host's compute on the very parts its strategies put there:
    the mobile half of the partition on mobile, the edge half on edge, the whole model on
    cloud (the demo's artifacts, from the cache)."""
    exp = tmp_path / "calexp.yaml"
    exp.write_text("name: calexp\ntopology: three_tier\nmodels: [efficientnet_lite0]\n"
                   "links: {edge-cloud: {bandwidth: 20Mbit}}\n"
                   "strategies:\n"
                   "  - {name: me-partition, operators: [{partition: {cut: auto}}], placement: [mobile, edge]}\n"
                   "  - {name: cloud, placement: cloud}\n"
                   "source: mobile\n")
    res = CliRunner().invoke(cli, ["calibrate", str(exp), "--duration", "1", "--no-memory-check", "--requests", "10",
                                   "--set", "links.mobile-edge.delay=2ms", "--json"])
    assert res.output.startswith("{"), (res.output, res.exception)
    data = json.loads(res.output)
    assert data["topology"] == "three_tier"
    assert {r["link"]: r["delay_ms"] for r in data["links"]} == {"mobile-edge": 2.0, "edge-cloud": 0.0}
    assert {r["link"]: r["bandwidth_bps"] for r in data["links"]}["edge-cloud"] == 20_000_000
    labels = {h["host"]: [c["label"] for c in h["compute"]] for h in data["hosts"]}
    assert labels == {"mobile": ["efficientnet_lite0 [me-partition] part 1/2"],
                      "edge": ["efficientnet_lite0 [me-partition] part 2/2"],
                      "cloud": ["efficientnet_lite0 [cloud]"]}
    for h in data["hosts"]:
        (c,) = h["compute"]
        assert c["work"].startswith("--artifact ") and c["requests"] == 10 and c["paced"] is (h["cpus"] < 1)
        assert c["work"].endswith("--part 1" if h["host"] == "edge" else "--part 0")   # the edge half, fed by mobile's
        assert 0.5 < c["ratio_p10_p50_p90"][1] < 2.0, c            # measured, whatever the verdict
    bad = CliRunner().invoke(cli, ["calibrate", str(exp), "--model", "fmnist_cnn"])
    assert bad.exit_code == 2 and "--model goes with a TOPOLOGY" in bad.output


def test_calibration_fails_when_the_link_is_slower_than_its_spec():
    # make the failure real: shape the link to 10 Mbit/s, then measure against a spec of 200
    from emulation import calibrate as cal
    from emulation.network import EmulatedNetwork
    from topologies import apply_overrides, load_topology

    spec = apply_overrides(load_topology("three_tier", cores=2, memory_bytes=8 << 30),
                           {"links.edge-cloud.bandwidth": "20Mbit"})
    with EmulatedNetwork(spec) as net:
        net.set_link("mobile-edge", rate_bps=10_000_000)
        net.links["mobile-edge"] = spec.link("mobile-edge")  # pretend: expect 200 Mbit/s
        report = cal.calibrate(net, duration_s=1.5, memory_check=False)
    bad = [r for r in report["links"] if r["link"] == "mobile-edge"]
    assert all(r["checks"]["goodput"] is False for r in bad)
    assert report["pass"] is False


def test_up_and_calibrate_refuse_without_root_in_one_line():
    env = dict(os.environ, PYTHONPATH=REPO)
    for cmd in (["up", "three_tier"], ["calibrate", "three_tier"], ["clean"]):
        res = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                              sys.executable, "-m", "testbed.cli", *cmd], env=env, cwd="/",
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 1, res
        assert res.stderr.strip().count("\n") == 0 and "needs root" in res.stderr, res.stderr
    doc = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                          sys.executable, "-m", "testbed.cli", "doctor", "--json"], env=env, cwd="/",
                         capture_output=True, text=True, timeout=60)
    assert doc.returncode == 0 and json.loads(doc.stdout)["root"] is False
