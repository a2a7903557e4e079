"""Many runs, their statistics, and the run records written to disk.

Taught in notebook 06. A claim like "94% in N seconds" is a claim about a mean: `run_many` trains the
same config with seeds seed, seed+1, ... and `summary` says how sure we can be of it. `write_records`
leaves a folder anyone can check later: `summary.json`, `runs.csv`, `history.csv` and `steps.csv`.

A run cut short (Ctrl-C, SIGTERM, SIGHUP) is kept in `runs.csv` with status `interrupted` but never
counted, and a run whose loss diverged is kept with status `failed` and the step where it did: the
accuracies, their mean, spread and interval, and the seconds cover finished runs only, and
`summary.json` says how many runs were asked for, finished, interrupted and failed, and which code ran
them. Each file is written whole or not at all (records.py).

With `cluster="local"` or a Ray address the runs spread over a cluster's GPUs (cluster.py); the
records are the same files, with each run's host and the cluster's description.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from . import __version__
from .config import TrainConfig
from .evaluate import tta_passes
from .failures import FailedRun
from .history import TrainingDiverged
from .model import count_flops, count_params, make_net
from .records import write_files
from .stats import NA, summarize_accuracies
from .train import TrainResult, train


@dataclass
class RunsResult:
    """`table`: one row per run; `summary`: one row of statistics; `results`: the TrainResults,
    interrupted ones included (`interrupted` set).

    The statistics cover finished runs only: an interrupted run's accuracy says nothing about the
    recipe, and a failed run has none.
    """

    config: TrainConfig
    results: list[TrainResult]
    target: float = 0.94
    warmup_seconds: list[float] = field(default_factory=list)   # wall seconds of each warm-up run (compiling)
    failed: list[FailedRun] = field(default_factory=list)
    requested: int | None = None    # runs asked for (None: as many as there are results)
    stopped: bool = False           # Ctrl-C (or SIGTERM) stopped the series before all its runs came back
    cluster: dict | None = None     # the Ray cluster's description; None for a series run here

    @property
    def finished(self) -> list[TrainResult]:
        return [r for r in self.results if not r.interrupted]

    @property
    def interrupted(self) -> bool:
        return self.stopped or any(r.interrupted for r in self.results)

    @property
    def accuracies(self) -> list[float]:
        return [r.test_accuracy for r in self.finished]

    @property
    def counts(self) -> dict:
        """Runs asked for, finished, interrupted and failed. Stopped between runs or outside a run's
        epochs (its final evaluation), the run under way or about to start is counted as interrupted."""
        finished, failed = len(self.finished), len(self.failed)
        interrupted = len(self.results) - finished
        if self.stopped and not interrupted and finished + failed < (self.requested or finished + failed):
            interrupted = 1
        return dict(runs_requested=self.requested or finished + interrupted + failed, runs_finished=finished,
                    runs_interrupted=interrupted, runs_failed=failed)

    @property
    def table(self) -> pd.DataFrame:
        rows = [dict(seed=r.config.seed, status="interrupted" if r.interrupted else "finished",
                     test_accuracy=r.test_accuracy, at_chance=r.at_chance, train_seconds=r.train_seconds,
                     compile_seconds=r.compile_seconds, init_seconds=r.init_seconds,
                     tta_seconds=r.tta_seconds, peak_memory_mb=r.peak_memory_mb, compile=r.compile_note,
                     host=r.host, device=r.device)
                for r in self.results]
        rows += [dict(seed=f.config.seed, status="failed", host=f.host, error=f.error) for f in self.failed]
        rows.sort(key=lambda row: row["seed"])
        for row in rows:
            row["run"] = row["seed"] - self.config.seed
        columns = ["run", "seed", "status", "test_accuracy", "at_chance", "train_seconds", "compile_seconds",
                   "init_seconds", "tta_seconds", "peak_memory_mb", "compile", "host", "device"]
        return pd.DataFrame(rows, columns=columns + (["error"] if self.failed else []))

    @property
    def summary(self) -> pd.DataFrame:
        """One row: `stats.summarize_accuracies` of the finished runs, and their mean and median seconds.

        An undefined statistic (the spread of one run; everything when no run finished) is `stats.NA`
        ("n/a"), never NaN; with two or more finished runs every field is a number.
        """
        if not self.finished:   # nothing finished (all failed, or stopped early): the statistics are undefined
            keys = ("mean", "std", "min", "max", "ci95_low", "ci95_high", "share_at_target", "p_value",
                    "mean_seconds", "median_seconds")
            return pd.DataFrame([dict(runs=0, target=self.target, **dict.fromkeys(keys, NA))])
        stats = summarize_accuracies(self.accuracies, self.target)
        secs = [r.train_seconds for r in self.finished]
        stats.update(mean_seconds=statistics.fmean(secs), median_seconds=statistics.median(secs))
        return pd.DataFrame([stats])


def run_many(cfg: TrainConfig, data, runs: int = 5, target: float = 0.94, warmup_runs: int = 0,
             verbose: bool = True, on_run: Callable[[RunsResult], None] | None = None,
             cluster: str | None = None, train_fn: Callable[..., TrainResult] = train) -> RunsResult:
    """Train `runs` times with seeds cfg.seed, cfg.seed+1, ...; warm-up runs (seeds below) are not kept.

    Only the first counted run shows its live table; later runs print one line each. `on_run` gets
    the runs so far after each one (the command line writes its records then, so that a long series
    stopped early keeps the runs it finished). An interrupted run ends the series; it is kept, marked,
    and left out of the statistics. A run whose loss diverges is kept as failed (with the step) and
    the series goes on with the next seed. `cluster`: None trains here, one run after another;
    "local" starts a Ray instance on this machine, an address joins a running Ray cluster, and the
    runs go one task each to its GPUs (or CPUs): see cluster.py. `train_fn(cfg, data, verbose=...)`
    trains one run (default `train.train`; a wrapper can add a model of your own).
    """
    if runs < 1:
        raise ValueError(f"runs={runs} must be at least 1")
    if cluster is not None:
        return _run_many_on_cluster(cfg, data, runs, target, warmup_runs, verbose, on_run, cluster, train_fn)
    warm = []
    for i in range(warmup_runs):
        res = train_fn(cfg.replace(seed=cfg.seed - warmup_runs + i), data, verbose=False)
        warm.append(res.wall_seconds)
        if verbose:
            print(f"warm-up run {i + 1}/{warmup_runs}: {res.wall_seconds:.1f} s (not counted)")
    results, failed, stopped = [], [], False
    try:
        for i in range(runs):
            res = _train_or_fail(train_fn, cfg.replace(seed=cfg.seed + i), data, verbose=verbose and i == 0)
            (failed if isinstance(res, FailedRun) else results).append(res)
            if on_run is not None:
                on_run(RunsResult(cfg, list(results), target, warm, failed=list(failed), requested=runs))
            if verbose:
                print(_run_line(i, runs, res))
            if isinstance(res, TrainResult) and res.interrupted:
                break
    except KeyboardInterrupt:
        # stopped outside a run's epoch loop (between runs, building the net): the run under way, or
        # about to start, has no result to keep
        if not results and not failed:
            raise
        stopped = True
        if verbose and not (results and results[-1].interrupted) and len(results) + len(failed) < runs:
            print(f"run {len(results) + len(failed) + 1}/{runs}: interrupted before it had a result (not counted)")
        if on_run is not None:
            on_run(RunsResult(cfg, results, target, warm, failed=list(failed), requested=runs, stopped=True))
    stopped = stopped or bool(results and results[-1].interrupted)
    out = RunsResult(cfg, results, target, warm, failed=failed, requested=runs, stopped=stopped)
    return _print_summary(out, verbose)


def sweep(cfg: TrainConfig, data, knob: str, values: list, runs: int = 1, target: float = 0.94,
          cluster: str | None = None, verbose: bool = True,
          train_fn: Callable[..., TrainResult] = train) -> dict[str, RunsResult]:
    """Train `runs` seeds at each value of one config field (notebook 07); keys are "knob=value".

    On a cluster every run of every value is its own task, so the whole sweep spreads at once.
    `train_fn` trains one run, as in `run_many` (a wrapper can swap a piece of the recipe).
    """
    variants = {f"{knob}={value}": cfg.replace(**{knob: value}) for value in values}
    if cluster is None:
        out = {}
        for name, variant in variants.items():
            out[name] = run_many(variant, data, runs=runs, target=target, verbose=False, train_fn=train_fn)
            if verbose:
                s = out[name].summary.iloc[0]
                if s["runs"]:
                    print(f"{name}: accuracy {s['mean']:.4f}  {s['mean_seconds']:.2f} s  ({runs} run(s))")
                else:
                    print(f"{name}: no finished run")
        return out
    from .cluster import run_on_cluster

    configs = [v.replace(seed=v.seed + i) for v in variants.values() for i in range(runs)]
    outcome = run_on_cluster(configs, data, cluster, verbose=verbose, train_fn=train_fn)
    return {name: _collect(variant, outcome, target, range(k * runs, (k + 1) * runs))
            for k, (name, variant) in enumerate(variants.items())}


def _run_many_on_cluster(cfg, data, runs, target, warmup_runs, verbose, on_run, cluster, train_fn):
    """run_many's cluster path: one Ray task per seed (cluster.py), collected into a RunsResult."""
    from .cluster import run_on_cluster

    def report(outcome):
        if on_run is not None:
            on_run(_collect(cfg, outcome, target))

    configs = [cfg.replace(seed=cfg.seed + i) for i in range(runs)]
    outcome = run_on_cluster(configs, data, cluster, warmup_runs=warmup_runs, train_fn=train_fn,
                             verbose=verbose, on_result=report)
    return _print_summary(_collect(cfg, outcome, target), verbose)


def _collect(cfg: TrainConfig, outcome, target: float, indices=None) -> RunsResult:
    """A RunsResult from a cluster's outcome (its runs in config order; None where cancelled)."""
    items = [outcome.runs[i] for i in (indices if indices is not None else range(len(outcome.runs)))]
    return RunsResult(cfg, [r for r in items if isinstance(r, TrainResult)], target, outcome.warmup_seconds,
                      failed=[r for r in items if isinstance(r, FailedRun)], requested=len(items),
                      stopped=outcome.stopped, cluster=outcome.cluster)


def _print_summary(out: RunsResult, verbose: bool) -> RunsResult:
    s = out.summary.iloc[0]
    if verbose and s["runs"] > 1:
        print(f"{int(s['runs'])} finished runs: mean {s['mean']:.4f} +- {s['std']:.4f} (std), "
              f"95% CI [{s['ci95_low']:.4f}, {s['ci95_high']:.4f}], {s['mean_seconds']:.2f} s mean")
    return out


def _train_or_fail(train_fn: Callable[..., TrainResult], cfg: TrainConfig, data, verbose: bool) -> TrainResult | FailedRun:
    """One run of a series; a run whose loss diverged is a FailedRun naming the step (the next seed may not)."""
    try:
        return train_fn(cfg, data, verbose=verbose)
    except TrainingDiverged as err:
        return FailedRun(cfg, f"TrainingDiverged: {err.what}")


def _run_line(i: int, runs: int, res: TrainResult | FailedRun) -> str:
    if isinstance(res, FailedRun):
        return f"run {i + 1}/{runs}: {res.error}  (failed: not counted)"
    line = f"run {i + 1}/{runs}: accuracy {res.test_accuracy:.4f}  training {res.train_seconds:.2f} s"
    if res.interrupted:
        return line + "  (interrupted: not counted)"
    return line + ("  (chance level: learned nothing)" if res.at_chance else "")


def run_flops(cfg, n_train: int = 50_000, n_test: int = 10_000) -> dict:
    """The compute of one training run of `cfg`, in PFLOPs (convs and matmuls, as `model.count_flops`).

    Training: forward + backward for every image of every step (the small images of progressive
    resizing counted at their size). Evaluation: one forward per test image per TTA view at the end
    (`tta_pflops`), plus the per-epoch test passes `eval_every` asks for (`eval_pflops`).
    airbench94_muon publishes 0.29 PFLOPs for training plus its 6-view TTA.
    """
    net = make_net(cfg)
    per_image = count_flops(net, train=True)
    n_test = min(cfg.test_subset or n_test, n_test)
    steps_per_epoch = cfg.steps_per_epoch(n_train)
    steps = round(cfg.epochs * steps_per_epoch)
    small = min(steps, round(cfg.low_res_epochs * steps_per_epoch)) if cfg.low_res else 0
    first = min(small, round(cfg.first_res_epochs * steps_per_epoch)) if cfg.first_res else 0
    # two images: at small sizes the last group is 1x1, and BatchNorm cannot train on a single value
    small_per_image = count_flops(net, batch=2, train=True, image_size=cfg.low_res) // 2 if small else 0
    first_per_image = count_flops(net, batch=2, train=True, image_size=cfg.first_res) // 2 if first else 0
    train_flops = cfg.batch_size * ((steps - small) * per_image + (small - first) * small_per_image
                                    + first * first_per_image)
    forward = count_flops(net, train=False)
    views = tta_passes(cfg.tta)
    evals = math.ceil(cfg.epochs / cfg.eval_every) if cfg.eval_every else 1
    return dict(profile=cfg.profile, net=cfg.net, widths=str(tuple(cfg.widths)), params=count_params(net),
                gflops_train_image=per_image / 1e9, train_pflops=train_flops / 1e15,
                tta_pflops=n_test * forward * views / 1e15, eval_pflops=n_test * forward * evals / 1e15,
                total_pflops=(train_flops + n_test * forward * (views + evals)) / 1e15)


def code_version() -> str:
    """The package version with the commit it was built from: `0.1.0+g<sha>` (`.dirty` when a checkout
    has changes). From `git describe` in a checkout, else from the commit pip recorded when it
    installed the package from git (`direct_url.json`), else the version alone.

    Run records carry it, so that a figure can be traced to the code that produced it.
    """
    commit = _checkout_commit() or _installed_commit()
    return f"{__version__}+g{commit}" if commit else __version__


def _checkout_commit() -> str | None:
    """`<sha>` or `<sha>.dirty` of the git checkout this package runs from (None outside one, or without git)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():   # a folder, or a file in a git worktree
        return None
    try:
        # --exclude='*': the commit itself, never a tag name, so the text is always a sha
        done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty=.dirty", "--abbrev=12",
                               "--exclude=*"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None   # no git on this machine
    return done.stdout.strip() or None if done.returncode == 0 else None


def _installed_commit() -> str | None:
    """The commit pip installed from (`pip install git+URL`), read from the distribution's direct_url.json."""
    from importlib import metadata

    try:
        text = metadata.distribution("hlb_utils").read_text("direct_url.json")
        commit = json.loads(text or "{}").get("vcs_info", {}).get("commit_id")
    except (metadata.PackageNotFoundError, ValueError, AttributeError):
        return None
    return commit[:12] if isinstance(commit, str) and commit else None


def write_records(result: TrainResult | RunsResult, out_dir, data_source: str = "",
                  wall_seconds: float | None = None) -> Path:
    """Write summary.json, runs.csv, history.csv and steps.csv (each step's loss and lr; both with a
    `run` column) into out_dir.

    The statistics (`test_accuracy` and its spread, `accuracies`, the seconds) cover finished runs
    only; `runs.csv` lists every run with its `status`.
    """
    runs = result if isinstance(result, RunsResult) else RunsResult(result.config, [result])
    out = Path(out_dir)
    done = runs.results
    first = done[0] if done else None   # None: every run failed, or Ctrl-C came before the first
    histories = [r.history.assign(run=r.config.seed - runs.config.seed) for r in done]
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(columns=["run"])
    steps = [r.steps.assign(run=r.config.seed - runs.config.seed) for r in done if len(r.steps)]
    steps = pd.concat(steps, ignore_index=True) if steps else pd.DataFrame(columns=["run"])
    # JSON's null, not the printed "n/a", for a statistic that is undefined
    stats = {k: None if isinstance(v, str) and v == NA else v for k, v in runs.summary.iloc[0].to_dict().items()}
    counts = runs.counts
    finished = runs.finished
    summary = dict(
        profile=runs.config.profile, test_accuracy=stats["mean"], accuracies=runs.accuracies,
        test_accuracy_std=stats["std"], ci95=[stats["ci95_low"], stats["ci95_high"]],
        p_value_vs_target=stats["p_value"], target=runs.target,
        train_seconds=stats["mean_seconds"], train_seconds_all=[r.train_seconds for r in finished],
        compile_seconds=first.compile_seconds if first else None,
        tta_seconds=statistics.fmean(r.tta_seconds for r in finished) if finished else None,
        wall_seconds=wall_seconds if wall_seconds is not None else sum(r.wall_seconds for r in done),
        epochs=runs.config.epochs, runs=counts["runs_finished"], **counts,
        runs_at_chance=sum(r.at_chance for r in finished), warmup_runs=len(runs.warmup_seconds),
        warmup_wall_seconds=runs.warmup_seconds,
        device=first.device if first else None, precision=first.precision if first else None,
        # every distinct note, so that a run that fell back to eager shows even when the first did not
        compile=" | ".join(dict.fromkeys(r.compile_note for r in done)) or None,
        torch=torch.__version__, data=str(data_source),
        seed=runs.config.seed, peak_memory_mb=max((r.peak_memory_mb or 0) for r in done) if done else None,
        interrupted=counts["runs_interrupted"] > 0, code_version=code_version(), cluster=runs.cluster,
        date=_dt.datetime.now().isoformat(timespec="seconds"), config=runs.config.to_dict(),
    )
    # each file whole or not at all: a full disk keeps the older files and leaves no temporary file
    return write_files(out, {"history.csv": history.to_csv(index=False), "steps.csv": steps.to_csv(index=False),
                             "runs.csv": runs.table.to_csv(index=False),
                             "summary.json": json.dumps(_clean(summary), indent=2)})


def _clean(obj):
    """JSON has no NaN: write null instead, and plain lists for tuples."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj
