"""A content-addressed cache of prepared things (trained weights, exported models, artifacts).

An entry is a folder named by the SHA-256 of everything that determines its content (model,
weights, operator chain, parameters, library versions). It is built in a temporary folder
beside the cache and renamed into place only when complete, so a failed or interrupted
preparation never leaves a half-written entry. Readers see an entry whole or not at all.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

COMPLETE = "complete.json"     # written last; an entry without it is not an entry


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

        On an exception the temporary folder is removed and nothing is published.
        """
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            yield tmp
            (tmp / COMPLETE).write_text(json.dumps(description or {}, indent=1, default=str))
            if final.exists():         # a stale, incomplete entry (complete ones are not rebuilt)
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def get_or_build(self, kind: str, key: str, build, description: dict | None = None) -> Path:
        """The entry, built by ``build(folder)`` first when absent."""
        found = self.get(kind, key)
        if found is not None:
            return found
        with self.building(kind, key, description) as tmp:
            build(tmp)
        return self.path(kind, key)
