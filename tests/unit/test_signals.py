"""emulation.signals: a handler runs in the process that installed it; a fork()ed child that
inherits it exits with 128 + the signal's number instead of running it."""
from __future__ import annotations

import os
import signal
import time

import pytest

from emulation import signals


def test_fork_safe_handler_runs_in_its_process_and_ends_a_forked_child():
    seen = []

    def handler(signum, _frame):
        seen.append((os.getpid(), signum))
        raise KeyboardInterrupt  # what the CLI's and the benchmarks' handlers do: unwind the stack

    old = signal.getsignal(signal.SIGUSR1)
    try:
        signals.install(handler, signal.SIGUSR1)
        child = os.fork()
        if child == 0:  # pragma: no cover - the child's own exit status is the assertion
            try:
                os.kill(os.getpid(), signal.SIGUSR1)
                os._exit(0)          # the handler did not end the child
            except BaseException:    # noqa: BLE001 - the handler unwound the child's stack
                os._exit(1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGUSR1
        assert seen == []
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(5)   # the handler ends the sleep at once; it only bounds a failure
        assert seen == [(os.getpid(), signal.SIGUSR1)]
    finally:
        signal.signal(signal.SIGUSR1, old)


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt here (through install), as in the CLI; put back after."""
    old = signal.getsignal(signal.SIGINT)
    signals.install(signal.default_int_handler, signal.SIGINT)
    yield signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, old)


def _signal_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)    # the handler runs here; a sleep the handler raises in is cut short


def test_signals_in_a_deferred_block_are_held_then_acted_on_once_when_it_ends(sigint_raises):
    ran_to_the_end = False
    with pytest.raises(KeyboardInterrupt):
        with signals.deferred():
            _signal_self(signal.SIGINT)
            _signal_self(signal.SIGINT)        # a second Ctrl-C: held too
            ran_to_the_end = True
    assert ran_to_the_end
    assert signal.getsignal(signal.SIGINT) is sigint_raises     # the handler it found is back
    time.sleep(0.05)                                             # and nothing else is pending


def test_nested_deferred_blocks_hold_until_the_outermost_ends(sigint_raises):
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with signals.deferred():
            with signals.deferred():
                _signal_self(signal.SIGINT)
            steps.append("inner ended, nothing raised")
            time.sleep(0.05)
            steps.append("outer body ran to its end")
    assert steps == ["inner ended, nothing raised", "outer body ran to its end"]


def test_a_held_signal_is_acted_on_even_when_the_block_fails(sigint_raises):
    with pytest.raises(KeyboardInterrupt) as info:
        with signals.deferred():
            _signal_self(signal.SIGINT)
            raise RuntimeError("teardown failed part-way")
    assert isinstance(info.value.__context__, RuntimeError)


def test_a_child_forked_inside_a_deferred_block_exits_on_a_signal_it_would_hold(sigint_raises):
    with signals.deferred():
        child = os.fork()
        if child == 0:  # pragma: no cover - the child's own exit status is the assertion
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                os._exit(0)          # held: a pyroute2 helper that never ends
            except BaseException:    # noqa: BLE001
                os._exit(1)
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM


# The CLI's way out, in a process of its own (real signals): the first signal raises; one that
# comes while the process tears down is held, said once on stderr, and bounds the teardown.
CLI_PROCESS = r"""
import subprocess, sys, time
from emulation.registry import RunRegistry
from testbed import cli

cli.TEARDOWN_BOUND_S = float(sys.argv[1])
cli._install_signal_handlers()
child = subprocess.Popen(["sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # what the run made
reg = RunRegistry("tbunit")
reg.create()
reg.add_process(child.pid, "test:sleep")
print(child.pid, flush=True)
try:
    print("measuring", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    print("tearing down", flush=True)
    time.sleep(float(sys.argv[2]))                 # a teardown that takes this long
    child.kill()
    child.wait()
    reg.remove()
    print("torn down", flush=True)
    sys.exit(130)
"""


def _cli_process(tmp_path, bound_s: float, teardown_s: float):
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "TESTBED_REGISTRY_DIR": str(tmp_path / "registry"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = subprocess.Popen([sys.executable, "-c", CLI_PROCESS, str(bound_s), str(teardown_s)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    assert p.stdout.readline() == "measuring\n"
    return p, child


def _end(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_signal_during_the_clis_teardown_is_held_and_the_teardown_finishes(tmp_path):
    p, child = _cli_process(tmp_path, bound_s=10, teardown_s=1.0)
    try:
        p.send_signal(signal.SIGINT)
        assert p.stdout.readline() == "tearing down\n"
        for _ in range(3):                 # Ctrl-C, again and again, while it tears down
            time.sleep(0.2)
            p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
        _end(child)
    assert out == "torn down\n" and p.returncode == 130, err
    assert err.count("testbed: SIGINT: stopping once what was measured is stored and the network is torn down") == 1
    assert "Traceback" not in err


def test_a_teardown_that_hangs_after_a_second_signal_ends_naming_what_is_left(tmp_path):
    p, child = _cli_process(tmp_path, bound_s=1.0, teardown_s=60)
    try:
        p.send_signal(signal.SIGINT)
        assert p.stdout.readline() == "tearing down\n"
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        waited = time.monotonic() - t0
    finally:
        p.kill()
        _end(child)
    assert p.returncode == 130 and out == "" and 1.0 <= waited < 5.0, (waited, err)
    assert err.splitlines()[-1] == ("Error: teardown did not end within 1 s of the signal; left: run tbunit: "
                                    "1 process, its registry record; run `testbed clean` to remove it")
