"""The conventional baseline of notebook 02: where the series starts, measured the same way as the rest.

A plain CNN (conv-BatchNorm-ReLU pairs, max-pool between stages, global average pool, no whitening,
no residuals), fed by torchvision's DataLoader with per-image transforms (random crop with 4 pixels of
padding, random flip, normalise) and trained with SGD with momentum at a constant learning rate and
mean cross entropy. This is how most tutorials train CIFAR-10; the later notebooks remove its costs
one by one. The images arrive as the decoded uint8 tensors, so the transforms are torchvision's v2
ops on tensors (the modern equivalent of the PIL route, and no slower).
"""
from __future__ import annotations

import time

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .data import shuffled_indices
from .device import device_name
from .train import TrainResult

# Per-channel mean and std of CIFAR-10's training images (0..1 scale), as tutorials hard-code them.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class TensorImages(Dataset):
    """uint8 (N, 3, 32, 32) images and their labels, transformed one image at a time, as usual."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, train: bool):
        self.images, self.labels = images, labels
        steps = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if train else []
        self.transform = v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def make_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, train: bool,
                num_workers: int = 2, seed: int = 0) -> DataLoader:
    """torchvision-style DataLoader: shuffled, per-image augmentation in worker processes."""
    return DataLoader(TensorImages(images, labels, train), batch_size=batch_size, shuffle=train,
                      drop_last=train, num_workers=num_workers, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def make_baseline_net(widths: tuple = (32, 64, 128), classes: int = 10) -> nn.Sequential:
    """Three stages of two conv-BN-ReLU each, halving the resolution between stages."""
    layers, c_in = [], 3
    for i, width in enumerate(widths):
        for _ in range(2):
            layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            c_in = width
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes)]
    return nn.Sequential(*layers)


@torch.no_grad()
def evaluate_baseline(net: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Mean cross entropy and accuracy over the whole test set."""
    net.eval()
    loss, right = 0.0, 0
    for x, y in loader:
        logits, y = net(x.to(device)), y.to(device)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        right += (logits.argmax(1) == y).sum().item()
    return loss / len(loader.dataset), right / len(loader.dataset)


def train_baseline(data, epochs: int = 10, batch_size: int = 128, lr: float = 0.05,
                   device: str | torch.device = "cpu", subset: int | None = None, seed: int = 0,
                   widths: tuple = (32, 64, 128), test_subset: int | None = None,
                   num_workers: int = 2) -> tuple[pd.DataFrame, float, float]:
    """Train the baseline; returns (history per epoch, final test accuracy 0..1, training seconds).

    `data` is a Cifar10 tuple (hu.data.load_cifar10()). Training seconds are the wall time of the
    epochs, data loading included (that is part of the conventional cost); evaluation is outside.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    tr = shuffled_indices(len(data.train_labels), subset, seed)
    te = shuffled_indices(len(data.test_labels), test_subset, seed)
    train_loader = make_loader(data.train_images[tr], data.train_labels[tr], batch_size, True, num_workers, seed)
    test_loader = make_loader(data.test_images[te], data.test_labels[te], 500, False, 0)
    net = make_baseline_net(widths).to(device)
    # momentum 0.9 and weight decay 5e-4 (per step, mean loss): the textbook CIFAR-10 settings
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    rows, seconds = [], 0.0
    for epoch in range(1, epochs + 1):
        net.train()
        start, loss_sum, right, seen = time.perf_counter(), 0.0, 0, 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            right += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        seconds += time.perf_counter() - start
        test_loss, test_acc = evaluate_baseline(net, test_loader, device)
        rows.append(dict(epoch=epoch, train_loss=loss_sum / seen, train_acc=right / seen,
                         test_loss=test_loss, test_acc=test_acc, train_seconds=seconds))
    return pd.DataFrame(rows), rows[-1]["test_acc"], seconds


def baseline_run(cfg, data, verbose: bool = False, **baseline) -> TrainResult:
    """`train_baseline` as one run of `runs.run_many` (notebook 02): the seed comes from `cfg`, every
    other setting from `baseline` (train_baseline's keywords), so that the baseline trains the same
    seeds as our recipe and `compare.paired_table` can pair them. `cfg` is kept as the run's config
    for its seed only: the baseline does not read the recipe's other fields."""
    baseline = {**baseline, "seed": cfg.seed}
    history, accuracy, seconds = train_baseline(data, **baseline)
    return TrainResult(cfg, history, accuracy, seconds,
                       device=device_name(torch.device(baseline.get("device", "cpu"))))
