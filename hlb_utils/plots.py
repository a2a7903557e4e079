"""Matplotlib figures for the notebooks.

`image_grid` is taught in notebook 01 (looking at the data, and at what augmentation does to it);
the training curves, the lr schedule and the spread over runs in notebooks 04 and 06; a sweep's
accuracy against time in notebook 07.
Figures are built with matplotlib's object API (`matplotlib.figure.Figure`), not pyplot: nothing
is registered globally, so a notebook shows the returned figure exactly once and tests leak nothing.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

CELL_INCHES = 1.2   # width of one image in the grid, in inches (its title adds a little height)


def image_grid(images: torch.Tensor, labels: torch.Tensor | Sequence[int] | None = None,
               classes: Sequence[str] | None = None, nrows: int | None = None, ncols: int = 8,
               title: str | None = None, mean=None, std=None) -> Figure:
    """A grid of images, each titled with its class name (or label number).

    images: uint8 (N, C, H, W), or float: normalised images when mean/std (per channel, 0..1
    units) are given, which are undone, else values in 0..1. Shows the first nrows * ncols images
    (nrows defaults to as many as N needs).
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0:
        raise ValueError("images must be a non-empty (N, C, H, W) tensor")
    pixels = _to_unit_range(images.detach().cpu(), mean, std)
    ncols = max(1, min(ncols, len(pixels)))
    nrows = nrows or math.ceil(len(pixels) / ncols)
    fig = Figure(figsize=(ncols * CELL_INCHES, nrows * (CELL_INCHES + 0.2)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(pixels):
            continue
        picture = pixels[i].permute(1, 2, 0).numpy()
        ax.imshow(picture[:, :, 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1)
        if labels is not None:
            label = int(labels[i])
            ax.set_title(classes[label] if classes is not None else str(label), fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def _to_unit_range(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Float pixels in 0..1, whatever the input's dtype and normalisation."""
    if images.dtype == torch.uint8:
        return images.float() / 255
    images = images.float()
    if mean is not None and std is not None:
        shape = (1, images.shape[1], 1, 1)
        images = images * torch.as_tensor(std, dtype=torch.float32).view(shape) \
            + torch.as_tensor(mean, dtype=torch.float32).view(shape)
    return images.clamp(0, 1)


def plot_curves(history, title: str | None = None):
    """Loss and accuracy per epoch (train, test, EMA and final TTA where present), side by side."""
    fig = Figure(figsize=(10, 3.6))
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = history["epoch"]
    ax_loss.plot(epochs, history["train_loss"], "o-", label="train")
    tested = history["test_loss"].notna()  # with eval_every > 1 only some epochs were evaluated
    if tested.any():
        ax_loss.plot(epochs[tested], history["test_loss"][tested], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss (label-smoothed for train)", title="loss")
    for column, style, label in (("train_acc", "o-", "train"), ("test_acc", "s-", "test"),
                                 ("ema_acc", "^-", "test, EMA weights"), ("tta_acc", "*", "test, with TTA")):
        if column in history and history[column].notna().any():
            known = history[column].notna()
            ax_acc.plot(epochs[known], history[column][known], style, label=label,
                        markersize=8 if style == "*" else 5)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_lr_schedule(cfg, steps_per_epoch: int):
    """The learning-rate multiplier over training, and when the whitening bias stops learning."""
    from .optim import schedule_curve

    total = max(1, round(cfg.epochs * steps_per_epoch))
    curve = schedule_curve(cfg, total)
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    ax.plot([s / steps_per_epoch for s in range(total)], curve, label=f"{cfg.schedule} schedule")
    if 0 < cfg.whiten_bias_epochs < cfg.epochs:
        ax.axvline(cfg.whiten_bias_epochs, color="gray", ls="--", label="whitening bias frozen")
    ax.set(xlabel="epoch", ylabel="lr multiplier", title=f"learning-rate schedule ({total} steps)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_spread(accuracies, target: float = 0.94, title: str | None = None):
    """Each run's accuracy as a dot, with the mean, a 95% interval and the target line."""
    from .stats import summarize_accuracies

    accs = [float(a) for a in accuracies]
    s = summarize_accuracies(accs, target)
    fig = Figure(figsize=(6, 2.6))
    ax = fig.subplots()
    jitter = [0.05 * ((i * 7) % 5 - 2) for i in range(len(accs))]  # spread dots vertically, reproducibly
    ax.scatter([a * 100 for a in accs], jitter, alpha=0.7, label=f"{len(accs)} run{'s' * (len(accs) != 1)}")
    ax.axvline(s["mean"] * 100, color="C1", label=f"mean {s['mean'] * 100:.2f}%")
    if s["ci95_low"] == s["ci95_low"]:  # not NaN
        ax.axvspan(s["ci95_low"] * 100, s["ci95_high"] * 100, color="C1", alpha=0.2, label="95% interval of the mean")
    ax.axvline(target * 100, color="k", ls="--", label=f"target {target * 100:g}%")
    ax.set(xlabel="test accuracy (%)", yticks=[], ylim=(-0.5, 0.5), title=title or "spread over runs")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_sweep(table, knob: str, target: float = 0.94):
    """Accuracy against training seconds, one labelled point per row of a results table (notebook 07).

    `table` is `notebook.results_table(...)` of one sweep. The target line is drawn once the sweep
    comes within 4 points of it.
    """
    if len(table) == 0:
        raise ValueError(f"no runs of the {knob} sweep to plot yet: run the sweep cell first "
                         "(the config cell starts a new, empty sweep)")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(table["seconds"], table["accuracy"], "o-")
    for _, row in table.iterrows():
        ax.annotate(row["change"], (row["seconds"], row["accuracy"]), fontsize=8)
    if table["accuracy"].max() > target - 0.04:
        ax.axhline(target, ls="--", color="grey", label=f"target {target:.0%}")
        ax.legend()
    ax.set(xlabel="training seconds", ylabel="test accuracy", title=f"sweep of {knob}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
