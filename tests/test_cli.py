"""The command line checks everything before it trains, speaks in one line, and keeps its records
when stopped by a signal."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hlb_utils import cli, data

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["--profile", "quick", "--set", "widths=[8,16,16]", "--set", "batch_size=100", "--set", "epochs=2",
        "--set", "tta=flip", "--set", "whiten_bias_epochs=1"]
# Added to TINY, a run whose loss turns NaN in its third epoch: Muon's decoupled decay at its largest,
# w *= 1 - lr * 1 * batch_size = -29 per step, with the filters never renormalised, overflows.
DIVERGES = ["--set", "lr=0.3", "--set", "filter_weight_decay=1", "--set", "renorm_every=1000", "--set", "epochs=3"]


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
    (["--set", "seed=abc"], "--set seed=abc: seed takes a whole number"),
    (["--set", "epochs=abc"], "--set epochs=abc: epochs takes a number"),
    (["--set", "batch_size=2.5"], "--set batch_size=2.5: batch_size takes a whole number"),
    (["--set", "compile=maybe"], "--set compile=maybe: compile takes true or false"),
    (["--set", "widths=abc"], "--set widths=abc: widths takes 3 whole numbers separated by commas"),
    (["--set", "widths=[8.5,16,16]"], "widths takes 3 whole numbers"),
    (["--set", "ns_coeffs=a,b,c"], "ns_coeffs takes 3 numbers separated by commas"),
    (["--set", "train_subset=many"], "train_subset takes a whole number or none"),
    (["--set", "act=swish"], "TrainConfig.act='swish' is not allowed; choose one of ('gelu', 'silu', 'relu')"),
    (["--set", "seed=99999999999999999999"], "--set seed=99999999999999999999: the seeds"),
    (["--set", "seed=-1"], "must lie in 0..9223372036854775807"),
    (["--set", f"seed={2**63 - 1}", "--runs", "2"], f"seed+runs-1 = {2**63}"),
    (["--profile", "quick", "--set", "batch_size=50000"], "batch_size=50000 is larger than the 5000 training images this quick run "
                                    "uses (train_subset=5000)"),
    (["--cluster", "lcoal"], "--cluster lcoal: not a cluster address; give local, auto, or the head's HOST:PORT"),
    (["--cluster", "127.0.0.1:99999"], "not a cluster address"),
    (["--set", "lr=1000"], "TrainConfig.lr=1000.0 is out of range"),
    (["--set", "epoch=3"], "no field 'epoch'; did you mean 'epochs'"),
    (["--set", "epochs"], "expected FIELD=VALUE"),
    (["--profile", "turbo"], "unknown profile 'turbo'"),
])
def test_bad_arguments_fail_in_one_line_before_any_data(args, message, no_decoding, capsys):
    assert cli.main(args) == 2
    assert message in one_error_line(capsys)


@pytest.mark.parametrize("text, value", [
    ("False", False), ("false", False), ("0", False), ("True", True), ("true", True), ("1", True),
])
def test_booleans_are_read_as_booleans(text, value):
    assert cli.parse_changes([f"compile={text}"]) == {"compile": value}


@pytest.mark.parametrize("text", ["(8,16,16)", "[8,16,16]", "8,16,16", " 8, 16, 16 "])
def test_widths_are_read_as_a_tuple_of_whole_numbers(text):
    assert cli.parse_changes([f"widths={text}"]) == {"widths": (8, 16, 16)}


def test_each_field_is_read_by_its_type():
    changes = cli.parse_changes(["epochs=3", "lr=0.1", "batch_size=500", "train_subset=null", "test_subset=300",
                                 "ns_coeffs=3.4,-4.7,2", "act=silu", "compile_mode=default"])
    assert changes == dict(epochs=3.0, lr=0.1, batch_size=500, train_subset=None, test_subset=300,
                           ns_coeffs=(3.4, -4.7, 2.0), act="silu", compile_mode="default")
    assert type(changes["epochs"]) is float and type(changes["batch_size"]) is int


def test_field_types_come_from_the_dataclass(monkeypatch):
    # a field the command line has never heard of is read by its annotation, not by a hand list
    import dataclasses
    import typing
    from hlb_utils import changes

    hints = {**typing.get_type_hints(cli.TrainConfig), "seed": float}
    monkeypatch.setattr(changes.typing, "get_type_hints", lambda cls: hints)
    assert cli.parse_changes(["seed=1.5"]) == {"seed": 1.5}
    monkeypatch.undo()
    assert {f.name for f in dataclasses.fields(cli.TrainConfig)} == set(changes._field_types())


def test_the_record_holds_the_parsed_value(synthetic_source, tmp_path):
    assert cli.main(TINY + ["--set", "compile=False", "--set", "widths=(8,16,16)", "--out", str(tmp_path),
                            "--quiet"]) == 0
    config = json.loads((tmp_path / "summary.json").read_text())["config"]
    assert config["compile"] is False and config["widths"] == [8, 16, 16]
    assert '"compile": false' in (tmp_path / "summary.json").read_text()


def test_device_missing_fails_before_any_data(no_decoding, monkeypatch, capsys):
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: False)
    assert cli.main(["--set", "device=cuda"]) == 2
    assert "--set device=cuda: this machine has no CUDA device" in one_error_line(capsys)


def test_a_cluster_that_does_not_answer_fails_within_seconds(no_decoding, capsys):
    pytest.importorskip("ray")
    import socket
    import time

    with socket.socket() as free:   # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    start = time.perf_counter()
    assert cli.main(["--cluster", f"127.0.0.1:{port}"]) == 2
    assert time.perf_counter() - start < 10
    assert f"no Ray head answers at 127.0.0.1:{port}" in one_error_line(capsys)


def test_a_cluster_that_answers_passes_the_check():
    from hlb_utils import cluster
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        cluster.check_address(f"127.0.0.1:{server.getsockname()[1]}", timeout=2)
    cluster.check_address("local")


def test_cluster_auto_reads_ray_address(monkeypatch):
    from hlb_utils import cluster

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(ValueError, match="no Ray head answers at 127.0.0.1:1"):
        cluster.check_address("auto", timeout=1)
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv("RAY_TMPDIR", "/nonexistent")
    with pytest.raises(ValueError, match="--cluster auto: no Ray cluster was started on this machine"):
        cluster.check_address("auto")


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
    assert "batch_size=5000 is larger than the 1000 training images used from synthetic" in one_error_line(capsys)
    # a subset smaller than its limit but larger than the data: the images used, and the subset, named
    assert cli.main(TINY + ["--set", "batch_size=3000", "--set", "train_subset=4000"]) == 2
    assert "larger than the 1000 training images used from synthetic" in one_error_line(capsys)


def test_divergence_advice_is_in_command_line_form(synthetic_source, capsys):
    # a run that diverges for real, caught by the real training loop
    assert cli.main(TINY + DIVERGES) == 1
    line = one_error_line(capsys)
    assert re.search(r"the loss became nan at step \d+;", line) and line.endswith("--set lr=0.15")


def test_run_at_chance_names_the_extreme_learning_rate(synthetic_source, tmp_path, capsys):
    # lr=100, the largest allowed, leaves this net at exactly chance on the synthetic data
    assert cli.main(TINY + ["--set", "lr=100", "--out", str(tmp_path / "rec"), "--quiet"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "ended at chance level" in last and "lr=100 is 417 times the quick profile's own 0.24" in last
    summary = json.loads((tmp_path / "rec" / "summary.json").read_text())
    assert summary["runs_at_chance"] == 1


@pytest.mark.parametrize("changes, cause", [
    (dict(head_lr=1e5), "head_lr=100000 is 19 times the quick profile's own 5260; try --set head_lr=5260"),
    (dict(bias_lr=1e5, lr=0.3), "bias_lr=100000 is 240 times"),
    (dict(lr=0.0), "lr=0 is 1/2.4e+11 of the quick profile's own 0.24"),
    (dict(epochs=0.01), "only 1 optimiser step(s) (epochs=0.01 of 20 steps) are too few to learn; "
                        "try --set epochs=1"),
    (dict(epochs=0.01, head_lr=1e5), "head_lr=100000"),   # an extreme rate is the stronger cause
    (dict(), "try a lower learning rate, e.g. --set lr=0.12"),
])
def test_chance_level_cause(changes, cause):
    from hlb_utils.config import get_profile

    assert cause in cli.chance_cause(get_profile("quick", **changes), steps_per_epoch=20)


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
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                          (getattr(signal, "SIGHUP", signal.SIGTERM), 129)])
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
    assert last.startswith(f"stopped by {'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name}")
    assert "1 of 3 run(s) finished, 1 interrupted" in last and "Traceback" not in stderr, stdout + stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["runs_requested"], summary["runs_finished"], summary["runs_interrupted"]) == (3, 1, 1)
    table = pd.read_csv(out / "runs.csv")
    assert table["status"].iloc[0] == "finished" and summary["accuracies"] == [table["test_accuracy"].iloc[0]]


def test_a_stop_before_any_run_had_a_result_is_recorded(synthetic_source, monkeypatch, tmp_path, capsys):
    def stopped(*args, **kwargs):   # Ctrl-C while the first net is built
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_many", stopped)
    assert cli.main(TINY + ["--runs", "3", "--out", str(tmp_path), "--quiet"]) == 130
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["runs_requested"], summary["runs_finished"], summary["runs_interrupted"]) == (3, 0, 1)
    assert summary["interrupted"] is True
    assert "0 of 3 run(s) finished, 1 interrupted" in capsys.readouterr().err


def test_ray_init_does_not_keep_its_own_signal_handlers(monkeypatch):
    """ray.init replaces SIGTERM's handler; connect() puts the command line's back."""
    from hlb_utils import cluster

    class FakeRay:
        initialized = False

        def is_initialized(self):
            return self.initialized

        def init(self, **kwargs):
            self.initialized = True
            signal.signal(signal.SIGTERM, lambda *a: None)   # what Ray's driver does
            if hasattr(signal, "SIGHUP"):
                signal.signal(signal.SIGHUP, signal.SIG_DFL)

        def shutdown(self):
            pass

    monkeypatch.setattr(cluster, "_ray", FakeRay)
    monkeypatch.setattr(cluster, "describe", lambda ray: {"address": "fake"})
    with cli._Signals() as stop:
        assert cluster.connect("local") == {"address": "fake"}
        assert signal.getsignal(signal.SIGTERM) == stop._on_signal
        if hasattr(signal, "SIGHUP"):
            assert signal.getsignal(signal.SIGHUP) == stop._on_signal

    class TermDuringInit(FakeRay):   # SIGTERM while Ray's own handler is in place: it exits with 15
        def init(self, **kwargs):
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cluster, "_ray", TermDuringInit)
    with cli._Signals() as stop:
        with pytest.raises(KeyboardInterrupt):   # recorded as a stop, not a silent exit
            cluster.connect("local")
        assert stop.name == "SIGTERM" and stop.code == 143


def test_duplicate_archive_members_are_refused_by_name(tmp_path, capsys):
    import io
    import tarfile

    source = write_source(tmp_path / "colours", per_class=2, test_per_class=1)
    archive = tmp_path / "twice.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="colours")
        again = (source / "train" / "colour3" / "1.png").read_bytes()
        info = tarfile.TarInfo("colours/train/colour3/1.png")
        info.size = len(again)
        tar.addfile(info, io.BytesIO(again))
    assert cli.main(["--data", str(archive), "--profile", "quick", "--set", "train_subset=none",
                     "--set", "batch_size=10", "--out", str(tmp_path / "rec")]) == 2
    line = one_error_line(capsys)
    assert "holds 1 image(s) more than once under the same name (colours/train/colour3/1.png)" in line


def test_notebook_runner_checks_out_and_the_notebook_first(tmp_path, monkeypatch, capsys):
    from hlb_utils import notebook

    def never(*args, **kwargs):
        raise AssertionError("a kernel started before the checks")

    monkeypatch.setattr(notebook, "run_notebook", never)
    not_a_notebook = tmp_path / "data.ipynb"
    not_a_notebook.write_text(json.dumps({"cells": "none"}))
    assert notebook.main(["run", str(not_a_notebook), "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {not_a_notebook} is not a valid notebook (")
    (tmp_path / "text.ipynb").write_text("print(1)")
    assert notebook.main(["run", str(tmp_path / "text.ipynb"), "--out", str(tmp_path / "out")]) == 2
    assert "is not a valid notebook (Notebook does not appear to be JSON" in one_error_line(capsys)
    (tmp_path / "file").write_text("taken")
    # the folder is checked first: a bad --out is named even when the notebook is bad too
    assert notebook.main(["run", str(not_a_notebook), "--out", str(tmp_path / "file" / "below")]) == 2
    assert f"--out {tmp_path / 'file' / 'below'}: cannot write the executed notebook there" in one_error_line(capsys)
