"""What a loaded dataset is, shared by the loading (`data.py`) and the ImageFolder reading
(`imagefolder.py`): the `Cifar10` tuple, the `DataError` they raise, and CIFAR-10's fixed facts.

It imports none of our modules, so both can import it without importing each other in a circle.
`data.Cifar10` and `data.DataError` are these same names (notebook 01 uses them from there).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGE_SIZE = 32              # pixels per side; every CIFAR-10 image is 32x32 RGB
PROGRESS_EVERY = 10_000      # images between progress lines while decoding
SPLITS = ("train", "test")


class DataError(RuntimeError):
    """The data could not be loaded; the message says which file or setting, and what to do."""


class Cifar10(NamedTuple):
    train_images: torch.Tensor   # uint8 (N, 3, 32, 32)
    train_labels: torch.Tensor   # int64 (N,)
    test_images: torch.Tensor    # uint8 (M, 3, 32, 32)
    test_labels: torch.Tensor    # int64 (M,)
    classes: list                # class names; label i means classes[i]
    source: str                  # where the data came from (path or description)
