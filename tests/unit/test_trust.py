"""Issue 19: code files are code. A topology .py file and a model factory run as root when an
experiment is loaded; each is refused, and not run, unless only root or the invoking user can
change it, a factory must be defined in the module named (not the standard library's, not
the testbed's own) and return a torch module, and ``--dry-run`` imports and calls no factory.

Real files, modes and owners in a temporary folder (chown needs root), the real CLI in a
subprocess with a timeout (one case used to serve HTTP forever)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from topologies import TopologyError, load_topology
from topologies.trust import UntrustedError, check_folder, read_code
from workloads import user
from workloads.errors import WorkloadError

from tests.unit.test_user_models import NET

REPO = Path(__file__).resolve().parents[2]
OTHER_UID = 12345
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")

TOPOLOGY = textwrap.dedent("""\
    from pathlib import Path
    Path({marker!r}).write_text("ran")

    def topology():
        return {{"hosts": {{"a": {{}}, "b": {{}}}}, "links": {{"a-b": {{}}}}}}
    """)

FACTORY = textwrap.dedent("""\
    from pathlib import Path
    import torch
    Path({marker!r}).with_suffix(".imported").write_text("imported")

    {net}
    def make():
        Path({marker!r}).write_text("called")
        return Net(), (1, 4)

    def number():
        return 42
    """).replace("{net}\n", NET + "\n")



def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _load(path) -> object:
    return load_topology(str(path), cores=2, memory_bytes=2 ** 32)


def _cli(args: list[str], cwd: Path, timeout: float = 60, **env) -> subprocess.CompletedProcess:
    """The real `testbed` command line, in a subprocess that is killed after ``timeout``."""
    paths = [str(REPO), *env.pop("PYTHONPATH", [])]
    full = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TESTBED_CACHE": str(cwd / "cache"), **env}
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full)


# ---- topology files -----------------------------------------------------------------------

@pytest.mark.parametrize("mode, who", [(0o666, "its group and by others"), (0o646, "others"), (0o664, "its group")])
def test_a_topology_file_writable_by_others_is_refused_and_not_run(tmp_path, mode, who):
    marker = tmp_path / "ran"
    path = _write(tmp_path / "topo.py", TOPOLOGY.format(marker=str(marker)), mode)
    with pytest.raises(TopologyError) as e:
        _load(path)
    assert str(e.value) == (
        f"{path}: not run: the file {path} is writable by {who} (mode {mode:04o}; chmod go-w {path}); allowed: a "
        "file owned by root or you, in folders owned by root or you, none of them writable by anyone else "
        "(chmod go-w; a folder with the sticky bit, like /tmp, may be)")
    assert not marker.exists()
    path.chmod(0o644)                       # the same file, once only its owner may write it, runs
    assert _load(path).host_names == ("a", "b") and marker.read_text() == "ran"


def test_the_cli_dry_run_refuses_a_world_writable_topology_set_on_the_command_line(tmp_path):
    """The issue's reproduction: `testbed run E --dry-run --set topology=T.py` executed T.py."""
    marker = tmp_path / "ran"
    topo = _write(tmp_path / "T.py", TOPOLOGY.format(marker=str(marker)), 0o666)
    _write(tmp_path / "E.yaml", "name: e\nmodels: [fmnist_cnn]\nstrategies: [{name: a, placement: a}]\n")
    done = _cli(["run", "E.yaml", "--dry-run", "--set", f"topology={topo}"], tmp_path)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --set: topology: ") and "writable by its group and by" \
        in lines[0] and "Traceback" not in done.stderr
    assert not marker.exists()


@as_root
def test_a_topology_file_owned_by_another_user_is_refused_unless_they_invoked_sudo(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    path = _write(tmp_path / "topo.py", TOPOLOGY.format(marker=str(marker)))
    os.chown(path, OTHER_UID, OTHER_UID)
    monkeypatch.delenv("SUDO_UID", raising=False)
    with pytest.raises(TopologyError, match=rf"not run: the file {path} is owned by uid {OTHER_UID}, not by root "
                                            r"or you \(root, uid 0\)"):
        _load(path)
    assert not marker.exists()
    monkeypatch.setenv("SUDO_UID", str(OTHER_UID))      # `sudo testbed ...` typed by that user: theirs is fine
    assert _load(path).host_names == ("a", "b") and marker.exists()


def test_a_folder_writable_by_others_is_refused_unless_it_is_sticky(tmp_path):
    marker = tmp_path / "ran"
    shared = tmp_path / "shared"
    shared.mkdir()
    path = _write(shared / "topo.py", TOPOLOGY.format(marker=str(marker)))
    shared.chmod(0o777)
    with pytest.raises(TopologyError) as e:
        _load(path)
    assert f"not run: the folder {shared} is writable by its group and by others without the sticky bit (mode " \
           f"0777), so they could replace {path} (chmod go-w {shared}, or keep the file in a folder of your own)" \
           in str(e.value)
    assert not marker.exists()
    shared.chmod(0o1777)                    # like /tmp: only the file's owner may replace it
    assert _load(path).host_names == ("a", "b")


@as_root
def test_a_folder_owned_by_another_user_is_refused(tmp_path):
    marker = tmp_path / "ran"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    path = _write(theirs / "topo.py", TOPOLOGY.format(marker=str(marker)))
    os.chown(theirs, OTHER_UID, OTHER_UID)
    with pytest.raises(TopologyError, match=rf"not run: the folder {theirs} is owned by uid {OTHER_UID}, not by "
                                            rf"root or you \(root, uid 0\), who could replace {path}"):
        _load(path)
    assert not marker.exists()


def test_a_symbolic_link_is_judged_by_its_target(tmp_path):
    marker = tmp_path / "ran"
    target = _write(tmp_path / "real.py", TOPOLOGY.format(marker=str(marker)), 0o666)
    link = tmp_path / "link.py"
    link.symlink_to(target)
    with pytest.raises(TopologyError, match=rf"^{link}: not run: the file {target} is writable by"):
        _load(link)
    assert not marker.exists()
    target.chmod(0o644)
    shared = tmp_path / "shared"             # a link in an open folder to a safe file: the file is what runs
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    (shared / "link.py").symlink_to(target)
    assert _load(shared / "link.py").host_names == ("a", "b")


def test_read_code_returns_the_bytes_it_checked_and_refuses_what_is_not_a_file(tmp_path):
    path = _write(tmp_path / "t.py", "x = 1\n")
    assert read_code(path) == (path.resolve(), b"x = 1\n")
    os.mkfifo(tmp_path / "fifo.py")
    with pytest.raises(UntrustedError, match="is not a regular file"):
        read_code(tmp_path / "fifo.py")
    with pytest.raises(UntrustedError, match="cannot resolve"):
        read_code(tmp_path / "missing.py")


def test_check_folder_refuses_a_folder_others_may_write(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    check_folder(folder)
    folder.chmod(0o1777)                    # no sticky exception for a folder whose contents are trusted
    with pytest.raises(UntrustedError, match=rf"^folder {folder} is writable by its group and by others "
                                             rf"\(mode 1777; chmod go-w {folder}\); allowed: "):
        check_folder(folder)


# ---- model factories ----------------------------------------------------------------------

@pytest.fixture
def on_path(tmp_path, monkeypatch):
    """A folder on sys.path for modules of the test; what they import is forgotten after."""
    folder = tmp_path / "mods"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith(("tb_", "_testbed_factory_")):
            sys.modules.pop(name)


def test_http_server_test_is_refused_in_one_line_and_fast_under_dry_run(tmp_path):
    """The issue's reproduction: `models: ["http.server:test"]` under --dry-run served HTTP
    forever (it called http.server.test); now the standard library is not a factory."""
    _write(tmp_path / "E.yaml", 'name: e\nmodels: ["http.server:test"]\nstrategies: [{name: m, placement: mobile}]\n')
    done = _cli(["run", "E.yaml", "--dry-run"], tmp_path, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "Error: E.yaml:2: models[0]: http.server:test: http.server is part of Python's standard library, which holds "
        "no model factories; name a module of your own (package.module:factory or path/to/file.py:factory)")
    with pytest.raises(WorkloadError, match="http.server is part of Python's standard library"):
        user.user_model("http.server:test")


def test_the_testbeds_own_functions_are_not_factories():
    with pytest.raises(WorkloadError, match=r"^workloads.models:models: workloads.models is part of the testbed "
                                            r"itself, not a model factory"):
        user.user_model("workloads.models:models")


def test_dry_run_neither_imports_nor_calls_a_factory(tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    marker = tmp_path / "called"
    _write(mods / "tb_marker_factory.py", FACTORY.format(marker=str(marker)))
    _write(tmp_path / "E.yaml", "name: e\nmodels: [tb_marker_factory:make]\n"
                                "strategies: [{name: m, placement: mobile}]\n")
    done = _cli(["run", "E.yaml", "--dry-run"], tmp_path, PYTHONPATH=[str(mods)])
    assert not marker.exists() and not marker.with_suffix(".imported").exists()
    assert done.returncode == 0, done.stderr
    assert "1 cells of models from a Python factory have no estimate (a dry run imports and calls no factory)" \
        in " ".join(done.stdout.split())
    _write(tmp_path / "E.yaml", "name: e\nmodels: [mods/tb_marker_factory.py:make]\n"
                                "strategies: [{name: m, placement: mobile}]\n")
    done = _cli(["run", "E.yaml", "--dry-run"], tmp_path)          # a file, relative to the experiment's folder
    assert done.returncode == 0, done.stderr
    assert not marker.exists() and not marker.with_suffix(".imported").exists()


def test_loading_an_experiment_checks_a_factory_without_running_it(tmp_path, on_path):
    from testbed.experiment import ExperimentError, load_experiment_dict

    marker = tmp_path / "called"
    _write(on_path / "tb_marker_factory.py", FACTORY.format(marker=str(marker)))
    def load(*models):
        return load_experiment_dict({"name": "e", "models": list(models), "strategies": [{"name": "m", "placement":
                                     "mobile"}]}, cores=2, memory_bytes=2 ** 32, base_dir=tmp_path)

    assert [m.weights for m in load("tb_marker_factory:make").models] == ["given"]
    assert "tb_marker_factory" not in sys.modules and not marker.with_suffix(".imported").exists()
    exp = load("mods/tb_marker_factory.py:make")
    assert [m.name for m in exp.models] == [f"{tmp_path}/mods/tb_marker_factory.py:make"]
    assert not marker.exists() and not marker.with_suffix(".imported").exists()
    (on_path / "tb_marker_factory.py").chmod(0o666)        # yet its file is checked when the file is read
    with pytest.raises(ExperimentError, match=r"models\[0\]: tb_marker_factory:make: not run: the file .* is "
                                              r"writable by its group and by others"):
        load("tb_marker_factory:make")


def test_a_factory_from_a_file_runs_the_checked_file(tmp_path):
    import torch

    marker = tmp_path / "called"
    path = _write(tmp_path / "net.py", FACTORY.format(marker=str(marker)))
    entry = user.user_model(f"{path}:make")
    assert marker.read_text() == "called" and isinstance(entry.build(None), torch.nn.Module)
    assert entry.inputs[0].shape == (1, 4) and user.factory_ref(entry) == f"{path}:make"
    marker.unlink()
    marker.with_suffix(".imported").unlink()
    path.chmod(0o646)
    with pytest.raises(WorkloadError, match=rf"^{path}:make: not run: the file {path} is writable by others"):
        user.user_model(f"{path}:make")
    assert not marker.exists() and not marker.with_suffix(".imported").exists()


def test_a_factory_returning_something_else_is_named_with_what_it_returned(tmp_path, on_path):
    _write(on_path / "tb_nets.py", FACTORY.format(marker=str(tmp_path / "called")))
    with pytest.raises(WorkloadError) as e:
        user.user_model("tb_nets:number")
    assert str(e.value) == "tb_nets:number: the factory number returned int (42), not a torch.nn.Module"


def test_a_factory_imported_from_elsewhere_is_refused_and_not_called(tmp_path, on_path):
    marker = tmp_path / "called"
    _write(on_path / "tb_helper.py", FACTORY.format(marker=str(marker)))
    _write(on_path / "tb_reexport.py", "from tb_helper import make\n")
    with pytest.raises(WorkloadError) as e:
        user.user_model("tb_reexport:make")
    assert str(e.value) == ("tb_reexport:make: make is defined in tb_helper, not in tb_reexport; a factory must be "
                            "defined in the file or module named (write a function there that builds the model)")
    assert not marker.exists()


def test_a_package_whose_init_others_may_write_is_refused_and_not_imported(tmp_path, on_path):
    marker = tmp_path / "called"
    pkg = on_path / "tb_pkg"
    pkg.mkdir()
    init = _write(pkg / "__init__.py", f"open({str(marker.with_suffix('.init'))!r}, 'w').write('x')\n", 0o666)
    _write(pkg / "nets.py", FACTORY.format(marker=str(marker)))
    with pytest.raises(WorkloadError, match=rf"^tb_pkg.nets:make: not run: the file {init} is writable by"):
        user.user_model("tb_pkg.nets:make")
    assert not marker.with_suffix(".init").exists() and "tb_pkg" not in sys.modules
    init.chmod(0o644)
    cache = pkg / "__pycache__"             # what import runs instead of the source when it is newer
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(WorkloadError, match=rf"not run: the folder {cache} is writable by its group and by others"):
        user.user_model("tb_pkg.nets:make")
    cache.chmod(0o755)
    assert user.user_model("tb_pkg.nets:make").inputs[0].shape == (1, 4) and marker.read_text() == "called"
