"""The error root of the whole testbed, this package's one error type, and the helpers that
keep their messages short.

Callers may rely on:

- every error of the testbed, in any package, is a :class:`TestbedError` (the root, with the
  CLI's exit code);
- every problem with a topology (a file, a built-in's parameters, a ``--set`` override, a
  value given to a parser) is raised as :class:`TopologyError`, a ``ValueError``;
- ``str(error)`` is exactly one line,
  ``<source>:<line>: <field path>: <problem>; allowed: <what is allowed>``, where the parts
  that are unknown are left out together with their separator (no line for specs built in
  Python, no source or path for a bare parser error);
- the parts are also attributes (``source``, ``line``, ``path``, ``problem``, ``allowed``).
"""
from __future__ import annotations

import errno
from collections.abc import Iterable


class TestbedError(Exception):
    """The root of every error the testbed raises for something a user or the machine got
    wrong: a file, a value, a model, a store, a network the kernel will not build. ``str()``
    is the one line the user reads (what, where, what to do); :attr:`exit_code` is the
    process's exit status when the CLI stops on it.

    It lives here, in the bottom layer (stdlib only), so that every package can derive its
    own error from it without a cycle: `emulation` and `testbed` already read `topologies`,
    and `workloads` reads only this module of it and :mod:`topologies.trust` (stdlib only too). The CLI has one handler for all of them
    (:mod:`testbed.cli`). Programming errors are not ``TestbedError``: they reach the CLI's
    last line of defence as an internal error (exit 3)."""

    exit_code: int = 1
    __test__ = False          # pytest: a name starting with "Test" is not a test class


def one_line(error: BaseException) -> str:
    """What the user reads of ``error``: its message, then any notes added to it on the way
    up (``add_note``: e.g. a second failure while cleaning up after it), as one line."""
    text = str(error) or type(error).__name__
    return " ".join("; ".join([text, *getattr(error, "__notes__", ())]).split())


def no_space(error: BaseException) -> bool:
    """True when ``error`` says a disk (or the user's quota on it) is full."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def no_space_line(where: object, advice: str) -> str:
    """The one line of a full disk: what, where, what to do."""
    return f"no space left on device writing {where}: free space on that disk or {advice}"


class LocatedError(TestbedError, ValueError):
    """A problem in a file or value, with where it is. ``str()`` is one line. Subclasses name
    what was wrong (a topology, an experiment) and share the format."""

    def __init__(self, problem: str, allowed: str | None = None, *, source: str | None = None,
                 line: int | None = None, path: str | None = None) -> None:
        self.problem = problem
        self.allowed = allowed
        self.source = source
        self.line = line
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.source:
            where = f"{self.source}:{self.line}: " if self.line is not None else f"{self.source}: "
        text = f"{where}{self.path}: " if self.path else where
        text += self.problem if self.allowed is None else f"{self.problem}; allowed: {self.allowed}"
        return " ".join(text.splitlines())  # one line, whatever a problem text carried

    def __reduce__(self):  # keeps keyword-only parts when pickled (multiprocessing, executors)
        return (_rebuild, (type(self), self.problem, self.allowed, self.source, self.line, self.path))

    def located(self, *, source: str | None = None, line: int | None = None, path: str | None = None):
        """A copy with the location parts that this error does not have yet filled in."""
        return type(self)(self.problem, self.allowed, source=self.source or source,
                          line=self.line if self.line is not None else line, path=self.path or path)


class TopologyError(LocatedError):
    """A topology, or one value in it, is not acceptable. ``str()`` is one line."""


def _rebuild(cls, problem, allowed, source, line, path) -> LocatedError:
    return cls(problem, allowed, source=source, line=line, path=path)


def name_list(names: Iterable[str], limit: int = 10) -> str:
    """'a, b, c' -- or, for long lists, the first few and how many there are in all."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[: limit - 2]) + f", ... ({len(names)} in all)"


def kind_of(value: object) -> str:
    """What a parsed YAML value is, in the words a YAML author uses."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    return f"a {type(value).__name__}"
