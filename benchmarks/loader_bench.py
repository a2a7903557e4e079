"""One epoch of augmented CIFAR-10 batches: DeviceLoader against torchvision's DataLoader.

Why: notebook 01 claims that keeping the dataset in device memory and augmenting whole batches with a
few tensor operations beats the usual per-image pipeline by far. This measures it, on this machine:

    python benchmarks/loader_bench.py --data path/to/cifar10-jpeg.tar.gz --batch-size 500

What is compared, fairly: both start from the same decoded uint8 tensors (decoding and the cache are
outside both timers), both yield shuffled, normalised float32 batches of the same size with the same
augmentation (random crop of the 4-pixel-padded image, random horizontal flip), and both batches are
just consumed. The conventional side is the one the notebooks use, `hlb_utils.baseline.make_loader`
(torchvision v2 transforms one image at a time, in a DataLoader with `--workers` processes, default 2:
one per core of our 2-core machine); its worker start-up is inside the epoch, as it is in a training
loop without persistent workers. DeviceLoader: one-time set-up (normalise and pad) is reported apart;
the epoch time is the median of `--epochs` epochs.

On a busy machine (load average above the core count) torch's OpenMP threads spin-wait for each other
and the DeviceLoader slows down ten-fold; run with OMP_WAIT_POLICY=PASSIVE (or --threads 1) there.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from hlb_utils import baseline, data, loader
from hlb_utils import device as device_mod

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def time_torchvision(cifar: data.Cifar10, batch_size: int, workers: int) -> float:
    batches = baseline.make_loader(cifar.train_images, cifar.train_labels, batch_size, train=True,
                                   num_workers=workers)
    start = time.perf_counter()
    for inputs, labels in batches:
        pass
    return time.perf_counter() - start


def time_device_loader(cifar: data.Cifar10, batch_size: int, epochs: int, device: str) -> tuple[float, float]:
    """(set-up seconds, median epoch seconds)."""
    start = time.perf_counter()
    batches = loader.DeviceLoader(cifar.train_images, cifar.train_labels, batch_size, device=device,
                                  flip="random", translate=4)
    setup = time.perf_counter() - start
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for inputs, labels in batches:
            pass
        device_mod.synchronize(inputs.device)
        times.append(time.perf_counter() - start)
    return setup, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("HLB_DATA") or str(DEFAULT_DATA),
                        help="CIFAR-10 source (default: HLB_DATA, else the shared JPEG replica)")
    parser.add_argument("--batch-size", type=int, default=500, help="images per batch, both loaders")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--epochs", type=int, default=3, help="DeviceLoader epochs timed (median)")
    parser.add_argument("--device", default="cpu", help="DeviceLoader's device")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of this process (default: torch's choice; DataLoader workers use 1)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cifar = data.load_cifar10(args.data)
    # other processes on a small machine slow both loaders (torch's threads most): show the load
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; {len(cifar.train_labels):,} images, "
          f"batch {args.batch_size}, translate 4 + random flip")
    setup, ours = time_device_loader(cifar, args.batch_size, args.epochs, args.device)
    print(f"DeviceLoader ({args.device}): {ours:.3f} s per epoch (median of {args.epochs}); set-up {setup:.2f} s")
    theirs = time_torchvision(cifar, args.batch_size, args.workers)
    print(f"torchvision DataLoader ({args.workers} workers): {theirs:.2f} s per epoch")
    print(f"DeviceLoader is {theirs / ours:.0f}x faster")


if __name__ == "__main__":
    main()
