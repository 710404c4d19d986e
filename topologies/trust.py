"""The one check of a Python file that the testbed is about to execute, and of a folder whose
contents it trusts.

Some things a user names are **code** that the testbed runs with its own rights (root, for
`testbed run`): a topology ``.py`` file, a model factory (``path/to/file.py:factory`` or
``package.module:factory``). Before it executes such a file the testbed reads it with
:func:`read_code`, which refuses, in one line:

- a file (the target, when the path is a symbolic link) that is not a regular file, that is
  writable by its group or by others, or that is owned by someone other than root or the
  invoking user;
- a file below a folder, from ``/`` down to the file's own folder, owned by someone other
  than root or the invoking user, or writable by its group or by others *without the sticky
  bit*: in such a folder someone else could replace the file. A sticky folder (``/tmp``) is
  accepted: there only an entry's owner (or root) may rename or remove it, so a file of yours
  in it stays yours.

The invoking user is ``SUDO_UID`` when the testbed runs under sudo (the user who typed the
command), else the current user; the effective user is trusted as well. The file is read
once, from an open descriptor whose owner and mode are the ones checked, and its bytes are
what the caller compiles: what runs is what was checked.

:func:`check_folder` applies the owner and write rules to one folder (no sticky exception):
the artifact cache uses it for its root and entries, whose contents the testbed loads.

Only this module of the standard library is imported: it is in the bottom layer, beside
:mod:`topologies.errors`, so that `workloads` can use it too.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import TestbedError

_FIX_CODE = ("a file owned by root or you, in folders owned by root or you, none of them writable by anyone "
             "else (chmod go-w; a folder with the sticky bit, like /tmp, may be)")


class UntrustedError(TestbedError):
    """A file the testbed would execute, or a folder it would trust, that someone other than
    root or the invoking user could change. ``str()`` is one line,
    ``<problem>; allowed: <allowed>``; both parts are attributes too."""

    def __init__(self, problem: str, allowed: str) -> None:
        self.problem = problem
        self.allowed = allowed
        super().__init__(f"{problem}; allowed: {allowed}")

    def __reduce__(self):
        return (type(self), (self.problem, self.allowed))


def invoking_uid() -> int:
    """``SUDO_UID`` when set (the user who ran sudo), else the real uid."""
    sudo = os.environ.get("SUDO_UID", "")
    return int(sudo) if sudo.isdigit() else os.getuid()


def trusted_uids() -> frozenset[int]:
    """Root, the invoking user and the effective user."""
    return frozenset({0, invoking_uid(), os.geteuid()})


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"
    except (KeyError, ImportError):
        return f"uid {uid}"


def _you() -> str:
    return f"root or you ({_user(invoking_uid())})"


def _writers(mode: int) -> str | None:
    """Who besides the owner may write, from the mode bits; None: no one."""
    group, other = bool(mode & stat.S_IWGRP), bool(mode & stat.S_IWOTH)
    if group and other:
        return "its group and by others"
    return "its group" if group else "others" if other else None


def _owner_problem(path: Path, st: os.stat_result, what: str) -> str | None:
    if st.st_uid in trusted_uids():
        return None
    return f"{what} {path} is owned by {_user(st.st_uid)}, not by {_you()}"


def check_folder(folder: Path | str, *, what: str = "folder", hint: str | None = None) -> None:
    """Refuse ``folder`` (followed if a link) unless it is a folder owned by root or the
    invoking user and writable by no one else (no sticky exception). ``what`` names it in the
    error; ``hint`` is added to what is allowed (e.g. another place to use instead)."""
    folder = Path(folder)
    fix = f"a {what} owned by {_you()} and writable only by its owner" + (f", {hint}" if hint else "")
    try:
        st = folder.stat()
    except OSError as e:
        raise UntrustedError(f"cannot check {what} {folder}: {e.strerror}", fix) from None
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedError(f"{what} {folder} is not a folder", fix)
    problem = _owner_problem(folder, st, what)
    if problem is None and _writers(st.st_mode):
        problem = (f"{what} {folder} is writable by {_writers(st.st_mode)} "
                   f"(mode {stat.S_IMODE(st.st_mode):04o}; chmod go-w {folder})")
    if problem:
        raise UntrustedError(problem, fix)


def _check_chain(folder: Path, file: Path) -> None:
    """Every folder from / down to ``folder`` (resolved, no links left)."""
    for part in (*reversed(folder.parents), folder):
        try:
            st = os.lstat(part)
        except OSError as e:
            raise UntrustedError(f"not run: cannot check the folder {part} above {file}: {e.strerror}",
                                 _FIX_CODE) from None
        problem = _owner_problem(part, st, "the folder")
        if problem:
            raise UntrustedError(f"not run: {problem}, who could replace {file}", _FIX_CODE)
        writers = _writers(st.st_mode)
        if writers and not st.st_mode & stat.S_ISVTX:
            raise UntrustedError(f"not run: the folder {part} is writable by {writers} without the sticky bit "
                                 f"(mode {stat.S_IMODE(st.st_mode):04o}), so they could replace {file} "
                                 f"(chmod go-w {part}, or keep the file in a folder of your own)", _FIX_CODE)


def check_code_folder(folder: Path | str, file: Path | str) -> None:
    """The folder rules of :func:`read_code` for ``folder`` and every folder above it, when it
    exists (e.g. the ``__pycache__`` beside a module: importing runs its ``.pyc`` instead of
    the source); ``file`` is what the error names as at stake."""
    folder = Path(folder)
    if folder.is_dir():
        _check_chain(folder.resolve(), Path(file))


def read_code(path: Path | str) -> tuple[Path, bytes]:
    """The resolved path of the Python file ``path`` and its bytes, read once after the file
    and every folder above it passed the checks of the module docstring; else one
    :class:`UntrustedError` line (whose problem starts with ``not run:``)."""
    path = Path(path)
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as e:
        raise UntrustedError(f"not run: cannot resolve {path}: {getattr(e, 'strerror', None) or e}",
                             "an existing Python file") from None
    _check_chain(resolved.parent, resolved)
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise UntrustedError(f"not run: cannot open {resolved}: {e.strerror}", "a readable Python file") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedError(f"not run: {resolved} is not a regular file", "a Python file")
        problem = _owner_problem(resolved, st, "the file")
        if problem is None and _writers(st.st_mode):
            problem = (f"the file {resolved} is writable by {_writers(st.st_mode)} "
                       f"(mode {stat.S_IMODE(st.st_mode):04o}; chmod go-w {resolved})")
        if problem:
            raise UntrustedError(f"not run: {problem}", _FIX_CODE)
        return resolved, f.read()
