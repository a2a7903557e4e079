"""CIFAR-10 as four uint8 tensors: where it comes from, and decoding it only once.

Taught in notebook 01 (the data pipeline). `load_cifar10` accepts three kinds of source, so that the
notebooks run with internet (torchvision downloads the original), without it (the JPEG replica, a
.tar.gz in ImageFolder layout) and on a learner's own 32x32 images (an ImageFolder folder). Decoding
60,000 small files takes seconds, so the result is cached as one tensor file whose name is keyed by
the source (path, size, modification time): editing the source makes a new cache, never a stale one.
ImageFolder sources are read and checked in `imagefolder.py` (damaged archives, counts, layout); the
`Cifar10` tuple and `DataError` that both modules use live in `dataset.py`.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import imagefolder
# the dataset type and its error live in dataset.py (imagefolder.py needs them too); named here as well
from .dataset import CIFAR10_CLASSES, IMAGE_SIZE, SPLITS, Cifar10, DataError  # noqa: F401

CACHE_FORMAT = 1             # bump when the cache layout changes, so old caches are ignored
REPLICA_NAME = "cifar10-jpeg"                # the JPEG replica's archive stem and top folder
TORCHVISION_FOLDER = "cifar-10-batches-py"   # what torchvision's CIFAR10 downloads into its root
DOWNLOAD_FOLDER = "cifar10-torchvision"      # the download's root inside the cache folder (README names it)


def default_cache_dir() -> Path:
    """HLB_CACHE if set, else ~/.cache/hlb_utils (the shared data folder is read-only in CI)."""
    return Path(os.environ.get("HLB_CACHE") or Path.home() / ".cache" / "hlb_utils").expanduser()


_OFFLINE_HELP = (
    "Without internet, point the environment variable HLB_DATA (or load_cifar10(source=...)) at a "
    "local copy: the JPEG replica (e.g. HLB_DATA=~/Downloads/cifar10-jpeg.tar.gz), a folder or "
    ".tar.gz in ImageFolder layout (train/<class>/*.png and test/<class>/*.png), or a folder that "
    "already holds torchvision's cifar-10-batches-py."
)


def data_label(source: str | os.PathLike) -> str:
    """What a results table calls the data: 'CIFAR-10', 'JPEG copy of CIFAR-10', 'synthetic' or 'own images (NAME)'.

    Accuracy on the JPEG replica runs below the original's, so a result names its data instead of
    printing a path (notebook 06's comparison, benchmarks/gpu_bench.py). The replica is known by its
    name (cifar10-jpeg.tar.gz, or the cifar10-jpeg folder it unpacks to); CIFAR-10 by torchvision's
    cifar-10-batches-py folder; any other image folder or archive is the learner's own images.
    """
    text = str(source)
    if text.startswith("synthetic"):
        return "synthetic"
    path = Path(text).expanduser()
    if path.name.lower().startswith(REPLICA_NAME) or (path / REPLICA_NAME).is_dir():
        return "JPEG copy of CIFAR-10"
    if (path / TORCHVISION_FOLDER).is_dir():
        return "CIFAR-10"
    return f"own images ({path.name})"


def load_cifar10(source: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 verbose: bool = True) -> Cifar10:
    """The whole dataset as uint8 tensors, from `source` (default: HLB_DATA, else a download).

    source: a .tar.gz or folder in ImageFolder layout (decoded once, then cached in `cache_dir`,
    default HLB_CACHE or ~/.cache/hlb_utils), or a folder for torchvision's CIFAR10 (downloaded on
    first use into an empty folder; its arrays load in about a second, so they are not cached again).
    A damaged archive, a partial copy of CIFAR-10 or a folder in neither layout raises DataError;
    a dataset of your own (other class names) loads with an `imagefolder.OwnDataWarning`.
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    source = source or os.environ.get("HLB_DATA") or None
    if source is None:
        return _from_torchvision(cache_dir / DOWNLOAD_FOLDER)
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise DataError(f"CIFAR-10 source {str(path)!r} does not exist. Check the path or HLB_DATA. "
                        + _OFFLINE_HELP)
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise DataError(f"{path} is not a tar archive (or is damaged beyond recognition): give a .tar.gz "
                            "in ImageFolder layout or a folder.")
        return _cached(path, cache_dir, verbose)
    if imagefolder.imagefolder_root(path) is not None:
        return _cached(path, cache_dir, verbose)
    if not imagefolder.is_torchvision_folder(path):
        raise imagefolder.wrong_layout(path)
    found = imagefolder.describe_folder(path)
    try:
        return _from_torchvision(path)
    except DataError as err:   # say why a download was tried at all: the folder held no source
        raise DataError(f"{path} is {found}, not an ImageFolder source ({imagefolder.LAYOUT}), so CIFAR-10 "
                        f"was to be downloaded there. {err}") from err


def _from_torchvision(root: Path) -> Cifar10:
    import torchvision  # only this source needs it

    try:
        sets = [torchvision.datasets.CIFAR10(str(root), train=s == "train", download=True) for s in SPLITS]
    except (OSError, RuntimeError) as err:
        raise DataError(f"Could not download CIFAR-10 into {root} ({err}). " + _OFFLINE_HELP) from err
    images = [torch.from_numpy(np.ascontiguousarray(s.data)).permute(0, 3, 1, 2).contiguous() for s in sets]
    labels = [torch.tensor(s.targets, dtype=torch.int64) for s in sets]
    return Cifar10(images[0], labels[0], images[1], labels[1], list(sets[0].classes), str(root))


# ---- the decode-once cache -------------------------------------------------------------------

def _cache_key(path: Path) -> str:
    """Absolute path + size + mtime of the source (of every file, for a folder), hashed."""
    digest = hashlib.sha1(f"v{CACHE_FORMAT}|{path}".encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        stat = file.stat()
        digest.update(f"|{file}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _checksum(data: Cifar10) -> str:
    digest = hashlib.sha1("|".join(data.classes).encode())
    for tensor in data[:4]:
        digest.update(tensor.contiguous().numpy().data)
    return digest.hexdigest()


def _cached(path: Path, cache_dir: Path, verbose: bool) -> Cifar10:
    _remove_stale_temp(cache_dir)
    file = cache_dir / f"cifar10-{_cache_key(path)}.pt"
    if file.exists():
        data, problem = _read_cache(file)
        if data is not None:
            imagefolder.check_counts(data)   # also refuses a partial copy cached before this check existed
            return data
        warnings.warn(f"the cache {file} is unusable ({problem}); rebuilding it from {path}", stacklevel=3)
    data = imagefolder.decode_source(path, verbose)
    imagefolder.check_counts(data)   # a partial copy of CIFAR-10 is refused before it can be cached
    payload = {**data._asdict(), "format": CACHE_FORMAT, "checksum": _checksum(data),
               "counts": [len(data.train_labels), len(data.test_labels)]}
    try:
        _save_atomic(payload, file)
    except OSError as err:
        warnings.warn(f"could not write the cache {file} ({err}); set HLB_CACHE to a writable folder "
                      "to avoid decoding again next time", stacklevel=3)
    return data


def _read_cache(file: Path) -> tuple[Cifar10 | None, str]:
    """(data, '') if the cache loads and validates, else (None, what is wrong)."""
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
        data = Cifar10(*(payload[name] for name in Cifar10._fields))
    except Exception as err:  # any unreadable file is simply rebuilt
        return None, f"cannot be read: {type(err).__name__}: {err}"
    if payload.get("format") != CACHE_FORMAT:
        return None, "old cache format"
    problem = _validate(data, payload.get("counts"))
    if not problem and payload.get("checksum") != _checksum(data):
        problem = "checksum mismatch"
    return (None, problem) if problem else (data, "")


def _validate(data: Cifar10, counts: list | None) -> str:
    """'' when shapes, dtypes, label range and counts agree, else the first problem found."""
    for split, count in zip(SPLITS, counts or [None, None]):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        if images.dtype != torch.uint8 or images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            return f"{split} images have dtype {images.dtype} and shape {tuple(images.shape)}"
        if labels.dtype != torch.int64 or labels.shape != (len(images),) or len(images) != count:
            return f"{split}: {len(images)} images, {len(labels)} labels, expected {count}"
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(data.classes):
            return f"{split} labels outside 0..{len(data.classes) - 1}"
    return ""


def _save_atomic(payload: dict, file: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a half cache."""
    file.parent.mkdir(parents=True, exist_ok=True)
    # the writer's process id in the name lets a later load remove what a killed writer left
    handle, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp makes the file private (0o600); a cache is as readable as any download
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


STALE_TEMP_SECONDS = 3600    # a cache temp file this old, whose writer is unknown, is abandoned


def _remove_stale_temp(cache_dir: Path) -> None:
    """Delete the cache temp files of writers that died (killed mid-write): each holds a whole cache."""
    if not cache_dir.is_dir():
        return
    for tmp in cache_dir.glob(".cifar10-*.tmp"):
        pid = tmp.name.split(".")[3] if tmp.name.count(".") == 5 else ""
        try:
            if _writer_alive(int(pid) if pid.isdigit() else None, tmp):
                continue
            tmp.unlink()
        except OSError:
            pass   # another process removed it first, or the folder is read-only: harmless


def _writer_alive(pid: int | None, tmp: Path) -> bool:
    if pid is None or os.name == "nt":   # unknown writer (or no signal 0): judge by age
        return time.time() - tmp.stat().st_mtime < STALE_TEMP_SECONDS
    try:
        os.kill(pid, 0)   # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True   # it exists but belongs to another user
    return True


def subset(images: torch.Tensor, labels: torch.Tensor, n: int | None, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n of a fixed shuffle (None: all), so a subset holds every class (the replica is
    class-ordered): `TrainConfig.train_subset` and `test_subset`."""
    if n is None or n >= len(labels):
        return images, labels
    order = shuffled_indices(len(labels), n, seed)
    return images[order], labels[order]


def shuffled_indices(total: int, n: int | None = None, seed: int = 0) -> torch.Tensor:
    """The first n (default all) of a seeded shuffle of range(total).

    The replica and image folders store the images class by class, so `images[:n]` would be one or
    two classes; `images[shuffled_indices(len(images), n)]` holds every class, the same ones each time.
    """
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order if n is None else order[:n]
