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


BUILDER = r"""
import sys, time
from pathlib import Path
from workloads.cache import Cache

root, log = sys.argv[1], Path(sys.argv[2])
def build(folder):
    with log.open("a") as f:
        f.write("built\n")
    time.sleep(1.0)
    (folder / "model.onnx").write_bytes(b"x" * 1000)
print(Cache(root).get_or_build("artifacts", "same", build), flush=True)
"""


def test_two_concurrent_builds_of_one_entry_build_it_once_and_both_get_it_whole(tmp_path):
    """Issue 19: two `testbed prepare` on an empty cache raced at publish (the second removed
    the finished entry the first had published, which a reader may have been using)."""
    import subprocess
    import sys
    from pathlib import Path

    log = tmp_path / "builds.log"
    repo = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(tmp_path / "cache"), str(log)], cwd=repo,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    paths = {o.strip() for o, _ in outs}
    assert len(paths) == 1 and log.read_text() == "built\n"          # one build, one entry
    entry = Path(paths.pop())
    assert (entry / "model.onnx").read_bytes() == b"x" * 1000 and (entry / "complete.json").is_file()
    assert sorted(p.name for p in entry.parent.iterdir()) == ["same"]     # no temporary or stale folder left


def test_a_published_entry_is_never_removed_by_a_later_publisher(tmp_path):
    cache = Cache(tmp_path)
    first = cache.get_or_build("artifacts", "k4", lambda f: (f / "v").write_text("first"))
    inode = first.stat().st_ino
    with cache.building("artifacts", "k4") as tmp:      # another builder that did not see it
        (tmp / "v").write_text("second")
    assert first.stat().st_ino == inode and (first / "v").read_text() == "first"
    assert sorted(p.name for p in first.parent.iterdir()) == ["k4"]
