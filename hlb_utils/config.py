"""Every training knob in one dataclass, plus the named presets (profiles).

Taught in notebooks 04 (the recipe), 05 (speed tricks) and 06 (the record run). A notebook builds
its config with `get_profile(name)` and tweaks it with `dataclasses.replace(cfg, epochs=10)`; the
config is frozen, so nothing can change it behind a learner's back.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# The allowed values of the knobs, defined here once; the modules that use them import them from here
# (config.py itself imports none of our modules). Where a module needs more than the name (the class
# of an activation, the torch dtype of a precision), the value sits beside the name.
NETS = ("record", "seed")                               # model.make_net
ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}   # model.make_act
FLIP_MODES = ("alternate", "random", "none")            # loader.DeviceLoader
TTA_MODES = ("none", "flip", "multi", "selective")      # evaluate.tta_logits
OPTIMIZERS = ("muon", "sgd")                            # optim.make_optimizers
MUON_BATCHES = ("shape", "pad")                         # optim.Muon: one Newton-Schulz call per shape, or all padded
SCHEDULES = ("linear", "onecycle")                      # optim.lr_multiplier
DEVICES = ("auto", "cuda", "cpu", "mps")                # device.pick_device
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}   # device.pick_dtype
WEIGHTS = ("fp32", "half")                              # device.pick_dtype: fp32 under autocast, or the net in half
CHANNELS_LAST = ("auto", "on", "off")                   # device.use_channels_last
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")   # torch.compile
COMPILE_SCOPES = ("model", "step")                      # compiling.compile_run: the model, or forward + loss as one graph
# Quintic Newton-Schulz coefficients of airbench94_muon / Keller Jordan's Muon (optim.newton_schulz's
# default): picked to lift small singular values fast, at the price of leaving them spread around 1
# instead of exactly 1. hiverge's record retuned them (the `record` profile's ns_coeffs).
NS_COEFFS = (3.4445, -4.7750, 2.0315)
# The seeds a series may use (seed .. seed + runs - 1): what torch.manual_seed and NumPy both accept.
SEED_RANGE = (0, 2**63 - 1)
# The smallest input both nets train at: the whitening layer's 2x2 patches cost a pixel, and three 2x2
# poolings then need 8 pixels left (at 8 the last pooling has nothing to pool).
MIN_IMAGE_SIZE = 9


def sgd_lr_scale(momentum: float) -> float:
    """Our SGD lr over PyTorch's: 1024 * (1 + 1 / (1 - momentum)) (airbench94's unit; notebook 05).

    The loss is summed over the batch, so PyTorch's lr is already per example; x 1024 makes it read
    per 1024 examples. Momentum multiplies a steady gradient's step by about 1 / (1 - momentum);
    dividing it out means a change of momentum leaves the step size alone. `optim.make_optimizers`
    divides `lr` (for 'sgd'), `bias_lr`, `head_lr` and `weight_decay * batch_size` by this, the one place
    the units meet.
    """
    return 1024 * (1 + 1 / (1 - momentum))


# airbench94_muon's SGD figures (bias lr 0.053, head lr 0.67, decay 2e-6 per example) are PyTorch's,
# at momentum 0.85: times this they read in our unit.
_SGD_085 = sgd_lr_scale(0.85)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Units and sensible ranges are in the comments."""

    profile: str = "custom"           # name of the preset this came from (for the run records)
    # --- network ---
    net: str = "record"               # 'record' (airbench-style, no residual) or 'seed' (SE-ResNet)
    widths: tuple = (64, 256, 256)    # channels of the conv groups; record: 3 groups, seed: 4
    act: str = "gelu"                 # 'gelu', 'silu' or 'relu'
    whiten_act: str = "gelu"          # record net: the activation right after the whitening (hiverge keeps GELU there)
    bn_momentum: float = 0.4          # PyTorch convention (weight of the new batch), 0..1
    bn_eps: float = 1e-12
    # --- data ---
    batch_size: int = 2000            # images per step, 1..50000
    epochs: float = 8.0               # passes over the training set; fractions allowed, > 0
    train_subset: int | None = None   # use only the first N shuffled training images (tests)
    test_subset: int | None = None    # evaluate on the first N test images (tests)
    flip: str = "alternate"           # 'alternate', 'random' or 'none'
    translate: int = 2                # pixels of random translation (reflect padding), 0..8
    cutout: int = 0                   # side of the blanked square in pixels, 0..32
    low_res: int = 0                  # progressive resizing: train the first epochs at this size (pixels, 0 = off)
    low_res_epochs: float = 0.0       # ... for this many epochs, then at full size, >= 0
    first_res: int = 0                # a first, smaller stage: the first epochs at this size (pixels, 0 = off), 8..low_res
    first_res_epochs: float = 0.0     # ... for this many of the low_res_epochs, then at low_res, >= 0
    brightness: float = 0.0           # per image and epoch, add a shift uniform in +-brightness (normalised units), 0..1
    contrast: float = 0.0             # ... then scale by a factor uniform in 1 +- contrast, 0..1
    whiten_images: int = 5000         # training images whose patches set the whitening filters, 1..50000
    # --- optimiser ---
    # SGD's lrs and weight decay are per 1024 examples, whatever the momentum (see sgd_lr_scale)
    optimizer: str = "muon"           # 'muon' (conv filters by Muon, rest by SGD) or 'sgd'
    lr: float = 0.24                  # Muon: step size relative to the weights' norm; 'sgd': the filters' SGD lr
    momentum: float = 0.6             # Muon momentum; for 'sgd' the filters use sgd_momentum
    sgd_momentum: float = 0.85        # Nesterov momentum of the SGD groups, 0..0.999
    bias_lr: float = 0.053 * _SGD_085   # SGD lr of norm biases and the whitening bias (416), >= 0
    head_lr: float = 0.67 * _SGD_085    # SGD lr of the classifier head (5260), >= 0
    weight_decay: float = 2e-6 * _SGD_085   # SGD groups' L2 term, coupled as in airbench (0.0157), 0..1
    ns_steps: int = 3                 # Newton-Schulz iterations in Muon, 1..10
    ns_coeffs: tuple = NS_COEFFS      # Newton-Schulz polynomial (a, b, c): a s + b s^3 + c s^5
    filter_weight_decay: float = 0.0  # Muon's decoupled decay per example: w *= 1 - lr * this * batch_size per step, >= 0
    renorm_every: int = 1             # Muon rescales the filters to norm sqrt(out) every N steps, >= 1 ...
    renorm_growth: float = 0.0        # ... N growing by int(renorm_growth * progress) over the run, >= 0
    muon_batch: str = "shape"         # 'shape': one Newton-Schulz call per filter shape; 'pad': all zero-padded into one
    label_smoothing: float = 0.2      # 0..1
    # --- schedule ---
    schedule: str = "linear"          # 'linear' (warm-up then linear decay) or 'onecycle'
    warmup: float = 0.0               # fraction of the steps spent warming up, 0..1
    peak: float = 0.25                # onecycle: fraction of steps at which the lr peaks, 0..1
    start_lr: float = 0.2             # onecycle: starting multiplier, >= 0
    end_lr: float = 0.0               # final multiplier, >= 0
    whiten_bias_epochs: float = 3.0   # the whitening bias trains for this many epochs, >= 0
    # --- averaging ---
    ema_decay: float = 0.0            # 0 = no EMA; else decay per EMA update, 0..1
    ema_every: int = 2                # steps between EMA updates, >= 1
    ema_epochs: float = 2.0           # EMA runs over the last N epochs, >= 0
    # --- evaluation ---
    tta: str = "multi"                # 'none', 'flip', 'multi' (flip + 1-pixel translations) or 'selective' (multi on the least sure 25%)
    eval_every: int = 1               # evaluate the test set every N epochs (outside the timer); 0 = only at the end
    # --- machine ---
    device: str = "auto"              # 'auto', 'cuda', 'cpu' or 'mps'
    dtype: str = "auto"               # 'auto', 'bf16', 'fp16' or 'fp32'
    weights: str = "fp32"             # 'fp32' (computed under autocast) or 'half' (net and BN held in dtype, no autocast)
    channels_last: str = "auto"       # 'auto', 'on' or 'off'
    compile: bool = False             # torch.compile the model (falls back cleanly where unsupported)
    compile_mode: str = "max-autotune"  # torch.compile mode; small GPUs (< 68 SMs) get 'default' instead
    compile_scope: str = "model"      # 'model' (the network) or 'step' (forward pass and loss as one graph)
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated again; a misspelt field is named, not ignored)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def steps_per_epoch(self, n_train: int = 50_000) -> int:
        """Optimiser steps per epoch on a training set of n_train images (the last partial batch is dropped)."""
        return min(self.train_subset or n_train, n_train) // self.batch_size


# (field, allowed set) and (field, low, high) checks, so errors name the field and the range.
_CHOICES = {
    "net": NETS, "act": ACTIVATIONS, "whiten_act": ACTIVATIONS, "muon_batch": MUON_BATCHES,
    "flip": FLIP_MODES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "tta": TTA_MODES,
    "device": DEVICES, "dtype": ("auto", *DTYPES), "channels_last": CHANNELS_LAST,
    "compile_mode": COMPILE_MODES, "weights": WEIGHTS, "compile_scope": COMPILE_SCOPES,
}
_RANGES = {
    "bn_momentum": (0.0, 1.0), "bn_eps": (0.0, 1.0), "batch_size": (1, 50000),
    "epochs": (1e-9, 1000.0), "translate": (0, 8), "cutout": (0, 32), "lr": (0.0, 100.0),
    "momentum": (0.0, 1.0), "sgd_momentum": (0.0, 0.999), "bias_lr": (0.0, 1e5),
    "head_lr": (0.0, 1e5), "weight_decay": (0.0, 1.0), "ns_steps": (1, 10),
    "label_smoothing": (0.0, 1.0), "warmup": (0.0, 1.0), "peak": (0.0, 1.0),
    "start_lr": (0.0, 10.0), "end_lr": (0.0, 10.0), "whiten_bias_epochs": (0.0, 1000.0),
    "ema_decay": (0.0, 1.0), "ema_every": (1, 10000), "ema_epochs": (0.0, 1000.0),
    "eval_every": (0, 1000), "low_res": (0, 32), "low_res_epochs": (0.0, 1000.0),
    "first_res": (0, 32), "first_res_epochs": (0.0, 1000.0),
    "brightness": (0.0, 1.0), "contrast": (0.0, 1.0), "whiten_images": (1, 50000),
    "filter_weight_decay": (0.0, 1.0), "renorm_every": (1, 10000), "renorm_growth": (0.0, 10000.0),
}


def _validate(cfg: TrainConfig) -> None:
    for name, allowed in _CHOICES.items():
        value, allowed = getattr(cfg, name), tuple(allowed)   # a mapping's names
        if value not in allowed:
            raise ValueError(f"TrainConfig.{name}={value!r} is not allowed; choose one of {allowed}")
    for name, (low, high) in _RANGES.items():
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"TrainConfig.{name}={value!r} is not a number; allowed {low}..{high}")
        if not low <= value <= high:
            raise ValueError(f"TrainConfig.{name}={value!r} is out of range; allowed {low}..{high}")
    for f in dataclasses.fields(cfg):
        # annotations are text here (postponed evaluation): 'int' marks the whole-number fields
        value = getattr(cfg, f.name)
        if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"TrainConfig.{f.name}={value!r} is not a whole number")
    groups = 4 if cfg.net == "seed" else 3
    if len(cfg.widths) != groups or any(int(w) < 1 for w in cfg.widths):
        raise ValueError(f"TrainConfig.widths={cfg.widths!r}: the {cfg.net} net needs {groups} positive widths")
    if 0 < cfg.low_res < MIN_IMAGE_SIZE:
        raise ValueError(f"TrainConfig.low_res={cfg.low_res} is too small for the nets' poolings; "
                         f"allowed 0 (off) or {MIN_IMAGE_SIZE}..32 pixels")
    if cfg.low_res and cfg.low_res_epochs > cfg.epochs:
        # e.g. halving `epochs` alone: the whole run would then train at low_res pixels, never at full size
        raise ValueError(f"TrainConfig.low_res_epochs={cfg.low_res_epochs:g} is more than epochs={cfg.epochs:g}: "
                         f"the whole run would train at {cfg.low_res} px; change both, e.g. "
                         f".replace(epochs={cfg.epochs:g}, low_res_epochs={0.7 * cfg.epochs:.3g}), or set low_res=0")
    if cfg.first_res and not (cfg.low_res and MIN_IMAGE_SIZE <= cfg.first_res <= cfg.low_res):
        raise ValueError(f"TrainConfig.first_res={cfg.first_res} needs progressive resizing (low_res > 0) and a "
                         f"size from {MIN_IMAGE_SIZE} to low_res={cfg.low_res} pixels; or set first_res=0")
    if cfg.first_res and cfg.first_res_epochs > cfg.low_res_epochs:
        raise ValueError(f"TrainConfig.first_res_epochs={cfg.first_res_epochs:g} is more than "
                         f"low_res_epochs={cfg.low_res_epochs:g}: the first stage is part of the low-resolution "
                         f"epochs; raise low_res_epochs or lower first_res_epochs")
    if len(cfg.ns_coeffs) != 3 or not all(isinstance(c, (int, float)) for c in cfg.ns_coeffs):
        raise ValueError(f"TrainConfig.ns_coeffs={cfg.ns_coeffs!r} must be three numbers (a, b, c)")
    for name in ("train_subset", "test_subset"):
        value = getattr(cfg, name)
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise ValueError(f"TrainConfig.{name}={value!r} must be None or a positive integer")


def _check_names(changes: dict) -> None:
    """Refuse a change to a field TrainConfig does not have, suggesting the nearest field names."""
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    for name in changes:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {' or '.join(map(repr, near))}?" if near else "see hlb_utils/config.py"
            raise ValueError(f"TrainConfig has no field {name!r}; {hint}")


# The presets. `record` follows hiverge's cifar10-speedrun (https://github.com/hiverge/cifar10-speedrun,
# the record after airbench94_muon), `airbench` airbench94_muon's published hyperparameters
# (https://github.com/KellerJordan/cifar10-airbench); `seed` follows hlb-CIFAR10's SE-ResNet era
# (https://github.com/tysam-code/hlb-CIFAR10); `cpu` (the record's recipe, sized for 2 CPU cores) and
# `quick` are ours.
# hiverge's cifar10_speedrun as its repository holds it (commit 5cd49b1, 2025-09-30, README: 2.015 s on an A100;
# ceil(7.59 x 32) = 243 steps of 1536; its re-timing at 1.98 s is pull request 6,
# https://github.com/hiverge/cifar10-speedrun/pull/6) apart from its size and compile: the
# `record` profile, and the `cpu` profile on a narrower net. BN momentum 0.5566 in their convention is
# 1 - 0.5566 in PyTorch's. Their whitening bias trains for ceil(0.19 * 32) = 7 steps; their Muon
# renormalises every 2 + int(15 * progress) steps and decays the filters by lr * 1.0418e-6 * batch per
# step, the SGD groups' L2 term has the same per-example figure. Their SGD figures are PyTorch's at
# momentum 0.825 (bias lr 0.0573, head lr 0.5415): times sgd_lr_scale(0.825) they read in our unit.
_SGD_0825 = sgd_lr_scale(0.825)
_RECORD_RECIPE: dict[str, Any] = dict(
    act="silu", whiten_act="gelu", bn_momentum=1 - 0.5566, whiten_images=960, whiten_bias_epochs=0.19,
    brightness=0.1399, contrast=0.1308, lr=0.205, momentum=0.655, sgd_momentum=0.825,
    bias_lr=0.0573 * _SGD_0825, head_lr=0.5415 * _SGD_0825, weight_decay=1.0418e-6 * _SGD_0825,
    filter_weight_decay=1.0418e-6,
    ns_coeffs=(3.4576, -4.7391, 2.0843), renorm_every=2, renorm_growth=15.0, muon_batch="pad",
    label_smoothing=0.09, tta="selective",
)

_PROFILES: dict[str, dict[str, Any]] = {
    # hiverge holds its whole net in fp16 (weights="half": fp16 on every GPU, fp32 on the CPU)
    # 7.59 epochs, the script's own count (the 1.98 s of their pull request #6, "Results from RunPod A100",
    # 2025-10-17, is a re-timing on another A100; our mirror lacks its diff, so no other count is cited)
    "record": dict(**_RECORD_RECIPE, batch_size=1536, epochs=7.59, compile=True, weights="half",
                   compile_scope="step"),
    # airbench94_muon compiles its model too. Compiled code is shared by every later net of the same
    # shape (benchmarks/NOTES.md has the compile times measured on the CPU backend), so one
    # warm-up run pays for it and the counted runs do not.
    "airbench": dict(compile=True),
    # From hlb-CIFAR10 main.py at commit cb53b42 (2023-01-29, the first version under 10 A100-seconds).
    # PyTorch's lr 1.15 * 1.35 / 512 per step of summed loss at momentum 0.85 (23.8 in our unit),
    # biases x32, head at the filters' lr. hlb's coupled decay, 0.85 * 4.8e-4 * 512 at that lr, is a
    # per-step decay of lr * 0.85 * 4.8e-4 per example. Its one-cycle peaks at 25% of the first 8
    # epochs (epoch 2, 20% of all) and ends at 0.135x. BN momentum 0.8 was passed straight to
    # nn.BatchNorm2d, so it is already PyTorch's convention.
    "seed": dict(
        net="seed", widths=(32, 128, 256, 512), bn_momentum=0.8, batch_size=512, epochs=10,
        flip="random", translate=3, optimizer="sgd", lr=1.15 * 1.35 / 512 * _SGD_085, sgd_momentum=0.85,
        bias_lr=1.15 * 1.35 * 32 / 512 * _SGD_085, head_lr=1.15 * 1.35 / 512 * _SGD_085,
        weight_decay=1.15 * 1.35 / 512 * 0.85 * 4.8e-4 * _SGD_085, schedule="onecycle", peak=0.2, start_lr=0.0,
        end_lr=0.135, whiten_bias_epochs=0.0, ema_decay=0.986 ** 2, ema_every=2, ema_epochs=2,
        tta="flip",
    ),
    "cpu": dict(
        # The record's recipe on a narrower net, sized to 12 minutes of wall time on 2 CPU cores: most
        # epochs at 24 px cost little accuracy and save much time, and at this size width buys more than
        # epochs, batch size or label smoothing (the frontier of candidates, accuracy against minutes, is
        # in benchmarks/NOTES.md; benchmarks/cpu_frontier.py measures it).
        **_RECORD_RECIPE, widths=(32, 160, 160), batch_size=500, epochs=9, low_res=24,
        low_res_epochs=6, dtype="fp32", eval_every=2,
    ),
    "quick": dict(
        widths=(16, 32, 32), batch_size=250, epochs=4, train_subset=5000, test_subset=2000,
        tta="flip", dtype="fp32", eval_every=1, whiten_bias_epochs=1.0,
    ),
}


PROFILE_NAMES = tuple(_PROFILES)


def resolve_profile(name: str | None = None) -> str:
    """'auto' (the default) means `record` on CUDA and `cpu` elsewhere; HLB_PROFILE overrides it."""
    name = name or os.environ.get("HLB_PROFILE") or "auto"
    if name == "auto":
        name = "record" if torch.cuda.is_available() else "cpu"
    if name not in _PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {PROFILE_NAMES + ('auto',)}")
    return name


def get_profile(name: str | None = None, **changes: Any) -> TrainConfig:
    """The named preset as a TrainConfig, with optional field changes on top."""
    name = resolve_profile(name)
    _check_names(changes)
    return TrainConfig(profile=name, **{**_PROFILES[name], **changes})
