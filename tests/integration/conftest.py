"""Integration tests: root, real namespaces, qdiscs and cgroups. Skipped without root.

Every test checks that its run left nothing behind; the session-level fixture also checks
the whole machine for leftovers of any testbed run once all tests are done.
"""
from __future__ import annotations

import os

import pytest

from emulation.cleanup import find_leftovers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration tests need root (real namespaces, qdiscs, cgroups)")
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_leftovers():
    """Each test must leave no process, cgroup, interface or registry record behind."""
    before = {(f.kind, f.what) for f in find_leftovers(owned_by=os.getpid())}
    yield
    after = [f for f in find_leftovers(owned_by=os.getpid()) if (f.kind, f.what) not in before]
    assert after == [], f"test left kernel objects behind: {after}"


@pytest.fixture(scope="session")
def caps():
    from emulation.probe import capabilities

    return capabilities()
