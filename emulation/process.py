"""Start processes inside an emulated host: fork -> join the host's cgroups -> setns -> exec.

``ip netns exec`` remounts /sys and needs a named namespace; Mininet's ``mnexec -a`` joins
the namespace but not our cgroups. Doing both in the child between fork and exec means the
process is limited before it runs a single instruction of user code.
"""
from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from .errors import EmulationError
from .registry import ENV_MARK

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(path: str, nstype: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def enter(netns_pid: int | None, cgroup_procs: list[Path]):
    """A ``preexec_fn`` that moves the child into the cgroups first, then the namespace."""
    procs = [str(p) for p in cgroup_procs]
    ns = f"/proc/{netns_pid}/ns/net" if netns_pid else None

    def _enter() -> None:
        pid = str(os.getpid())
        for f in procs:
            with open(f, "w") as fh:
                fh.write(pid)
        if ns:
            _setns(ns, CLONE_NEWNET)

    return _enter


def marked_env(run_id: str, env: dict | None = None) -> dict:
    out = dict(os.environ if env is None else env)
    out[ENV_MARK] = run_id
    return out


def popen(argv: list[str], *, netns_pid: int | None, cgroup_procs: list[Path], run_id: str,
          env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(argv, preexec_fn=enter(netns_pid, cgroup_procs),
                            env=marked_env(run_id, env), **kw)


def run(argv: list[str], *, netns_pid: int | None, run_id: str, timeout: float = 30.0,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run a short command in a namespace (no cgroup) and return its output."""
    res = subprocess.run(argv, preexec_fn=enter(netns_pid, []), env=marked_env(run_id),
                         capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise EmulationError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res


def terminate(procs, grace_s: float = 5.0) -> None:
    """Stop processes we started (by PID, never by name): SIGTERM to those still running,
    then SIGKILL to those not gone within ``grace_s`` seconds (shared deadline); reaps all."""
    import time

    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class LineReader:
    """The lines a child writes on a pipe, read with a timeout and never lost.

    ``select()`` on a pipe and then ``readline()`` on its buffered file object loses lines: the
    file object reads every line that is in the pipe into its own buffer, returns the first,
    and the next ``select()`` sees an empty pipe and waits although a whole line is already
    read. A client that wrote ``hello`` and ``warm`` together and then waited for an answer to
    ``warm`` hung its cell until the budget ran out that way (seen under load in CI). This
    reads the pipe's descriptor itself and keeps what it read, so a line is handed out as soon
    as it is complete. Once a stream has a reader, read it only through the reader
    (:func:`line_reader` keeps one per stream)."""

    def __init__(self, stream):
        self.stream = stream
        self.fd = stream.fileno()
        self._buf = b""
        self.eof = False

    def pending(self) -> bool:
        """A complete line (or the end of the stream) can be had without waiting."""
        return self.eof or b"\n" in self._buf

    def fill(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the pipe and read what is in it; whether anything came
        (data or its end)."""
        if self.eof:
            return True
        if not select.select([self.fd], [], [], max(0.0, timeout_s))[0]:
            return False
        chunk = os.read(self.fd, 65536)
        if chunk:
            self._buf += chunk
        else:
            self.eof = True
        return True

    def readline(self, timeout_s: float = 0.0) -> str | None:
        """The next line, newline included; ``""`` at the end of the stream (its last
        unterminated piece first, if any); None when no whole line came within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line, self._buf = self._buf[:i + 1], self._buf[i + 1:]
                return line.decode(errors="replace")
            if self.eof:
                line, self._buf = self._buf, b""
                return line.decode(errors="replace")
            if not self.fill(deadline - time.monotonic()) and time.monotonic() >= deadline:
                return None


def line_reader(stream) -> LineReader:
    """The one :class:`LineReader` of ``stream`` (made on first use, kept on the stream)."""
    reader = getattr(stream, "_testbed_lines", None)
    if reader is None:
        reader = LineReader(stream)
        stream._testbed_lines = reader
    return reader


def ready_lines(readers: list[LineReader], timeout_s: float) -> list[LineReader]:
    """The readers that have a line (or their end) to hand out, waiting up to ``timeout_s``
    for one when none has yet: :func:`select.select` for :class:`LineReader`."""
    ready = [r for r in readers if r.pending()]
    if ready:
        return ready
    fds = {r.fd: r for r in readers}
    for fd in select.select(list(fds), [], [], max(0.0, timeout_s))[0]:
        fds[fd].fill(0.0)
    return [r for r in readers if r.pending()]


def read_json_line(p: subprocess.Popen, timeout_s: float = 5.0, what: str = "helper") -> dict:
    """The next line one of our JSON-line helpers (delay line, CPU ticker) writes on its stdout,
    decoded; an error naming ``what`` when it stays silent for ``timeout_s`` or exits (with
    the end of its stderr)."""
    line = line_reader(p.stdout).readline(timeout_s)
    if line is None:
        raise EmulationError(f"{what} (pid {p.pid}) did not answer within {timeout_s:g}s")
    if not line:
        err = p.stderr.read() if p.poll() is not None else ""
        raise EmulationError(f"{what} (pid {p.pid}) exited: {err.strip()[-500:]}")
    return json.loads(line)


def exit_text(code: int | None) -> str:
    """A process's exit status in words, as :attr:`subprocess.Popen.returncode` holds it:
    ``exit code 1``, ``killed by SIGKILL``, ``running`` (None)."""
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def stderr_tail(p: subprocess.Popen) -> str:
    """The last non-empty line a process we started wrote to its stderr pipe, read without
    waiting (what is in the pipe now); '' when there is none or stderr is not a pipe."""
    if p.stderr is None:
        return ""
    data = b""
    try:
        fd = p.stderr.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    except (OSError, ValueError):   # closed already
        pass
    lines = [l.strip() for l in data.decode(errors="replace").splitlines() if l.strip()]
    return lines[-1][-300:] if lines else ""
