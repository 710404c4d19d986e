"""A content-addressed cache of prepared things (trained weights, exported models, artifacts).

An entry is a folder named by the SHA-256 of everything that determines its content (model,
weights, operator chain, parameters, library versions). It is built in a temporary folder
beside the cache and renamed into place only when complete, so a failed or interrupted
preparation never leaves a half-written entry. Readers see an entry whole or not at all.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from topologies.errors import no_space, no_space_line

from .errors import WorkloadError

COMPLETE = "complete.json"     # written last; an entry without it is not an entry
LOCKS = ".locks"               # under the root: one lock file per entry ever built


def default_root() -> Path:
    """``$TESTBED_CACHE``, else ``$XDG_CACHE_HOME/testbed``, else ``~/.cache/testbed``."""
    if os.environ.get("TESTBED_CACHE"):
        return Path(os.environ["TESTBED_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "testbed"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact's bytes (part of every key)."""
    from importlib import metadata

    out = {}
    for dist in ("onnx", "onnxruntime", "torch", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def content_key(kind: str, **parts) -> str:
    """A stable hex key for ``parts`` (JSON-serialisable values; dict order does not matter)."""
    blob = json.dumps({"kind": kind, **parts}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _full_disk(e: OSError, entry: Path) -> str:
    """The one line of ``e`` (a full disk) raised while building ``entry``: the file it names,
    else the entry, unless TMPDIR is on another disk with less room (then it was that)."""
    where, advice = e.filename or entry, "point TESTBED_CACHE elsewhere (nothing half-built was kept)"
    if e.filename is None:
        scratch = Path(tempfile.gettempdir())
        try:
            elsewhere = os.stat(scratch).st_dev != os.stat(entry.parent).st_dev
            if elsewhere and shutil.disk_usage(scratch).free < shutil.disk_usage(entry.parent).free:
                where, advice = scratch, "set TMPDIR to a folder with room (nothing half-built was kept)"
        except OSError:
            pass
    return no_space_line(where, advice)


class Cache:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_root()

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def get(self, kind: str, key: str) -> Path | None:
        """The entry's folder when it is complete, else None."""
        p = self.path(kind, key)
        return p if (p / COMPLETE).is_file() else None

    @contextlib.contextmanager
    def building(self, kind: str, key: str, description: dict | None = None):
        """Yield a fresh temporary folder; on normal exit it becomes entry ``kind/key``.

        On an exception the temporary folder is removed and nothing is published; a full disk
        is a `WorkloadError` naming the disk that filled up (the cache's, or TMPDIR's where a
        builder keeps its own temporary files), entries built before it stay.
        """
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            yield tmp
            (tmp / COMPLETE).write_text(json.dumps(description or {}, indent=1, default=str))
            self._publish(tmp, final)
        except OSError as e:
            if not no_space(e):
                raise
            raise WorkloadError(_full_disk(e, final)) from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _publish(tmp: Path, final: Path) -> None:
        """Rename ``tmp`` into place, never deleting a complete entry that someone may be
        reading: if another process published the same key first, its entry stays (the key
        says the content is the same) and ``tmp`` is dropped; a stale, incomplete one is first
        renamed aside, then removed."""
        if (final / COMPLETE).is_file():
            return
        if final.exists():
            aside = final.with_name(f".{final.name}.stale.{os.getpid()}")
            os.replace(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError as e:            # published by another process between the check and here
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (final / COMPLETE).is_file():
                raise

    @contextlib.contextmanager
    def _key_lock(self, kind: str, key: str) -> Iterator[None]:
        """One builder per entry across processes (an flock beside it): a second `testbed
        prepare` of the same entry waits for the first and then finds it built."""
        import fcntl

        folder = self.root / LOCKS / kind       # apart from the entries: a lock file is never removed
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{key}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def get_or_build(self, kind: str, key: str, build, description: dict | None = None) -> Path:
        """The entry, built by ``build(folder)`` first when absent (by one process at a time)."""
        found = self.get(kind, key)
        if found is not None:
            return found
        with self._key_lock(kind, key):
            found = self.get(kind, key)     # built by another process while this one waited
            if found is not None:
                return found
            with self.building(kind, key, description) as tmp:
                build(tmp)
        return self.path(kind, key)
