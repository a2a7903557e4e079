"""The command line for headless runs and the GPU benchmark (no Jupyter needed).

    python -m hlb_utils train --profile quick --runs 2 --data PATH --out runs/quick
    python -m hlb_utils train --runs 200 --cluster ADDRESS|local --out runs/many

prints the live rows of the first run and one line per further run, then writes the run records
(`summary.json`, `runs.csv`, `history.csv`) into --out.

Every argument and the output folder are checked before any data is decoded, so a typo never costs
a run. Exit status: 0 every run finished (one that ended at chance level says so in a final warning
line and in its record, `at_chance`); 1 a run diverged; 2 a user error (one line on stderr, no
traceback); 128 + N when stopped by signal N (Ctrl-C: 130, SIGTERM: 143), after writing the records
of the runs so far with the cut-short run marked.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import data as data_mod
from .config import PROFILE_NAMES, TrainConfig, get_profile
from .runs import RunsResult, run_many, write_records
from .history import TrainingDiverged

PROG = "python -m hlb_utils train"


class UserError(Exception):
    """A bad argument or setting: printed as one line, exit status 2."""


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Train a profile and write its run records.")
    parser.add_argument("--profile", default=None, help=f"one of {PROFILE_NAMES + ('auto',)} "
                        "(default: HLB_PROFILE, else auto = record on CUDA, cpu elsewhere)")
    parser.add_argument("--runs", type=int, default=1, help="timed runs with seeds seed, seed+1, ...")
    parser.add_argument("--warmup-runs", type=int, default=0, help="untimed runs first (compile, caches)")
    parser.add_argument("--data", default=None, help="CIFAR-10 source (default: HLB_DATA)")
    parser.add_argument("--out", default=None, help="folder for summary.json, runs.csv, history.csv")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field, e.g. --set epochs=10 (JSON values)")
    parser.add_argument("--cluster", default=None, metavar="ADDRESS|local",
                        help="spread the runs over a Ray cluster (its address), or a Ray instance started here")
    parser.add_argument("--quiet", action="store_true", help="no live table")
    return parser


def check_config(profile: str | None, items: list[str]) -> TrainConfig:
    """The config the arguments ask for, or UserError naming the bad `--set` or profile."""
    try:
        changes = parse_changes(items)
    except ValueError as err:
        raise UserError(str(err)) from None
    try:
        return get_profile(profile, **changes)
    except (TypeError, ValueError) as err:
        raise UserError(str(err)) from None


def check_out(out: str | None) -> Path | None:
    """The output folder, created and known to be writable, or UserError saying why not."""
    if out is None:
        return None
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out}: that is an existing file; give a folder for the run records")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UserError(f"--out {out}: cannot write run records there ({err.strerror or err})") from None
    return path


def check_args(args: argparse.Namespace) -> TrainConfig:
    """Everything that can be checked before any data is decoded."""
    if args.runs < 1:
        raise UserError(f"--runs {args.runs}: give at least 1 run")
    if args.warmup_runs < 0:
        raise UserError(f"--warmup-runs {args.warmup_runs}: give 0 or more")
    cfg = check_config(args.profile, args.set)
    check_out(args.out)
    return cfg


class _Signals:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so a terminated run is kept and marked
    interrupted instead of vanishing; remembers which signal came, for the message and exit status."""

    def __init__(self) -> None:
        self.name, self.code, self._previous = "Ctrl-C (SIGINT)", 128 + signal.SIGINT, None

    def _on_term(self, signum, frame) -> None:
        self.name, self.code = "SIGTERM", 128 + signum
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # once: the records are being written
        raise KeyboardInterrupt

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_term)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _error(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _chance_line(result: RunsResult) -> str:
    cfg, at_chance = result.config, [r for r in result.finished if r.at_chance]
    default_lr = get_profile(cfg.profile).lr if cfg.profile in PROFILE_NAMES else cfg.lr
    advice = (f"the profile's own lr is {default_lr:g}" if cfg.lr != default_lr
              else f"try a lower learning rate, e.g. --set lr={cfg.lr / 2:.3g}")
    return (f"warning: {len(at_chance)} of {len(result.finished)} finished run(s) ended at chance level "
            f"(accuracy {at_chance[0].test_accuracy:.4f}): the net learned nothing at lr={cfg.lr:g}; {advice}")


def _stopped_line(stop: _Signals, result: RunsResult, out: Path | None) -> str:
    counts = result.counts
    where = f"records in {out}" if out else "no --out, nothing written"
    return (f"stopped by {stop.name}: {counts['runs_finished']} of {counts['runs_requested']} run(s) "
            f"finished, {counts['runs_interrupted']} interrupted and not counted ({where})")


def main(argv: list[str] | None = None) -> int:
    """`python -m hlb_utils train --profile NAME [--runs N] [--data SOURCE] [--out DIR]`."""
    wall_start = time.perf_counter()
    args = _parser().parse_args(argv)
    try:
        cfg = check_args(args)
    except UserError as err:
        return _error(str(err), 2)
    out = Path(args.out).expanduser() if args.out else None
    with _Signals() as stop:
        try:
            result = _train(cfg, args, out, wall_start)
        except data_mod.DataError as err:
            return _error(str(err), 2)
        except TrainingDiverged as err:
            options = " ".join(f"--set {key}={value}" for key, value in err.changes.items())
            return _error(f"{err.what}; try a lower learning rate: {options}", 1)
        except KeyboardInterrupt:
            print(f"stopped by {stop.name} before any run finished; no records written", file=sys.stderr)
            return stop.code
    if result.counts["runs_interrupted"]:
        print(_stopped_line(stop, result, out), file=sys.stderr)
        return stop.code
    if any(r.at_chance for r in result.finished):
        print(_chance_line(result))
    if result.failed:
        print(f"{len(result.failed)} run(s) failed and were not counted (their errors are in runs.csv): "
              f"{result.failed[0].error}", file=sys.stderr)
        return 1
    return 0


def _train(cfg: TrainConfig, args: argparse.Namespace, out: Path | None, wall_start: float) -> RunsResult:
    data = data_mod.load_cifar10(args.data)
    if cfg.steps_per_epoch(len(data.train_labels)) < 1:
        raise data_mod.DataError(f"batch_size={cfg.batch_size} is larger than the {len(data.train_labels)} "
                                 f"training images of {data.source}; lower it with --set batch_size=...")
    print(f"profile {cfg.profile}: {cfg.net} net, widths {cfg.widths}, {cfg.epochs} epochs, "
          f"batch {cfg.batch_size}, data {data.source}")

    def save(runs_so_far):   # after every run: a series stopped early keeps the runs it finished
        return write_records(runs_so_far, out, data_source=data.source,
                             wall_seconds=time.perf_counter() - wall_start)

    result = run_many(cfg, data, runs=args.runs, warmup_runs=args.warmup_runs, verbose=not args.quiet,
                      on_run=save if out else None, cluster=args.cluster)
    if out:
        print(f"run records written to {save(result)}")
    return result
