"""Real photographs for the ImageNet models, installed from Debian and split by image.

The images are the photographs (Wikimedia Commons; animals, fish, tools, everyday objects,
monuments, musicians, dams, windmills, solar panels) that the educational game GCompris
ships in its Debian package ``gcompris-qt-data`` (3.1-2), inside Qt resource bundles
(``/usr/share/gcompris-qt/rcc/*.rcc``). `PHOTO_LIST` (``workloads/photos.json``, made by
``scripts/photo-list.py``) names each one: bundle, member path, SHA-256 of the image bytes
and its split (train / calibration / eval). Drawings, puzzle pieces and paintings are left
out; the same photograph at two resolutions is one image, and photographs of the same named
subject (e.g. two of the Taj Mahal) share a split. `scripts/setup.sh` installs the package;
nothing downloads at run time. A missing or changed file is one line that names the package
and the setup command.

numpy only at import time; PIL is imported inside the functions that decode.
"""
from __future__ import annotations

import functools
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import WorkloadError

PHOTO_LIST = Path(__file__).with_name("photos.json")
SETUP = "sudo bash scripts/setup.sh"


@dataclass(frozen=True)
class Photo:
    """One listed photograph: ``member`` of the resource bundle ``bundle`` (a path inside the
    package), ``sha256`` of its bytes, its ``split`` and its ``subject`` (the name split on)."""
    bundle: str
    member: str
    sha256: str
    split: str
    subject: str

    @property
    def source(self) -> str:
        """Its identity as a data source: ``photo:<package>/<SHA-256 prefix>``."""
        return f"photo:{photo_list()['package']}/{self.sha256[:16]}"


@functools.lru_cache(maxsize=1)
def photo_list() -> dict:
    """The parsed `PHOTO_LIST`: ``package``, ``version``, ``bundles`` ({path: SHA-256}) and
    ``photos`` (tuple of `Photo`)."""
    raw = json.loads(PHOTO_LIST.read_text())
    return {**raw, "photos": tuple(Photo(**p) for p in raw["photos"])}


def photos_of(split: str) -> tuple[Photo, ...]:
    """The listed photographs of ``split``, in the list's (seeded, mixed) order."""
    return tuple(p for p in photo_list()["photos"] if p.split == split)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _installed(bundle: str, expected: str) -> bytes:
    listing = photo_list()
    what = f"{listing['package']} {listing['version']}"
    path = Path(bundle)
    if not path.is_file():
        raise WorkloadError(f"{path}: missing; the evaluation photos come from the Debian package {what}: "
                            f"install it with `{SETUP}`")
    data = path.read_bytes()
    got = _sha256(data)
    if got != expected:
        raise WorkloadError(f"{path}: changed (SHA-256 {got[:16]}..., the photo list expects {expected[:16]}...); "
                            f"the list was made from {what}: reinstall that version with `{SETUP}`")
    return data


def qt_resources(data: bytes, where: str = "resource bundle") -> dict[str, bytes]:
    """Every file in a Qt resource bundle (``rcc`` binary format, versions 1-3) as
    ``{path: bytes}``; zlib-compressed entries are inflated. Layout: magic ``qres``, version,
    offsets of the tree, the data and the names (big-endian uint32); a tree entry is a name
    offset, flags (1 = zlib, 2 = folder, 4 = zstd), then a child count and first child (folder)
    or a locale and a data offset (file)."""
    if data[:4] != b"qres" or len(data) < 20:
        raise WorkloadError(f"{where}: not a Qt resource bundle")
    version, tree, blobs, names = struct.unpack(">4I", data[4:20])
    entry = 14 if version == 1 else 22            # version 2 added an 8-byte modification time
    out: dict[str, bytes] = {}

    def name(offset: int) -> str:
        p = names + offset
        (n,) = struct.unpack(">H", data[p:p + 2])
        return data[p + 6:p + 6 + 2 * n].decode("utf-16-be")

    stack = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        p = tree + index * entry
        name_offset, flags = struct.unpack(">IH", data[p:p + 6])
        path = prefix + name(name_offset) if index else ""
        if flags & 2:
            count, first = struct.unpack(">II", data[p + 6:p + 14])
            stack += [(c, path + "/" if path else "") for c in range(first, first + count)]
            continue
        (offset,) = struct.unpack(">I", data[p + 10:p + 14])
        q = blobs + offset
        (size,) = struct.unpack(">I", data[q:q + 4])
        blob = data[q + 4:q + 4 + size]
        if flags & 4:
            raise WorkloadError(f"{where}: {path} is zstd-compressed, which this reader does not inflate")
        out[path] = zlib.decompress(blob[4:]) if flags & 1 else blob   # qCompress: uint32 size + zlib
    return out


@functools.lru_cache(maxsize=16)
def _bundle(bundle: str, expected: str) -> dict[str, bytes]:
    return qt_resources(_installed(bundle, expected), bundle)


def photo_bytes(photo: Photo) -> bytes:
    """The encoded image of ``photo``, read from the installed package and checked: a missing
    bundle, a changed bundle or image, or a member no longer there is one line."""
    listing = photo_list()
    files = _bundle(photo.bundle, listing["bundles"][photo.bundle])
    data = files.get(photo.member)
    if data is None or _sha256(data) != photo.sha256:
        raise WorkloadError(f"{photo.bundle}: {photo.member} is {'missing' if data is None else 'changed'}; the list "
                            f"was made from {listing['package']} {listing['version']}: reinstall it with `{SETUP}`")
    return data


def check_photos() -> int:
    """Check every listed photograph (what `scripts/setup.sh` runs after installing); returns
    how many there are. Raises the first problem as one line."""
    for p in photo_list()["photos"]:
        photo_bytes(p)
    return len(photo_list()["photos"])


def load_photo(photo: Photo):
    """``photo`` decoded as an RGB PIL image."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(photo_bytes(photo))) as img:
        return img.convert("RGB")
