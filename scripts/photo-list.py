"""Make workloads/photos.json: the photographs of Debian's gcompris-qt-data, split by image.

    .venv/bin/python scripts/photo-list.py                      # from the installed package
    .venv/bin/python scripts/photo-list.py --root DIR --version V   # from `dpkg-deb -x PKG.deb DIR`

Which images: every ``.webp`` in the folders of `KEEP` (photographs from Wikimedia Commons;
the package's drawings, puzzle pieces, paintings and sprites live elsewhere). The same
photograph at two resolutions (a perceptual hash within `SAME_PHOTO` bits) is kept once, at
the larger size. Photographs of the same named subject (``giraffe`` in two activities,
``tajMahal`` and ``TajMahal``) form one group; numbered names (``fish12``) are groups of their
own. Groups are shuffled (seed 0) and dealt: eval until `EVAL_IMAGES` images, calibration until
`CALIBRATION_IMAGES`, the rest train. Run it again only for a new package version; the list in
the repository is what everyone's splits are.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workloads.photos import PHOTO_LIST, qt_resources  # noqa: E402

PACKAGE = "gcompris-qt-data"
RCC = "usr/share/gcompris-qt/rcc"
ACTIVITIES = "gcompris/src/activities"
KEEP = {   # bundle: folders (inside it) whose .webp files are photographs
    "categorization.rcc": [f"categorization/resource/images/{d}" for d in
                           ("fishes", "monuments", "tools", "others", "renewable", "numbers", "alphabets")],
    "erase.rcc": ["erase/resource"],
    "explore_world_animals.rcc": ["explore_world_animals/resource/animals"],
    "explore_farm_animals.rcc": ["explore_farm_animals/resource/animals"],
    "explore_monuments.rcc": [f"explore_monuments/resource/{d}"
                              for d in ("egypt", "france", "germany", "india", "usa", "wonders")],
    "explore_world_music.rcc": ["explore_world_music/resource/music"],
}
ALIASES = {"kutubminar": "qutubminar", "greatwall": "greatwallofchina", "greatpyramid": "greatpyramidofgiza",
           "chamaeleon": "chameleon"}
SAME_PHOTO = 10            # of 512 hash bits; different photographs here differ in 68 or more
EVAL_IMAGES = 120
CALIBRATION_IMAGES = 24


def _hash(img) -> np.ndarray:
    grey = img.convert("L")
    a = np.asarray(grey.resize((17, 16)), np.float32)
    b = np.asarray(grey.resize((16, 16)), np.float32)
    return np.concatenate([(a[:, 1:] > a[:, :-1]).ravel(), (b > b.mean()).ravel()])


def _subject(member: str) -> str:
    stem = Path(member).stem
    if re.search(r"\d$", stem):
        return stem                       # numbered: its own photograph
    key = stem.lower().replace("_", "")
    return ALIASES.get(key, key)


def main() -> None:
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/", help="where the package's files are (default: installed)")
    ap.add_argument("--version", default=None, help="the package version (default: dpkg's)")
    args = ap.parse_args()
    version = args.version or subprocess.run(["dpkg-query", "-W", "-f=${Version}", PACKAGE], check=True,
                                             capture_output=True, text=True).stdout.strip()
    root = Path(args.root)
    found, bundles = [], {}
    for name, folders in KEEP.items():
        data = (root / RCC / name).read_bytes()
        bundle = f"/{RCC}/{name}"
        bundles[bundle] = hashlib.sha256(data).hexdigest()
        for member, blob in sorted(qt_resources(data, name).items()):
            folder = str(Path(member).parent)
            if member.endswith(".webp") and any(folder == f"{ACTIVITIES}/{f}" for f in folders):
                with Image.open(io.BytesIO(blob)) as img:
                    found.append({"bundle": bundle, "member": member, "sha256": hashlib.sha256(blob).hexdigest(),
                                  "pixels": img.size[0] * img.size[1], "hash": _hash(img),
                                  "subject": _subject(member)})
    # the same photograph twice: keep the larger
    found.sort(key=lambda f: -f["pixels"])
    kept = []
    for f in found:
        if all(int((f["hash"] != k["hash"]).sum()) > SAME_PHOTO for k in kept):
            kept.append(f)
    groups: dict[str, list] = {}
    for f in sorted(kept, key=lambda f: f["sha256"]):
        groups.setdefault(f["subject"], []).append(f)
    order = [groups[s] for s in sorted(groups)]
    rng = np.random.default_rng(0)
    photos, counts = [], {"eval": 0, "calibration": 0, "train": 0}
    for i in rng.permutation(len(order)):
        split = ("eval" if counts["eval"] < EVAL_IMAGES else
                 "calibration" if counts["calibration"] < CALIBRATION_IMAGES else "train")
        for f in order[i]:
            counts[split] += 1
            photos.append({"bundle": f["bundle"], "member": f["member"], "sha256": f["sha256"], "split": split,
                           "subject": f["subject"]})
    listing = {"package": PACKAGE, "version": version,
               "about": "photographs in Debian's gcompris-qt-data (Wikimedia Commons, see the package's "
                        "copyright file), split by image; made by scripts/photo-list.py",
               "bundles": bundles, "photos": photos}
    PHOTO_LIST.write_text(json.dumps(listing, indent=1) + "\n")
    print(f"{PHOTO_LIST}: {len(photos)} photographs of {len(found)} ({len(found) - len(kept)} duplicates left "
          f"out), {len(groups)} subjects; {counts}")


if __name__ == "__main__":
    main()
