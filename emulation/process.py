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


def read_json_line(p: subprocess.Popen, timeout_s: float = 5.0, what: str = "helper") -> dict:
    """The next line one of our JSON-line helpers (delay line, CPU ticker) writes on its stdout
    (opened in text mode), decoded; an error naming ``what`` when it stays silent for
    ``timeout_s`` or exits (with the end of its stderr)."""
    ready, _, _ = select.select([p.stdout], [], [], timeout_s)
    if not ready:
        raise EmulationError(f"{what} (pid {p.pid}) did not answer within {timeout_s:g}s")
    line = p.stdout.readline()
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
