"""Comparing settings the way the records do: paired seeds, and epochs to a target.

Two readings of "does this change help?":
- `compare_settings` (notebooks 04, 05, 07) trains a base config and each change over the same seeds
  and reports each change's mean difference with its 95% interval, calling it "real" only where the
  interval excludes zero. One run per setting cannot tell a gain from run-to-run noise.
- `epochs_to_target` (notebooks 05, 07) reads, from accuracy against training length, how many
  epochs a setting needs to reach a target accuracy: airbench reports each trick as epochs saved
  to a target, Page's posts as time to 94%.
- `sweep_table` (notebook 07) reads a sweep the same way: the fastest point that reaches the target,
  each point with its spread over seeds.
"""
from __future__ import annotations

import bisect
from typing import Sequence

import pandas as pd
from scipy.optimize import isotonic_regression

from .config import TrainConfig
from .runs import RunsResult, run_many
from .stats import NA, paired_difference, summarize_accuracies, verdict

BASE = "base"   # the name of the reference row in a comparison table
COLUMNS = ["setting", "runs", "accuracy", "difference", "ci_low", "ci_high", "p_value", "verdict", "seconds"]


def compare_settings(base_cfg: TrainConfig, changes: dict[str, dict], data, seeds: int = 5,
                     verbose: bool = True, **run_kwargs) -> pd.DataFrame:
    """Train the base config and each change with seeds base_cfg.seed, +1, ... and compare them pairwise.

    `changes` maps a name to config fields, e.g. {"no whitening": dict(whiten=False)}. Every setting
    trains the same seeds, so each change is compared with the base run of the same seed
    (`paired_table`). `run_kwargs` go to `runs.run_many` (e.g. `train_fn`, `cluster`).
    """
    if any("seed" in change for change in changes.values()):
        raise ValueError("a change may not set 'seed': every setting trains the same seeds")
    results = {}
    for name, change in {BASE: {}, **changes}.items():
        results[name] = run_many(base_cfg.replace(**change), data, runs=seeds, verbose=False, **run_kwargs)
        if verbose:
            accs = results[name].accuracies
            print(f"{name}: {len(accs)} finished run(s)" + (f", mean accuracy {_mean(accs):.4f}" if accs else ""))
    base = results.pop(BASE)
    return paired_table(base, results)


def paired_table(base: RunsResult, others: dict[str, RunsResult], base_name: str = BASE) -> pd.DataFrame:
    """One row per setting: mean accuracy, mean difference from the base over their common seeds,
    its 95% interval, the paired t-test's p-value, the verdict, and mean training seconds.

    The base's own row, named `base_name`, has difference 0 with a zero-width interval and the
    verdict "base". Only
    seeds that finished in both settings are paired (an interrupted or failed run drops its seed).
    Undefined entries (one common seed) are "n/a", never NaN.
    """
    base_acc = _by_seed(base)
    rows = [_row(base_name, base, base_acc, base_acc, "base")]
    for name, result in others.items():
        acc = _by_seed(result)
        common = sorted(set(acc) & set(base_acc))
        if not common:
            raise ValueError(f"{name!r} and the base have no finished seed in common")
        diff = paired_difference([acc[s] for s in common], [base_acc[s] for s in common])
        rows.append(_row(name, result, acc, base_acc, verdict(diff), diff, common))
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(name: str, result: RunsResult, acc: dict, base_acc: dict, label: str, diff: dict | None = None,
         common: list | None = None) -> dict:
    common = common or sorted(acc)
    diff = diff or dict(mean_diff=0.0, ci_low=0.0, ci_high=0.0, p_value=1.0)
    seconds = [r.train_seconds for r in result.finished]
    return dict(setting=name, runs=len(common), accuracy=_mean([acc[s] for s in common]),
                difference=diff["mean_diff"], ci_low=diff["ci_low"], ci_high=diff["ci_high"],
                p_value=diff["p_value"], verdict=label, seconds=_mean(seconds))


def _by_seed(result: RunsResult) -> dict[int, float]:
    return {r.config.seed: r.test_accuracy for r in result.finished}


def _mean(values: Sequence[float]):
    return sum(values) / len(values) if values else NA


def epochs_to_target(epochs: Sequence[float], accuracies: Sequence[float], target: float) -> float | None:
    """The training length at which accuracy reaches `target`, read between measured lengths.

    `epochs[i]` is the length of a run of its own (with its own schedule: a 4-epoch run is not the
    4th epoch of a 10-epoch run) and `accuracies[i]` its accuracy, best a mean over seeds. Noise can
    make a longer run score lower; the reading uses the closest non-decreasing curve (isotonic least
    squares: a lucky short run is averaged with the longer runs it beats, not trusted alone) and
    interpolates linearly between the two lengths around its first crossing of `target`.
    Returns None when even the longest run stays below `target`; when the shortest run already
    reaches it, its length (the target may be reached sooner).
    """
    if len(epochs) != len(accuracies) or len(epochs) == 0:
        raise ValueError("epochs_to_target() needs as many accuracies as lengths, at least one")
    points = sorted(zip(epochs, accuracies))
    xs = [float(x) for x, _ in points]
    fit = list(isotonic_regression([float(a) for _, a in points]).x)
    i = bisect.bisect_left(fit, target)   # the first fitted point at or above the target
    if i == len(fit):
        return None
    if i == 0:
        return xs[0]
    (x0, y0), (x1, y1) = (xs[i - 1], fit[i - 1]), (xs[i], fit[i])
    return x0 + (target - y0) * (x1 - x0) / (y1 - y0)


def epochs_saved(base: tuple, other: tuple, target: float) -> float | None:
    """Epochs to `target` of the base curve minus those of the other: the records' measure of a trick.

    `base` and `other` are (epochs, accuracies) pairs as `epochs_to_target` reads them; None when
    either curve never reaches the target.
    """
    need_base, need_other = epochs_to_target(*base, target), epochs_to_target(*other, target)
    return None if need_base is None or need_other is None else need_base - need_other


def target_table(curves: dict[str, tuple], target: float) -> pd.DataFrame:
    """Epochs to `target` for each curve, and epochs saved against the first (the base), as a table.

    A curve that never reaches the target reads "not reached", and its saving "n/a": never NaN.
    """
    names = list(curves)
    rows = []
    for name in names:
        need = epochs_to_target(*curves[name], target)
        saved = epochs_saved(curves[names[0]], curves[name], target)
        rows.append(dict(setting=name, epochs_to_target="not reached" if need is None else need,
                         epochs_saved=NA if saved is None else saved))
    return pd.DataFrame(rows, columns=["setting", "epochs_to_target", "epochs_saved"])


def mean_curve(results: dict[str, RunsResult], knob: str = "epochs") -> tuple[list, list]:
    """(values of `knob`, mean accuracy over seeds) of a sweep (`runs.sweep`), for `epochs_to_target`.

    A point with no finished run is left out.
    """
    points = [(getattr(r.config, knob), _mean(r.accuracies)) for r in results.values() if r.accuracies]
    return [x for x, _ in points], [a for _, a in points]


def sweep_table(results: dict[str, RunsResult], target: float) -> pd.DataFrame:
    """One row per point of a sweep (`runs.sweep`): mean accuracy over its seeds with its 95% interval,
    mean training seconds, whether the mean reaches `target`, and `fastest`: the point with the fewest
    seconds among those that reach it (notebook 07).

    A sweep then answers the records' question, the cheapest setting that is good enough (Page's
    posts: time to 94%), not "which point scored highest", which in an epochs sweep is merely the
    longest run. Undefined entries (one seed has no interval; no finished run) are "n/a", never NaN.
    """
    rows = []
    for name, result in results.items():
        row = dict(setting=name, runs=len(result.accuracies), accuracy=NA, ci_low=NA, ci_high=NA, seconds=NA,
                   reaches=False)
        if result.accuracies:
            s = summarize_accuracies(result.accuracies, target)
            row.update(accuracy=s["mean"], ci_low=s["ci95_low"], ci_high=s["ci95_high"],
                       seconds=_mean([r.train_seconds for r in result.finished]), reaches=s["mean"] >= target)
        rows.append(row)
    table = pd.DataFrame(rows, columns=["setting", "runs", "accuracy", "ci_low", "ci_high", "seconds", "reaches"])
    reaching = [i for i in table.index if table.at[i, "reaches"]]
    fastest = min(reaching, key=lambda i: table.at[i, "seconds"], default=None)
    table["fastest"] = [i == fastest for i in table.index]
    return table
