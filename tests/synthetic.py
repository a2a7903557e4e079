"""A tiny learnable stand-in for CIFAR-10, for tests that need data but no files.

Test-only: the library never uses it. Its `source` starts with 'synthetic', which
`hlb_utils.data.data_label` names as such in results tables.
"""
from __future__ import annotations

import torch

from hlb_utils.data import IMAGE_SIZE, Cifar10

# One colour per class (RGB, 0..255), far enough apart that a tiny network separates them quickly.
_PALETTE = ((230, 25, 75), (245, 130, 48), (255, 225, 25), (60, 180, 75), (70, 240, 240),
            (0, 130, 200), (145, 30, 180), (240, 50, 230), (170, 110, 40), (255, 255, 255))
_COLOUR_NAMES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta", "brown", "white")


def synthetic_dataset(n_train: int = 1000, n_test: int = 200, seed: int = 0,
                      image_size: int = IMAGE_SIZE) -> Cifar10:
    """A tiny learnable stand-in for CIFAR-10: a noisy square in the class's colour on dark noise.

    The classes are balanced, and the same seed always gives the same tensors.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for count in (n_train, n_test):
        labels = (torch.arange(count) % len(_PALETTE))[torch.randperm(count, generator=generator)]
        tensors += [_draw_squares(labels, image_size, generator), labels]
    return Cifar10(*tensors, list(_COLOUR_NAMES), f"synthetic(seed={seed})")


def _draw_squares(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    n = len(labels)
    # dark background noise, 0..60 in 0..255 units
    images = torch.randint(0, 61, (n, 3, size, size), generator=generator).float()
    # a square whose side is a third to a half of the image, anywhere inside it
    side = torch.randint(size // 3, size // 2 + 1, (n, 1, 1), generator=generator)
    top = (torch.rand(n, 1, 1, generator=generator) * (size - side + 1)).long()
    left = (torch.rand(n, 1, 1, generator=generator) * (size - side + 1)).long()
    rows, cols = torch.arange(size).view(1, -1, 1), torch.arange(size).view(1, 1, -1)
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    # the class colour with +-30 of pixel noise (0..255 units)
    colour = torch.tensor(_PALETTE, dtype=torch.float32)[labels].view(n, 3, 1, 1)
    noise = torch.randint(-30, 31, (n, 3, size, size), generator=generator).float()
    images = torch.where(inside.unsqueeze(1), colour + noise, images)
    return images.clamp(0, 255).to(torch.uint8)
