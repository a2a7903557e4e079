"""The command line checks everything before it trains, speaks in one line, and keeps its records
when stopped by a signal."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hlb_utils import cli, data, train

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["--profile", "quick", "--set", "widths=[8,16,16]", "--set", "batch_size=100", "--set", "epochs=2",
        "--set", "tta=flip", "--set", "whiten_bias_epochs=1"]


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if the command line reaches the data."""
    def load(*args, **kwargs):
        raise AssertionError("data was loaded before the arguments were checked")

    monkeypatch.setattr(data, "load_cifar10", load)


@pytest.fixture
def synthetic_source(monkeypatch, synthetic):
    monkeypatch.setattr(data, "load_cifar10", lambda source=None, **kwargs: synthetic)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("args, message", [
    (["--runs", "0"], "--runs 0: give at least 1 run"),
    (["--warmup-runs", "-1"], "--warmup-runs -1"),
    (["--set", "seed=abc"], "TrainConfig.seed='abc' is not a whole number"),
    (["--set", "epochs=abc"], "TrainConfig.epochs='abc' is not a number"),
    (["--set", "batch_size=2.5"], "batch_size=2.5 is not a whole number"),
    (["--set", "lr=1000"], "TrainConfig.lr=1000 is out of range"),
    (["--set", "epoch=3"], "no field 'epoch'; did you mean 'epochs'"),
    (["--set", "epochs"], "expected FIELD=VALUE"),
    (["--profile", "turbo"], "unknown profile 'turbo'"),
])
def test_bad_arguments_fail_in_one_line_before_any_data(args, message, no_decoding, capsys):
    assert cli.main(args) == 2
    assert message in one_error_line(capsys)


def test_out_naming_a_file_fails_before_training(tmp_path, no_decoding, capsys):
    (tmp_path / "taken").write_text("a file")
    assert cli.main(["--out", str(tmp_path / "taken"), "--runs", "2"]) == 2
    assert "is an existing file" in one_error_line(capsys)
    assert cli.main(["--out", str(tmp_path / "taken" / "below")]) == 2
    assert "cannot write run records there" in one_error_line(capsys)


def test_data_error_is_one_line(tmp_path, capsys):
    assert cli.main(["--data", str(tmp_path / "missing.tar.gz")] + TINY) == 2
    assert "missing.tar.gz" in one_error_line(capsys)


def test_batch_larger_than_the_data_is_one_line(synthetic_source, capsys):
    assert cli.main(TINY + ["--set", "batch_size=5000", "--set", "train_subset=null"]) == 2
    assert "batch_size=5000 is larger than the 1000 training images" in one_error_line(capsys)


def test_divergence_advice_is_in_command_line_form(synthetic_source, monkeypatch, capsys):
    # a loss that turns NaN at the first step, caught by the real training loop
    monkeypatch.setattr(train, "smoothed_cross_entropy", lambda logits, y, smoothing, reduction: logits.sum() * np.nan)
    assert cli.main(TINY + ["--set", "lr=0.3"]) == 1
    line = one_error_line(capsys)
    assert "the loss became nan at step 0" in line and line.endswith("--set lr=0.15")


def test_run_at_chance_says_so_in_the_final_line_and_record(synthetic_source, tmp_path, capsys):
    # lr=100, the largest allowed, leaves this net at exactly chance on the synthetic data
    assert cli.main(TINY + ["--set", "lr=100", "--out", str(tmp_path / "rec"), "--quiet"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "ended at chance level" in last and "the profile's own lr is 0.24" in last
    summary = json.loads((tmp_path / "rec" / "summary.json").read_text())
    assert summary["runs_at_chance"] == 1


def write_source(root: Path, per_class: int, test_per_class: int) -> Path:
    """An ImageFolder of 10 colour classes (a learner's own data, not CIFAR-10's names)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for k in range(10):
            folder = root / split / f"colour{k}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
                pixels[8:24, 8:24] = (25 * k, 255 - 25 * k, 120)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _default_sigint() -> None:
    # A shell's background job ignores SIGINT, and Python then installs no Ctrl-C handler: undo that
    # in the child, so that it reacts as it does in a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_run_2_keeps_and_marks_the_records(tmp_path, signum, code):
    source = write_source(tmp_path / "colours", per_class=10, test_per_class=5)
    out = tmp_path / "rec"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HLB_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "hlb_utils", "train", "--data", str(source), "--out", str(out), "--runs", "3",
           "--profile", "quick", "--set", "widths=[8,16,16]", "--set", "batch_size=20", "--set", "epochs=10",
           "--set", "tta=none", "--set", "eval_every=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_default_sigint)
    try:
        for line in proc.stdout:   # run 2 starts right after run 1's line
            if line.startswith("run 1/3"):
                proc.send_signal(signum)
                break
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C'}")
    assert "1 of 3 run(s) finished, 1 interrupted" in last and "Traceback" not in stderr, stdout + stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["runs_requested"], summary["runs_finished"], summary["runs_interrupted"]) == (3, 1, 1)
    table = pd.read_csv(out / "runs.csv")
    assert table["status"].iloc[0] == "finished" and summary["accuracies"] == [table["test_accuracy"].iloc[0]]
