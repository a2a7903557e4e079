"""Writing run records so that the disk, a shared folder or a signal cannot leave them half-written.

The run records (`summary.json`, `runs.csv`, `history.csv`, `steps.csv`, written by
`runs.write_records`) are what a figure is checked against later, so a record that is half-written,
stale or silently replaced is worse than none. Three rules, each kept here so that runs.py and the
command line stay short:

- every file is written whole or not at all: a temporary file in the same folder, then `os.replace`
  (a rename, atomic on one file system); a failed write removes its temporary files;
- one series writes into a folder at a time: `claim_folder` creates a lock file with O_EXCL holding
  the process id and host; a second series is refused while the first runs, and a lock left by a
  process that no longer runs on this host is taken over;
- a folder already holding records keeps them: `keep_older_series` moves them into a subfolder
  `series-YYYYmmdd-HHMMSS[-n]` (the older series' own date) before the new series writes, so the
  records at the top of the folder always belong to the latest series.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

RECORD_FILES = ("summary.json", "runs.csv", "history.csv", "steps.csv")
LOCK_NAME = ".hlb-series.lock"
TMP_SUFFIX = ".tmp"
# Free space asked for before a series starts: the records of a long series stay well below this.
MIN_FREE_BYTES = 2 * 2**20


class FolderInUse(RuntimeError):
    """Another series (still running) holds the folder's lock."""


def write_files(folder: Path, texts: dict[str, str]) -> Path:
    """Write each `name: text` into `folder` atomically. All temporary files are written first and
    only then renamed into place, so a full disk leaves the older files whole and no `.tmp` behind."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, Path]] = []
    try:
        for name, text in texts.items():
            written.append((name, _write_temp(folder, name, text)))
        for name, tmp in written:
            os.replace(tmp, folder / name)
    finally:
        for _, tmp in written:
            tmp.unlink(missing_ok=True)   # already renamed: nothing left; failed: no stray temp file
    return folder


def _write_temp(folder: Path, name: str, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp's files are private; records are as readable as any file
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def series_name(when: _dt.datetime, folder: Path) -> str:
    """`series-YYYYmmdd-HHMMSS`, with `-2`, `-3`... when that name is taken in `folder`."""
    base = f"series-{when:%Y%m%d-%H%M%S}"
    name, n = base, 1
    while (folder / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def keep_older_series(folder: Path) -> Path | None:
    """Move the records already in `folder` into a subfolder named after their series' date; returns
    it (None when there were none). Call it holding the folder's lock."""
    folder = Path(folder)
    present = [folder / name for name in RECORD_FILES if (folder / name).exists()]
    if not present:
        return None
    when = _series_date(folder / "summary.json") or _dt.datetime.fromtimestamp(max(p.stat().st_mtime for p in present))
    target = folder / series_name(when, folder)
    target.mkdir()
    for path in present:
        os.replace(path, target / path.name)
    return target


def _series_date(summary: Path) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(json.loads(summary.read_text())["date"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_free_space(folder: Path, need: int = MIN_FREE_BYTES) -> None:
    """OSError(ENOSPC) naming the folder when less than `need` bytes are free there."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OSError(errno.ENOSPC, f"only {free / 2**20:.1f} MB free there, the run records need "
                                    f"{need / 2**20:.0f} MB")


def fallback_folder(name: str) -> Path:
    """Where records go when their own folder cannot take them: HLB_CACHE (or ~/.cache/hlb_utils)
    /unsaved-records/NAME, else a new temporary folder."""
    cache = Path(os.environ.get("HLB_CACHE") or Path.home() / ".cache" / "hlb_utils")
    try:
        folder = cache / "unsaved-records" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:
        return Path(tempfile.mkdtemp(prefix=f"hlb-{name}-"))


class FolderLock:
    """The claim of one series on a records folder: a lock file created with O_EXCL, holding the
    process id and host, removed on release. Use it as a context manager, or `claim()` / `release()`."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def claim(self) -> "FolderLock":
        """Take the lock; FolderInUse when a live series holds it, OSError when the folder is not writable."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read_lock(self.path)
                if owner is None:   # released in the meantime
                    continue
                if _is_stale(owner, self.path):
                    # the process that held it is gone (killed): take it over. Two series finding the
                    # same stale lock at once is the one race left; the unlink then create keeps it short.
                    self.path.unlink(missing_ok=True)
                    continue
                raise FolderInUse(_owner_text(owner)) from None
            with os.fdopen(fd, "w") as f:
                json.dump(dict(pid=os.getpid(), host=socket.gethostname(),
                               started=_dt.datetime.now().isoformat(timespec="seconds")), f)
            self.held = True
            return self
        raise FolderInUse("its lock keeps changing hands")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "FolderLock":
        return self.claim()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_lock(path: Path) -> dict | None:
    """The lock's owner; {} when it cannot be read yet (being written), None when it vanished."""
    try:
        return json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _is_stale(owner: dict, path: Path) -> bool:
    """A lock whose process no longer runs on this host, or one left empty for a minute (its process
    died between creating and filling it). A lock from another host cannot be checked from here, so
    it counts as held."""
    if not owner:
        try:
            return _dt.datetime.now().timestamp() - path.stat().st_mtime > 60
        except OSError:
            return False
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:   # it runs, as another user
        return False
    return False


def _owner_text(owner: dict | None) -> str:
    if not owner:
        return "another series is starting there"
    return (f"another series (pid {owner.get('pid')} on {owner.get('host')}, started "
            f"{owner.get('started', '?')}) writes its records there")
