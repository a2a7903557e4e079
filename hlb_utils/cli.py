"""The command line for headless runs and the GPU benchmark (no Jupyter needed).

    python -m hlb_utils.train --profile quick --runs 2 --data PATH --out runs/quick
    python -m hlb_utils.train --runs 200 --cluster ADDRESS|local --out runs/many

prints the live rows of the first run and one line per further run, then writes the run records
(`summary.json`, `runs.csv`, `history.csv`) into --out.
"""
from __future__ import annotations

import argparse
import json
import time

from . import data as data_mod
from .config import PROFILE_NAMES, get_profile
from .runs import run_many, write_records


def parse_changes(items: list[str]) -> dict:
    """`FIELD=VALUE` strings as config changes. Values are read as JSON where they parse (10, 0.5,
    false, [8, 16] -> a tuple), else kept as text (`compile_mode=default`)."""
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
        if isinstance(changes[key], list):
            changes[key] = tuple(changes[key])
    return changes


def main(argv: list[str] | None = None) -> int:
    """`python -m hlb_utils.train --profile NAME [--runs N] [--data SOURCE] [--out DIR]`."""
    wall_start = time.perf_counter()
    parser = argparse.ArgumentParser(prog="python -m hlb_utils.train",
                                     description="Train a profile and write its run records.")
    parser.add_argument("--profile", default=None, help=f"one of {PROFILE_NAMES + ('auto',)} "
                        "(default: HLB_PROFILE, else auto = full on CUDA, cpu elsewhere)")
    parser.add_argument("--runs", type=int, default=1, help="timed runs with seeds seed, seed+1, ...")
    parser.add_argument("--warmup-runs", type=int, default=0, help="untimed runs first (compile, caches)")
    parser.add_argument("--data", default=None, help="CIFAR-10 source (default: HLB_DATA)")
    parser.add_argument("--out", default=None, help="folder for summary.json, runs.csv, history.csv")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field, e.g. --set epochs=10 (JSON values)")
    parser.add_argument("--cluster", default=None, metavar="ADDRESS|local",
                        help="spread the runs over a Ray cluster (its address), or a Ray instance started here")
    parser.add_argument("--quiet", action="store_true", help="no live table")
    args = parser.parse_args(argv)
    try:
        cfg = get_profile(args.profile, **parse_changes(args.set))
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    data = data_mod.load_cifar10(args.data)
    print(f"profile {cfg.profile}: {cfg.net} net, widths {cfg.widths}, {cfg.epochs} epochs, "
          f"batch {cfg.batch_size}, data {data.source}")
    def save(runs_so_far):   # after every run: a series stopped early keeps the runs it finished
        return write_records(runs_so_far, args.out, data_source=data.source,
                             wall_seconds=time.perf_counter() - wall_start)

    result = run_many(cfg, data, runs=args.runs, warmup_runs=args.warmup_runs, verbose=not args.quiet,
                      on_run=save if args.out else None, cluster=args.cluster)
    if args.out:
        print(f"run records written to {save(result)}")
    return 1 if result.interrupted or result.failed else 0

