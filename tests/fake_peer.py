"""A stand-in for airbench94_muon.py, so the GPU benchmark's plumbing can be tested on a CPU in seconds.

It behaves like the real peer where benchmarks/gpu_bench.py depends on it: it reads `cifar10/train.pt`
and `cifar10/test.pt` from its working folder (a dict of uint8 NHWC `images`, int64 `labels`, `classes`)
and stops when they are missing (the real script would download CIFAR-10 there); it does one warm-up run
and then a run count set by the single `range(<int>)` in its main block (the benchmark rewrites it); and it
prints airbench's log table: a header naming the columns, the run label on a run's first row only, and an
`eval` row with the final accuracy and the timed seconds. The "training" is a nearest-class-mean
classifier on a few thousand raw images: seconds, and clearly above chance.
"""
import os
import sys
import time

import torch

COLUMNS = ["run   ", "epoch", "train_acc", "val_acc", "tta_val_acc", "time_seconds"]
N_TRAIN, N_TEST = 4000, 2000   # images per run


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    path = os.path.join("cifar10", f"{split}.pt")
    if not os.path.exists(path):
        sys.exit(f"fake_peer: {path} not found in {os.getcwd()}; the real peer would download CIFAR-10 here")
    data = torch.load(path, weights_only=True)
    images, labels = data["images"], data["labels"]
    assert images.dtype == torch.uint8 and images.shape[1:] == (32, 32, 3), "expected uint8 NHWC images"
    assert labels.dtype == torch.int64 and len(data["classes"]) == 10, "expected int64 labels, 10 classes"
    return images, labels


def flat(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images as float vectors in 0..1 (only the few thousand a run uses: memory)."""
    return images.reshape(len(images), -1).float() / 255


def print_row(cells: list[str], rule: bool = False) -> None:
    line = "".join(f"|  {cell.rjust(len(col))}  " for cell, col in zip(cells, COLUMNS)) + "|"
    print(line)
    if rule:
        print("-" * len(line))


def class_means(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([x[y == c].mean(0) for c in range(10)])


def accuracy(means: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return (torch.cdist(x, means).argmin(1) == y).float().mean().item()


def one_run(label: str, train, test) -> float:
    """Two "epochs" (class means from half, then all of a random subset), then the eval row."""
    pick = torch.randperm(len(train[0]))[:N_TRAIN]
    x, y = flat(train[0][pick]), train[1][pick]
    start = time.perf_counter()
    for epoch, n in ((1, N_TRAIN // 2), (2, N_TRAIN)):
        means = class_means(x[:n], y[:n])
        seconds = time.perf_counter() - start
        print_row([label if epoch == 1 else "", str(epoch), f"{accuracy(means, x, y):.4f}",
                   f"{accuracy(means, *test):.4f}", "", f"{seconds:.4f}"])
    tta = accuracy(means, *test)
    print_row(["", "eval", "", "", f"{tta:.4f}", f"{time.perf_counter() - start:.4f}"], rule=True)
    return tta


if __name__ == "__main__":
    torch.manual_seed(0)
    train, test = load_split("train"), load_split("test")
    test = (flat(test[0][:N_TEST]), test[1][:N_TEST])
    print_row([col.strip() for col in COLUMNS], rule=True)
    one_run("warmup", (train[0], torch.randint(0, 10, train[1].shape)), test)
    accs = [one_run(str(run), train, test) for run in range(200)]
    print("Mean: %.4f    Std: %.4f" % (torch.tensor(accs).mean(), torch.tensor(accs).std()))
