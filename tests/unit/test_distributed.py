"""The Ray executor's hold on the pinned Ray: the private function it patches to keep a local
cluster on loopback, the names its authentication probe relies on, and its checks of a
cluster's token authentication that need no cluster (the ones that do are in
tests/integration/test_ray.py)."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from testbed import distributed  # noqa: E402
from testbed.runner import RunError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_the_installed_ray_is_the_pinned_one():
    pin = re.search(r"^ray==(\S+)", (REPO / "requirements.txt").read_text(), re.M).group(1)
    assert ray.__version__ == pin


def test_ray_still_resolves_a_loopback_address_through_the_function_the_executor_patches():
    """If this fails, Ray changed how ray.init turns a loopback address into the machine's:
    the patch in distributed._loopback_stays_loopback would silently do nothing, and a local
    cluster would listen on every interface. Re-read ray.init and adapt the patch."""
    from ray._private import services, worker

    assert callable(services.resolve_ip_for_localhost)
    # called as an attribute of the module at call time, so that replacing it takes effect
    assert "services.resolve_ip_for_localhost(_node_ip_address)" in inspect.getsource(worker.init)
    assert "resolve_ip_for_localhost(host)" in inspect.getsource(services.canonicalize_bootstrap_address)
    with distributed._loopback_stays_loopback():
        assert services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"
    assert services.resolve_ip_for_localhost is not None
    assert services.resolve_ip_for_localhost.__name__ == "resolve_ip_for_localhost"    # restored


def test_the_names_the_authentication_probe_uses_exist_in_the_pinned_ray():
    from ray._raylet import GcsClient, InnerGcsClient        # GcsClient hands its calls to the inner one
    from ray.exceptions import AuthenticationError

    assert GcsClient.__getattr__ and "internal_kv_get" in dir(InnerGcsClient)
    assert f'"{AuthenticationError.__name__}"' in distributed._PROBE


def test_a_local_cluster_refuses_to_run_without_token_authentication(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(RunError, match="always uses token authentication"):
        distributed.check_cluster(None)


def test_a_local_cluster_gets_a_token_of_its_own_and_no_file(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    distributed.check_cluster(None)
    import os

    assert os.environ["RAY_AUTH_MODE"] == "token" and len(os.environ["RAY_AUTH_TOKEN"]) == 64
    first = os.environ["RAY_AUTH_TOKEN"]
    distributed.check_cluster(None)
    assert os.environ["RAY_AUTH_TOKEN"] == first          # one token per process: Ray caches the first
    assert not (tmp_path / ".ray").exists()


@pytest.mark.parametrize("address", ["nohost", "host:port", ":6379", "10.0.0.1"])
def test_an_address_that_is_not_host_port_is_refused_in_one_line(address):
    with pytest.raises(RunError, match="HOST:PORT") as e:
        distributed.check_cluster(address)
    assert "\n" not in str(e.value)


def test_a_head_that_is_not_there_is_refused_at_once():
    import socket

    with socket.socket() as s:              # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RunError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        distributed.check_cluster(f"127.0.0.1:{port}")
