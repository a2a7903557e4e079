"""Matplotlib figures for the notebooks.

`image_grid` is taught in notebook 01 (looking at the data, and at what augmentation does to it).
Figures are built with matplotlib's object API (`matplotlib.figure.Figure`), not pyplot: nothing
is registered globally, so a notebook shows the returned figure exactly once and tests leak nothing.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from matplotlib.figure import Figure

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
