"""Live progress of a training run: one table that grows an epoch at a time.

In Jupyter the table is a single output that is updated in place (hlb-CIFAR10 reprinted its whole table
every epoch); in a terminal the header prints once and each epoch one aligned row. Within long epochs
(the CPU profile) a status line says how far the epoch has got: rewritten in place on a terminal, and
at most a few lines per epoch in a log file. `HeadlessEcho` gives a notebook run headless
(`python -m hlb_utils notebook run`) the same terminal output. Taught in notebook 06.
"""
from __future__ import annotations

import math
import sys
import time
from typing import TextIO

# Key of the display metadata that tells a headless runner how many table rows a display holds.
PROGRESS_KEY = "hlb_utils/progress"
# A log file (no terminal) gets a status line each time an epoch passes one of these shares of its steps.
LOG_MARKS = 4


def jupyter_shell():
    """The running Jupyter kernel's shell, or None (a terminal, a plain script, IPython in a terminal).

    Asks for a kernel rather than a class name: Colab's shell is its own subclass, and headless
    execution by nbclient runs a real kernel too.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return shell if shell is not None and hasattr(shell, "kernel") else None


def in_jupyter() -> bool:
    """True inside a Jupyter kernel: Jupyter, Colab, or headless execution by nbclient."""
    return jupyter_shell() is not None


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


class LiveTable:
    """Rows of {column: value}, shown as they come. `enabled=False` makes every call a no-op."""

    def __init__(self, columns: list[str], enabled: bool = True, status_every: float = 3.0):
        self.columns, self.rows, self.enabled = list(columns), [], enabled
        self.jupyter = enabled and in_jupyter()
        self._handle, self._status, self._last = None, "", 0.0
        self._fraction, self._mark, self._headed = None, 0, False
        self.status_every = status_every  # seconds between in-epoch status updates
        self.width = max(9, *(len(c) + 1 for c in self.columns))

    def add(self, row: dict) -> None:
        """Append a row and show it (replacing the in-epoch status line)."""
        self.rows.append(row)
        self._status, self._fraction, self._mark = "", None, 0
        if not self.enabled:
            return
        if self.jupyter:
            self._show_jupyter()
            return
        self._print_header_once()
        self._print_line(self._line(row))

    def update_last(self, row: dict) -> None:
        """Replace the last row (e.g. to fill in the final TTA accuracy); redrawn in Jupyter only."""
        if self.rows:
            self.rows[-1] = row
            if self.enabled and self.jupyter:
                self._show_jupyter()

    def status(self, text: str, fraction: float | None = None) -> None:
        """A transient progress line, e.g. 'epoch 2: step 40/100' with `fraction` 0.4 of the epoch done.

        Jupyter and a terminal redraw it in place, at most every `status_every` seconds; a log file
        gets it only when the epoch passes a quarter, half or three quarters (never without `fraction`).
        """
        if not self.enabled:
            return
        tty = _is_tty(sys.stdout)
        if not self.jupyter:
            self._print_header_once()
        if not self.jupyter and not tty:
            mark = _mark(fraction)
            if mark > self._mark:
                self._mark = mark
                print(text, flush=True)
            return
        now = time.monotonic()
        if now - self._last < self.status_every:
            return
        self._last, self._status, self._fraction = now, text, fraction
        if self.jupyter:
            self._show_jupyter()
        else:
            sys.stdout.write("\r" + text.ljust(self.width * len(self.columns))[: 120] + "\r")
            sys.stdout.flush()

    def _line(self, row: dict | None = None) -> str:
        """The header (no row) or one row, each column right-aligned to the same width."""
        cells = self.columns if row is None else [_fmt(row.get(c, "")) for c in self.columns]
        return "".join(cell.rjust(self.width) for cell in cells)

    def _print_header_once(self) -> None:
        if not self._headed:
            self._headed = True
            self._print_line(self._line())

    def _print_line(self, line: str) -> None:
        clear = "\r" + " " * 120 + "\r" if _is_tty(sys.stdout) else ""
        sys.stdout.write(clear + line + "\n")
        sys.stdout.flush()

    def _show_jupyter(self) -> None:
        import pandas as pd
        from IPython.display import display

        frame = pd.DataFrame(self.rows, columns=self.columns)
        html = frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")
        # text/plain rides along for headless runs: the header, the rows, then the status if any.
        lines = [self._line()] + [self._line(row) for row in self.rows]
        text = "\n".join(lines + ([self._status] if self._status else []))
        if self._status:
            html += f"<pre>{self._status}</pre>"
        bundle = {"text/html": html, "text/plain": text}
        # For a headless runner: which lines of text/plain are the table, and the status's progress.
        meta = {PROGRESS_KEY: {"rows": len(self.rows), "status": self._status, "fraction": self._fraction}}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True, metadata=meta)
        else:
            self._handle.update(bundle, raw=True, metadata=meta)


class HeadlessEcho:
    """What a terminal shows of a notebook run headless: its printed text and its live tables.

    `python -m hlb_utils notebook run` feeds it the kernel's messages. A live table's header prints once,
    then each new row; its status line is rewritten in place on a terminal, and in a log file appears
    only when an epoch passes a quarter of its steps (as `LiveTable.status` does in a terminal).
    """

    def __init__(self, stream: TextIO | None = None, indent: str = "    "):
        self.stream = stream or sys.stdout
        self.tty, self.indent = _is_tty(self.stream), indent
        self._lines: dict[str, int] = {}   # display id -> table lines already printed
        self._marks: dict[str, int] = {}   # display id -> status marks already printed this epoch
        self._open = 0                     # length of the status line now on screen (terminal only)

    def text(self, text: str) -> None:
        """Printed output of the kernel, passed through."""
        self._close_status()
        self.stream.write(text)
        self.stream.flush()

    def display(self, content: dict) -> None:
        """A display_data or update_display_data message's content; ignored unless a LiveTable sent it."""
        meta = (content.get("metadata") or {}).get(PROGRESS_KEY)
        if meta is None:
            return
        key = (content.get("transient") or {}).get("display_id") or ""
        lines = content.get("data", {}).get("text/plain", "").splitlines()
        table = lines[: meta["rows"] + 1]   # the header, then the rows
        for line in table[self._lines.get(key, 0):]:
            self.text(self.indent + line + "\n")
            self._lines[key], self._marks[key] = len(table), 0
        if meta.get("status"):
            self._show_status(key, meta["status"], meta.get("fraction"))

    def _show_status(self, key: str, status: str, fraction: float | None) -> None:
        line = self.indent + status
        if self.tty:
            self.stream.write("\r" + line.ljust(self._open))
            self._open = len(line)
        elif _mark(fraction) > self._marks.get(key, 0):
            self._marks[key] = _mark(fraction)
            self.stream.write(line + "\n")
        self.stream.flush()

    def _close_status(self) -> None:
        if self._open:
            self.stream.write("\r" + " " * self._open + "\r")
            self._open = 0


def _is_tty(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _mark(fraction: float | None) -> int:
    """How many of the LOG_MARKS - 1 in-epoch marks (a quarter, a half, ...) `fraction` has passed."""
    if fraction is None:
        return 0
    return min(LOG_MARKS - 1, max(0, math.floor(fraction * LOG_MARKS)))
