"""Run records survive the disk and the folder: each file whole or not at all, one series per folder,
earlier series kept apart, a full disk caught before training and, after it, the runs kept elsewhere."""
import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hlb_utils import cli, data, records, runs

from test_cli import DIVERGES, TINY, one_error_line

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def synthetic_source(monkeypatch, synthetic):
    monkeypatch.setattr(data, "load_cifar10", lambda source=None, **kwargs: synthetic)


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(records.TMP_SUFFIX))


def test_a_failed_write_keeps_the_older_files_whole_and_leaves_no_temp(tmp_path, monkeypatch):
    records.write_files(tmp_path, {"a.csv": "old a", "b.json": "old b"})
    calls = {"n": 0}
    original = os.replace

    def replace_then_fail(src, dst):   # the disk fills between the first file and the second
        calls["n"] += 1
        if calls["n"] == 2:
            no_space()
        return original(src, dst)

    monkeypatch.setattr(records.os, "replace", replace_then_fail)
    with pytest.raises(OSError):
        records.write_files(tmp_path, {"a.csv": "new a", "b.json": "new b"})
    assert (tmp_path / "b.json").read_text() == "old b" and leftovers(tmp_path) == []


def test_records_are_as_readable_as_any_file(tmp_path):
    records.write_files(tmp_path, {"summary.json": "{}"})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_full_disk_while_writing_leaves_no_half_file(tmp_path, monkeypatch):
    records.write_files(tmp_path, {"summary.json": "{}"})
    monkeypatch.setattr(records.os, "fsync", no_space)
    with pytest.raises(OSError):
        records.write_files(tmp_path, {"runs.csv": "x", "summary.json": '{"new": 1}'})
    assert (tmp_path / "summary.json").read_text() == "{}" and not (tmp_path / "runs.csv").exists()
    assert leftovers(tmp_path) == []


def test_a_second_series_into_a_folder_in_use_is_refused_at_once(tmp_path, synthetic_source, capsys):
    with records.FolderLock(tmp_path):   # a series (this process) holds it
        assert cli.main(TINY + ["--out", str(tmp_path)]) == 2
        line = one_error_line(capsys)
        assert f"--out {tmp_path} is in use: another series (pid {os.getpid()} on {socket.gethostname()}" in line
    assert not (tmp_path / records.LOCK_NAME).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / records.LOCK_NAME).write_text(json.dumps(dict(pid=dead.pid, host=socket.gethostname())))
    with records.FolderLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    # a lock held on another host cannot be checked from here: it counts as held
    (tmp_path / records.LOCK_NAME).write_text(json.dumps(dict(pid=dead.pid, host="elsewhere")))
    with pytest.raises(records.FolderInUse, match="on elsewhere"):
        records.FolderLock(tmp_path).claim()


def test_a_reused_folder_keeps_the_earlier_series_apart(tmp_path, synthetic_source, capsys):
    out = tmp_path / "rec"
    assert cli.main(TINY + ["--out", str(out), "--quiet", "--set", "seed=1"]) == 0
    first = json.loads((out / "summary.json").read_text())
    (out / "summary.json").chmod(0o444)   # a read-only record is kept, not replaced
    assert cli.main(TINY + ["--out", str(out), "--quiet", "--set", "seed=2"]) == 0
    assert "the earlier series' records" in capsys.readouterr().out
    kept = sorted(out.glob("series-*"))
    assert len(kept) == 1 and kept[0].name == "series-" + first["date"].replace("-", "").replace(":", "").replace("T", "-")
    assert json.loads((kept[0] / "summary.json").read_text())["seed"] == 1
    assert json.loads((out / "summary.json").read_text())["seed"] == 2
    assert sorted(p.name for p in kept[0].iterdir()) == ["history.csv", "runs.csv", "steps.csv", "summary.json"]
    assert not (out / records.LOCK_NAME).exists()


def test_series_names_never_collide(tmp_path):
    import datetime

    when = datetime.datetime(2026, 12, 2, 6, 0, 0)
    (tmp_path / "series-20261202-060000").mkdir()
    (tmp_path / "series-20261202-060000-2").mkdir()
    assert records.series_name(when, tmp_path) == "series-20261202-060000-3"


def test_a_new_series_that_diverges_leaves_no_stale_headline(tmp_path, synthetic_source, capsys):
    out = tmp_path / "rec"
    assert cli.main(TINY + ["--out", str(out), "--quiet"]) == 0
    assert cli.main(TINY + DIVERGES + ["--out", str(out), "--quiet"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["runs_finished"], summary["runs_failed"], summary["test_accuracy"]) == (0, 1, None)
    assert pd.read_csv(out / "runs.csv")["status"].tolist() == ["failed"]


def test_too_little_free_space_is_refused_before_training(tmp_path, no_decoding, monkeypatch, capsys):
    monkeypatch.setattr(records.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 12_000})())
    assert cli.main(TINY + ["--out", str(tmp_path)]) == 2
    assert "cannot keep run records there (only 0.0 MB free there" in one_error_line(capsys)
    assert not (tmp_path / records.LOCK_NAME).exists()


def test_a_read_only_folder_is_refused_before_training(tmp_path, no_decoding, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", read_only)   # root could write into a chmod-ed folder
    assert cli.main(TINY + ["--out", str(tmp_path)]) == 2
    assert "cannot write run records there (Read-only file system)" in one_error_line(capsys)


def test_a_full_disk_after_training_keeps_the_runs_elsewhere(tmp_path, synthetic_source, monkeypatch, capsys):
    monkeypatch.setenv("HLB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "rec"
    original = records.write_files

    def full(folder, texts):   # --out is full once training started; the cache still takes files
        if Path(folder) == out:
            no_space()
        return original(folder, texts)

    monkeypatch.setattr(records, "write_files", full)
    monkeypatch.setattr(runs, "write_files", full)
    assert cli.main(TINY + ["--runs", "2", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"warning: cannot write the run records to {out} (No space left on device)")
    assert err[-1].startswith(f"error: the run records could not be written to {out}")
    kept = Path(err[-1].rsplit("they are in ", 1)[1])
    assert kept.parent == tmp_path / "cache" / "unsaved-records"
    summary = json.loads((kept / "summary.json").read_text())
    assert summary["runs_finished"] == 2   # both runs trained, and both are kept
    assert leftovers(tmp_path) == [] and not (out / records.LOCK_NAME).exists()


def test_two_commands_into_one_folder_never_lose_a_series(tmp_path):
    """Two real command lines started together: the second is refused while the first runs (exit 2),
    or, if it came after, both series are kept."""
    out = tmp_path / "rec"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HLB_CACHE": str(tmp_path / "cache")}
    code = ("import sys, synthetic; from hlb_utils import cli, data; "
            "data.load_cifar10 = lambda *a, **k: synthetic.synthetic_dataset(); sys.exit(cli.main(sys.argv[1:]))")
    env["PYTHONPATH"] += os.pathsep + str(REPO_ROOT / "tests")
    cmd = [sys.executable, "-c", code] + TINY + ["--out", str(out), "--quiet"]
    first = subprocess.Popen(cmd + ["--set", "seed=1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (out / records.LOCK_NAME).exists() and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run(cmd + ["--set", "seed=2"], env=env, capture_output=True, text=True, timeout=120)
    first.communicate(timeout=120)
    assert first.returncode == 0
    if second.returncode == 2:
        assert "is in use: another series" in second.stderr
        assert json.loads((out / "summary.json").read_text())["seed"] == 1
    else:
        assert second.returncode == 0
        seeds = {json.loads(p.read_text())["seed"] for p in out.rglob("summary.json")}
        assert seeds == {1, 2}


@pytest.fixture
def no_decoding(monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("data was loaded before the arguments were checked")

    monkeypatch.setattr(data, "load_cifar10", load)
