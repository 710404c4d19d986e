"""The data sets the built-in models are judged on, and loaders for a user's own data.

Everything here is offline once installed, deterministic (fixed seeds, no dependence on the
order files are listed in) and numpy-only at import time: PIL and tokenizers
are imported inside the functions that need them; torch and transformers never.

Built-in sets (each returns a `workloads.data.Dataset`; ``split`` is one of `data.SPLITS`):

- `fashion_mnist`: Fashion-MNIST from the Debian package ``dataset-fashion-mnist``;
  train = first 55,000 training images, calibration = last 5,000 (held out from training),
  eval = the 10,000 test images.
- `fashion_segmentation`: 64×64 composites of 2–4 Fashion-MNIST items with per-pixel labels
  that follow exactly from the composite (background 0, item class + 1 elsewhere).
- `vader_sentences` / `sentiment_dataset`: the human-rated sentences of Hutto & Gilbert
  (ICWSM 2014) shipped in the vaderSentiment 3.3.2 source distribution, as binary sentiment;
  `scripts/setup.sh` installs that file once (`install_vader`, into ``.venv/share/testbed``),
  nothing downloads it at run time (`vader_sdist`).
- `photo_crops`: unlabelled ImageNet-style crops of real photographs from a Debian package
  (`workloads.photos`, split by image), to judge an ImageNet model by agreement with its
  untransformed self.

A user's data: `image_folder` (one subfolder per class), `array_file` (``.npz``/``.npy``/
``.csv``), and `check_against` to match a data set to a model's inputs with one clear error.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import SPLITS, Dataset
from topologies.errors import name_list

from .errors import WorkloadError, choices

# ----------------------------------------------------------------------------------------------
# common


def _check_split(split: str, what: str) -> None:
    if split not in SPLITS:
        raise WorkloadError(f"data set {what}: split {split!r} unknown; allowed: {choices(SPLITS)}")


def _seed(split: str, base: int = 0) -> int:
    """A fixed seed per split (so splits never share random draws)."""
    return base + 1000 * (SPLITS.index(split) + 1)


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_DIR_ENV = "TESTBED_FASHION_MNIST_DIR"          # overrides FASHION_DIR
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_TRAIN = 55_000          # first 55,000 of the training file; the last 5,000 are calibration
_FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path | str) -> np.ndarray:
    """The array in an IDX file (the MNIST format), gzip-compressed (``.gz``) or not.

    Header: two zero bytes, a type byte (0x08 = uint8, ...), the number of dimensions, then one
    big-endian uint32 per dimension. Returns the array in native byte order.
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise WorkloadError(f"{path}: not a gzip file ({e}); reinstall the data set") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise WorkloadError(f"{path}: not an IDX file (bad magic number); reinstall the data set")
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - offset != count * dtype.itemsize:
        raise WorkloadError(f"{path}: IDX header says {shape} but the file holds "
                            f"{len(raw) - offset} bytes of data; reinstall the data set")
    return np.frombuffer(raw, dtype, count=count, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_dir() -> Path:
    """Where the Fashion-MNIST files are: ``$TESTBED_FASHION_MNIST_DIR`` or `FASHION_DIR`."""
    return Path(os.environ.get(FASHION_DIR_ENV) or FASHION_DIR)


@functools.lru_cache(maxsize=4)
def _fashion_raw_cached(images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
        raise WorkloadError(f"{images}: expected (N, 28, 28) images with N labels, found {x.shape} "
                            f"and {y.shape}; reinstall the data set")
    x.flags.writeable = False       # shared by every caller: nobody may change it
    y.flags.writeable = False
    return x, y


def fashion_raw(part: str) -> tuple[np.ndarray, np.ndarray]:
    """The decoded file pair ``part`` (``train`` or ``test``): uint8 images (N, 28, 28) and
    uint8 labels (N,), read-only and cached in memory (decoded once per process)."""
    folder = fashion_dir()
    paths = [folder / f for f in _FASHION_FILES[part]]
    for p in paths:
        if not p.is_file():
            raise WorkloadError(f"{p}: Fashion-MNIST file missing; install it with "
                                "`apt-get install dataset-fashion-mnist` (or `sudo bash scripts/setup.sh`)")
    return _fashion_raw_cached(str(paths[0]), str(paths[1]))


def fashion_split_raw(split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and labels (N,) of one split, read-only views of `fashion_raw`."""
    _check_split(split, "fashion-mnist")
    if split == "eval":
        return fashion_raw("test")
    x, y = fashion_raw("train")
    part = slice(0, FASHION_TRAIN) if split == "train" else slice(FASHION_TRAIN, None)
    return x[part], y[part]


def fashion_sources(split: str, count: int) -> list[str]:
    """The identities of the ``count`` images of `fashion_split_raw` ``split``: file and index,
    ``fashion-train:12345`` (train and calibration are two ranges of the training file) or
    ``fashion-test:17``."""
    _check_split(split, "fashion-mnist")
    part, first = ("test", 0) if split == "eval" else ("train", 0 if split == "train" else FASHION_TRAIN)
    return [f"fashion-{part}:{first + i}" for i in range(count)]


def _fashion_normalise(x_uint8: np.ndarray) -> np.ndarray:
    return ((x_uint8.astype(np.float32) / np.float32(255.0) - np.float32(FASHION_MEAN))
            / np.float32(FASHION_STD))


def fashion_mnist(split: str) -> Dataset:
    """Fashion-MNIST ``split``: inputs ``{"image": float32 (N, 1, 28, 28)}`` (pixel / 255, then
    ``(x - 0.2860) / 0.3530``), int64 labels 0..9, `FASHION_CLASSES`.

    Sizes: train 55,000 (first of the training file), calibration 5,000 (last of the training
    file, never trained on), eval 10,000 (the test file). Fresh arrays on every call.
    """
    x, y = fashion_split_raw(split)
    return Dataset("fashion-mnist", "classification", {"image": _fashion_normalise(x)[:, None]},
                   y.astype(np.int64), FASHION_CLASSES,
                   f"Fashion-MNIST {split}: {len(y)} 28x28 grey images, 10 classes "
                   f"(normalised with mean {FASHION_MEAN}, std {FASHION_STD})", sources=fashion_sources(split, len(y)))


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST segmentation composites

SEG_SIZE = 64
SEG_COUNTS = {"train": 12_000, "calibration": 1_000, "eval": 2_000}
SEG_ITEMS = (2, 4)               # items per composite, inclusive
SEG_THRESHOLD = 0.1              # an item pixel belongs to the item above this fraction of its max
SEG_CLASSES = ("background",) + FASHION_CLASSES


def composite(items: np.ndarray, classes: np.ndarray, count: int, seed: int,
              size: int = SEG_SIZE, *, with_items: bool = False):
    """``count`` composites of ``size``×``size`` from uint8 ``items`` (M, h, w) of ``classes`` (M,).

    Each composite draws 2–4 items (with replacement) and a uniformly random top-left corner
    for each; items may overlap and later items occlude earlier ones. Only an item's pixels
    above `SEG_THRESHOLD` × its own maximum are pasted (its faint fringe is dropped), so
    ``label > 0`` exactly where ``image > 0``, and a pixel's label is ``class + 1`` of the item
    whose pixel it shows. Returns uint8 images (count, size, size) and int64 labels, and with
    ``with_items`` also each composite's item indices (a list per composite, in paste order).
    """
    rng = np.random.default_rng(seed)
    h, w = items.shape[1:]
    k_max = SEG_ITEMS[1]
    n_items = rng.integers(SEG_ITEMS[0], SEG_ITEMS[1] + 1, size=count)
    pick = rng.integers(0, len(items), size=(count, k_max))
    rows = rng.integers(0, size - h + 1, size=(count, k_max))
    cols = rng.integers(0, size - w + 1, size=(count, k_max))
    images = np.zeros((count, size, size), np.uint8)
    labels = np.zeros((count, size, size), np.int64)
    thresholds = (items.reshape(len(items), -1).max(axis=1).astype(np.float32) * SEG_THRESHOLD)
    chunk = 2000                                  # bounds the temporaries (chunk × size² each)
    ar_h, ar_w = np.arange(h), np.arange(w)
    for start in range(0, count, chunk):
        sl = slice(start, min(count, start + chunk))
        n = sl.stop - sl.start
        idx = np.arange(n)[:, None, None]
        for k in range(k_max):
            active = n_items[sl] > k
            it = pick[sl, k]
            patch = items[it]                                         # (n, h, w)
            mask = (patch > thresholds[it][:, None, None]) & active[:, None, None]
            r = rows[sl, k][:, None, None] + ar_h[None, :, None]
            c = cols[sl, k][:, None, None] + ar_w[None, None, :]
            region_img = images[sl][idx, r, c]
            region_lab = labels[sl][idx, r, c]
            images[sl][idx, r, c] = np.where(mask, patch, region_img)
            labels[sl][idx, r, c] = np.where(mask, classes[it].astype(np.int64)[:, None, None] + 1, region_lab)
    if with_items:
        return images, labels, [pick[i, :n_items[i]].tolist() for i in range(count)]
    return images, labels


def fashion_segmentation(split: str) -> Dataset:
    """Segmentation composites of Fashion-MNIST items: inputs ``{"image": float32 (N, 1, 64, 64)}``
    (pixel / 255, normalised like `fashion_mnist`), labels int64 (N, 64, 64) with 0 = background
    and 1..10 = Fashion-MNIST class + 1 (`SEG_CLASSES`); see `composite` for how labels follow
    from the image (background exactly where the raw pixel is 0).

    Sizes: train 12,000 composites of items from the fashion train split, calibration 1,000
    from the calibration split's items, eval 2,000 from the test items. Seeded per split, so
    every call returns the same arrays.
    """
    _check_split(split, "fashion-segmentation")
    x, y = fashion_split_raw(split)
    images, labels, items = composite(x, y, SEG_COUNTS[split], _seed(split, 7), with_items=True)
    ids = fashion_sources(split, len(x))
    counts = np.bincount(labels.ravel(), minlength=len(SEG_CLASSES))
    return Dataset("fashion-segmentation", "segmentation", {"image": _fashion_normalise(images)[:, None]},
                   labels, SEG_CLASSES,
                   f"Fashion-MNIST composites {split}: {len(labels)} 64x64 images of {SEG_ITEMS[0]}-"
                   f"{SEG_ITEMS[1]} items each (from the fashion {split} split), per-pixel labels "
                   f"(0 background, {counts[0] / counts.sum():.0%} of pixels; item pixels above "
                   f"{SEG_THRESHOLD} of the item's max)", sources=[tuple(ids[i] for i in used) for used in items])


# ----------------------------------------------------------------------------------------------
# VADER human-rated sentences

VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"   # PyPI's file, pinned
VADER_INNER = "additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_POSITIVE = 0.5             # mean rating above: positive; below -0.5: negative; between: dropped
VADER_FRACTIONS = {"eval": 0.2, "calibration": 0.1}      # train: the rest
SENTIMENT_CLASSES = ("negative", "positive")
SETUP = "sudo bash scripts/setup.sh"


def vader_install_dir() -> Path:
    """Where `scripts/setup.sh` installs the sdist: ``share/testbed`` of the Python
    environment (``.venv/share/testbed``), whatever ``$TESTBED_CACHE`` says."""
    return Path(sys.prefix) / "share" / "testbed"


def vader_places() -> tuple[Path, Path]:
    """Where `vader_sdist` looks, in order: `vader_install_dir`, then the cache's ``datasets``
    folder (where a user may copy the file; its hash is checked, so the folder need not be)."""
    from .cache import Cache
    return vader_install_dir(), Cache().root / "datasets"


def _download_command(folder: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "vaderSentiment==3.3.2", "-d", str(folder)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_sha(path: Path, what_to_do: str) -> Path:
    got = _sha256(path)
    if got != VADER_SHA256:
        raise WorkloadError(f"{path}: not the vaderSentiment 3.3.2 sdist (SHA-256 {got[:16]}..., expected "
                            f"{VADER_SHA256[:16]}...); {what_to_do}")
    return path


def vader_sdist(folder: Path | str | None = None) -> Path:
    """The path of ``vaderSentiment-3.3.2.tar.gz``: in ``folder`` when given, else the first of
    `vader_places` that holds it (checked against `VADER_SHA256`). Never downloads: a missing
    file is one line saying to run `scripts/setup.sh` or where to copy the file."""
    if folder is not None:
        path = Path(folder) / VADER_SDIST
        if not path.is_file():
            raise WorkloadError(f"{path}: VADER sentences missing; put the vaderSentiment 3.3.2 sdist there")
        return path
    places = vader_places()
    for place in places:
        path = place / VADER_SDIST
        if path.is_file():
            return _check_sha(path, f"delete it, then run `{SETUP}` (it fetches the right one)")
    raise WorkloadError(
        f"the VADER sentences (minilm_sentiment's data) are in neither {places[0]} nor {places[1]}: run "
        f"`{SETUP}` (it fetches {VADER_SDIST} from PyPI once), or copy that file (`pip download --no-deps "
        f"--no-binary :all: vaderSentiment==3.3.2` on a machine with PyPI access) to {places[1]}")


def install_vader(folder: Path | str | None = None, progress=lambda message: None) -> Path:
    """`scripts/setup.sh`'s step: ``VADER_SDIST`` in ``folder`` (default `vader_install_dir`),
    fetched with ``pip download`` (the only download of the data sets; ``progress`` hears of
    it) and checked against `VADER_SHA256` first when it is not there with that hash; the file
    appears whole and checked, or not at all. Returns its path."""
    import tempfile

    folder = Path(folder) if folder is not None else vader_install_dir()
    path = folder / VADER_SDIST
    if path.is_file() and _sha256(path) == VADER_SHA256:
        return path
    progress(f"fetching {VADER_SDIST} (the VADER sentences) from PyPI into {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download.", dir=folder) as tmp:
        command = _download_command(Path(tmp))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            failed = done.returncode != 0
            reason = (done.stderr.strip().splitlines() or ["pip failed"])[-1] if failed else ""
        except (OSError, subprocess.TimeoutExpired) as e:
            failed, reason = True, str(e)
        fetched = Path(tmp) / VADER_SDIST
        if failed or not fetched.is_file():
            raise WorkloadError(f"{path}: could not download the VADER sentences ({reason or 'no file'}); "
                                f"check the network (PyPI), or copy {VADER_SDIST} there")
        _check_sha(fetched, "PyPI served another file: nothing was installed")
        os.replace(fetched, path)
    return path


@functools.lru_cache(maxsize=4)
def _read_sdist_cached(path: str, mtime: float) -> tuple[tuple[str, str, float, str], ...]:
    try:
        with tarfile.open(path, "r:gz") as outer:
            member = next((m for m in outer.getmembers() if m.name.endswith("/" + VADER_INNER)
                           or m.name == VADER_INNER), None)
            if member is None:
                raise WorkloadError(f"{path}: no {VADER_INNER} inside; replace the file")
            inner_bytes = outer.extractfile(member).read()
        records = []
        with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
            members = sorted((m for m in inner.getmembers()
                              if m.isfile() and m.name.endswith("_GroundTruth.txt")), key=lambda m: m.name)
            for m in members:
                source = Path(m.name).name[:-len("_GroundTruth.txt")]
                text = inner.extractfile(m).read().decode("utf-8", errors="replace")
                for n, line in enumerate(text.splitlines(), 1):
                    if not line.strip():
                        continue
                    parts = line.split("\t")
                    if len(parts) != 3:
                        raise WorkloadError(f"{path}: {m.name}:{n}: expected id<TAB>rating<TAB>sentence")
                    records.append((source, parts[0].strip(), float(parts[1]), parts[2].strip()))
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise WorkloadError(f"{path}: unreadable VADER sdist ({e}); replace the file") from None
    if not records:
        raise WorkloadError(f"{path}: no *_GroundTruth.txt sentences found; replace the file")
    return tuple(records)


def read_vader_sdist(path: Path | str) -> list[tuple[str, str, float, str]]:
    """All rated sentences in a vaderSentiment sdist as ``(source, id, mean_rating, sentence)``,
    sources (``amazonReviewSnippets``, ``movieReviewSnippets``, ``nytEditorialSnippets``,
    ``tweets``) in name order, lines in file order. Read in memory; cached per file."""
    path = Path(path)
    return list(_read_sdist_cached(str(path), path.stat().st_mtime))


def vader_sentences(split: str, folder: Path | str | None = None) -> tuple[list[str], np.ndarray]:
    """Sentences and binary int64 labels (1 positive: rating > 0.5; 0 negative: rating < -0.5;
    ratings within ±0.5 are dropped) of ``split``. A sentence that occurs more than once (83
    do, e.g. "i love it!") is one sample with the mean of its ratings, so no sentence is in
    two splits.

    Split: per label, a seeded (seed 0) permutation; its first 20 % go to eval, the next 10 % to
    calibration, the rest to train (so each split has the overall class balance); each split is
    then shuffled (seeded). The same on every machine for the same sdist.
    """
    texts, labels, _ = _vader_split(split, folder)
    return texts, labels


def _vader_split(split, folder):
    _check_split(split, "vader-sentences")
    records = read_vader_sdist(vader_sdist(folder))
    ratings: dict[str, list[float]] = {}            # a sentence rated more than once: one sample,
    for _, _, rating, text in records:              # its mean rating (no train/eval leaks)
        ratings.setdefault(text, []).append(rating)
    unique = [(text, float(np.mean(r))) for text, r in ratings.items()]
    kept = [(text, 1 if rating > VADER_POSITIVE else 0) for text, rating in unique
            if abs(rating) > VADER_POSITIVE]
    labels = np.array([lab for _, lab in kept], np.int64)
    rng = np.random.default_rng(0)
    chosen = []
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_eval = int(round(len(idx) * VADER_FRACTIONS["eval"]))
        n_cal = int(round(len(idx) * VADER_FRACTIONS["calibration"]))
        part = {"eval": idx[:n_eval], "calibration": idx[n_eval:n_eval + n_cal], "train": idx[n_eval + n_cal:]}
        chosen.append(part[split])
    order = np.concatenate(chosen)
    order = order[np.random.default_rng(_seed(split)).permutation(len(order))]
    stats = {"rated": len(records), "unique": len(unique), "kept": len(kept),
             "dropped_neutral": len(unique) - len(kept),
             "positive": int(labels[order].sum()), "negative": int(len(order) - labels[order].sum())}
    return [kept[i][0] for i in order], labels[order], stats


def tokenize(texts: Sequence[str], tokenizer_dir: Path | str, max_len: int = 64) -> dict[str, np.ndarray]:
    """``{"input_ids", "attention_mask"}``, int64 (N, max_len), as Hugging Face's
    ``BertTokenizerFast(texts, padding="max_length", truncation=True, max_length=max_len)``
    gives them, using only the ``tokenizers`` library on ``tokenizer_dir/tokenizer.json``."""
    from tokenizers import Tokenizer

    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise WorkloadError(f"{path}: no tokenizer.json; give the folder of a model with a fast tokenizer")
    tok = Tokenizer.from_file(str(path))
    pad = tok.padding or {}
    pad_token = pad.get("pad_token", "[PAD]")
    pad_id = pad.get("pad_id", tok.token_to_id(pad_token) or 0)
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(length=max_len, pad_id=pad_id, pad_token=pad_token,
                       pad_type_id=pad.get("pad_type_id", 0), direction="right")
    enc = tok.encode_batch(list(texts))
    ids = np.array([e.ids for e in enc], np.int64).reshape(len(enc), max_len)
    mask = np.array([e.attention_mask for e in enc], np.int64).reshape(len(enc), max_len)
    return {"input_ids": ids, "attention_mask": mask}


def sentiment_dataset(split: str, tokenizer_dir: Path | str, max_len: int = 64,
                      folder: Path | str | None = None) -> Dataset:
    """`vader_sentences` ``split`` tokenised by `tokenize`: inputs ``input_ids`` and
    ``attention_mask`` (int64, N × max_len), labels int64 (0 negative, 1 positive);
    ``extra["texts"]`` holds the sentences."""
    texts, labels, stats = _vader_split(split, folder)
    inputs = tokenize(texts, tokenizer_dir, max_len)
    truncated = int((inputs["attention_mask"][:, -1] == 1).sum())
    sources = [f"vader:{hashlib.sha256(t.encode()).hexdigest()[:16]}" for t in texts]
    return Dataset("vader-sentences", "text_classification", inputs, labels, SENTIMENT_CLASSES,
                   f"VADER human-rated sentences (Hutto & Gilbert, ICWSM 2014; vaderSentiment 3.3.2 sdist) "
                   f"{split}: {len(labels)} ({stats['positive']} positive: rating > {VADER_POSITIVE}, "
                   f"{stats['negative']} negative: rating < -{VADER_POSITIVE}); of {stats['unique']} distinct rated "
                   f"sentences ({stats['rated']} ratings, repeats averaged) {stats['dropped_neutral']} "
                   f"near-neutral ones dropped; "
                   f"{truncated} reach max_len {max_len}",
                   {"texts": texts, "stats": stats}, sources)


# ----------------------------------------------------------------------------------------------
# photographs (unlabelled, ImageNet-style)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PHOTO_CROPS = {"train": 4, "calibration": 3, "eval": 5}      # crops per photograph by default


def photo_crops(split: str, count: int | None = None, size: int | tuple[int, int] = 224, seed: int = 0) -> Dataset:
    """``count`` (default `PHOTO_CROPS` per photograph) unlabelled inputs ``{"image": float32
    (count, 3, H, W)}`` (``size`` is H = W, or ``(H, W)``) from the photographs of ``split``
    (`workloads.photos`: split by image, so no photograph is in two splits), normalised with the
    ImageNet mean and std. Sample ``i`` is a random resized crop of photograph ``i % n`` (area
    25-100 %, aspect 3/4-4/3, the centre square when a draw does not fit; torchvision's
    RandomResizedCrop rule), flipped horizontally with probability 1/2, resized with PIL
    bilinear; each sample's source is its photograph. Same arrays for the same arguments. Labels
    are None: judge a model by agreement with its untransformed self."""
    from PIL import Image

    from . import photos as P

    _check_split(split, "photos")
    chosen = P.photos_of(split)
    count = PHOTO_CROPS[split] * len(chosen) if count is None else count
    hh, ww = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    rng = np.random.default_rng(seed)
    used = chosen[:count]                       # fewer samples than photographs: the first ones
    images = [P.load_photo(p) for p in used]
    out = np.empty((count, 3, hh, ww), np.float32)
    mean = np.array(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, np.float32)[:, None, None]
    for i in range(count):
        img = images[i % len(images)]
        w, h = img.size
        box = None
        for _ in range(10):
            area = w * h * rng.uniform(0.25, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                box = (x0, y0, x0 + cw, y0 + ch)
                break
        if box is None:
            s = min(w, h)
            box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        crop = img.resize((ww, hh), Image.BILINEAR, box=box)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = (np.asarray(crop, np.float32).transpose(2, 0, 1) / np.float32(255.0) - mean) / std
    listing = P.photo_list()
    return Dataset("photos", "classification", {"image": out}, None, (),
                   f"{count} random resized crops (with flips, seed {seed}) of {len(used)} {split} photographs "
                   f"from Debian's {listing['package']} {listing['version']} (split by image), {hh}x{ww}, "
                   "ImageNet-normalised; unlabelled: quality is agreement with the untransformed model",
                   sources=[used[i % len(used)].source for i in range(count)])


# ----------------------------------------------------------------------------------------------
# a user's own data

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _per_channel(value, channels: int, what: str, where: str) -> np.ndarray:
    arr = np.asarray(value, np.float32).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, channels)
    if arr.size != channels:
        raise WorkloadError(f"{where}: {what} has {arr.size} values for {channels} channels; give 1 or {channels}")
    return arr[:, None, None]


def image_folder(path: Path | str, shape: tuple[int, int, int] = (3, 224, 224), mean=None, std=None,
                 *, input_name: str = "image", unlabelled_ok: bool = False) -> Dataset:
    """Images under ``path``: one subfolder per class (classes = the subfolders' names, sorted;
    label = index of that name), each image converted to RGB (C = 3) or L (C = 1), resized to
    H×W (PIL bilinear), scaled to [0, 1] then normalised ``(x - mean) / std`` when ``mean``/
    ``std`` are given (one value, or one per channel). Returns inputs ``{input_name: float32
    (N, C, H, W)}`` in class then file-name order, int64 labels.

    Without class subfolders (images directly in ``path``) this is an error unless
    ``unlabelled_ok``; then the images there are read and labels are None.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.is_dir():
        raise WorkloadError(f"{root}: no such folder; expected {root}/<class>/<image>")
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) < 1:
        raise WorkloadError(f"{root}: image shape {tuple(shape)} unsupported; give (C, H, W) with C = 1 or 3")
    c, h, w = (int(s) for s in shape)
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[Path, int]] = []
    classes: tuple[str, ...] = ()
    if subfolders:
        classes = tuple(p.name for p in subfolders)
        for label, sub in enumerate(subfolders):
            found = _images_in(sub)
            if not found:
                raise WorkloadError(f"{sub}: class folder without images ({', '.join(IMAGE_SUFFIXES)}); "
                                    "add images or remove the folder")
            files += [(f, label) for f in found]
    elif unlabelled_ok and _images_in(root):
        files = [(f, -1) for f in _images_in(root)]
    else:
        raise WorkloadError(f"{root}: no class subfolders with images; expected {root}/<class>/<image>")
    x = np.empty((len(files), c, h, w), np.float32)
    for i, (f, _) in enumerate(files):
        try:
            with Image.open(f) as img:
                img = img.convert("RGB" if c == 3 else "L").resize((w, h), Image.BILINEAR)
                a = np.asarray(img, np.float32) / np.float32(255.0)
        except Image.DecompressionBombError as e:      # PIL's guard against a small file of huge size
            size = str(e).split(",")[0]
            raise WorkloadError(f"{f}: too large to decode safely ({size}, which PIL refuses as a possible "
                                "decompression bomb); resize it or remove it") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
            raise WorkloadError(f"{f}: not a readable image ({e}); remove or replace it") from None
        x[i] = a.transpose(2, 0, 1) if c == 3 else a[None]
    if mean is not None:
        x -= _per_channel(mean, c, "mean", str(root))
    if std is not None:
        s = _per_channel(std, c, "std", str(root))
        if np.any(s == 0):
            raise WorkloadError(f"{root}: std must not be 0")
        x /= s
    labels = None if not classes else np.array([lab for _, lab in files], np.int64)
    what = f"{len(classes)} classes" if classes else "unlabelled"
    return Dataset(root.name or str(root), "classification", {input_name: x}, labels, classes,
                   f"{len(files)} images from {root} ({what}), resized to {h}x{w}", {"path": str(root)},
                   [f"file:{f.relative_to(root).as_posix()}" for f, _ in files])


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path, label_column) -> tuple[np.ndarray, np.ndarray | None]:
    """Errors name the file, line and column, never the values there (a user's data may be
    large or private)."""
    lines = [(n, ln) for n, ln in enumerate(path.read_text().splitlines(), 1)
             if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise WorkloadError(f"{path}: empty CSV file")
    header = None
    if not all(_number(v) for v in lines[0][1].split(",")):
        header = [v.strip() for v in lines[0][1].split(",")]
        lines = lines[1:]
    if not lines:
        raise WorkloadError(f"{path}: no rows of numbers under the header; one sample per line")
    rows = []
    first, width = lines[0][0], len(lines[0][1].split(","))
    for n, ln in lines:
        values = ln.split(",")
        if len(values) != width:
            raise WorkloadError(f"{path}:{n}: {len(values)} columns, but line {first} has {width}; "
                                "give every row the same columns")
        bad = next((k for k, v in enumerate(values, 1) if not _number(v)), None)
        if bad is not None:
            raise WorkloadError(f"{path}:{n}: column {bad} is not a number; every value must be a number "
                                "(only the first line may be a header)")
        rows.append([float(v) for v in values])
    table = np.array(rows, np.float64)
    if label_column is None:
        return table.astype(np.float32), None
    if isinstance(label_column, str):
        if header is None or label_column not in header:
            raise WorkloadError(f"{path}: no column {label_column!r}; columns: {name_list(header or ['(none)'])}")
        col = header.index(label_column)
    else:
        col = int(label_column)
        if not -table.shape[1] <= col < table.shape[1]:
            raise WorkloadError(f"{path}: label column {col} out of range for {table.shape[1]} columns")
        col %= table.shape[1]
    y = table[:, col]
    if np.any(y != np.round(y)):
        raise WorkloadError(f"{path}: label column {label_column} holds non-integer values")
    return np.delete(table, col, axis=1).astype(np.float32), y.astype(np.int64)


def array_file(path: Path | str, input_name: str, *, label_column: int | str | None = None,
               sample_shape: tuple[int, ...] | None = None, task: str = "classification",
               classes: Sequence[str] = ()) -> Dataset:
    """Samples from an array file, as inputs ``{input_name: array}`` (sample axis first):

    - ``.npz``: inputs in array ``x`` or ``inputs``; labels (optional) in ``y`` or ``labels``;
    - ``.npy``: inputs only (unlabelled);
    - ``.csv``: numbers separated by commas, one sample per row, an optional header row;
      ``label_column`` (an index such as -1 for the last column, or a header name) holds int
      labels and is removed from the inputs; without it there are no labels. float32.

    ``sample_shape`` reshapes each sample (e.g. 784 CSV columns to ``(1, 28, 28)``). Arrays
    keep their dtype; `check_against` casts them to the model's. Labels become int64.
    """
    from .data import TASKS

    path = Path(path)
    if not path.is_file():
        raise WorkloadError(f"{path}: no such file")
    if task not in TASKS:
        raise WorkloadError(f"{path}: task {task!r} unknown; allowed: {choices(TASKS)}")
    suffix = path.suffix.lower()
    y = None
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                xk = next((k for k in ("x", "inputs") if k in z.files), None)
                if xk is None:
                    raise WorkloadError(f"{path}: no array 'x' or 'inputs'; arrays: {choices(z.files)}")
                yk = next((k for k in ("y", "labels") if k in z.files), None)
                x = z[xk]
                y = z[yk] if yk else None
        elif suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            x, y = _read_csv(path, label_column)
        else:
            raise WorkloadError(f"{path}: unsupported file type {suffix or '(none)'}; use .npz, .npy or .csv")
    except (OSError, ValueError) as e:
        raise WorkloadError(f"{path}: unreadable array file ({e})") from None
    if x.ndim < 1 or len(x) == 0:
        raise WorkloadError(f"{path}: no samples")
    if sample_shape is not None:
        sample_shape = tuple(int(s) for s in sample_shape)
        if int(np.prod(x.shape[1:], dtype=np.int64)) != int(np.prod(sample_shape, dtype=np.int64)):
            raise WorkloadError(f"{path}: samples have shape {x.shape[1:]}, which cannot be reshaped to {sample_shape}")
        x = x.reshape((len(x),) + sample_shape)
    if y is not None:
        y = np.asarray(y)
        if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
            raise WorkloadError(f"{path}: labels must be integers (class ids), found {y.dtype}")
        if len(y) != len(x):
            raise WorkloadError(f"{path}: {len(y)} labels for {len(x)} samples")
        y = y.astype(np.int64)
    return Dataset(path.stem, task, {input_name: x}, y, tuple(classes),
                   f"{len(x)} samples from {path}" + ("" if y is not None else " (unlabelled)"), {"path": str(path)},
                   [f"row:{path.name}:{i}" for i in range(len(x))])


def check_against(dataset: Dataset, input_specs, where: str | None = None) -> Dataset:
    """``dataset`` with each input cast to its `models.InputSpec` dtype, after checking that it
    has exactly the model's inputs, each sample shaped ``spec.shape[1:]``, and a dtype that casts
    safely within its kind (e.g. float64 → float32, int32 → int64; not float → int). Errors name
    ``where`` (default: the data set's file or folder, else its name)."""
    where = where or dataset.extra.get("path") or dataset.name
    specs = list(input_specs)
    names = [s.name for s in specs]
    missing = [n for n in names if n not in dataset.inputs]
    if missing:
        if len(specs) == 1 and len(dataset.inputs) == 1:
            raise WorkloadError(f"{where}: data input is named {next(iter(dataset.inputs))!r} but the model "
                                f"input is {names[0]!r}; name it {names[0]!r}")
        raise WorkloadError(f"{where}: no data for model input(s) {choices(missing)}; data has {choices(dataset.inputs)}")
    extra = [n for n in dataset.inputs if n not in names]
    if extra:
        raise WorkloadError(f"{where}: data input(s) {choices(extra)} are not inputs of the model; "
                            f"model inputs: {choices(names)}")
    out = {}
    for spec in specs:
        arr = np.asarray(dataset.inputs[spec.name])
        expect = tuple(spec.shape[1:])
        if tuple(arr.shape[1:]) != expect:
            raise WorkloadError(f"{where}: samples have shape {tuple(arr.shape[1:])} but model input "
                                f"{spec.name} expects {expect}")
        target = np.dtype(spec.dtype)
        if arr.dtype != target and not np.can_cast(arr.dtype, target, "same_kind"):
            raise WorkloadError(f"{where}: input {spec.name} holds {arr.dtype} values but the model expects "
                                f"{target}; convert the data")
        out[spec.name] = arr.astype(target, copy=False)
    return Dataset(dataset.name, dataset.task, out, dataset.labels, dataset.classes, dataset.description, dataset.extra,
                   dataset.sources)
