"""One error root for the whole testbed, and the CLI's one handler of it (no root needed)."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import click
import pytest
from click.testing import CliRunner

import emulation
import testbed
import topologies
import workloads
from testbed.cli import _Testbed, cli
from testbed.runner import RunError, cells_done
from testbed.store import ResultStore
from tests.unit.test_store import cell_record, hop_rows, request_rows
from topologies.errors import TestbedError

# errors that are not the user's to read: wire-level internals and kernel replies, caught where
# they arise (a NetlinkError is an OSError with the kernel's errno, like any other OSError; the
# codec's socket timeouts are TimeoutErrors, which a client reports as a request's timeout)
INTERNAL = {"emulation.nfqueue.NetlinkError", "emulation.calibrate._IperfStuck", "workloads.codec._DuplicateKey",
            "workloads.codec.IdleTimeout", "workloads.codec.StallTimeout"}


def _exception_classes():
    for pkg in (topologies, emulation, workloads, testbed):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            try:
                mod = importlib.import_module(info.name)
            except ImportError:       # an optional model zoo's own dependency
                continue
            for _, obj in inspect.getmembers(mod, inspect.isclass):
                if issubclass(obj, BaseException) and obj.__module__ == mod.__name__:
                    yield f"{obj.__module__}.{obj.__qualname__}", obj


def test_every_error_of_the_testbed_derives_from_the_one_root():
    classes = dict(_exception_classes())
    # the roots that were separate before: each must be found, or this test checks nothing
    for name in ("topologies.errors.TopologyError", "testbed.experiment.ExperimentError",
                 "emulation.errors.EmulationError", "emulation.cgroups.CgroupError", "workloads.errors.WorkloadError",
                 "workloads.codec.CodecError", "testbed.store.StoreError", "testbed.runner.RunError",
                 "testbed.report.ReportError"):
        assert name in classes, name
    outside = sorted(n for n, c in classes.items()
                     if not issubclass(c, TestbedError) and n not in INTERNAL
                     and not issubclass(c, (SystemExit, KeyboardInterrupt, click.ClickException)))
    assert outside == []


def _group_raising(error: Exception) -> click.Group:
    @click.group(cls=_Testbed)
    def g():
        pass

    @g.command()
    def boom():
        raise error

    return g


def test_the_handler_prints_one_line_with_the_errors_exit_code():
    class Refused(TestbedError):
        exit_code = 4

    res = CliRunner().invoke(_group_raising(Refused("the link is down; bring it up")), ["boom"])
    assert res.exit_code == 4
    assert res.output.splitlines() == ["Error: the link is down; bring it up"]
    assert isinstance(res.exception, SystemExit)        # not the error itself: nothing for a traceback


def test_what_happened_after_an_error_is_a_note_at_the_end_of_its_one_line():
    first = TestbedError("no space left on device writing cell c to out/results.sqlite: free space")
    first.add_note("and the run's end could not be stored: no space left on device writing run r")
    res = CliRunner().invoke(_group_raising(first), ["boom"])
    assert res.exit_code == 1
    assert res.output.splitlines() == ["Error: no space left on device writing cell c to out/results.sqlite: free "
                                       "space; and the run's end could not be stored: no space left on device "
                                       "writing run r"]


def test_an_error_that_is_not_the_testbeds_is_not_swallowed_by_the_handler():
    res = CliRunner().invoke(_group_raising(ZeroDivisionError("bug")), ["boom"])
    assert isinstance(res.exception, ZeroDivisionError)   # main() reports it as an internal error (exit 3)


@pytest.mark.parametrize("args, text", [
    (["results", "show", "{tmp}/nowhere"], "no results"),
    (["models", "cuts", "no_such_model"], "model 'no_such_model' unknown"),
])
def test_errors_of_each_package_reach_the_user_as_one_line(tmp_path, args, text):
    res = CliRunner().invoke(cli, [a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and text in lines[0], res.output


def _store_with(folder, experiment: str, status: str = "done"):
    with ResultStore.in_folder(folder) as s:
        s.begin_run("r1", experiment, {}, {})
        s.write_cell(cell_record(status=status), request_rows(), hop_rows())


def test_resume_policy_no_store_means_nothing_done(tmp_path):
    assert cells_done(tmp_path / "new", "exp", resume=False) == set()


def test_resume_policy_refuses_a_folder_with_cells_unless_resume(tmp_path):
    _store_with(tmp_path, "exp")
    with pytest.raises(RunError, match=r"already holds 1 cells of exp \(1 done\); add --resume"):
        cells_done(tmp_path, "exp", resume=False)
    assert cells_done(tmp_path, "exp", resume=True) == {cell_record().cell}


def test_resume_policy_keeps_only_done_cells(tmp_path):
    _store_with(tmp_path, "exp", status="failed")
    assert cells_done(tmp_path, "exp", resume=True) == set()


def test_resume_policy_refuses_another_experiments_folder(tmp_path):
    _store_with(tmp_path, "other")
    with pytest.raises(RunError, match="holds results of experiment other, not exp; choose another --out"):
        cells_done(tmp_path, "exp", resume=True)
