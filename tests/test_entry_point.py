"""The one command line, `python -m hlb_utils COMMAND` (issue 15): dispatch, usage, and the old spelling.

Subprocesses run the real `python -m` so that what a user types is what is tested; the dispatch itself
is checked in-process with the commands replaced by recorders (no training, no kernel).
"""
import subprocess
import sys
from pathlib import Path

import pytest

import hlb_utils as hu
from hlb_utils import __main__ as entry

REPO = Path(__file__).resolve().parents[1]


def _python_m(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command, module", [("train", "cli"), ("notebook", "notebook")])
def test_each_command_gets_the_rest_of_the_arguments(command, module, monkeypatch):
    seen = []
    monkeypatch.setattr(getattr(hu, module), "main", lambda argv: seen.append(argv) or 7)
    assert entry.main([command, "--profile", "quick", "--out", "x"]) == 7
    assert seen == [["--profile", "quick", "--out", "x"]]


def test_no_or_unknown_command_prints_usage_and_fails(capsys):
    assert entry.main([]) == 2
    assert "python -m hlb_utils train" in capsys.readouterr().err
    assert entry.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_cli_is_reachable_from_the_package():
    assert hu.cli.main is sys.modules["hlb_utils.cli"].main


def test_help_names_the_command_a_user_types():
    top = _python_m("hlb_utils", "--help")
    assert top.returncode == 0 and "notebook run notebooks/06_record_run.ipynb" in top.stdout
    train = _python_m("hlb_utils", "train", "--help")
    assert train.returncode == 0 and train.stdout.startswith("usage: python -m hlb_utils train")
    notebook = _python_m("hlb_utils", "notebook", "--help")
    assert notebook.returncode == 0 and notebook.stdout.startswith("usage: python -m hlb_utils notebook")


def test_the_old_spelling_points_to_the_new_one_without_training():
    old = _python_m("hlb_utils.train", "--profile", "quick")
    assert old.returncode == 1
    assert "python -m hlb_utils train" in old.stderr and old.stdout == ""
