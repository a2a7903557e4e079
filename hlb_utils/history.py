"""A run's history as it trains: the bookkeeping that `train.train_loop` leaves to its edges.

Every `train()` call uses it (notebooks 04 on show its tables); a learner reading the loop need not
read it. `EpochLog` keeps each epoch's running loss and accuracy (on the device, so a GPU never
waits), checks that the loss stays finite (every step on the CPU, where it is free; once an epoch on a
GPU), shows the progress line, and makes one history row per epoch with the test scores the loop hands
it (evaluate.py computes them), and one row per step with its loss and learning rate (`steps`, for
`plots.plot_loss_and_lr`: a short run's schedule acts within its few epochs). `stops_cleanly` turns Ctrl-C into a run cut short that keeps its
finished epochs, and a GPU out of memory into advice on the batch size.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import pandas as pd
import torch

from .device import Timer
from .progress import LiveTable
from .stats import NA

# The columns of a run's history and of its live table.
COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "ema_acc", "tta_acc", "train_seconds"]
# The columns of a run's steps: loss is the step's mean per image (label-smoothed), lr the schedule's multiplier.
STEP_COLUMNS = ["step", "epoch", "loss", "lr"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite. `what` says where, `step` at (or by) which step; `changes` are
    the config changes to try next (a lower lr), so that the command line can give the same advice as
    `--set` options, and a series can record the run as failed at that step."""

    def __init__(self, what: str, changes: dict, step: int | None = None) -> None:
        self.what, self.changes, self.step = what, dict(changes), step
        args = ", ".join(f"{key}={value!r}" for key, value in self.changes.items())
        super().__init__(f"{what}; try a lower learning rate, e.g. cfg.replace({args})")


@contextmanager
def stops_cleanly(cfg, timer: Timer, log: "EpochLog"):
    """Ctrl-C (or SIGTERM and SIGHUP, which the command line turns into it) ends the loop, or the final
    evaluation, but keeps the finished epochs; running out of GPU memory names a smaller batch."""
    try:
        yield
    except KeyboardInterrupt:
        timer.stop_if_running()
        log.interrupted = True
        print(f"\ninterrupted: kept the history of {len(log.history)} finished epoch(s)")
    except torch.cuda.OutOfMemoryError as err:
        raise RuntimeError(f"CUDA ran out of memory at batch_size={cfg.batch_size}; try "
                           f"cfg.replace(batch_size={max(1, cfg.batch_size // 2)})") from err


class EpochLog:
    """The loop's bookkeeping, out of its way: each epoch's running loss and accuracy, the check that
    the loss stays finite, the progress line, and one history row per epoch (with the test scores the
    loop hands it)."""

    def __init__(self, cfg, plan, timer: Timer, verbose: bool, totals=None) -> None:
        self.cfg, self.plan, self.timer = cfg, plan, timer
        self.device = timer.device
        self.history, self.steps, self.interrupted = [], [], False
        self.table = LiveTable(COLUMNS, enabled=verbose)
        # the epoch's summed loss and correct count, on the device: the training step adds to them
        # (`train.forward_loss`, inside a compiled step's graph), so a GPU never waits for them
        self.totals = torch.zeros(2, device=self.device) if totals is None else totals
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.totals.zero_()   # in place: a compiled step holds this tensor
        self.seen = 0
        # this epoch's steps: (summed loss on the device, images, lr), read once at the epoch's end
        self._steps = []

    def step(self, loss, y, step: int, lr: float = math.nan) -> None:
        self.seen += len(y)
        # a copy: a compiled step's CUDA graph reuses its output's memory at the next step
        self._steps.append((loss.detach().clone(), len(y), lr))
        if self.device.type == "cpu":
            # On the CPU a per-step check is free; on a GPU it would stall the queue, so there the
            # epoch's summed loss is checked once, at its end.
            self._check_finite(loss, f"at step {step}", step)
            epoch, done = divmod(step, self.plan.steps_per_epoch)
            self.table.status(f"epoch {epoch + 1}: step {done + 1}/{self.plan.steps_per_epoch}",
                              (done + 1) / self.plan.steps_per_epoch)

    def evaluates(self, epoch: int) -> bool:
        """Whether the test set is evaluated after `epoch`: every `cfg.eval_every` epochs, and after the last."""
        every = self.cfg.eval_every
        return epoch == self.plan.epochs or bool(every and epoch % every == 0)

    def epoch(self, epoch: int, step: int, lr: float, scores: dict) -> None:
        """One history row: the epoch's running loss and accuracy, and its test `scores` (test_loss,
        test_acc, ema_acc; those missing stay NaN)."""
        loss, correct = self.totals.tolist()
        self._check_finite(self.totals[0], f"in the epoch ending at step {step}", step)
        self._add_steps(epoch, step)
        seen = max(self.seen, 1)
        row = dict(epoch=epoch, train_loss=loss / seen, train_acc=correct / seen,
                   test_loss=math.nan, test_acc=math.nan, ema_acc=math.nan, tta_acc=math.nan,
                   train_seconds=self.timer.total, lr=lr)
        row.update(scores)
        self.history.append(row)
        self.table.add(row)
        self._new_epoch()

    def _add_steps(self, epoch: int, step: int) -> None:
        """The epoch's rows of `steps`: one read of its losses, after `totals` has waited for the device."""
        if not self._steps:
            return
        losses = torch.stack([loss.float() for loss, _, _ in self._steps]).tolist()
        first = step - len(self._steps)
        self.steps += [dict(step=first + k, epoch=epoch, loss=summed / max(n, 1), lr=lr)
                       for k, (summed, (_, n, lr)) in enumerate(zip(losses, self._steps))]

    def final(self, acc: float) -> None:
        """The final accuracy (with TTA) goes into the last row."""
        if self.history:
            self.history[-1]["tta_acc"] = acc
            self.table.update_last(self.history[-1])

    def _check_finite(self, loss, where: str, step: int) -> None:
        if not math.isfinite(loss.item()):
            raise TrainingDiverged(f"the loss became {loss.item()} {where}",
                                   {"lr": float(f"{self.cfg.lr / 2:.3g}")}, step)


def readable(history: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """A run's history as a table to read (notebooks 00 and 06): rounded, without the columns that hold
    no value at all (`ema_acc` when there is no weight average), and "n/a" where an epoch has no value
    (no test that epoch, see `eval_every`) instead of NaN."""
    return history.dropna(axis=1, how="all").round(digits).astype(object).fillna(NA)
