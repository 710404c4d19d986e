"""Reading a located document: the checks that a loader makes on the plain data of a YAML
document (a topology file, an experiment file), each failure one located error.

Both loaders read their documents through :class:`DocumentReader`, so that "expected a
mapping", "unknown key" and the line an error points at mean the same in every file.

Callers may rely on:

- ``lines`` maps written paths to the 1-based line they stand on: keys dotted
  (``links.edge-cloud.delay``), list items by index (``strategies[0]``), as
  :func:`topologies.yamlsrc.read_yaml` and the experiment loader record them;
- an error at a path that was not written (a value the loader looked for, a key inside a
  value) points at the line of its nearest written parent, or has no line;
- every failure raises the reader's error type (a :class:`~topologies.errors.LocatedError`)
  whose ``str()`` is one line, ``<source>:<line>: <path>: <problem>; allowed: <allowed>``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from .errors import LocatedError, TopologyError, kind_of

_LAST_PART = re.compile(r"(.*?)(?:\[\d+\]|\.[^.\[\]]*)")


def read_text(path: Path, source: str, error: type[LocatedError] = TopologyError,
              readable: str = "a readable file") -> str:
    """The text of the YAML document at ``path``; a file that cannot be read, or is not UTF-8,
    is one ``error`` at ``source`` (``readable`` says what is allowed instead)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"not UTF-8 text ({e.reason} at byte {e.start})", "a UTF-8 YAML file", source=source) from None
    except OSError as e:
        raise error(f"cannot read the file: {e.strerror}", readable, source=source) from None


def parent_path(path: str) -> str:
    """``strategies[0].placement`` -> ``strategies[0]`` -> ``strategies`` -> ``''``."""
    m = _LAST_PART.fullmatch(path)
    return m.group(1) if m else ""


def line_of(lines: Mapping[str, int | None], path: str) -> int | None:
    """The line ``path`` was written on, else that of its nearest written parent."""
    while path:
        line = lines.get(path)
        if line is not None:
            return line
        path = parent_path(path)
    return None


class DocumentReader:
    """The checks every loader makes on a document's plain data (``dict``/``list``/scalars).

    Each check returns the value it was given (a mapping ``None`` as ``{}``) or raises, through
    :meth:`fail`, ``error`` located at ``source`` (kept as ``source_name``), the path and
    its line. A subclass may override :meth:`fail` to blame some paths on another source
    (e.g. ``--set``)."""

    def __init__(self, source: str, lines: Mapping[str, int | None],
                 error: type[LocatedError] = TopologyError) -> None:
        self.source_name = source
        self.lines = lines
        self.error = error

    def fail(self, path: str, problem: str, allowed: str | None = None) -> NoReturn:
        raise self.error(problem, allowed, source=self.source_name, line=line_of(self.lines, path),
                         path=path or None)

    def mapping(self, value: object, path: str, keys: tuple[str, ...] | None, example: str) -> dict:
        """``value`` as a mapping (``None``: empty) whose keys are all in ``keys`` (``None``:
        any key, e.g. host names); ``example`` shows what is expected."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {kind_of(value)}", example)
        if keys is not None:
            for key in value:
                if key not in keys:
                    self.fail(f"{path}.{key}" if path else str(key), "unknown key", ", ".join(keys))
        return value

    def string(self, value: object, path: str, allowed: str) -> str:
        """``value`` as a string with something in it."""
        if not isinstance(value, str) or not value.strip():
            got = "an empty string" if isinstance(value, str) else kind_of(value)
            self.fail(path, f"expected a string, got {got}", allowed)
        return value

    def nonempty_list(self, value: object, path: str, allowed: str) -> list:
        """``value`` as a list with at least one item."""
        if not isinstance(value, list):
            self.fail(path, f"expected a list, got {kind_of(value)}", allowed)
        if not value:
            self.fail(path, "the list is empty", allowed)
        return value
