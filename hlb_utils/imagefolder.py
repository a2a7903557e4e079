"""ImageFolder sources (a folder, or a tarball read without extracting it), checked before they load.

Taught in notebook 01 (the data pipeline); `data.load_cifar10` calls these for any source laid out
as train/<class>/<image> and test/<class>/<image>. The checks sit here, at the boundary, so that
nothing damaged reaches the cache or a training run:
- an archive is checked whole as it is read (its end block where the members end, and its own
  checksum): a truncated or corrupt download is refused by name instead of loading part of the data;
- a source with CIFAR-10's ten class names must hold CIFAR-10's counts (5,000 training and 1,000
  test images per class); one with other class names is clearly the learner's own data and loads,
  with a warning that states its counts (any number of classes: the nets size their heads from it);
- a folder in neither layout, and an empty class folder, are named with what was found.
- an archive that holds an image name twice is refused, naming it (both copies would count).
"""
from __future__ import annotations

import io
import lzma
import os
import posixpath
import tarfile
import time
import warnings
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .dataset import CIFAR10_CLASSES, IMAGE_SIZE, IMAGE_SUFFIXES, PROGRESS_EVERY, SPLITS, Cifar10, DataError

LAYOUT = "train/<class>/<image> and test/<class>/<image>"
CIFAR10_PER_CLASS = {"train": 5000, "test": 1000}   # images per class in each split
TORCHVISION_FILES = ("cifar-10-batches-py", "cifar-10-python.tar.gz")


class OwnDataWarning(UserWarning):
    """The source is not CIFAR-10 (other class names); it loads as the user's own data."""


# ---- what a folder holds ----------------------------------------------------------------------

def imagefolder_root(path: Path) -> Path | None:
    """The folder holding train/ and test/ (path itself or its only subfolder), else None."""
    subfolders = sorted(p for p in path.iterdir() if p.is_dir())
    candidates = [path] + (subfolders if len(subfolders) == 1 else [])
    for root in candidates:
        present = [(root / s).is_dir() for s in SPLITS]
        if all(present):
            return root
        if any(present):
            raise DataError(f"{root} has only one of train/ and test/; an ImageFolder source needs both.")
    return None


def describe_folder(path: Path, shown: int = 4) -> str:
    """'an empty folder', or what is in it: 'folders images/, labels/ and 3 files a.png, ...'."""
    entries = sorted(path.iterdir())
    if not entries:
        return "an empty folder"
    folders = [p.name + "/" for p in entries if p.is_dir()]
    files = [p.name for p in entries if not p.is_dir()]
    parts = [f"{len(group)} {kind} ({', '.join(group[:shown])}{', ...' if len(group) > shown else ''})"
             for kind, group in (("folder(s)", folders), ("file(s)", files)) if group]
    return " and ".join(parts)


def is_torchvision_folder(path: Path) -> bool:
    """True for a folder torchvision may use: one holding its CIFAR-10 files, or an empty one to
    download into. Anything else is refused, so a mistyped path never becomes a download target."""
    return any((path / name).exists() for name in TORCHVISION_FILES) or not any(path.iterdir())


def wrong_layout(path: Path) -> DataError:
    return DataError(f"{path} is not a CIFAR-10 source: expected an ImageFolder layout ({LAYOUT}) or "
                     f"torchvision's {TORCHVISION_FILES[0]}/; found {describe_folder(path)}.")


# ---- reading files and archives ----------------------------------------------------------------

def check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse absolute names, '..' parts and links that point outside the archive."""
    name = member.name.replace("\\", "/")
    unsafe = name.startswith("/") or ".." in name.split("/") or name[1:2] == ":"
    if member.issym() or member.islnk():
        base = os.path.dirname(name) if member.issym() else ""
        target = os.path.normpath(os.path.join(base, member.linkname.replace("\\", "/")))
        unsafe = unsafe or target.startswith("/") or target.split("/")[0] == ".." or target[1:2] == ":"
    if unsafe:
        raise DataError(f"unsafe member {member.name!r} in {archive} (absolute path, '..' or a link "
                        "leading outside the archive); refusing to read it. Rebuild the archive.")


def _tar_files(path: Path, read: bool = True) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes) for each file (when `read`) and (name, None) for each folder; then the archive
    is checked whole: a truncated or corrupt one raises DataError instead of ending early.

    tarfile stops quietly at a header cut short, so the end-of-archive block must sit where the
    members end; reading on to the end lets gzip (and xz, bz2) check their own checksums.
    """
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                check_member(member, path)
                if member.isdir():
                    yield member.name, None
                elif read and (member.isfile() or member.issym() or member.islnk()):
                    yield member.name, archive.extractfile(member).read()
            archive.fileobj.seek(archive.offset)
            ended = archive.fileobj.read(tarfile.BLOCKSIZE) == bytes(tarfile.BLOCKSIZE)
            while archive.fileobj.read(1 << 20):
                pass
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as err:
        raise DataError(_damaged(path, f"{type(err).__name__}: {err}")) from None
    if not ended:
        raise DataError(_damaged(path, "it stops before the archive's end, so images are missing"))


def check_archive(path: Path) -> None:
    """Read the archive through without decoding: DataError if it is truncated or corrupt."""
    for _ in _tar_files(path, read=False):
        pass


def _damaged(path: Path, detail: str) -> str:
    return (f"{path} is damaged (truncated or corrupt: {detail}). Nothing was loaded or cached from it; "
            "download or copy it again and compare its size with the original's.")


def _folder_files(path: Path) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes) for each file and (name, None) for each folder under train/ and test/."""
    root = imagefolder_root(path)
    for split in SPLITS:
        for file in sorted((root / split).rglob("*")):
            yield str(file), (file.read_bytes() if file.is_file() else None)


def _place(name: str) -> tuple[str, str, bool] | None:
    """('train', 'cat', True) for '.../train/cat/0001.jpg', ('train', 'cat', False) for the folder
    '.../train/cat' itself; None for anything else."""
    parts = name.replace("\\", "/").rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] in SPLITS and not parts[-1].startswith("."):
        return parts[-2], parts[-1], False
    if len(parts) < 3 or parts[-3] not in SPLITS or parts[-1].startswith("."):
        return None
    if not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return None
    return parts[-3], parts[-2], True


def _decode(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size != (IMAGE_SIZE, IMAGE_SIZE) or image.mode != "RGB":
                raise DataError(f"{name} is a {image.size[0]}x{image.size[1]} {image.mode} image; every image "
                                "must be 32x32 RGB: convert it, e.g. image.convert('RGB').resize((32, 32))")
            return np.asarray(image)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{name} cannot be decoded as an image ({err}); remove or replace it.") from err


def decode_source(path: Path, verbose: bool) -> Cifar10:
    """Decode every image once. Single process: on two shared cores a pool barely helped."""
    files = _tar_files(path) if path.is_file() else _folder_files(path)
    found: dict[str, list] = {split: [] for split in SPLITS}
    folders: dict[str, set] = {split: set() for split in SPLITS}
    seen, repeated = set(), []
    start, count = time.perf_counter(), 0
    try:
        for name, data in files:
            place = _place(name)
            if place is None or (data is None) == place[2]:
                continue
            if not place[2]:
                folders[place[0]].add(place[1])
                continue
            key = posixpath.normpath(name.replace("\\", "/"))
            if key in seen:   # an archive can hold one name twice: the image would count twice
                repeated.append(key)
                continue
            seen.add(key)
            found[place[0]].append((place[1], _decode(data, name)))
            count += 1
            if verbose and count % PROGRESS_EVERY == 0:
                print(f"decoded {count:,} images ({time.perf_counter() - start:.0f} s)", flush=True)
    except DataError:
        if path.is_file():
            check_archive(path)   # a damaged archive explains a bad image better than the image does
        raise
    if repeated:
        shown = ", ".join(repeated[:3]) + (f" and {len(repeated) - 3} more" if len(repeated) > 3 else "")
        raise DataError(f"{path} holds {len(repeated)} image(s) more than once under the same name ({shown}); "
                        "rebuild the archive with each image once.")
    classes = _class_list(found, folders, path)
    tensors = []
    for split in SPLITS:
        images = np.stack([array for _, array in found[split]]).transpose(0, 3, 1, 2)
        tensors.append(torch.from_numpy(np.ascontiguousarray(images)))
        tensors.append(torch.tensor([classes.index(c) for c, _ in found[split]], dtype=torch.int64))
    if verbose:
        print(f"decoded {count:,} images from {path} in {time.perf_counter() - start:.1f} s", flush=True)
    return Cifar10(*tensors, classes, str(path))


def _class_list(found: dict, folders: dict, path: Path) -> list:
    """The class folder names, sorted (the same in both splits, none of them empty)."""
    names = [sorted({c for c, _ in found[split]}) for split in SPLITS]
    for split, with_images in zip(SPLITS, names):
        empty = sorted(folders[split] - set(with_images))
        if empty:
            raise DataError(f"{path}: the class folder {split}/{empty[0]}/ holds no images (looked for "
                            f"files ending in {', '.join(IMAGE_SUFFIXES)}); add images or remove the folder "
                            "from both splits.")
    if not names[0] or not names[1]:
        raise DataError(f"{path}: no images found under train/<class>/ and test/<class>/ (looked for "
                        f"files ending in {', '.join(IMAGE_SUFFIXES)}).")
    if names[0] != names[1]:
        raise DataError(f"{path}: train and test have different class folders: "
                        f"train {names[0]}, test {names[1]}. Make both splits have the same classes.")
    # CIFAR-10's own class order is alphabetical, so its folders get the usual labels 0..9.
    return names[0]


# ---- is it CIFAR-10? -----------------------------------------------------------------------------

def check_counts(data: Cifar10) -> None:
    """Refuse a source with CIFAR-10's class names but not its counts (a partial copy); warn, stating
    the counts, when the class names are others (the learner's own data)."""
    counts = {split: torch.bincount(getattr(data, f"{split}_labels"), minlength=len(data.classes)).tolist()
              for split in SPLITS}
    described = "; ".join(_count_text(split, counts[split], data.classes) for split in SPLITS)
    if list(data.classes) == list(CIFAR10_CLASSES):
        if all(n == CIFAR10_PER_CLASS[split] for split in SPLITS for n in counts[split]):
            return
        raise DataError(f"{data.source} has CIFAR-10's class folders but not its images: {described}, where "
                        "CIFAR-10 has 5,000 training and 1,000 test images per class. The copy is incomplete: "
                        "copy it again. (To train on part of CIFAR-10, keep the whole set and use "
                        "TrainConfig.train_subset.)")
    warnings.warn(f"{data.source} is not CIFAR-10 ({len(data.classes)} classes: "
                  f"{', '.join(data.classes[:12])}{', ...' if len(data.classes) > 12 else ''}); "
                  f"loading it as your own data: {described}", OwnDataWarning, stacklevel=4)


def _count_text(split: str, counts: list, classes: list) -> str:
    total = f"{split} {sum(counts):,} images"
    if min(counts) == max(counts):
        return f"{total} ({counts[0]:,} per class)"
    fewest = counts.index(min(counts))
    return f"{total} ({min(counts):,} to {max(counts):,} per class, fewest in {classes[fewest]})"
