"""The artifact cache: content keys, whole-or-nothing entries."""
import pytest

from workloads.cache import Cache, content_key


def test_key_is_stable_and_ignores_mapping_order():
    assert content_key("a", x=1, y={"p": 1, "q": 2}) == content_key("a", y={"q": 2, "p": 1}, x=1)
    assert content_key("a", x=1) != content_key("a", x=2)
    assert content_key("a", x=1) != content_key("b", x=1)


def test_entry_is_published_only_when_complete(tmp_path):
    cache = Cache(tmp_path)
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "model.onnx").write_bytes(b"x")

    p = cache.get_or_build("artifacts", "k1", build)
    assert (p / "model.onnx").read_bytes() == b"x"
    assert cache.get_or_build("artifacts", "k1", build) == p
    assert len(calls) == 1                      # the second call found it


def test_failed_build_leaves_nothing_behind(tmp_path):
    cache = Cache(tmp_path)

    def build(folder):
        (folder / "half.onnx").write_bytes(b"half")
        raise RuntimeError("calibration failed")

    with pytest.raises(RuntimeError):
        cache.get_or_build("artifacts", "k2", build)
    assert cache.get("artifacts", "k2") is None
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_incomplete_folder_is_not_an_entry_and_is_replaced(tmp_path):
    cache = Cache(tmp_path)
    stale = cache.path("artifacts", "k3")
    stale.mkdir(parents=True)
    (stale / "junk").write_text("left by a crash")
    assert cache.get("artifacts", "k3") is None
    p = cache.get_or_build("artifacts", "k3", lambda f: (f / "ok").write_text("1"))
    assert sorted(x.name for x in p.iterdir()) == ["complete.json", "ok"]
