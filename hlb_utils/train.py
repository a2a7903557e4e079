"""Train a network from a TrainConfig and get back everything measured about the run.

Taught in notebooks 04 (the recipe) and 06 (the record run). `train(cfg, data)` builds its own model,
optimisers and loaders every time it is called, so re-running a notebook cell never continues from
trained weights by accident. Timing follows the anchors: only the training steps are inside the timer
(CUDA events on a GPU, wall time elsewhere); whitening init, per-epoch evaluation, test-time
augmentation and compilation are measured apart and reported on their own.

`train_loop` is the loop itself, on one screen; what can go wrong (a diverging loss, Ctrl-C, GPU memory)
and what is recorded (the history, the progress line) sit at its edges, in history.py; the test
evaluation between epochs is evaluate.py's, and compiling, the warm-up before the clock and the
fallback to eager live in compiling.py.

Command line (for headless runs and the GPU benchmark), in hlb_utils/cli.py:
    python -m hlb_utils train --profile quick --runs 2 --data PATH --out runs/quick
"""
from __future__ import annotations

import math
import socket
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import pandas as pd
import torch
from torch import nn

from . import data as data_mod
from . import optim as optim_mod
from .config import TrainConfig, get_profile
from . import compiling
from .device import Timer, device_name, dtype_name, mixed_precision, pick_device, pick_dtype, region, use_channels_last
from .evaluate import epoch_scores, evaluate
from .loader import DeviceLoader, shrink
from .model import init_whitening, make_net
from .optim import EMA, Muon, lr_multiplier, smoothed_cross_entropy
from .history import COLUMNS, STEP_COLUMNS, EpochLog, stops_cleanly


# The learner's pieces `train()` accepts: loss_fn(logits, labels) -> summed loss, and
# make_optimizers(net, cfg) -> an optimiser or a list of them.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[nn.Module, TrainConfig], "torch.optim.Optimizer | list[torch.optim.Optimizer]"]
# lr_schedule(step, total_steps) -> the lr multiplier; make_ema(net, decay) -> an object with .update(net)
# and .model; flip_masks(n, epochs, generator) -> one bool mask per epoch; tta_logits(net, x, mode) -> logits.
Schedule = Callable[[int, int], float]
EMAFactory = Callable[[nn.Module, float], object]


@dataclass
class TrainResult:
    """What one run produced. `history` has one row per epoch (columns in COLUMNS, plus lr); `steps`
    one row per training step (STEP_COLUMNS: its loss, mean per image, and the schedule's lr multiplier)."""

    config: TrainConfig
    history: pd.DataFrame
    test_accuracy: float          # final accuracy with the config's TTA, 0..1 (NaN if interrupted early)
    train_seconds: float          # training steps only (see module docstring)
    compile_seconds: float = 0.0  # compile + warm-up (every CUDA run), never inside train_seconds
    init_seconds: float = 0.0     # whitening initialisation
    tta_seconds: float = 0.0      # the final evaluation with TTA
    wall_seconds: float = 0.0     # the whole call, loading and evaluation included
    steps: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=STEP_COLUMNS))
    device: str = "cpu"
    precision: str = "fp32"       # what 'auto' resolved to: bf16, fp16 or fp32
    peak_memory_mb: float | None = None
    interrupted: bool = False     # cut short (Ctrl-C, SIGTERM): never counted in a series' statistics
    at_chance: bool = False       # the final accuracy cannot be told apart from guessing
    compile_note: str = "off"
    host: str = field(default_factory=socket.gethostname)   # the machine that trained (many runs on a cluster)
    model: nn.Module | None = field(default=None, repr=False)
    # the trained weights on the CPU, when `model` is the process's one net of its shape (on CUDA) and the
    # next run re-initialises it: `model.load_state_dict(result.weights)` brings this run's back
    weights: dict | None = field(default=None, repr=False)


def make_loaders(cfg: TrainConfig, data, device, dtype=torch.float32, channels_last: bool = False,
                 flip_masks: Callable | None = None):
    """The training and test DeviceLoaders `train()` uses (test normalised with the training statistics)."""
    device = torch.device(device)
    train_x, train_y = data_mod.subset(data.train_images, data.train_labels, cfg.train_subset)
    test_x, test_y = data_mod.subset(data.test_images, data.test_labels, cfg.test_subset)
    train = DeviceLoader(train_x, train_y, cfg.batch_size, train=True, device=device, dtype=dtype,
                         channels_last=channels_last, flip=cfg.flip, translate=cfg.translate,
                         cutout=cfg.cutout, brightness=cfg.brightness, contrast=cfg.contrast, seed=cfg.seed,
                         flip_masks=flip_masks)
    # 2000 test images per batch keep a GPU's evaluation memory small; on the CPU, batches of 250 run
    # faster per image than larger ones (benchmarks/NOTES.md).
    eval_batch = 2000 if device.type == "cuda" else 250
    test = DeviceLoader(test_x, test_y, eval_batch, train=False, device=device, dtype=dtype,
                        channels_last=channels_last, mean=train.mean, std=train.std, flip="none")
    return train, test


@dataclass(frozen=True)
class Plan:
    """A run's step counts, from its config and the loader's steps per epoch (counted as the anchors do)."""

    steps_per_epoch: int
    total: int        # optimiser steps in the whole run
    whiten: int       # the whitening bias trains for the first `whiten` steps
    low_res: int      # the first `low_res` steps see small images (progressive resizing)
    ema_start: int    # weight averaging starts after this step
    first_res: int = 0   # the first `first_res` of them see smaller images still

    @property
    def epochs(self) -> int:
        return math.ceil(self.total / self.steps_per_epoch)


def plan_steps(cfg: TrainConfig, steps_per_epoch: int) -> Plan:
    """The step counts of `cfg` on a loader of `steps_per_epoch` (an empty loader is the config's error)."""
    if steps_per_epoch == 0:
        raise ValueError(f"TrainConfig.batch_size={cfg.batch_size} is larger than the "
                         f"{cfg.train_subset or 'all'} training images; lower it")
    total = max(1, round(cfg.epochs * steps_per_epoch))
    # ceil, as the anchors count it (hiverge: ceil(0.19 * 32) = 7 steps); round() first drops float noise
    whiten = math.ceil(round(cfg.whiten_bias_epochs * steps_per_epoch, 6))
    low_res = round(cfg.low_res_epochs * steps_per_epoch) if cfg.low_res else 0
    first_res = round(cfg.first_res_epochs * steps_per_epoch) if cfg.first_res else 0
    return Plan(steps_per_epoch, total, whiten, low_res, total - round(cfg.ema_epochs * steps_per_epoch),
                first_res)


def set_lrs(optimizers, cfg: TrainConfig, step: int, total: int, whiten_steps: int,
            schedule: Schedule | None = None) -> float:
    """Scale every group's initial lr by the schedule (the learner's `schedule(step, total)`, else the
    config's); the whitening bias decays to 0 on its own clock (and the loop then stops its gradient).
    Returns the schedule's multiplier."""
    mult = schedule(step, total) if schedule is not None else lr_multiplier(cfg, step, total)
    for opt in optimizers:
        for group in opt.param_groups:
            if group.get("name") == "whiten_bias":
                group["lr"] = group["initial_lr"] * (1 - step / whiten_steps) if step < whiten_steps else 0.0
            else:
                group["lr"] = group["initial_lr"] * mult
    return mult


def stop_gradient(params) -> None:
    """No gradient for `params` from now on. Once the whitening bias's lr is 0 (as in airbench94 and
    hiverge's record) nothing before the first conv group needs a gradient, so the backward pass stops
    there: the weights come out the same, the steps are cheaper. `train()` switches it back on at the end."""
    for p in params:
        p.requires_grad_(False)


def whitening_bias(optimizers) -> list[torch.Tensor]:
    """The parameters of the groups named 'whiten_bias', whose gradient the loop stops part-way."""
    return [p for opt in optimizers for group in opt.param_groups if group.get("name") == "whiten_bias"
            for p in group["params"]]


def forward_loss(model: Callable, x: torch.Tensor, y: torch.Tensor, *, loss_fn: LossFn,
                 autocast: torch.dtype | None, totals: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward pass and the loss, in mixed precision if asked: what `compile_scope='step'`
    compiles as one graph. Returns (summed loss, logits). `totals` (the epoch's summed loss and correct
    count, `history.EpochLog.totals`) is added to here, inside the graph, so the history costs a
    compiled step no kernel of its own."""
    with mixed_precision(x.device, autocast):
        logits = model(x)
        loss = loss_fn(logits.float(), y)
    if totals is not None:
        totals.add_(torch.stack([loss.detach().float(), (logits.detach().argmax(1) == y).sum().float()]))
    return loss, logits


def train_loop(cfg: TrainConfig, plan: Plan, net: nn.Module, forward: Callable, model: Callable,
               optimizers: list, loader: DeviceLoader, timer: Timer, log: EpochLog,
               evaluate_epoch: Callable, *, schedule: Schedule | None = None,
               make_ema: EMAFactory = EMA) -> EMA | None:
    """The training loop (notebook 04): each step sets the schedule's lrs, (shrinks the images), runs
    the forward pass and the loss, the backward pass, the optimisers' step and the averaging. Only
    the steps are timed; each epoch then evaluates the test set (when due) and adds a row to the
    history. Returns the EMA (None if off).

    `forward(x, y) -> (loss, logits)` runs `net` (or its compiled self) and adds to `log.totals`;
    `model` evaluates: `evaluate_epoch(model, ema) -> scores` (`evaluate.epoch_scores` on the test loader);
    `schedule` and `make_ema` are the learner's (default: the config's schedule, `optim.EMA`).
    """
    ema, step = None, 0
    with stops_cleanly(cfg, timer, log):
        for epoch in range(1, plan.epochs + 1):
            net.train()
            batches = iter(loader)   # the loader plans the epoch here, before the clock starts
            timer.start()
            with region("hlb:train_epoch"):   # what the timer times, for benchmarks/profile_run.py
                for x, y in batches:
                    if step == plan.total:
                        break
                    if step == plan.whiten:   # the whitening bias has learned its part: no gradient from here on
                        stop_gradient(whitening_bias(optimizers))
                    lr = set_lrs(optimizers, cfg, step, plan.total, plan.whiten, schedule)
                    if step < plan.first_res:
                        x = shrink(x, cfg.first_res)
                    elif step < plan.low_res:
                        x = shrink(x, cfg.low_res)
                    loss, logits = forward(x, y)
                    loss.backward()
                    for opt in optimizers:
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                    log.step(loss, y, step, lr)   # the step's loss; on the CPU a NaN check and progress
                    step += 1
                    if cfg.ema_decay > 0 and step > plan.ema_start and step % cfg.ema_every == 0:
                        if ema is None:
                            ema = make_ema(net, cfg.ema_decay)   # a copy of the weights at this step
                        else:
                            ema.update(net)
                timer.stop()
            scores = evaluate_epoch(model, ema) if log.evaluates(epoch) else {}   # outside the timer
            log.epoch(epoch, step, lr, scores)
    return ema


def train(cfg: TrainConfig | None = None, data=None, model: nn.Module | None = None,
          verbose: bool = True, *, loss_fn: LossFn | None = None,
          make_optimizers: OptimizerFactory | None = None, lr_schedule: Schedule | None = None,
          make_ema: EMAFactory | None = None, flip_masks: Callable | None = None,
          tta_logits: Callable | None = None, whiten_init: Callable | None = None,
          dtype: torch.dtype | None = None, reuse_net: bool | None = None) -> TrainResult:
    """Train once. `data` is a Cifar10 tuple or a source for `load_cifar10` (None: HLB_DATA).

    The learner's own pieces replace ours (notebooks 03 and 04 train with theirs):
    - `model`: trained with the same recipe (if it has `.whiten` and `.head`, they are treated like
      ours; otherwise all its weights are ordinary parameters);
    - `loss_fn(logits, labels)`: the loss summed over the batch (default: `smoothed_cross_entropy`
      with the config's label smoothing);
    - `make_optimizers(net, cfg)`: an optimiser or a list of them (default: `optim.make_optimizers`).
      The schedule scales each group's lr from its `initial_lr`, which defaults to the group's lr;
    - `lr_schedule(step, total_steps)`: the lr multiplier at each step (default: `optim.lr_multiplier`);
    - `make_ema(net, decay)`: the weight average (default: `optim.EMA`);
    - `flip_masks(n, epochs, generator)`: which training images to mirror, one mask per epoch (default:
      the loader's `cfg.flip`);
    - `tta_logits(net, x, mode)`: the final evaluation's views (default: `evaluate.tta_logits`);
    - `whiten_init(net, images)`: sets the whitening filters from normalised training images (default:
      `model.init_whitening`).

    Two choices the device normally makes, for trying one machine's path on another:
    - `dtype`: the compute precision (default: `device.pick_dtype` for the config's `dtype` and
      `weights` on this device), e.g. what `pick_dtype` gives a GPU, on the CPU;
    - `reuse_net`: keep one net per shape in this process and re-initialise it each run (default:
      `reuses_nets(device)`, on CUDA only; `forget_nets()` empties the store).
    """
    wall_start = time.perf_counter()
    cfg = cfg or get_profile()
    if data is None or isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        data = data_mod.load_cifar10(data)
    device = pick_device(cfg.device)
    dtype = dtype or pick_dtype(device, cfg.dtype, cfg.weights)
    # fp32 weights compute under autocast; a net held in half precision (weights="half") needs none
    autocast = dtype if dtype != torch.float32 and cfg.weights == "fp32" else None
    channels_last = use_channels_last(device, cfg.channels_last)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        # Shapes stay fixed, so cuDNN may time its algorithms once and keep the fastest (as the anchors do).
        torch.backends.cudnn.benchmark = True

    train_loader, test_loader = make_loaders(cfg, data, device, dtype, channels_last, flip_masks=flip_masks)
    plan = plan_steps(cfg, len(train_loader))
    net = _place(model if model is not None else make_net(cfg, len(data.classes)), cfg, device, dtype, channels_last)
    totals = None   # the epoch's running loss and correct count (history.EpochLog): the net's own if it has one
    if model is None and (reuses_nets(device) if reuse_net is None else reuse_net):
        net, totals = _one_net_per_shape(net)   # the same tensors every run: compiled code and CUDA graphs stay valid
    init_seconds = _init_whitening(net, cfg, train_loader, whiten_init or init_whitening)
    # ours runs Newton-Schulz in the run's precision
    optimizers = _optimizers(make_optimizers or partial(optim_mod.make_optimizers, dtype=dtype), net, cfg, plan)
    loss_fn = loss_fn or partial(smoothed_cross_entropy, smoothing=cfg.label_smoothing, reduction="sum")
    log = EpochLog(cfg, plan, Timer(device), verbose, totals)
    run = compiling.prepare(net, partial(forward_loss, loss_fn=loss_fn, autocast=autocast), optimizers,
                            partial(_first_batches, train_loader, cfg, plan), device=device, enabled=cfg.compile,
                            mode=cfg.compile_mode, scope=cfg.compile_scope, autocast=autocast,
                            evaluate=partial(_evaluations, test_loader, cfg, autocast, tta_logits),
                            stopping=whitening_bias(optimizers), totals=log.totals,
                            evaluate_before_stop=plan.whiten >= min(plan.steps_per_epoch, plan.total))
    if verbose and run.note != "off":
        print(f"torch.compile: {run.note}" + (f" ({run.seconds:.1f} s warm-up, not timed)" if run.seconds else ""))
    evaluate_epoch = partial(epoch_scores, loader=test_loader, autocast_dtype=autocast)
    try:
        ema = train_loop(cfg, plan, net, run.forward, run.model, optimizers, train_loader, log.timer, log,
                         evaluate_epoch, schedule=lr_schedule, make_ema=make_ema or EMA)
        acc = math.nan
        tta_start = time.perf_counter()
        if not log.interrupted or log.history:
            # Ctrl-C here keeps the finished epochs' history
            with region("hlb:evaluate"), stops_cleanly(cfg, log.timer, log):
                acc = evaluate(ema.model if ema is not None else run.model, test_loader, tta=cfg.tta,
                               autocast_dtype=autocast, logits_fn=tta_logits)["acc"]
            log.final(acc)
        tta_seconds = time.perf_counter() - tta_start
    finally:
        for p in whitening_bias(optimizers):   # the net leaves as it came: a learner's net trains again as before
            p.requires_grad_(True)
    chance = at_chance(acc, len(data.classes), len(test_loader.labels))
    if verbose:
        note = f" (chance level for {len(data.classes)} classes: the net learned nothing)" if chance else ""
        print(f"final test accuracy (TTA {cfg.tta}): {acc:.4f}{note}   training: {log.timer.total:.2f} s")
    return TrainResult(config=cfg, history=pd.DataFrame(log.history, columns=COLUMNS + ["lr"]),
                       test_accuracy=acc, train_seconds=log.timer.total, compile_seconds=run.seconds,
                       steps=pd.DataFrame(log.steps, columns=STEP_COLUMNS),
                       init_seconds=init_seconds, tta_seconds=tta_seconds,
                       wall_seconds=time.perf_counter() - wall_start, device=device_name(device),
                       precision=dtype_name(dtype), peak_memory_mb=_peak_memory_mb(device),
                       interrupted=log.interrupted, at_chance=chance, compile_note=compiling.check_compiled(run),
                       model=net, weights=_cpu_copy(net) if totals is not None else None)


def _place(net: nn.Module, cfg: TrainConfig, device, dtype, channels_last: bool) -> nn.Module:
    """The net on the run's device, in its precision and memory format."""
    net = net.to(device)
    if cfg.weights == "half":
        # hiverge's record: every weight and buffer (BatchNorm's statistics too) in the compute precision
        net = net.to(dtype)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def reuses_nets(device: torch.device) -> bool:
    """Whether runs keep one net per shape and re-initialise it in place (on CUDA: a CUDA graph is bound
    to its tensors' addresses, and a new net per run would record new graphs and keep the old ones)."""
    return device.type == "cuda"


# the process's nets, one per shape: key -> (net, the epoch's running totals its compiled step adds to)
_NETS: dict = {}


def forget_nets() -> None:
    """Empty the process's store of nets (`reuse_net`): the next run of each shape starts a new one."""
    _NETS.clear()


def _key(net: nn.Module) -> tuple:
    """What must agree for two runs to share a net: the modules (their settings: activations, BatchNorm's
    momentum) and every tensor's name, shape, dtype, strides and device."""
    tensors = [*net.named_parameters(), *net.named_buffers()]
    return repr(net), tuple((name, tuple(t.shape), t.dtype, t.stride(), str(t.device)) for name, t in tensors)


def _one_net_per_shape(fresh: nn.Module) -> tuple[nn.Module, torch.Tensor]:
    """The process's net shaped like `fresh`, holding `fresh`'s initial weights (copied in place), or
    `fresh` itself the first time; with the running totals its compiled step adds to."""
    key = _key(fresh)
    if key not in _NETS:
        _NETS[key] = (fresh, torch.zeros(2, device=next(fresh.parameters()).device))
        return _NETS[key]
    net, totals = _NETS[key]
    with torch.no_grad():
        for mine, theirs in zip([*net.parameters(), *net.buffers()], [*fresh.parameters(), *fresh.buffers()]):
            mine.copy_(theirs)
    return net, totals


def _cpu_copy(net: nn.Module) -> dict:
    return {name: t.detach().to("cpu", copy=True) for name, t in net.state_dict().items()}


def _init_whitening(net: nn.Module, cfg: TrainConfig, loader: DeviceLoader, init: Callable) -> float:
    """Fit the whitening filters to a seeded random sample of training images; returns the seconds."""
    start = time.perf_counter()
    if hasattr(net, "whiten"):
        # a seeded random sample: folder sources store the images class by class
        pick = data_mod.shuffled_indices(len(loader.images), cfg.whiten_images, cfg.seed)
        init(net, loader.images[pick.to(loader.images.device)])
    return time.perf_counter() - start


def _optimizers(factory: OptimizerFactory, net: nn.Module, cfg: TrainConfig, plan: Plan) -> list:
    """The factory's optimisers as a list, each group with the `initial_lr` the schedule scales."""
    made = factory(net, cfg)
    optimizers = [made] if isinstance(made, torch.optim.Optimizer) else list(made)
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
        if isinstance(opt, Muon):
            opt.total_steps = plan.total   # its renormalisation period grows with progress
    return optimizers


def _evaluations(test_loader: DeviceLoader, cfg: TrainConfig, autocast, logits_fn: Callable | None,
                 model: Callable) -> None:
    """The run's evaluations on `model`, for the warm-up: the final one (with the config's TTA) runs the
    network at every size the per-epoch ones do, and at the TTA's own sizes."""
    evaluate(model, test_loader, tta=cfg.tta, autocast_dtype=autocast, logits_fn=logits_fn)


def _first_batches(loader: DeviceLoader, cfg: TrainConfig, plan: Plan) -> list:
    """One training batch at each image size the run will see (for the warm-up); the loader is put
    back to its first epoch, so the run sees the same data as without a warm-up."""
    x, y = next(iter(loader))
    loader.reset()
    sizes = ([cfg.low_res] if plan.low_res else []) + ([cfg.first_res] if plan.first_res else [])
    return [(x, y)] + [(shrink(x, size), y) for size in dict.fromkeys(sizes)]


def _peak_memory_mb(device) -> float | None:
    """Peak CUDA memory of this run; elsewhere the process's peak resident memory, where the platform
    reports it (POSIX's `resource`; Windows has none: None)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024   # bytes on macOS, KiB on Linux


def at_chance(accuracy: float, classes: int, n_test: int) -> bool:
    """True when `accuracy` on n_test images is within 3 standard errors of guessing (1/classes).

    A run that diverged quietly (e.g. lr far too high) ends there; saying so keeps it from being
    read as a result. NaN (no evaluation) is not at chance: it is no figure at all.
    """
    if math.isnan(accuracy) or classes < 2 or n_test < 1:
        return False
    p = 1.0 / classes
    return accuracy <= p + 3 * math.sqrt(p * (1 - p) / n_test)


if __name__ == "__main__":
    # Run as a script, this file would be imported a second time by the command line it starts.
    raise SystemExit("the command line is `python -m hlb_utils train ...` (see `python -m hlb_utils --help`)")
