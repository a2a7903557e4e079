"""What a run costs on the Ray path (hlb_utils/cluster.py) beyond the same run trained here.

Why: `run_many(..., cluster=...)` pays for things a serial series does not: starting or joining Ray,
putting the dataset into the object store, scheduling a task, a worker importing torch and reading the
dataset back. On a cluster of GPUs that cost is bought back many times over; this measures it, so a
note can say how much a run pays:

    python benchmarks/ray_overhead.py --data path/to/cifar10-jpeg.tar.gz --runs 3

Both paths train the same seeds of the same profile with the same torch thread count (by default all of
this machine's CPUs, so the local Ray instance runs one task at a time, as the serial loop does), and
the script checks that they reach the same accuracies. Printed: Ray's start, and per run on each path the
series' wall time, the wall time inside `train()` and the rest: what the path adds. The difference of the
rests is the overhead (on a shared machine the runs' own times wander more than that).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from hlb_utils import cluster, data, runs
from hlb_utils.config import get_profile


def timed_series(cfg, cifar, n: int, where: str | None) -> tuple[runs.RunsResult, float]:
    start = time.perf_counter()
    result = runs.run_many(cfg, cifar, runs=n, verbose=False, cluster=where)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="CIFAR-10 source (default: HLB_DATA)")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--runs", type=int, default=3, help="runs on each path")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of every run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cifar = data.load_cifar10(args.data, verbose=False)
    cfg = get_profile(args.profile)
    start = time.perf_counter()
    described = cluster.connect("local")
    ray_start = time.perf_counter() - start
    # the Ray path first, so the serial runs cannot profit from anything Ray warmed up
    on_ray, ray_wall = timed_series(cfg, cifar, args.runs, "local")
    serial, serial_wall = timed_series(cfg, cifar, args.runs, None)
    same = on_ray.accuracies == serial.accuracies
    print(f"profile {cfg.profile}, {args.runs} runs per path, {args.threads} torch threads per run, "
          f"Ray {described['ray']} with {described['cpus']:g} CPUs, data {cifar.source}")
    print(f"Ray start (once per session): {ray_start:.1f} s")
    outside = {}
    for name, result, wall in (("serial", serial, serial_wall), ("ray", on_ray, ray_wall)):
        trained = statistics.fmean(r.wall_seconds for r in result.results)
        outside[name] = wall / args.runs - trained
        print(f"{name:>6}: {wall / args.runs:.2f} s per run in the series, {trained:.2f} s inside train() "
              f"(training {statistics.fmean(r.train_seconds for r in result.results):.2f} s), "
              f"{outside[name]:.2f} s outside it; accuracies {[round(a, 4) for a in result.accuracies]}")
    # Outside train() is what the path adds; the runs' own wall time wanders with the machine's load.
    print(f"overhead of the Ray path: {outside['ray'] - outside['serial']:+.2f} s per run outside train() "
          f"(series wall time per run {(ray_wall - serial_wall) / args.runs:+.2f} s; Ray's start not "
          f"included); same accuracies on both paths: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
