"""Live progress of a training run: one table that grows an epoch at a time.

In Jupyter the table is a single output that is updated in place (hlb-CIFAR10 reprinted its whole table
every epoch); in a terminal each epoch prints one aligned row. Within long epochs (the CPU profile) a
status line says how far the epoch has got, at most every few seconds.
"""
from __future__ import annotations

import math
import sys
import time


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
        self.status_every = status_every  # seconds between in-epoch status updates
        self.width = max(9, *(len(c) + 1 for c in self.columns))

    def add(self, row: dict) -> None:
        """Append a row and show it (replacing the in-epoch status line)."""
        self.rows.append(row)
        self._status = ""
        if not self.enabled:
            return
        if self.jupyter:
            self._show_jupyter()
            return
        if len(self.rows) == 1:
            self._print_line("".join(c.rjust(self.width) for c in self.columns))
        self._print_line("".join(_fmt(row.get(c, "")).rjust(self.width) for c in self.columns))

    def update_last(self, row: dict) -> None:
        """Replace the last row (e.g. to fill in the final TTA accuracy); redrawn in Jupyter only."""
        if self.rows:
            self.rows[-1] = row
            if self.enabled and self.jupyter:
                self._show_jupyter()

    def status(self, text: str) -> None:
        """A transient progress line, e.g. 'epoch 2: step 40/100'; rate-limited."""
        now = time.monotonic()
        tty = sys.stdout.isatty()
        # A terminal redraws one line in place; a log file (no terminal) gets a line every 30 s.
        every = self.status_every if self.jupyter or tty else 30.0
        if not self.enabled or now - self._last < every:
            return
        self._last, self._status = now, text
        if self.jupyter:
            self._show_jupyter()
        elif tty:
            sys.stdout.write("\r" + text.ljust(self.width * len(self.columns))[: 120] + "\r")
            sys.stdout.flush()
        else:
            print(text, flush=True)

    def _print_line(self, line: str) -> None:
        clear = "\r" + " " * 120 + "\r" if sys.stdout.isatty() else ""
        sys.stdout.write(clear + line + "\n")
        sys.stdout.flush()

    def _show_jupyter(self) -> None:
        import pandas as pd
        from IPython.display import display

        frame = pd.DataFrame(self.rows, columns=self.columns)
        html = frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")
        # text/plain rides along for headless runs: its last line is the newest row or the status.
        text = frame.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-") if self.rows else ""
        if self._status:
            html += f"<pre>{self._status}</pre>"
            text += ("\n" if text else "") + self._status
        bundle = {"text/html": html, "text/plain": text}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)
