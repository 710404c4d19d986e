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
