"""The command line for headless runs and the GPU benchmark (no Jupyter needed).

    python -m hlb_utils train --profile quick --runs 2 --data PATH --out runs/quick
    python -m hlb_utils train --runs 200 --cluster ADDRESS|local --out runs/many

prints the live rows of the first run and one line per further run, then writes the run records
(`summary.json`, `runs.csv`, `history.csv`, `steps.csv`) into --out, after every run, each file whole or not at all.

Every argument is checked before any data is decoded, so a typo never costs a run: each `--set` value
is read by its field's type, the device and the cluster must be there, the seeds and the batch size
must fit. Then the series claims --out (a lock file: a second series into the same folder is refused
while the first runs) and moves the records of an earlier series there into a subfolder
`series-YYYYmmdd-HHMMSS` (its date), so that the files at the top always belong to the latest series
and none is lost. If the records cannot be written after training (a full disk), they go to
HLB_CACHE/unsaved-records/ (or a temporary folder) and the last line says where.

Exit status: 0 every run finished (one that ended at chance level says so in a final warning line, with
its likely cause, and in its record, `at_chance`); 1 a run diverged (recorded as failed, with its step),
or the records had to go elsewhere; 2 a user error (one line on stderr, no traceback); 128 + N when
stopped by signal N (Ctrl-C: 130, SIGHUP: 129, SIGTERM: 143), after writing the records of the runs
so far with the cut-short run marked.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import math
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from . import data as data_mod
from . import records
from .changes import parse_changes
from .config import PROFILE_NAMES, SEED_RANGE, TrainConfig, get_profile
from .runs import RunsResult, run_many, write_records

PROG = "python -m hlb_utils train"


class UserError(Exception):
    """A bad argument or setting: printed as one line, exit status 2."""


SERIES_NOTE = ("--out is claimed by one series at a time (a second command into it is refused while the first "
               "runs); records of an earlier series found there are first moved into a subfolder "
               "series-YYYYmmdd-HHMMSS (their date), so the files at the top are always the latest series'.")
# Fewer optimiser steps than this rarely leave chance level (the chance-level warning's likely cause).
FEW_STEPS = 20


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Train a profile and write its run records.",
                                     epilog=SERIES_NOTE)
    parser.add_argument("--profile", default=None, help=f"one of {PROFILE_NAMES + ('auto',)} "
                        "(default: HLB_PROFILE, else auto = record on CUDA, cpu elsewhere)")
    parser.add_argument("--runs", type=int, default=1, help="timed runs with seeds seed, seed+1, ...")
    parser.add_argument("--warmup-runs", type=int, default=0, help="untimed runs first (compile, caches)")
    parser.add_argument("--data", default=None, help="CIFAR-10 source (default: HLB_DATA)")
    parser.add_argument("--out", default=None, help="folder for summary.json, runs.csv, history.csv, steps.csv "
                        "(earlier records there move into series-YYYYmmdd-HHMMSS/)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field, read by its type: --set epochs=10, --set compile=false, "
                             "--set widths=8,16,16, --set train_subset=none")
    parser.add_argument("--cluster", default=None, metavar="local|auto|HOST:PORT",
                        help="spread the runs over a Ray cluster: a Ray instance started here (local), the one "
                             "`ray start` runs on this machine (auto), or a head's address")
    parser.add_argument("--quiet", action="store_true", help="no live table")
    return parser


def check_config(profile: str | None, items: list[str]) -> TrainConfig:
    """The config the arguments ask for, or UserError naming the bad `--set` or profile."""
    try:
        return get_profile(profile, **parse_changes(items))
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


def claim_out(out: str | None) -> records.FolderLock | None:
    """Claim --out for this series (its lock), check its free space, and move an earlier series'
    records into their own subfolder. UserError when the folder is in use, full or not writable."""
    path = check_out(out)
    if path is None:
        return None
    lock = records.FolderLock(path)
    try:
        lock.claim()
    except records.FolderInUse as err:
        raise UserError(f"--out {out} is in use: {err}; wait for it to end or give another folder") from None
    except OSError as err:
        raise UserError(f"--out {out}: cannot write run records there ({err.strerror or err})") from None
    try:
        records.check_free_space(path)
        moved = records.keep_older_series(path)
    except OSError as err:
        lock.release()
        raise UserError(f"--out {out}: cannot keep run records there ({err.strerror or err})") from None
    if moved is not None:
        print(f"the earlier series' records in {out} moved to {moved}")
    return lock


def check_device(cfg: TrainConfig, cluster: str | None) -> None:
    """The device asked for must be on this machine (on a remote cluster the workers' devices count)."""
    if cluster not in (None, "local"):
        return
    if cfg.device == "cuda" and not torch.cuda.is_available():
        why = "torch here is built without CUDA" if torch.version.cuda is None else "torch finds no CUDA GPU"
        raise UserError(f"--set device=cuda: this machine has no CUDA device ({why}); use device=auto or cpu")
    if cfg.device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--set device=mps: this machine has no Apple GPU (MPS); use device=auto or cpu")


def check_cluster(cluster: str | None) -> None:
    """Ray installed, the address well-formed, and a head answering there within seconds."""
    if cluster is None:
        return
    if importlib.util.find_spec("ray") is None:
        raise UserError(f'--cluster {cluster}: runs on a cluster need Ray: pip install "hlb_utils[ray]"')
    from .cluster import check_address

    try:
        check_address(cluster)
    except ValueError as err:
        raise UserError(str(err)) from None


def check_seeds(cfg: TrainConfig, runs: int) -> None:
    """Seeds seed .. seed+runs-1 must all be seeds torch accepts."""
    low, high = SEED_RANGE
    last = cfg.seed + runs - 1
    if not low <= cfg.seed or last > high:
        raise UserError(f"--set seed={cfg.seed}: the seeds (seed .. seed+runs-1 = {last}) must lie in "
                        f"{low}..{high} (2**63-1)")


def check_batch(cfg: TrainConfig) -> None:
    """A batch larger than the training subset the config uses (known before decoding)."""
    if cfg.train_subset is not None and cfg.batch_size > cfg.train_subset:
        raise UserError(f"batch_size={cfg.batch_size} is larger than the {cfg.train_subset} training images "
                        f"this {cfg.profile} run uses (train_subset={cfg.train_subset}); lower batch_size")


def check_args(args: argparse.Namespace) -> TrainConfig:
    """Everything that can be checked before any data is decoded or --out is claimed."""
    if args.runs < 1:
        raise UserError(f"--runs {args.runs}: give at least 1 run")
    if args.warmup_runs < 0:
        raise UserError(f"--warmup-runs {args.warmup_runs}: give 0 or more")
    cfg = check_config(args.profile, args.set)
    check_seeds(cfg, args.runs)
    check_batch(cfg)
    check_device(cfg, args.cluster)
    check_cluster(args.cluster)
    check_out(args.out)
    return cfg


def _stop_signals() -> list[int]:
    """SIGTERM and, where the platform has it, SIGHUP (SIGINT is Python's KeyboardInterrupt already)."""
    return [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]


class _Signals:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does, so a terminated run is kept and marked
    interrupted instead of vanishing; remembers which signal came, for the message and exit status."""

    def __init__(self) -> None:
        self.name, self.code, self._previous = "Ctrl-C (SIGINT)", 128 + signal.SIGINT, {}

    def _on_signal(self, signum, frame) -> None:
        self.name, self.code = signal.Signals(signum).name, 128 + signum
        for other in _stop_signals():   # once: the records are being written
            signal.signal(other, signal.SIG_IGN)
        raise KeyboardInterrupt

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in _stop_signals()}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _error(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def chance_cause(cfg: TrainConfig, steps_per_epoch: int) -> str:
    """The likely reason a run learned nothing: a learning rate far from the profile's (the farthest,
    by ratio), else too few optimiser steps, else a plain lower lr to try."""
    steps = max(1, round(cfg.epochs * steps_per_epoch))
    base = get_profile(cfg.profile) if cfg.profile in PROFILE_NAMES else TrainConfig()
    far = []
    for name in ("lr", "bias_lr", "head_lr"):
        value, usual = getattr(cfg, name), getattr(base, name)
        if usual > 0 and not usual / 4 <= value <= usual * 4:
            far.append((abs(math.log(max(value, 1e-12) / usual)), name, value, usual))
    if far:
        _, name, value, usual = max(far)
        side = f"{value / usual:.3g} times" if value > usual else f"1/{usual / max(value, 1e-12):.3g} of"
        return f"{name}={value:g} is {side} the {cfg.profile} profile's own {usual:.4g}; try --set {name}={usual:.4g}"
    if steps < FEW_STEPS:
        return (f"only {steps} optimiser step(s) (epochs={cfg.epochs:g} of {steps_per_epoch} steps) are too "
                f"few to learn; try --set epochs={math.ceil(FEW_STEPS / steps_per_epoch)}")
    return f"try a lower learning rate, e.g. --set lr={cfg.lr / 2:.3g}"


def _chance_line(result: RunsResult, steps_per_epoch: int) -> str:
    at_chance = [r for r in result.finished if r.at_chance]
    return (f"warning: {len(at_chance)} of {len(result.finished)} finished run(s) ended at chance level "
            f"(accuracy {at_chance[0].test_accuracy:.4f}): the net learned nothing; likely cause: "
            f"{chance_cause(result.config, steps_per_epoch)}")


def _stopped_line(stop: _Signals, result: RunsResult, out: Path | None) -> str:
    counts = result.counts
    where = f"records in {out}" if out else "no --out, nothing written"
    return (f"stopped by {stop.name}: {counts['runs_finished']} of {counts['runs_requested']} run(s) "
            f"finished, {counts['runs_interrupted']} interrupted and not counted ({where})")


def _failed_line(result: RunsResult) -> str:
    failed, cfg = result.failed, result.config
    line = (f"{len(failed)} of {result.counts['runs_requested']} run(s) failed and were not counted (their "
            f"errors are in runs.csv): {failed[0].error}")
    if any("TrainingDiverged" in f.error for f in failed):
        line += f"; try a lower learning rate: --set lr={cfg.lr / 2:.3g}"
    return line


class _Saver:
    """Writes the records after every run into --out; if that fails (a full disk, a folder gone), into
    a fallback folder from then on, so that the finished runs are kept somewhere, and says where."""

    def __init__(self, out: Path, source: str, wall_start: float) -> None:
        self.out, self.where, self.source, self.wall_start = out, out, source, wall_start
        self.problem: str | None = None

    def __call__(self, result: RunsResult) -> Path | None:
        try:
            return self._write(result)
        except OSError as err:
            if self.where != self.out:   # the fallback failed too
                print(f"error: the run records could not be written to {self.where} either "
                      f"({err.strerror or err})", file=sys.stderr)
                return None
            self.problem = err.strerror or str(err)
            self.where = records.fallback_folder(f"{self.out.name or 'out'}-{_dt.datetime.now():%Y%m%d-%H%M%S}")
            print(f"warning: cannot write the run records to {self.out} ({self.problem}); writing them to "
                  f"{self.where} instead", file=sys.stderr)
            return self(result)

    def _write(self, result: RunsResult) -> Path:
        return write_records(result, self.where, data_source=self.source,
                             wall_seconds=time.perf_counter() - self.wall_start)


def main(argv: list[str] | None = None) -> int:
    """`python -m hlb_utils train --profile NAME [--runs N] [--data SOURCE] [--out DIR]`."""
    wall_start = time.perf_counter()
    args = _parser().parse_args(argv)
    try:
        cfg = check_args(args)
        lock = claim_out(args.out)
    except UserError as err:
        return _error(str(err), 2)
    try:
        return _series(cfg, args, wall_start)
    finally:
        if lock is not None:
            lock.release()


def _series(cfg: TrainConfig, args: argparse.Namespace, wall_start: float) -> int:
    """Train the series and say how it ended; the exit status."""
    out = Path(args.out).expanduser() if args.out else None
    with _Signals() as stop:
        try:
            result, steps_per_epoch, saver = _train(cfg, args, out, wall_start)
        except data_mod.DataError as err:
            return _error(str(err), 2)
        except KeyboardInterrupt:
            print(f"stopped by {stop.name} before any run started; no records written", file=sys.stderr)
            return stop.code
    code = 0
    if result.counts["runs_interrupted"]:
        print(_stopped_line(stop, result, saver.where if saver else None), file=sys.stderr)
        code = stop.code
    elif any(r.at_chance for r in result.finished):
        print(_chance_line(result, steps_per_epoch))
    if result.failed and not code:
        print(_failed_line(result), file=sys.stderr)
        code = 1
    if saver is not None and saver.problem:
        print(f"error: the run records could not be written to {out} ({saver.problem}); they are in "
              f"{saver.where}", file=sys.stderr)
        code = code or 1
    return code


def _train(cfg: TrainConfig, args: argparse.Namespace, out: Path | None,
           wall_start: float) -> tuple[RunsResult, int, _Saver | None]:
    """Decode, train the series (writing the records after each run) and write them once more at the
    end: (the result, the optimiser steps per epoch, the saver). A stop before any run had a result
    is recorded too."""
    data = data_mod.load_cifar10(args.data)
    n_train = len(data.train_labels)
    used = min(cfg.train_subset or n_train, n_train)
    if cfg.steps_per_epoch(n_train) < 1:
        subset = f" (train_subset={cfg.train_subset} of its {n_train})" if used < n_train else ""
        raise data_mod.DataError(f"batch_size={cfg.batch_size} is larger than the {used} training images "
                                 f"used from {data.source}{subset}; lower it with --set batch_size=...")
    print(f"profile {cfg.profile}: {cfg.net} net, widths {cfg.widths}, {cfg.epochs} epochs, "
          f"batch {cfg.batch_size}, data {data.source}")
    saver = _Saver(out, data.source, wall_start) if out else None
    try:
        result = run_many(cfg, data, runs=args.runs, warmup_runs=args.warmup_runs, verbose=not args.quiet,
                          on_run=saver, cluster=args.cluster)
    except KeyboardInterrupt:   # before the first run had a result: the series is recorded as stopped
        result = RunsResult(cfg, [], requested=args.runs, stopped=True)
    if saver is not None and saver(result) is not None:
        print(f"run records written to {saver.where}")
    return result, cfg.steps_per_epoch(n_train), saver
