"""Tests that run only inside the VM that scripts/vm-test.sh boots (a stock Debian kernel with
systemd as init, cgroup v2 and netem): TESTBED_VM=1 there. Elsewhere they are skipped, saying
so. The integration tests' fixtures (no leftovers, the machine's capabilities) apply here too."""
from __future__ import annotations

import os

import pytest

from tests.integration.conftest import caps, no_leftovers  # noqa: F401 - fixtures

IN_VM = os.environ.get("TESTBED_VM") == "1"


def pytest_collection_modifyitems(config, items):
    if IN_VM:
        return
    skip = pytest.mark.skip(reason="runs inside the VM only: bash scripts/vm-test.sh")
    for item in items:
        if "tests/vm/" in str(item.fspath):
            item.add_marker(skip)
