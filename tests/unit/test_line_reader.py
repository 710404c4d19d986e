"""Reading a child's JSON lines with a timeout: two lines that reach the pipe together must both
be handed out without waiting for more (select() + a buffered readline() hid the second one, and
a cell's client waited for an answer to it until the cell's budget ran out)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from emulation.errors import EmulationError
from emulation.process import line_reader, read_json_line, ready_lines
from testbed.runner import _read_until

# writes two lines in one write, then waits for a line on stdin before it writes a third
CHILD = ("import sys; sys.stdout.write('{\"hello\": 1}\\n{\"warm\": 1}\\n'); sys.stdout.flush(); "
         "sys.stdin.readline(); print('{\"done\": 1}', flush=True)")


def _child():
    return subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def test_a_second_line_that_came_with_the_first_is_handed_out_without_waiting():
    p = _child()
    try:
        lines = line_reader(p.stdout)
        assert lines.readline(10.0) == '{"hello": 1}\n'
        t0 = time.monotonic()
        # the old select()+readline() waited here for the whole timeout: the pipe was empty
        assert lines.readline(5.0) == '{"warm": 1}\n'
        assert time.monotonic() - t0 < 1.0
        assert lines.readline(0.2) is None          # nothing more until it is answered
        p.stdin.write("go\n")
        p.stdin.flush()
        assert lines.readline(10.0) == '{"done": 1}\n'
        assert lines.readline(10.0) == ""           # its end
    finally:
        p.kill()
        p.wait()


def test_the_runners_read_until_finds_a_key_in_a_line_that_came_with_another():
    p = _child()
    try:
        assert _read_until(p, time.monotonic() + 10.0, "hello") == {"hello": 1}
        t0 = time.monotonic()
        assert _read_until(p, time.monotonic() + 5.0, "warm") == {"warm": 1}
        assert time.monotonic() - t0 < 1.0
    finally:
        p.kill()
        p.wait()


def test_ready_lines_hands_out_a_buffered_line_before_waiting_on_any_pipe():
    a, b = _child(), _child()
    try:
        ra, rb = line_reader(a.stdout), line_reader(b.stdout)
        got = []
        deadline = time.monotonic() + 10.0
        while len(got) < 4 and time.monotonic() < deadline:
            for r in ready_lines([ra, rb], 0.5):
                got.append((r is ra, r.readline()))
        assert sorted(got) == sorted([(True, '{"hello": 1}\n'), (True, '{"warm": 1}\n'),
                                      (False, '{"hello": 1}\n'), (False, '{"warm": 1}\n')])
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


def test_read_json_line_says_which_helper_stayed_silent_or_exited():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        with pytest.raises(EmulationError, match=r"delay line \(pid \d+\) did not answer within 0.2s"):
            read_json_line(p, timeout_s=0.2, what="delay line")
    finally:
        p.kill()
        p.wait()
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stderr.write('bad flag'); sys.exit(2)"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.wait()
    with pytest.raises(EmulationError, match=r"ticker \(pid \d+\) exited: bad flag"):
        read_json_line(p, timeout_s=5.0, what="ticker")
