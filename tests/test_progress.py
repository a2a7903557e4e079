"""What a run prints (issue 15): the live table's header once, then rows, and an in-epoch status that
rewrites itself on a terminal and stays at a few lines per epoch in a log file; the set-up cell's GPU
hint only in Colab (simulated by its `google.colab` module or its COLAB_ variables).

Simulated: a terminal is a text stream whose isatty() says True; Jupyter's display is replaced by a
recorder, whose messages feed `HeadlessEcho` as a headless notebook run's kernel messages would.
One test runs a real kernel through `run_notebook`, the path of `python -m hlb_utils notebook run`.
"""
import io
import os

import nbformat
import pytest

from hlb_utils import notebook as hn
from hlb_utils import progress

COLUMNS = ["epoch", "train_loss", "test_acc"]
EPOCHS, STEPS = 3, 40


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _train(table: progress.LiveTable) -> None:
    """What train() does to its table: a status per step, then the epoch's row."""
    for epoch in range(1, EPOCHS + 1):
        for step in range(1, STEPS + 1):
            table.status(f"epoch {epoch}: step {step}/{STEPS}", step / STEPS)
        table.add(dict(epoch=epoch, train_loss=1.0 / epoch, test_acc=0.5))


def _screen(text: str) -> list[str]:
    """The lines a terminal shows at the end: each carriage return starts its line over."""
    lines = []
    for line in text.split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part):]
        lines.append(shown.rstrip())
    return [line for line in lines if line]


def _status_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "step" in line]


def test_a_log_file_gets_the_header_once_and_a_few_status_lines_per_epoch(capsys):
    _train(progress.LiveTable(COLUMNS, status_every=0))
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "\r" not in out
    assert sum(line.split() == COLUMNS for line in lines) == 1 and lines[0].split() == COLUMNS
    assert [line.split()[0] for line in lines if line.split()[0].isdigit()] == ["1", "2", "3"]
    assert _status_lines(lines) == [f"epoch {e}: step {s}/{STEPS}" for e in (1, 2, 3) for s in (10, 20, 30)]


def test_a_terminal_rewrites_one_status_line(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr("sys.stdout", screen)
    _train(progress.LiveTable(COLUMNS, status_every=0))
    out = screen.getvalue()
    assert out.count("\n") == 1 + EPOCHS   # header and rows; statuses never end a line
    assert out.count("\r") > EPOCHS * STEPS
    lines = _screen(out)
    assert lines[0].split() == COLUMNS and len(lines) == 1 + EPOCHS and not _status_lines(lines)


def _recorded_displays(monkeypatch) -> list[dict]:
    """Run _train with LiveTable in its Jupyter mode; return the display messages' contents it sent."""
    import IPython.display

    sent = []

    class Handle:
        def update(self, bundle, raw, metadata):
            sent.append(dict(data=bundle, metadata=metadata, transient=dict(display_id="t1")))

    def display(bundle, raw, display_id, metadata):
        sent.append(dict(data=bundle, metadata=metadata, transient=dict(display_id="t1")))
        return Handle()

    monkeypatch.setattr(progress, "in_jupyter", lambda: True)
    monkeypatch.setattr(IPython.display, "display", display)
    table = progress.LiveTable(COLUMNS, status_every=0)
    assert table.jupyter
    _train(table)
    return sent


@pytest.mark.parametrize("stream", [io.StringIO, Terminal], ids=["log file", "terminal"])
def test_headless_echo_prints_a_table_like_a_terminal(stream, monkeypatch):
    sent = _recorded_displays(monkeypatch)
    assert len(sent) == EPOCHS * (STEPS + 1)
    out = stream()
    echo = progress.HeadlessEcho(out)
    echo.text("[cell 3/5] runs = ...\n")
    for content in sent:
        echo.display(content)
    echo.display(dict(data={"text/plain": "a figure"}, metadata={}))   # not a live table: not echoed
    echo.text("final test accuracy 0.5\n")
    lines = _screen(out.getvalue())
    assert lines[0] == "[cell 3/5] runs = ..." and lines[-1] == "final test accuracy 0.5"
    assert sum(line.split() == COLUMNS for line in lines) == 1 and lines[1].split() == COLUMNS
    assert [line.split()[0] for line in lines[2:] if line.split()[0].isdigit()] == ["1", "2", "3"]
    statuses = _status_lines(lines)
    if stream is Terminal:
        assert not statuses and "\r" in out.getvalue()   # each was overwritten, the last one cleared
    else:
        assert statuses == [f"    epoch {e}: step {s}/{STEPS}" for e in (1, 2, 3) for s in (10, 20, 30)]
    assert "a figure" not in out.getvalue()


def test_a_headless_notebook_run_logs_the_header_once_and_few_status_lines(tmp_path, capfd):
    cell = ("from hlb_utils import progress\n"
            f"table = progress.LiveTable({COLUMNS!r}, status_every=0)\n"
            f"for epoch in range(1, {EPOCHS + 1}):\n"
            f"    for step in range(1, {STEPS + 1}):\n"
            f"        table.status(f'epoch {{epoch}}: step {{step}}/{STEPS}', step / {STEPS})\n"
            "    table.add(dict(epoch=epoch, train_loss=0.5, test_acc=0.5))\n")
    path = tmp_path / "live.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)]), path)
    hn.run_notebook(path, tmp_path / "out", timeout=120)
    out, err = capfd.readouterr()   # the kernel's own stderr included
    lines = out.splitlines()
    if os.name == "posix":   # sockets in a private folder: no warning about unencrypted local TCP
        assert "without encryption" not in err
    assert sum(line.split() == COLUMNS for line in lines) == 1
    assert len(_status_lines(lines)) == EPOCHS * (progress.LOG_MARKS - 1)
    assert len(lines) == 2 + 1 + EPOCHS + EPOCHS * (progress.LOG_MARKS - 1) + 1   # cell lines, table, done


# ---- the set-up cell's printout -----------------------------------------------------------------

def _without_colab(monkeypatch):
    import os
    import sys

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    for name in [n for n in os.environ if n.startswith("COLAB_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("colab", [None, "module", "env"])
def test_the_gpu_hint_shows_only_in_colab(colab, monkeypatch, capsys):
    import sys
    import types

    _without_colab(monkeypatch)
    if colab == "module":
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    elif colab == "env":
        monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-20261101")
    monkeypatch.setattr(hn, "_machine_lines", lambda profile: {"device": "cpu"})
    info = hn.setup("quick")
    out = capsys.readouterr().out
    assert info["device"] == "cpu" and "device: cpu" in out
    assert hn.in_colab() == (colab is not None)
    assert ("Runtime > Change runtime type" in out) == (colab is not None)


def test_no_gpu_hint_when_colab_has_a_gpu(monkeypatch, capsys):
    monkeypatch.setenv("COLAB_GPU", "1")
    monkeypatch.setattr(hn, "_machine_lines", lambda profile: {"device": "cuda (Tesla T4, capability 7.5)"})
    hn.setup("quick")
    assert "Runtime >" not in capsys.readouterr().out
