"""What the zoo's entries share: cached trained weights, downloads that fail in one line,
and the offline stand-in data of the study models. torch is imported inside functions."""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np

from ..cache import content_key, library_versions
from ..data import SPLITS, Dataset
from ..errors import WorkloadError
from ..models import RANDOM_NOTE, BuildContext, metric_applicable  # noqa: F401 - re-exported

TRAIN_THREADS_ENV = "TESTBED_TRAIN_THREADS"
PROBE_TIMEOUT_S = 10.0          # a host that does not answer within this is "no network"


def train_threads() -> int:
    """torch threads for training: ``$TESTBED_TRAIN_THREADS``, else 2 (results do not depend on
    it beyond float rounding; 2 keeps a shared preparing machine usable)."""
    return max(1, int(os.environ.get(TRAIN_THREADS_ENV) or 2))


def split_seed(split: str, seed: int = 0) -> int:
    if split not in SPLITS:
        raise WorkloadError(f"split {split!r} unknown; allowed: {', '.join(SPLITS)}")
    return seed + 1000 * (SPLITS.index(split) + 1)


# ---------------------------------------------------------------- trained weights -------

def weights_key(name: str, version: str, seed: int) -> str:
    return content_key("weights", name=name, version=version, seed=seed, libs=library_versions())


def trained(name: str, version: str, ctx: BuildContext, make: Callable[[], object],
            train: Callable[[object, BuildContext], dict]):
    """``make()`` (initialised under ``torch.manual_seed(ctx.seed)``), with weights trained by
    ``train(module, ctx)`` once and then read from cache entry ``weights/<key>`` (key: name,
    version, seed, library versions). With ``ctx.weights == "random"`` the fresh module.
    Returned in eval mode."""
    import torch

    torch.manual_seed(ctx.seed)
    module = make()
    if ctx.weights == "random":
        return module.eval()

    def build(folder: Path) -> None:
        ctx.progress(f"{name}: training (once; the weights are cached)")
        history = train(module, ctx)
        with open(folder / "weights.pt", "wb") as f:     # a full disk: an OSError the cache names
            torch.save(module.state_dict(), f)
        (folder / "history.json").write_text(json.dumps(history, indent=1))

    folder = ctx.cache.get_or_build("weights", weights_key(name, version, ctx.seed), build,
                                    description={"model": name, "version": version, "seed": ctx.seed})
    module.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    return module.eval()


def training_history(name: str, version: str, ctx: BuildContext) -> dict | None:
    """The history ``fit`` returned when the cached weights were trained (None if not cached)."""
    folder = ctx.cache.get("weights", weights_key(name, version, ctx.seed))
    return json.loads((folder / "history.json").read_text()) if folder else None


# ---------------------------------------------------------------- downloads ------------

def need_download(model: str, where: str, reason: str) -> WorkloadError:
    """The one-line error of a pretrained model whose weights cannot be fetched."""
    reason = " ".join(str(reason).split())[:160] or "unknown error"
    return WorkloadError(f"model {model}: pretrained weights need a download from {where} "
                         f"(no network: {reason}); use weights: random for latency-only studies")


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return str(e) or type(e).__name__


def offline_reason(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``url`` answers a HEAD request within ``timeout`` seconds (through the proxy the
    environment names, like any urllib request), else why not, in a few words. Checked before a
    download so that a machine without network fails in seconds, not after library retries."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError as e:
        return None if e.code in (401, 403, 405) and "huggingface" in url else _reason(e)
    except Exception as e:  # noqa: BLE001 - URLError, socket.timeout, ssl errors: all mean "cannot reach"
        return _reason(e)


def download(model: str, url: str, ctx: BuildContext, then: Callable[[Path, Path], None] | None = None,
             tag: str = "1") -> Path:
    """The folder of cache entry ``downloads/<key of url, tag>`` holding ``url``'s file (named
    like the URL's last part), fetched when absent; ``then(file, folder)`` may add derived files
    to the entry before it is published. Errors: one line (`need_download`)."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"

    def build(folder: Path) -> None:
        reason = offline_reason(url)
        if reason:
            raise need_download(model, url, reason)
        ctx.progress(f"{model}: downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(folder / name, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
        except Exception as e:  # noqa: BLE001
            raise need_download(model, url, _reason(e)) from None
        if then is not None:
            try:
                then(folder / name, folder)
            except Exception as e:  # noqa: BLE001 - a corrupt or changed file: one line, nothing cached
                raise WorkloadError(f"model {model}: the file downloaded from {url} is unusable "
                                    f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None

    return ctx.cache.get_or_build("downloads", content_key("download", url=url, tag=tag), build,
                                  description={"url": url})


# ---------------------------------------------------------------- stand-in data --------

def photo_counts(size: int) -> dict[str, int]:
    """Sample counts per split for photos of ``size``: at 224×224, `datasets.PHOTO_CROPS` crops
    of every photograph of the split (eval: 5 of each of 120, 600 samples); for larger inputs
    scaled down by the pixel count (at least 8), so they stay a few hundred MB and evaluation
    stays minutes."""
    from .. import datasets, photos as P

    scale = min(1.0, (224 / size) ** 2)
    return {s: max(8, int(round(c * len(P.photos_of(s)) * scale))) for s, c in datasets.PHOTO_CROPS.items()}


def photos(split: str, size: int, seed: int = 0) -> Dataset:
    """Unlabelled ImageNet-normalised crops of the real photographs of ``split``
    (`datasets.photo_crops`; the splits share no photograph), `photo_counts` of them."""
    from .. import datasets

    return datasets.photo_crops(split, photo_counts(size)[split], size, seed=split_seed(split, seed))


def random_tokens(split: str, *, name: str, length: int, vocab: int, cls: int, sep: int, pad: int,
                  low: int = 1000, seed: int = 0, count: int | None = None) -> Dataset:
    """Unlabelled random sentence pairs as token ids: ``cls a… sep b… sep`` then ``pad``, total
    length uniform in [16, length], ids uniform in [low, vocab); ``attention_mask`` 1 on tokens.
    Meaningless as text: for latency and agreement with the untransformed model only."""
    count = count or {"train": 256, "calibration": 64, "eval": 64}[split]
    rng = np.random.default_rng(split_seed(split, seed))
    ids = np.full((count, length), pad, np.int64)
    mask = np.zeros((count, length), np.int64)
    for i in range(count):
        n = int(rng.integers(16, length + 1))
        row = rng.integers(low, vocab, size=n)
        mid = int(rng.integers(2, n - 2))
        row[0], row[mid], row[n - 1] = cls, sep, sep
        ids[i, :n], mask[i, :n] = row, 1
    # a sample's source is its draw: the seed (different per split) and its index
    return Dataset(f"{name}-random-tokens", "text_classification", {"input_ids": ids, "attention_mask": mask},
                   None, (), f"{count} random token-id sentence pairs (length 16-{length}, seed "
                   f"{split_seed(split, seed)}); unlabelled stand-in for MRPC, which needs a download",
                   sources=[f"random-tokens:{split_seed(split, seed)}:{i}" for i in range(count)])
