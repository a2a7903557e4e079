"""What each notebook changes in its recipe to fit the machine: `notebook_size(name)`.

The GPU profiles run every notebook at full size; on a CPU a notebook that trains many times
shortens each run so that it stays within about 15 minutes on two cores. The sizes live here, beside
the notebooks' helpers (`notebook.py`), not in the notebooks' config cells, so that a config cell lists
the knobs its chapter is about; the learner can still overwrite the value there.
"""
from __future__ import annotations

import copy
import difflib
from typing import Any

from .config import resolve_profile

# The sizes by name, then by profile ('default': the GPU profiles' full size). `quick` is for the
# tests only: its runs are too short to learn anything from.
_SHORT_EMA_CPU = dict(ema_epochs=0.5, ema_decay=0.8)
# The short CPU lessons (05's ablation, 06's spread, 07's sweep) keep the narrower net the `cpu` profile
# had until 2026-12-02: their targets and seeds were measured on it, and it keeps each run short.
_SHORT_NET_CPU = dict(widths=(32, 128, 128))
_SHORT_EMA_QUICK = dict(ema_epochs=0.5, ema_decay=0.5)
_NOTEBOOK_SIZES: dict[str, dict[str, Any]] = {
    # 01: training images the loader timing passes over
    "loader_timing_images": dict(default=50_000, quick=5_000),
    # 02: the conventional baseline's training images (None: all), epochs, widths and loader workers;
    # on a CPU short enough that it and our recipe each train once per seed
    "baseline": dict(
        default=dict(subset=None, epochs=10, widths=(64, 128, 256), num_workers=2),
        cpu=dict(subset=4000, epochs=3, widths=(32, 64, 128), num_workers=0, test_subset=2000),
        quick=dict(subset=2000, epochs=2, widths=(16, 32, 64), num_workers=0, test_subset=1000)),
    # 02: the seeds that the baseline and our recipe each train (the same seeds: paired)
    "baseline_seeds": dict(default=5, cpu=5, quick=2),
    # 03: changes to the seed profile. Short runs get a short weight average: the EMA's memory,
    # ema_every / (1 - ema_decay) steps (about 70 in the seed recipe), must be well inside the last
    # ema_epochs of the run.
    "seed_net": dict(
        default={},
        cpu=dict(widths=(16, 64, 128, 256), epochs=4, train_subset=20_000, batch_size=256, **_SHORT_EMA_CPU),
        quick=dict(widths=(8, 16, 32, 64), epochs=2, batch_size=250, train_subset=2000, test_subset=1000,
                   **_SHORT_EMA_QUICK)),
    # 04: changes to the seed profile for seven steps, each trained over several seeds: on a CPU far
    # shorter than notebook 03's runs, tested once at the end
    "recipe_steps": dict(
        default={},
        cpu=dict(widths=(8, 32, 64, 128), epochs=3, batch_size=256, train_subset=2000, test_subset=2000,
                 eval_every=0, **_SHORT_EMA_CPU),
        # quick: the weight average over the whole (four-step) run, so that it is updated at all
        quick=dict(widths=(8, 16, 32, 64), epochs=1, batch_size=250, train_subset=1000, test_subset=500,
                   **{**_SHORT_EMA_QUICK, "ema_epochs": 1.0})),
    # 04: the seeds each step trains (the same seeds in every step: paired)
    "recipe_seeds": dict(default=5, cpu=5, quick=2),
    # 05: changes to the profile's recipe for each ablation run. On a CPU a short run, evaluated once
    # at the end without TTA (the rows compare training; notebook 06 teaches TTA), so that each row
    # can train several seeds
    "ablation": dict(
        default={},
        cpu=dict(train_subset=4000, epochs=2, low_res_epochs=1, batch_size=250, test_subset=2000,
                 eval_every=0, tta="none", **_SHORT_NET_CPU),
        quick=dict(train_subset=1000, epochs=1, test_subset=500)),
    # 05: the seeds every ablation row trains (the same in each row: differences are paired by seed)
    "ablation_seeds": dict(default=5, cpu=5, quick=2),
    # 05: the ablation rows this machine leaves out, by the start of their names. On a CPU: those that
    # change only a GPU's speed (fp32, compile off: the same as 'all tricks' there anyway) and, to stay
    # within about 9 minutes, the costliest (the SE-ResNet, channels_last off's slower convolutions) and
    # the record's five groups of knobs
    "ablation_skip": dict(
        default=[],
        cpu=["fp32", "compile off", "channels_last off", "SE-ResNet", "record's"],
        quick=["fp32", "compile off", "channels_last off", "SE-ResNet", "random flip", "full resolution",
               "record's"]),
    # 05: the SE-ResNet of notebook 03, about as wide as the profile's network
    "se_widths": dict(default=(64, 128, 256, 512), cpu=(32, 64, 128, 256), quick=(8, 16, 32, 64)),
    # 00: changes to the profile's recipe for the quickstart's one run: on a CPU a shorter run of the
    # same recipe (notebook 06 trains the whole profile), with its share of small images
    "quickstart": dict(default={}, cpu=dict(epochs=6, low_res_epochs=4)),
    # 06: the runs that show the spread (mean, interval, t-test): on a GPU whole runs of the profile;
    # on a CPU, where one whole run takes minutes, short runs of its recipe, seconds each
    "spread": dict(default={},
                   cpu=dict(train_subset=2500, batch_size=250, epochs=2, low_res_epochs=1, test_subset=2000,
                            eval_every=0, tta="none", **_SHORT_NET_CPU),
                   quick=dict(train_subset=2000, batch_size=100, epochs=1, test_subset=500, eval_every=0,
                              tta="none")),
    # 06: how many of them (seeds), and the accuracy their mean is tested against: the record's 94% on
    # a GPU; on a CPU one the short runs reach about half the time (over twenty seeds: benchmarks/NOTES.md)
    "record_runs": dict(default=5, cpu=10, quick=2),
    "spread_target": dict(default=0.94, cpu=0.49, quick=0.35),
    # 07: changes to the profile's recipe for each run of the sweep and the epochs-to-target curves:
    # evaluated once, at the end; on a CPU few images, full resolution (each length its own short run) and
    # no test-time augmentation, which every setting would share
    "sweep": dict(default=dict(eval_every=0),
                  cpu=dict(train_subset=3000, test_subset=2000, batch_size=250, low_res=0, eval_every=0,
                           tta="none", **_SHORT_NET_CPU),
                  quick=dict(train_subset=1000, test_subset=500, eval_every=0, tta="none")),
    # 07: the training lengths (epochs) of its default sweep and of each epochs-to-target curve
    "sweep_epochs": dict(default=[4, 6, 8, 10, 12], seed=[6, 8, 10, 12], cpu=[1, 2, 4], quick=[1, 2]),
    # 07: seeds per point of the sweep (its mean and interval), and new seeds that confirm the fastest point
    "sweep_seeds": dict(default=5, seed=3, cpu=2, quick=2),
    "confirm_runs": dict(default=10, seed=5, cpu=3, quick=2),
    # 07: the accuracy a setting must reach; on a CPU one that the short recipe reaches within its lengths
    "sweep_target": dict(default=0.94, cpu=0.5, quick=0.22),
}
NOTEBOOK_SIZE_NAMES = tuple(_NOTEBOOK_SIZES)


def notebook_size(name: str, profile: str | None = None) -> Any:
    """A notebook's size `name` for `profile` (default: `config.resolve_profile()`), e.g. the changes
    notebook 05 makes to each ablation run: `cfg.replace(**notebook_size("ablation"))`. A fresh copy
    each call, so a notebook may change what it gets."""
    if name not in _NOTEBOOK_SIZES:
        near = difflib.get_close_matches(name, NOTEBOOK_SIZE_NAMES, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"choose one of {NOTEBOOK_SIZE_NAMES}"
        raise ValueError(f"no notebook size {name!r}; {hint}")
    sizes = _NOTEBOOK_SIZES[name]
    return copy.deepcopy(sizes.get(resolve_profile(profile), sizes["default"]))
