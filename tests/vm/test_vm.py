"""Inside the VM (scripts/vm-test.sh): the paths most users' machines take and this project's
own machines cannot. systemd is init, cgroup v2 is unified, the kernel has netem: each host's
cgroup lives in a scope systemd delegated to the run, and each link direction is a netem root
qdisc (delay, jitter, loss, rate) with a tbf child, read back from the kernel."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulation import cgroups, shaping
from emulation.network import EmulatedNetwork
from tests.integration.test_network import spec
from tests.integration.test_run import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_the_vm_is_a_systemd_cgroup_v2_netem_machine(caps):
    print(f"kernel {caps['kernel']}, cgroup v{caps['cgroup_version']} ({' '.join(caps['cgroup_controllers'])}), "
          f"host groups: {caps['cgroup_layout']}, delay: {caps['delay_mechanism']}, loss: {caps['loss_mechanism']}")
    assert Path("/proc/1/comm").read_text().strip() == "systemd"
    assert caps["cgroup_version"] == 2 and {"cpu", "memory", "cpuset"} <= set(caps["cgroup_controllers"])
    assert caps["qdiscs"].get("netem") and caps["delay_mechanism"] == "netem" and caps["loss_mechanism"] == "netem"
    assert cgroups.delegated() and caps["cgroup_layout"].startswith("systemd scope")
    # what a user reads: `testbed doctor` names cgroup v2, the delegated scope and netem
    from tests.integration.test_run import TESTBED
    doctor = subprocess.run(TESTBED + ["doctor"], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})
    print(doctor.stdout)
    assert doctor.returncode == 0, doctor.stderr
    rows = {line.split("│")[1].strip(): line for line in doctor.stdout.splitlines() if line.count("│") >= 3}
    assert "v2" in rows["cgroups"] and "systemd scope" in rows["host groups"], rows
    assert "netem qdisc" in doctor.stdout and "netem" not in rows, rows     # no hint row: netem works


def _unit(name: str, prop: str) -> str:
    return subprocess.run(["systemctl", "show", name, f"--property={prop}", "--value"], capture_output=True,
                          text=True, timeout=30).stdout.strip()


def test_hosts_live_in_a_scope_systemd_delegated_to_the_run_and_leave_with_it(caps):
    s = spec("three_tier", {"hosts.edge.cpus": 0.5, "hosts.edge.memory": "256MiB", "hosts.edge.cpuset": "1"})
    with EmulatedNetwork(s, caps=caps) as net:
        unit = cgroups.scope_unit(net.run_id)
        scope = cgroups.CGROUP_ROOT / cgroups.SLICE / unit
        assert _unit(unit, "ActiveState") == "active" and _unit(unit, "Delegate") == "yes"
        edge = net.cgroups["edge"]
        assert edge.paths == [scope / "edge"]
        assert (scope / "edge" / "cpu.max").read_text().split()[0] == str(cgroups.cpu_quota_us(0.5, edge.limits.period_us))
        assert int((scope / "edge" / "memory.max").read_text()) == 256 << 20
        assert (scope / "edge" / "cpuset.cpus").read_text().strip() == "1"
        # changed live, read back from the same files
        net.set_host("edge", cpus=1.0, memory_bytes=512 << 20, cpuset=(0,))
        assert (scope / "edge" / "cpu.max").read_text().split()[0] == str(cgroups.cpu_quota_us(1.0, net.cgroups["edge"].limits.period_us))
        assert int((scope / "edge" / "memory.max").read_text()) == 512 << 20
        assert (scope / "edge" / "cpuset.cpus").read_text().strip() == "0"
        # a process started on the host runs in its group, inside the run's scope
        out = net.run("edge", ["cat", "/proc/self/cgroup"]).stdout.strip()
        assert out == f"0::/{cgroups.SLICE}/{unit}/edge", out
        # a server there finds its own group's cpu.stat to measure quota stalls (throttled_usec on v2)
        probe = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from workloads.pacing import QuotaStalls; "
                 "s = QuotaStalls(); print(s.enabled, s.path, s.throttled_ns() >= 0)")
        out = net.run("edge", [sys.executable, "-c", probe]).stdout.split()
        assert out == ["True", str(scope / "edge" / "cpu.stat"), "True"], out
        # the scope's own process sits in its .holder leaf, none in the scope itself
        assert (scope / "cgroup.procs").read_text().split() == []
        assert len((scope / cgroups.HOLDER / "cgroup.procs").read_text().split()) == 1
    assert not scope.exists()
    assert _unit(unit, "ActiveState") in {"inactive", ""}


def test_each_direction_is_a_netem_root_with_a_tbf_child_read_back_from_the_kernel(caps):
    s = spec("three_tier", {"links.mobile-edge.forward.bandwidth": "20Mbit", "links.mobile-edge.forward.delay": "20ms",
                            "links.mobile-edge.forward.jitter": "5ms", "links.mobile-edge.forward.loss": "2%"})
    with EmulatedNetwork(s, caps=caps) as net:
        assert net.verify() == []          # netem's delay, jitter, loss, rate and limit, and the tbf's
        held = net._read_direction("mobile", "edge")
        print(f"mobile->edge as the kernel holds it: {held}")
        assert held["netem"]["delay_us"] == 20_000 and held["netem"]["jitter_us"] == 5_000
        assert held["netem"]["rate"] == 2_500_000 and held["netem"]["loss"] == shaping.loss_u32(2.0)
        assert held["tbf"]["parent"] == shaping.ROOT + 1 and held["tbf"]["rate"] == 2_500_000
        # a live change reads back as asked
        net.set_link("mobile-edge", direction="forward", delay_ms=40.0, loss=0.0)
        assert net.verify() == []
        held = net._read_direction("mobile", "edge")["netem"]
        assert held["delay_us"] == 40_000 and held["loss"] == 0


RUN = Path(__file__).with_name("vm-run.yaml")


def test_a_small_run_ends_with_every_request_ok_and_leaves_nothing(tmp_path):
    import json
    import os
    import sys

    from tests.integration.test_run import TESTBED

    done = subprocess.run(TESTBED + ["run", str(RUN), "--out", str(tmp_path / "out"), "--json"], cwd=REPO,
                          env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=1200)
    sys.stderr.write(done.stderr[-3000:])
    assert done.returncode == 0, done.stderr[-3000:]
    cells = json.loads(done.stdout)["cells"]
    assert len(cells) == 2 and all(c["status"] == "done" and c["counts"]["ok"] == 10 for c in cells), cells
    left = subprocess.run(TESTBED + ["clean", "--dry-run", "--json"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert json.loads(left.stdout)["items"] == []
    slice_ = cgroups.CGROUP_ROOT / cgroups.SLICE       # no scope left in the slice (its files stay)
    assert not slice_.exists() or not any(p.is_dir() for p in slice_.iterdir())


def test_a_trace_step_changes_netem_and_its_tbf_child_in_place_and_reads_back(caps):
    """The trace replay's fast path on netem (emulation.replay): each step is one `tc qdisc
    change` of netem (delay, jitter, rate) and of its tbf child, read back from the kernel.
    Functional only: software emulation cannot judge the apply lag."""
    from emulation.replay import replay_link
    from topologies.traces import load_trace

    s = spec("three_tier", {"links.mobile-edge.bandwidth": "50Mbit", "links.mobile-edge.delay": "10ms"})
    trace = load_trace("vm.csv", text="0s,50Mbit,10ms,0ms\n0.5s,5Mbit,30ms,5ms\n1s,20Mbit,20ms,5ms\n1.5s\n", mode="once")
    with EmulatedNetwork(s, caps=caps) as net:
        assert net.step_link("mobile-edge", "forward", rate_bps=10_000_000, delay_ms=25.0) == "fast"
        assert net.check_direction("mobile-edge", "forward") == []
        held = net._read_direction("mobile", "edge")
        assert held["netem"]["delay_us"] == 25_000 and held["netem"]["rate"] == 1_250_000
        assert held["tbf"]["rate"] == 1_250_000
        rp = replay_link(net, "mobile-edge", "forward", trace, rt_priority=0)
        rp.start()
        time.sleep(3.0)                   # the trace ends at 1.5 s
        summary = rp.stop()
        assert summary["steps"] == 3 and summary["missed"] == 0 and summary["mismatches"] == 0, summary
        # a read-back is skipped when the next step is nearer than a few read-backs' time (TCG is slow)
        assert summary["checked"] >= 1 and summary["paths"] == {"fast": 3}, summary
        held = net._read_direction("mobile", "edge")      # the last step
        assert held["netem"]["delay_us"] == 20_000 and held["netem"]["jitter_us"] == 5_000
        assert held["netem"]["rate"] == 2_500_000 and held["tbf"]["rate"] == 2_500_000
        assert net.verify() == []
