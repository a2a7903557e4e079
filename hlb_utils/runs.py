"""Many runs, their statistics, and the run records written to disk.

Taught in notebook 06. A claim like "94% in N seconds" is a claim about a mean: `run_many` trains the
same config with seeds seed, seed+1, ... and `summary` says how sure we can be of it. `write_records`
leaves a folder anyone can check later: `summary.json`, `runs.csv` and `history.csv`.

A run cut short (Ctrl-C, SIGTERM) is kept in `runs.csv` with status `interrupted` but never counted:
the accuracies, their mean, spread and interval, and the seconds cover finished runs only, and
`summary.json` says how many runs were asked for, finished and interrupted, and which code ran them.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from . import __version__
from .config import TrainConfig
from .stats import summarize_accuracies
from .train import TrainResult, train


@dataclass
class RunsResult:
    """`table`: one row per run; `summary`: one row of statistics over the finished runs;
    `results`: the TrainResults, interrupted ones included (`interrupted` set)."""

    config: TrainConfig
    results: list[TrainResult]
    target: float = 0.94
    warmup_seconds: list[float] = field(default_factory=list)   # wall seconds of each warm-up run (compiling)
    requested: int | None = None   # runs asked for (None: as many as there are results)
    stopped: bool = False          # Ctrl-C (or SIGTERM) stopped the series before all its runs came back

    @property
    def finished(self) -> list[TrainResult]:
        return [r for r in self.results if not r.interrupted]

    @property
    def accuracies(self) -> list[float]:
        return [r.test_accuracy for r in self.finished]

    @property
    def counts(self) -> dict:
        """Runs asked for, finished and interrupted. Stopped between runs or outside a run's epochs
        (its final evaluation), the run under way or about to start is counted as interrupted."""
        finished = len(self.finished)
        interrupted = len(self.results) - finished
        if self.stopped and not interrupted and finished < (self.requested or finished):
            interrupted = 1
        return dict(runs_requested=self.requested or finished + interrupted, runs_finished=finished,
                    runs_interrupted=interrupted)

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame([dict(run=i, seed=r.config.seed,
                                  status="interrupted" if r.interrupted else "finished",
                                  test_accuracy=r.test_accuracy, at_chance=r.at_chance,
                                  train_seconds=r.train_seconds, compile_seconds=r.compile_seconds,
                                  init_seconds=r.init_seconds, tta_seconds=r.tta_seconds,
                                  peak_memory_mb=r.peak_memory_mb, compile=r.compile_note)
                             for i, r in enumerate(self.results)])

    @property
    def summary(self) -> pd.DataFrame:
        if not self.finished:
            keys = ("mean", "std", "min", "max", "ci95_low", "ci95_high", "share_at_target", "p_value",
                    "mean_seconds", "median_seconds")
            return pd.DataFrame([dict(runs=0, target=self.target, **dict.fromkeys(keys, math.nan))])
        stats = summarize_accuracies(self.accuracies, self.target)
        secs = [r.train_seconds for r in self.finished]
        stats.update(mean_seconds=statistics.fmean(secs), median_seconds=statistics.median(secs))
        return pd.DataFrame([stats])


def run_many(cfg: TrainConfig, data, runs: int = 5, target: float = 0.94, warmup_runs: int = 0,
             verbose: bool = True, on_run: Callable[[RunsResult], None] | None = None) -> RunsResult:
    """Train `runs` times with seeds cfg.seed, cfg.seed+1, ...; warm-up runs (seeds below) are not kept.

    Only the first counted run shows its live table; later runs print one line each. `on_run` gets
    the runs so far after each one (the command line writes its records then, so that a long series
    stopped early keeps the runs it finished). An interrupted run ends the series; it is kept, marked,
    and left out of the statistics.
    """
    if runs < 1:
        raise ValueError(f"runs={runs} must be at least 1")
    warm = []
    for i in range(warmup_runs):
        res = train(cfg.replace(seed=cfg.seed - warmup_runs + i), data, verbose=False)
        warm.append(res.wall_seconds)
        if verbose:
            print(f"warm-up run {i + 1}/{warmup_runs}: {res.wall_seconds:.1f} s (not counted)")
    results, stopped = [], False
    try:
        for i in range(runs):
            res = train(cfg.replace(seed=cfg.seed + i), data, verbose=verbose and i == 0)
            results.append(res)
            if on_run is not None:
                on_run(RunsResult(cfg, list(results), target, warm, requested=runs))
            if verbose:
                print(_run_line(i, runs, res))
            if res.interrupted:
                break
    except KeyboardInterrupt:
        # stopped outside a run's epoch loop (between runs, building the net, the final evaluation):
        # the run under way, or about to start, has no result to keep
        if not results:
            raise
        stopped = True
        if verbose and not results[-1].interrupted and len(results) < runs:
            print(f"run {len(results) + 1}/{runs}: interrupted before it had a result (not counted)")
        if on_run is not None:
            on_run(RunsResult(cfg, results, target, warm, requested=runs, stopped=True))
    stopped = stopped or results[-1].interrupted
    out = RunsResult(cfg, results, target, warm, requested=runs, stopped=stopped)
    if verbose and len(out.finished) > 1:
        s = out.summary.iloc[0]
        print(f"{len(out.finished)} finished runs: mean {s['mean']:.4f} +- {s['std']:.4f} (std), "
              f"95% CI [{s['ci95_low']:.4f}, {s['ci95_high']:.4f}], {s['mean_seconds']:.2f} s mean")
    return out


def _run_line(i: int, runs: int, res: TrainResult) -> str:
    line = f"run {i + 1}/{runs}: accuracy {res.test_accuracy:.4f}  training {res.train_seconds:.2f} s"
    if res.interrupted:
        return line + "  (interrupted: not counted)"
    return line + ("  (chance level: learned nothing)" if res.at_chance else "")


def code_version() -> str:
    """`git describe --always --dirty` of the checkout this package runs from, else the package version.

    Run records carry it, so that a figure can be traced to the code that produced it.
    """
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():   # a folder, or a file in a git worktree
        try:
            done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                                  capture_output=True, text=True, timeout=30)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass   # no git on this machine: fall back to the version
    return __version__


def write_records(result: TrainResult | RunsResult, out_dir, data_source: str = "",
                  wall_seconds: float | None = None) -> Path:
    """Write summary.json, runs.csv and history.csv (with a `run` column) into out_dir.

    The statistics (`test_accuracy` and its spread, `accuracies`, the seconds) cover finished runs
    only; `runs.csv` lists every run with its `status`.
    """
    runs = result if isinstance(result, RunsResult) else RunsResult(result.config, [result])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = runs.results[0]
    histories = [r.history.assign(run=i) for i, r in enumerate(runs.results)]
    pd.concat(histories, ignore_index=True).to_csv(out / "history.csv", index=False)
    runs.table.to_csv(out / "runs.csv", index=False)
    stats, counts = runs.summary.iloc[0].to_dict(), runs.counts
    summary = dict(
        profile=runs.config.profile, test_accuracy=stats["mean"], accuracies=runs.accuracies,
        test_accuracy_std=stats["std"], ci95=[stats["ci95_low"], stats["ci95_high"]],
        p_value_vs_target=stats["p_value"], target=runs.target,
        train_seconds=stats["mean_seconds"], train_seconds_all=[r.train_seconds for r in runs.finished],
        compile_seconds=first.compile_seconds, tta_seconds=statistics.fmean(r.tta_seconds for r in runs.results),
        wall_seconds=wall_seconds if wall_seconds is not None else sum(r.wall_seconds for r in runs.results),
        epochs=runs.config.epochs, runs=counts["runs_finished"], **counts,
        runs_at_chance=sum(r.at_chance for r in runs.finished), warmup_runs=len(runs.warmup_seconds),
        warmup_wall_seconds=runs.warmup_seconds,
        device=first.device, precision=first.precision,
        # every distinct note, so that a run that fell back to eager shows even when the first did not
        compile=" | ".join(dict.fromkeys(r.compile_note for r in runs.results)),
        torch=torch.__version__, data=str(data_source),
        seed=runs.config.seed, peak_memory_mb=max((r.peak_memory_mb or 0) for r in runs.results),
        interrupted=counts["runs_interrupted"] > 0, code_version=code_version(),
        date=_dt.datetime.now().isoformat(timespec="seconds"), config=runs.config.to_dict(),
    )
    text = json.dumps(_clean(summary), indent=2)
    tmp = out / "summary.json.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "summary.json")
    return out


def _clean(obj):
    """JSON has no NaN: write null instead, and plain lists for tuples."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj
