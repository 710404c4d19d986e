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


# ---- issue 19: the cache is trusted, so only root or its user may change it ----------------

as_root = pytest.mark.skipif(__import__("os").geteuid() != 0, reason="chown to another user needs root")


def _built(cache, key="k"):
    return cache.get_or_build("artifacts", key, lambda f: (f / "model.onnx").write_bytes(b"x"))


@pytest.mark.parametrize("where", ["root", "kind", "entry"])
def test_a_cache_folder_others_may_write_is_refused_in_one_line(tmp_path, where):
    from workloads.errors import WorkloadError

    cache = Cache(tmp_path / "cache")
    entry = _built(cache)
    folder = {"root": cache.root, "kind": entry.parent, "entry": entry}[where]
    folder.chmod(0o777)
    with pytest.raises(WorkloadError) as e:
        cache.get("artifacts", "k")
    what = "cache entry" if where == "entry" else "cache folder"
    assert str(e.value).startswith(f"{what} {folder} is writable by its group and by others (mode 0777; chmod go-w "
                                   f"{folder}); allowed: a {what} owned by root or you (")
    assert str(e.value).endswith(") and writable only by its owner, or set TESTBED_CACHE to a folder of your own")
    with pytest.raises(WorkloadError, match="writable by its group and by others"):
        _built(cache, "k" if where == "entry" else "other")       # building into it, or using it, too
    folder.chmod(0o755)
    assert cache.get("artifacts", "k") == entry


@as_root
def test_a_cache_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    import os

    from workloads.errors import WorkloadError

    monkeypatch.delenv("SUDO_UID", raising=False)
    cache = Cache(tmp_path / "cache")
    entry = _built(cache)
    os.chown(entry, 12345, 12345)
    with pytest.raises(WorkloadError, match=rf"^cache entry {entry} is owned by uid 12345, not by root or you"):
        cache.get("artifacts", "k")
    os.chown(cache.root, 12345, 12345)
    with pytest.raises(WorkloadError, match=rf"^cache folder {cache.root} is owned by uid 12345"):
        cache.folder("checkpoints")
    monkeypatch.setenv("SUDO_UID", "12345")        # theirs, when they ran the testbed with sudo
    assert cache.get("artifacts", "k") == entry


def test_the_caches_folders_and_entries_are_closed_to_others_whatever_the_umask(tmp_path):
    import os
    import stat

    cache = Cache(tmp_path / "a" / "b" / "cache")
    old = os.umask(0)                              # the loosest umask: a plain mkdir would be 0777
    try:
        entry = cache.get_or_build("artifacts", "k", lambda f: ((f / "sub").mkdir(), (f / "sub" / "x").write_text(
            "1"), (f / "model.onnx").write_bytes(b"x")))
        checkpoints = cache.folder("checkpoints")
    finally:
        os.umask(old)
    made = [tmp_path / "a", tmp_path / "a" / "b", cache.root, entry.parent, checkpoints, cache.root / ".locks",
            cache.root / ".locks" / "artifacts"]
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {str(p): "0o755" for p in made}
    inside = [entry, *entry.rglob("*"), *(cache.root / ".locks").rglob("*.lock")]
    assert len(inside) == 6 and not [p for p in inside if p.stat().st_mode & 0o022]


def test_testbed_refuses_a_cache_that_others_may_write_in_one_line(tmp_path):
    """TESTBED_CACHE pointing at a folder everyone may write: `testbed models cuts` (which
    exports into the cache) stops in one line instead of using it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.unit.test_user_models import _tiny_onnx

    model = _tiny_onnx(tmp_path / "net.onnx")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "testbed.cli", "models", "cuts", str(model)], cwd=tmp_path,
                          env={**os.environ, "TESTBED_CACHE": str(shared), "PYTHONPATH": str(repo)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith(f"Error: cache folder {shared} is writable by its group "
                                                           "and by others (mode 0777")
    assert len(done.stderr.strip().splitlines()) == 1 and list(shared.iterdir()) == []
