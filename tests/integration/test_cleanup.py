"""Nothing is left behind: after success, SIGINT and SIGTERM the CLI removes everything itself;
after kill -9, `testbed clean` removes exactly what the dead run made."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from emulation.cleanup import find_leftovers
from emulation.registry import load_records
from testbed.cli import cli

from .conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# delay on a link so the run also has a delay-line process and NFQUEUE rules to remove
UP = [sys.executable, "-m", "testbed.cli", "up", "three_tier", "--set", "links.mobile-edge.delay=5ms", "--json"]


def start_up() -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.Popen(UP, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    err = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([p.stderr], [], [], 1.0)
        if ready:
            line = p.stderr.readline()
            err += line
            if "is up" in line:
                return p
            if not line and p.poll() is not None:
                break
    p.kill()
    raise AssertionError(f"testbed up did not come up: {err}")


def owned_runs(pid: int) -> list[str]:
    return [r["run_id"] for r in load_records() if r["owner"]["pid"] == pid]


def ours() -> list:
    """Leftovers of dead runs (the CLI processes these tests start are dead when this runs)."""
    return find_leftovers()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_up_removes_everything(sig):
    p = start_up()
    assert owned_runs(p.pid), "a running network must be in the registry"
    p.send_signal(sig)
    p.wait(timeout=30)
    assert ours() == []


def test_kill_9_then_clean_removes_exactly_the_dead_runs_objects():
    p = start_up()
    p.kill()
    p.wait(timeout=10)
    time.sleep(0.2)
    left = find_leftovers()
    assert any(f.kind == "cgroup" for f in left) and any(f.kind == "registry" for f in left)
    runner = CliRunner()
    dry = runner.invoke(cli, ["clean", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert find_leftovers() != []                      # dry run removed nothing
    res = runner.invoke(cli, ["clean", "--json"])
    assert res.exit_code == 0, res.output
    assert find_leftovers() == []
    again = runner.invoke(cli, ["clean"])
    assert "nothing to clean" in again.output


def test_clean_leaves_a_live_run_alone():
    p = start_up()
    try:
        res = CliRunner().invoke(cli, ["clean", "--json"])
        assert res.exit_code == 0
        assert '"items": []' in res.output
        assert p.poll() is None
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)
    assert ours() == []
