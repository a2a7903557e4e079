"""hlb_utils.data: sources, the decode-once cache, safety checks and error messages."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hlb_utils import data, imagefolder
from hlb_utils.data import DataError, load_cifar10
from hlb_utils.imagefolder import OwnDataWarning
from hlb_utils.loader import channel_stats

from synthetic import synthetic_dataset


def make_imagefolder(root: Path, classes, per_class: int = 2, seed: int = 0, size: int = 32) -> dict:
    """Write random PNGs (lossless, so pixels round-trip) in ImageFolder layout under root.

    Returns {split: [(class, HWC uint8 array), ...]} in the order written.
    """
    rng = np.random.default_rng(seed)
    written = {"train": [], "test": []}
    for split in written:
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:04d}.png")
                written[split].append((name, pixels))
    return written


def make_tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def as_sets(images: torch.Tensor, labels: torch.Tensor, classes) -> set:
    return {(classes[int(y)], bytes(x.permute(1, 2, 0).contiguous().numpy())) for x, y in zip(images, labels)}


def load(source, cache: Path) -> data.Cifar10:
    """Load a test source; the own-data warning every small folder gets is checked on its own below."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OwnDataWarning)
        return load_cifar10(source, cache_dir=cache, verbose=False)


def test_synthetic_dataset_is_balanced_uint8_and_seeded():
    first = synthetic_dataset(n_train=100, n_test=20, seed=1)
    assert first.train_images.shape == (100, 3, 32, 32) and first.train_images.dtype == torch.uint8
    assert first.test_images.shape == (20, 3, 32, 32) and first.train_labels.dtype == torch.int64
    assert first.train_labels.bincount().tolist() == [10] * 10 and len(first.classes) == 10
    again, other = synthetic_dataset(100, 20, seed=1), synthetic_dataset(100, 20, seed=2)
    assert torch.equal(first.train_images, again.train_images)
    assert not torch.equal(first.train_images, other.train_images)


def test_imagefolder_pixels_labels_and_sorted_classes(tmp_path):
    written = make_imagefolder(tmp_path / "mine", ["zebra", "cat", "robot"])
    got = load(tmp_path / "mine", tmp_path / "cache")
    assert got.classes == ["cat", "robot", "zebra"]
    for split in ("train", "test"):
        images, labels = getattr(got, f"{split}_images"), getattr(got, f"{split}_labels")
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert as_sets(images, labels, got.classes) == {(c, bytes(p)) for c, p in written[split]}


def test_cifar_class_names_come_in_cifar_order_and_promise_cifar_counts(tmp_path):
    # Folders are labelled in sorted order, which is CIFAR-10's own: its folders get labels 0..9.
    assert sorted(data.CIFAR10_CLASSES) == list(data.CIFAR10_CLASSES)
    # With CIFAR-10's names, one image per class is a partial copy, never cached.
    make_imagefolder(tmp_path / "src", sorted(data.CIFAR10_CLASSES), per_class=1)
    with pytest.raises(DataError, match=r"CIFAR-10's class folders but not its images: train 10 images "
                                        r"\(1 per class\); test 10 images \(1 per class\)"):
        load(tmp_path / "src", tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.pt"))


def test_tarball_with_top_folder_matches_the_folder(tmp_path):
    make_imagefolder(tmp_path / "cifar10-jpeg", ["ant", "bee"], per_class=3)
    from_folder = load(tmp_path / "cifar10-jpeg", tmp_path / "cache")
    from_tar = load(make_tar(tmp_path / "cifar10-jpeg", tmp_path / "mine.tar.gz"), tmp_path / "cache")
    assert from_tar.classes == from_folder.classes
    for mine, theirs in zip(from_tar[:4], from_folder[:4]):
        assert torch.equal(mine, theirs)


def test_cache_cannot_go_stale(tmp_path):
    make_imagefolder(tmp_path / "src", ["ant", "bee"], per_class=2)
    assert len(load(tmp_path / "src", tmp_path / "cache").train_labels) == 4
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "src" / "train" / "bee" / "extra.png")
    assert len(load(tmp_path / "src", tmp_path / "cache").train_labels) == 5


def only_cache_file(cache: Path) -> Path:
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt", files
    return files[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "tampered"])
def test_damaged_cache_is_rebuilt_with_a_warning(tmp_path, damage):
    make_imagefolder(tmp_path / "src", ["ant", "bee"], per_class=2)
    good = load(tmp_path / "src", tmp_path / "cache")
    file = only_cache_file(tmp_path / "cache")
    if damage == "garbage":
        file.write_bytes(b"not a tensor file")
    elif damage == "truncated":
        file.write_bytes(file.read_bytes()[:1000])
    else:
        payload = torch.load(file, weights_only=True)
        payload["train_images"][0, 0, 0, 0] ^= 1
        torch.save(payload, file)
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = load(tmp_path / "src", tmp_path / "cache")
    assert all(torch.equal(a, b) for a, b in zip(rebuilt[:4], good[:4]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(tmp_path / "src", tmp_path / "cache")


def test_interrupted_cache_write_leaves_nothing_that_loads(tmp_path, monkeypatch):
    make_imagefolder(tmp_path / "src", ["ant", "bee"], per_class=2)

    def save_then_crash(obj, stream, *args, **kwargs):
        stream.write(b"half a cache file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        load(tmp_path / "src", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    assert len(load(tmp_path / "src", tmp_path / "cache").train_labels) == 4
    only_cache_file(tmp_path / "cache")


def add_member(tar: tarfile.TarFile, name: str, payload: bytes = b"", link: str | None = None) -> None:
    info = tarfile.TarInfo(name)
    if link is None:
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    else:
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)


@pytest.mark.parametrize("name, link", [
    ("../evil.png", None),
    ("/tmp/evil.png", None),
    ("cifar/train/cat/../../../evil.png", None),
    ("cifar/train/cat/evil.png", "../../../../etc/passwd"),
    ("cifar/train/cat/evil.png", "/etc/passwd"),
])
def test_unsafe_tar_member_is_refused_by_name(tmp_path, name, link):
    png = io.BytesIO()
    Image.new("RGB", (32, 32)).save(png, format="PNG")
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_member(tar, "cifar/train/cat/0000.png", png.getvalue())
        add_member(tar, name, png.getvalue(), link)
        add_member(tar, "cifar/test/cat/0000.png", png.getvalue())
    with pytest.raises(DataError, match="unsafe member") as err:
        load(archive, tmp_path / "cache")
    assert name in str(err.value)


def test_offline_error_explains_hlb_data(tmp_path, monkeypatch):
    import torchvision

    def no_network(self):
        raise urllib.error.URLError("no internet here")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", no_network)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="HLB_DATA") as err:
        load(tmp_path / "empty", tmp_path / "cache")
    assert "no internet here" in str(err.value) and "replica" in str(err.value)
    assert "is an empty folder, not an ImageFolder source (train/<class>/<image>" in str(err.value)
    monkeypatch.delenv("HLB_DATA", raising=False)
    with pytest.raises(DataError, match="HLB_DATA"):
        load(None, tmp_path / "cache")


def test_missing_path_is_named(tmp_path):
    with pytest.raises(DataError, match="does-not-exist.*does not exist"):
        load(tmp_path / "does-not-exist.tar.gz", tmp_path / "cache")


@pytest.mark.parametrize("size, mode", [((16, 16), "RGB"), ((32, 32), "L")])
def test_image_that_is_not_32x32_rgb_is_named(tmp_path, size, mode):
    make_imagefolder(tmp_path / "src", ["ant"], per_class=1)
    Image.new(mode, size).save(tmp_path / "src" / "test" / "ant" / "odd-one.png")
    with pytest.raises(DataError, match="odd-one.png.*32x32 RGB"):
        load(tmp_path / "src", tmp_path / "cache")


def test_class_folders_must_match_between_splits(tmp_path):
    make_imagefolder(tmp_path / "src", ["ant", "bee"], per_class=1)
    (tmp_path / "src" / "test" / "bee" / "0000.png").rename(tmp_path / "src" / "test" / "ant" / "0001.png")
    (tmp_path / "src" / "test" / "bee").rmdir()
    with pytest.raises(DataError, match="different class folders"):
        load(tmp_path / "src", tmp_path / "cache")


def test_real_replica_counts_and_pixel_statistics(cifar):
    assert cifar.train_images.shape == (50_000, 3, 32, 32) and cifar.test_images.shape == (10_000, 3, 32, 32)
    assert cifar.train_images.dtype == torch.uint8 and cifar.classes == list(data.CIFAR10_CLASSES)
    assert cifar.train_labels.bincount().tolist() == [5000] * 10
    assert cifar.test_labels.bincount().tolist() == [1000] * 10
    # published statistics of the replica (per channel, 0..1 units)
    mean, std = channel_stats(cifar.train_images)
    assert torch.allclose(mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=0.005)
    assert torch.allclose(std, torch.tensor([0.2452, 0.2428, 0.2606]), atol=0.005)


def test_shuffled_indices_give_every_class_of_the_class_ordered_replica(cifar):
    first = cifar.train_labels[:960]
    assert first.unique().numel() == 1   # why the helper exists: the replica is stored class by class
    pick = data.shuffled_indices(len(cifar.train_labels), 960, seed=3)
    assert cifar.train_labels[pick].bincount(minlength=10).min() > 50
    assert torch.equal(pick, data.shuffled_indices(len(cifar.train_labels), 960, seed=3))   # the same each time
    assert not torch.equal(pick, data.shuffled_indices(len(cifar.train_labels), 960, seed=4))
    everything = data.shuffled_indices(len(cifar.train_labels))
    assert torch.equal(everything.sort().values, torch.arange(len(cifar.train_labels)))   # a permutation


# ---- damaged archives, partial copies, unusual layouts (issue 13) -----------------------------

def no_cache_written(cache: Path) -> bool:
    return not cache.exists() or not list(cache.glob("*.pt"))


def archive_of(folder: Path, archive: Path, mode: str) -> Path:
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname=folder.name)
    return archive


@pytest.mark.parametrize("mode, keep", [("w:gz", 0.97), ("w:gz", 0.5), ("w", 0.5)])
def test_truncated_archive_is_refused_and_never_cached(tmp_path, mode, keep):
    make_imagefolder(tmp_path / "src", ["ant", "bee"], per_class=10)
    archive = archive_of(tmp_path / "src", tmp_path / ("src.tar.gz" if mode == "w:gz" else "src.tar"), mode)
    archive.write_bytes(archive.read_bytes()[: int(archive.stat().st_size * keep)])
    with pytest.raises(DataError, match=r"src.tar(.gz)? is damaged \(truncated or corrupt"):
        load(archive, tmp_path / "cache")
    assert no_cache_written(tmp_path / "cache")


def test_plain_tar_cut_between_members_is_refused(tmp_path):
    make_imagefolder(tmp_path / "src", ["ant", "bee"], per_class=10)
    archive = archive_of(tmp_path / "src", tmp_path / "src.tar", "w")
    with tarfile.open(archive) as tar:
        offsets = [m.offset for m in tar.getmembers()]
    archive.write_bytes(archive.read_bytes()[: offsets[-3]])
    with tarfile.open(archive) as tar:   # tarfile alone reads the rest without a word
        assert len(tar.getmembers()) == len(offsets) - 3
    with pytest.raises(DataError, match="stops before the archive's end, so images are missing"):
        load(archive, tmp_path / "cache")
    assert no_cache_written(tmp_path / "cache")


def test_gzip_with_flipped_bytes_is_refused_as_corrupt(tmp_path):
    make_imagefolder(tmp_path / "src", ["ant", "bee"], per_class=10)
    archive = archive_of(tmp_path / "src", tmp_path / "src.tar.gz", "w:gz")
    raw = bytearray(archive.read_bytes())
    for k in range(32):
        raw[len(raw) // 2 + 7 * k] ^= 0xFF
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"is damaged \(truncated or corrupt"):
        load(archive, tmp_path / "cache")
    assert no_cache_written(tmp_path / "cache")


def test_partial_cifar_copy_cached_by_older_code_is_refused(tmp_path, monkeypatch):
    make_imagefolder(tmp_path / "src", sorted(data.CIFAR10_CLASSES), per_class=1)
    monkeypatch.setattr(imagefolder, "check_counts", lambda d: None)   # as before the check existed
    load(tmp_path / "src", tmp_path / "cache")
    monkeypatch.undo()
    with pytest.raises(DataError, match="CIFAR-10's class folders but not its images"):
        load(tmp_path / "src", tmp_path / "cache")


def test_own_data_loads_with_a_warning_that_states_its_counts(tmp_path):
    classes = [f"kind{i:02d}" for i in range(12)]   # 12 classes: the nets size their heads from them
    make_imagefolder(tmp_path / "src", classes, per_class=2)
    (tmp_path / "src" / "test" / "kind03" / "0001.png").unlink()
    with pytest.warns(OwnDataWarning, match=r"is not CIFAR-10 \(12 classes: kind00, kind01, .*kind11\); "
                                            r"loading it as your own data: train 24 images \(2 per class\); "
                                            r"test 23 images \(1 to 2 per class, fewest in kind03\)"):
        got = load_cifar10(tmp_path / "src", cache_dir=tmp_path / "cache", verbose=False)
    assert got.classes == classes and int(got.train_labels.max()) == 11


def test_folder_in_neither_layout_says_what_was_expected_and_found(tmp_path):
    (tmp_path / "pics" / "images").mkdir(parents=True)
    (tmp_path / "pics" / "a.png").write_bytes(b"not used")
    with pytest.raises(DataError, match=r"expected an ImageFolder layout \(train/<class>/<image> and "
                                        r"test/<class>/<image>\) or torchvision's cifar-10-batches-py/; "
                                        r"found 1 folder\(s\) \(images/\) and 1 file\(s\) \(a.png\)"):
        load(tmp_path / "pics", tmp_path / "cache")


@pytest.mark.parametrize("as_archive", [False, True])
def test_empty_class_folder_is_named(tmp_path, as_archive):
    make_imagefolder(tmp_path / "src", ["ant", "bee"], per_class=1)
    (tmp_path / "src" / "test" / "bee" / "0000.png").unlink()
    source = make_tar(tmp_path / "src", tmp_path / "src.tar.gz") if as_archive else tmp_path / "src"
    with pytest.raises(DataError, match=r"the class folder test/bee/ holds no images"):
        load(source, tmp_path / "cache")


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    make_imagefolder(tmp_path / "src", ["ant", "bee"], per_class=1)
    cache = tmp_path / "cache"
    cache.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", "pass"])
    writer.wait()   # a writer that is gone, as if killed mid-write
    dead = cache / f".cifar10-0123.pt.{writer.pid}.abc_12.tmp"
    alive = cache / f".cifar10-0123.pt.{os.getpid()}.def_34.tmp"
    old_unnamed, new_unnamed = cache / ".cifar10-0123.pt.ghi_56.tmp", cache / ".cifar10-0123.pt.jkl_78.tmp"
    for tmp in (dead, alive, old_unnamed, new_unnamed):
        tmp.write_bytes(b"half a cache file")
    two_hours_ago = time.time() - 7200
    os.utime(old_unnamed, (two_hours_ago, two_hours_ago))
    load(tmp_path / "src", cache)
    assert not dead.exists() and not old_unnamed.exists()
    assert alive.exists() and new_unnamed.exists()
