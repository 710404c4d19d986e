"""A full disk, for real: a small tmpfs mounted for each test as the cache (``TESTBED_CACHE``)
or a run's output folder, filled to the last byte while the testbed writes to it.

Each case must end in one line (what, where, what to do) with the exit code of an error of
the machine (1), not "internal error" (3); leave no temporary file behind; and keep what was
built or measured before (complete cache entries, the cells already in the store)."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from testbed.store import ResultStore, StoreError
from tests.unit.test_store import cell_record, hop_rows, request_rows

REPO = Path(__file__).resolve().parents[2]
TESTBED = [sys.executable, "-m", "testbed.cli"]
DISK_MB = 20

MODEL = """\
import torch


def build():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                 torch.nn.ReLU(), torch.nn.Linear(512, 10))
    return module, (1, 16)
"""


@contextlib.contextmanager
def tmpfs(mount: Path, options: str):
    """A real tmpfs mounted at ``mount`` with ``options``, unmounted whatever happened in it."""
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)     # a file still open: detach it


@pytest.fixture()
def small_disk(tmp_path):
    """A tmpfs of `DISK_MB` MiB."""
    with tmpfs(tmp_path / "disk", f"size={DISK_MB}m,mode=0755") as mount:
        yield mount


def fill(disk: Path) -> Path:
    """Fill ``disk`` to its last byte (a file, written unbuffered until the kernel says ENOSPC)."""
    path = disk / "filler"
    with open(path, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError as e:
            assert e.errno == errno.ENOSPC
        try:
            while True:                      # the last partial block too
                f.write(b"\0" * 512)
        except OSError:
            pass
    return path


def temporary_files(root: Path) -> list[str]:
    """``*.tmp`` files, and hidden build folders or files the testbed writes before a rename."""
    found = []
    for p in root.rglob("*"):
        if p.name.endswith(".tmp") or (p.name.startswith(".") and p.name not in (".locks", ".testbed-run.lock")
                                       and ".locks" not in p.parts):
            found.append(str(p.relative_to(root)))
    return found


def one_line(error: BaseException) -> str:
    """What the CLI prints of ``error``: its message, then its notes."""
    return "; ".join([str(error), *getattr(error, "__notes__", [])])


def _testbed(*args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(TESTBED + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _error_line(p: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = [line for line in p.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, p.stderr[-3000:]
    return lines[0]


def test_preparing_into_a_full_cache_is_one_line_and_keeps_what_was_built(small_disk, tmp_path):
    (tmp_path / "diskmodel.py").write_text(MODEL)
    head = "name: full\nmodels: ['diskmodel:build']\nstrategies:\n"
    plain, pruned, quantized = (tmp_path / f"{n}.yaml" for n in ("plain", "pruned", "quantized"))
    plain.write_text(head + "  - {name: edge, placement: edge}\n")
    pruned.write_text(head + "  - {name: pruned, operators: [{prune: {ratio: 0.5, epochs: 2}}], placement: edge}\n")
    quantized.write_text(head + "  - {name: int8, operators: [quantize], placement: edge}\n")
    cache = small_disk / "cache"
    env = {**os.environ, "TESTBED_CACHE": str(cache), "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}

    p = _testbed("prepare", str(plain), env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    built = sorted(str(e.relative_to(cache)) for e in cache.glob("*/*") if (e / "complete.json").is_file())
    filler = fill(small_disk)

    # training: its checkpoint does not fit (it used to be torch's RuntimeError, exit 3, and a .pt.tmp left)
    p = _testbed("prepare", str(pruned), env=env)
    assert p.returncode == 1, p.stderr[-3000:]
    line = _error_line(p)
    checkpoint = next(iter((cache / "checkpoints").glob("*")), None)
    assert checkpoint is None, checkpoint                  # neither a checkpoint nor its .tmp
    assert line.startswith(f"Error: training: no space left on device writing {cache / 'checkpoints'}/"), line
    assert line.endswith(".pt.tmp: free space on that disk or move the cache (TESTBED_CACHE) elsewhere; training "
                         "resumes from its last checkpoint when run again"), line
    assert temporary_files(small_disk) == []

    # an artifact: its ONNX file does not fit (it used to be an OSError, "internal error", exit 3)
    p = _testbed("prepare", str(quantized), env=env)
    assert p.returncode == 1, p.stderr[-3000:]
    line = _error_line(p)
    assert line.startswith(f"Error: no space left on device writing {cache / 'artifacts'}/"), line
    assert line.endswith(": free space on that disk or point TESTBED_CACHE elsewhere (nothing half-built was kept)")
    assert temporary_files(small_disk) == []

    # what was built before is kept, whole; with room again, everything builds
    assert sorted(str(e.relative_to(cache)) for e in cache.glob("*/*")
                  if (e / "complete.json").is_file()) == built
    p = _testbed("prepare", str(plain), "--json", env=env)
    assert p.returncode == 0 and '"cached": true' in p.stdout, p.stderr[-3000:]
    filler.unlink()
    for exp in (pruned, quantized):
        p = _testbed("prepare", str(exp), env=env)
        assert p.returncode == 0, p.stderr[-3000:]
    assert temporary_files(small_disk) == []


def test_a_store_on_a_full_disk_refuses_a_cell_in_one_line_and_keeps_the_cells_before(small_disk):
    out = small_disk / "out"
    with ResultStore.in_folder(out) as store:
        store.begin_run("r1", "exp", {}, {})
        store.write_cell(cell_record("a"), request_rows(), hop_rows())
        fill(small_disk)
        many = [replace(request_rows()[0], seq=i) for i in range(300)]
        with pytest.raises(StoreError) as e:
            store.write_cell(cell_record("b"), many, [])
        assert str(e.value) == (f"no space left on device writing cell b to {out / 'results.sqlite'}: free space on "
                                "that disk or choose another --out (what was stored before stays readable here; "
                                "--resume finishes the run once there is room)")
        with pytest.raises(StoreError, match=r"^no space left on device writing run r1 to "):
            store.end_run("r1", "done")
    with ResultStore.in_folder(out, create=False) as store:
        assert [c["cell"] for c in store.cells()] == ["a"]
        assert len(store.requests("a")) == len(request_rows()) and len(store.hops("a")) == len(hop_rows())
        assert store.runs()[0]["status"] == "running"
    with pytest.raises(StoreError) as e:             # a new store on the full disk: the same kind of line
        ResultStore.in_folder(small_disk / "other")
    assert str(e.value).startswith(f"no space left on device writing ") and "other" in str(e.value)


def _load(path: Path):
    from emulation.probe import machine_cores, machine_memory_bytes
    from testbed.experiment import load_experiment

    return load_experiment(path, cores=machine_cores(), memory_bytes=machine_memory_bytes())


def _experiment(folder: Path, data: str) -> Path:
    from tests.integration.test_run import _model

    _model(folder)
    path = folder / "exp.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: full-run
        topology: {{name: it, hosts: {{mobile: {{}}, edge: {{}}}}, links: {{mobile-edge: {{bandwidth: 50Mbit}}}}}}
        models: [{{name: wide.onnx, data: {data}}}]
        strategies:
          - {{name: mobile, placement: mobile}}
        source: mobile
        requests: {{warmup: 1, repeat: 5, inputs: 3, timeout: 20s}}
        """))
    return path


def test_the_first_error_of_a_run_is_reported_and_a_failed_end_of_run_is_only_mentioned(small_disk, tmp_path):
    """The disk fills up while the run stores its first cell (failed: its data file is bad): that
    error is what the user reads, the run's end that could not be stored either is a note."""
    from testbed.runner import Events, run_experiment
    from workloads.cache import Cache

    (tmp_path / "bad.csv").write_text("1,2,0\n3,4\n")
    exp = _load(_experiment(tmp_path, "bad.csv"))
    out = small_disk / "out"

    def stage(text: str) -> None:
        if text.startswith("cannot prepare"):       # right before its cells are stored failed
            fill(small_disk)

    with pytest.raises(StoreError) as e:
        run_experiment(exp, out, events=Events(stage=stage), cache=Cache(tmp_path / "cache"))
    line = one_line(e.value)
    assert line.startswith(f"no space left on device writing cell {tmp_path / 'wide.onnx'}/mobile/"), line
    assert f"to {out / 'results.sqlite'}: free space on that disk or choose another --out" in line
    assert len(e.value.__notes__) == 1 and "; and the run's end could not be stored: no space left on device " \
        "writing run " in line
    assert temporary_files(small_disk) == []
    with ResultStore.in_folder(out, create=False) as store:       # readable; the run stays 'running' (crashed)
        assert store.cells() == [] and store.runs()[0]["status"] == "running"


def test_a_full_output_folder_while_writing_request_inputs_is_one_line_without_a_partial_file(small_disk, tmp_path):
    from testbed.runner import Events, RunError, run_experiment
    from workloads.cache import Cache

    exp = _load(_experiment(tmp_path, "data.npz"))
    out = small_disk / "out"

    def stage(text: str) -> None:
        if "request inputs and reference outputs" in text:      # 3 x 128 KiB of inputs are written next
            fill(small_disk)

    with pytest.raises(RunError) as e:
        run_experiment(exp, out, events=Events(stage=stage), cache=Cache(tmp_path / "cache"))
    assert str(e.value) == (f"no space left on device writing {out}: free space on that disk or choose another "
                            "--out (what was stored before stays readable here; --resume finishes the run once "
                            "there is room)")
    assert temporary_files(small_disk) == [] and list((out / "inputs").iterdir()) == []
    # whether the run's end still fitted depends on SQLite reusing its log's pages: either way, it says so
    notes = getattr(e.value, "__notes__", [])
    assert all(n.startswith("and the run's end could not be stored: no space left on device") for n in notes)
    with ResultStore.in_folder(out, create=False) as store:
        assert store.runs()[0]["status"] == ("running" if notes else "failed")


def test_testbed_run_into_a_full_disk_exits_1_with_one_line(small_disk, tmp_path):
    exp = _experiment(tmp_path, "data.npz")
    fill(small_disk)
    env = {**os.environ, "TESTBED_CACHE": str(tmp_path / "cache")}
    p = _testbed("run", str(exp), "--out", str(small_disk / "out"), env=env)
    assert p.returncode == 1, p.stderr[-3000:]
    assert _error_line(p).startswith(f"Error: no space left on device writing {small_disk / 'out'}"), p.stderr
    assert temporary_files(small_disk) == []


def test_a_disk_out_of_inodes_that_no_step_names_still_ends_in_one_line(tmp_path):
    """A full disk the commands do not name themselves (here: no inode left for the cache's lock
    folder) reaches the CLI's handler: one line with exit 1, not an internal error."""
    with tmpfs(tmp_path / "inodes", "size=4m,nr_inodes=16") as mount:
        for i in range(64):                     # every inode taken
            try:
                (mount / f"f{i}").touch()
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
        else:
            pytest.fail("the tmpfs never ran out of inodes")
        (tmp_path / "diskmodel.py").write_text(MODEL)
        exp = tmp_path / "plain.yaml"
        exp.write_text("name: full\nmodels: ['diskmodel:build']\nstrategies:\n  - {name: edge, placement: edge}\n")
        env = {**os.environ, "TESTBED_CACHE": str(mount / "cache"), "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
        p = _testbed("prepare", str(exp), env=env)
        assert p.returncode == 1, p.stderr[-3000:]
        line = _error_line(p)
        assert line.startswith(f"Error: no space left on device writing {mount / 'cache'}"), line
        assert line.endswith(f": free space on that disk or point TESTBED_CACHE ({mount / 'cache'}), the output "
                             f"folder (--out) or TMPDIR ({tempfile.gettempdir()}) elsewhere"), line
