"""A content-addressed cache of prepared things (trained weights, exported models, artifacts).

An entry is a folder named by the SHA-256 of everything that determines its content (model,
weights, operator chain, parameters, library versions). It is built in a temporary folder
beside the cache and renamed into place only when complete, so a failed or interrupted
preparation never leaves a half-written entry. Readers see an entry whole or not at all.

What the cache holds is loaded as it is found (models, trained weights, checkpoints), so it
must be as trusted as the testbed: on every use, the root, each folder of the cache used and
each entry found must be owned by root or the invoking user and writable by no one else
(`topologies.trust.check_folder`), else one line refuses it. The cache's own folders are
created 0o755 whatever the umask, and an entry's files and folders lose their group and
other write bits before it is published.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from topologies.errors import no_space, no_space_line
from topologies.trust import UntrustedError, check_folder

from .errors import WorkloadError

COMPLETE = "complete.json"     # written last; an entry without it is not an entry
LOCKS = ".locks"               # under the root: one lock file per entry ever built
FOLDER_MODE = 0o755            # the cache's own folders (the umask may only narrow it)
_HINT = "or set TESTBED_CACHE to a folder of your own"


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


def make_folders(path: Path) -> None:
    """``path`` and every missing folder above it, each created with mode `FOLDER_MODE`."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, FOLDER_MODE)


def _close_writes(top: Path) -> None:
    """No group or other write bit on ``top`` or anything in it (a build's files got the umask's)."""
    for folder, dirs, files in os.walk(top):
        for name in (".", *dirs, *files):
            p = os.path.join(folder, name)
            mode = os.lstat(p).st_mode
            if not stat.S_ISLNK(mode) and mode & 0o022:
                os.chmod(p, stat.S_IMODE(mode) & ~0o022)
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
    """The cache under ``root`` (default `default_root`). Nothing is touched until it is used;
    each use checks what it reads (see the module docstring)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_root()

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    @staticmethod
    def _check(folder: Path, what: str) -> Path:
        try:
            check_folder(folder, what=what, hint=_HINT)
        except UntrustedError as e:
            raise WorkloadError(str(e)) from None
        return folder

    def folder(self, *parts: str) -> Path:
        """The cache's folder ``root/parts...`` (``checkpoints``, ``datasets``, an entry kind),
        created `FOLDER_MODE` when missing; it and each folder above it up to the root are
        checked."""
        make_folders(self.root)
        folder = self._check(self.root, "cache folder")
        for part in parts:
            folder = folder / part
            make_folders(folder)
            self._check(folder, "cache folder")
        return folder

    def get(self, kind: str, key: str) -> Path | None:
        """The entry's folder when it is complete (and it, its kind's folder and the root pass
        the check), else None; nothing is created."""
        p = self.path(kind, key)
        if not (p / COMPLETE).is_file():
            return None
        for folder, what in ((self.root, "cache folder"), (p.parent, "cache folder"), (p, "cache entry")):
            self._check(folder, what)
        return p

    @contextlib.contextmanager
    def building(self, kind: str, key: str, description: dict | None = None):
        """Yield a fresh temporary folder; on normal exit it becomes entry ``kind/key``.

        On an exception the temporary folder is removed and nothing is published; a full disk
        is a `WorkloadError` naming the disk that filled up (the cache's, or TMPDIR's where a
        builder keeps its own temporary files), entries built before it stay.
        """
        final = self.folder(kind) / key
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))     # 0o700
        try:
            yield tmp
            (tmp / COMPLETE).write_text(json.dumps(description or {}, indent=1, default=str))
            _close_writes(tmp)
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

        folder = self.folder(LOCKS, kind)      # apart from the entries: a lock file is never removed
        with open(folder / f"{key}.lock", "a", opener=lambda p, flags: os.open(p, flags, 0o644)) as f:
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
