"""Train a network from a TrainConfig and get back everything measured about the run.

Taught in notebooks 04 (the recipe) and 06 (the record run). `train(cfg, data)` builds its own model,
optimisers and loaders every time it is called, so re-running a notebook cell never continues from
trained weights by accident. Timing follows the anchors: only the training steps are inside the timer
(CUDA events on a GPU, wall time elsewhere); whitening init, per-epoch evaluation, test-time
augmentation and compilation are measured apart and reported on their own.

Command line (for headless runs and the GPU benchmark), in hlb_utils/cli.py:
    python -m hlb_utils train --profile quick --runs 2 --data PATH --out runs/quick
"""
from __future__ import annotations

import copy
import math
import resource
import socket
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import data as data_mod
from .config import TrainConfig, get_profile
from .device import (Timer, device_name, dtype_name, dynamo_gave_up, maybe_compile, needs_warm_up, pick_device,
                     pick_dtype, region, synchronize, use_channels_last)
from .evaluate import evaluate, memory_format_of
from .loader import DeviceLoader
from .model import init_whitening, make_net
from . import optim as optim_mod
from .optim import EMA, Muon, lr_multiplier, smoothed_cross_entropy
from .progress import LiveTable

COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "ema_acc", "tta_acc", "train_seconds"]


# The learner's pieces `train()` accepts: loss_fn(logits, labels) -> summed loss, and
# make_optimizers(net, cfg) -> an optimiser or a list of them.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[nn.Module, TrainConfig], "torch.optim.Optimizer | list[torch.optim.Optimizer]"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite. `what` says where; `changes` are the config changes to try
    next (a lower lr), so that the command line can give the same advice as `--set` options."""

    def __init__(self, what: str, changes: dict) -> None:
        self.what, self.changes = what, dict(changes)
        args = ", ".join(f"{key}={value!r}" for key, value in self.changes.items())
        super().__init__(f"{what}; try a lower learning rate, e.g. cfg.replace({args})")


@dataclass
class TrainResult:
    """What one run produced. `history` has one row per epoch (columns in COLUMNS, plus lr)."""

    config: TrainConfig
    history: pd.DataFrame
    test_accuracy: float          # final accuracy with the config's TTA, 0..1 (NaN if interrupted early)
    train_seconds: float          # training steps only (see module docstring)
    compile_seconds: float = 0.0  # compile + warm-up (every CUDA run), never inside train_seconds
    init_seconds: float = 0.0     # whitening initialisation
    tta_seconds: float = 0.0      # the final evaluation with TTA
    wall_seconds: float = 0.0     # the whole call, loading and evaluation included
    device: str = "cpu"
    precision: str = "fp32"       # what 'auto' resolved to: bf16, fp16 or fp32
    peak_memory_mb: float | None = None
    interrupted: bool = False     # cut short (Ctrl-C, SIGTERM): never counted in a series' statistics
    at_chance: bool = False       # the final accuracy cannot be told apart from guessing
    compile_note: str = "off"
    host: str = field(default_factory=socket.gethostname)   # the machine that trained (many runs on a cluster)
    model: nn.Module | None = field(default=None, repr=False)


def _subset(images, labels, n, seed=0):
    """The first n of a fixed shuffle, so a subset holds every class (the replica is class-ordered)."""
    if n is None or n >= len(labels):
        return images, labels
    order = data_mod.shuffled_indices(len(labels), n, seed)
    return images[order], labels[order]


def make_loaders(cfg: TrainConfig, data, device, dtype=torch.float32, channels_last: bool = False):
    """The training and test DeviceLoaders `train()` uses (test normalised with the training statistics)."""
    device = torch.device(device)
    train_x, train_y = _subset(data.train_images, data.train_labels, cfg.train_subset)
    test_x, test_y = _subset(data.test_images, data.test_labels, cfg.test_subset)
    train = DeviceLoader(train_x, train_y, cfg.batch_size, train=True, device=device, dtype=dtype,
                         channels_last=channels_last, flip=cfg.flip, translate=cfg.translate,
                         cutout=cfg.cutout, brightness=cfg.brightness, contrast=cfg.contrast, seed=cfg.seed)
    # 2000 test images per batch on a GPU and 1000 on the CPU keep evaluation memory small.
    eval_batch = 2000 if device.type == "cuda" else 1000
    test = DeviceLoader(test_x, test_y, eval_batch, train=False, device=device, dtype=dtype,
                        channels_last=channels_last, mean=train.mean, std=train.std, flip="none")
    return train, test


def _set_lrs(optimizers, cfg: TrainConfig, step: int, total: int, whiten_steps: int) -> float:
    """Scale every group's initial lr by the schedule; the whitening bias decays to 0 on its own clock."""
    mult = lr_multiplier(cfg, step, total)
    for opt in optimizers:
        for group in opt.param_groups:
            if group.get("name") == "whiten_bias":
                group["lr"] = group["initial_lr"] * max(0.0, 1 - step / whiten_steps) if whiten_steps else 0.0
            else:
                group["lr"] = group["initial_lr"] * mult
    return mult


def _optimizers(factory: OptimizerFactory, net: nn.Module, cfg: TrainConfig) -> list:
    """The factory's optimisers as a list, each group with the `initial_lr` the schedule scales."""
    made = factory(net, cfg)
    optimizers = [made] if isinstance(made, torch.optim.Optimizer) else list(made)
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
    return optimizers


def _warm_up(run: "_Run", batch) -> float:
    """Pay the one-off costs before the clock starts: compilation, cuDNN's search for the fastest
    algorithms, the lazy loading of kernels (the optimisers' too). Two real training steps at each
    image size the run will see and one evaluation-mode call, then every weight, buffer, optimiser
    state and lr is put back, so the run trains exactly as if none of this had happened."""
    net, (x, y) = run.net, batch
    sizes = [x] + ([shrink(x, run.cfg.low_res)] if run.low_res_steps else [])
    saved = _snapshot(net, run.optimizers)
    start = time.perf_counter()
    try:
        with region("hlb:compile_warmup"):
            for images in sizes:
                for _ in range(2):
                    run.step(images, y)
            net.eval()
            with torch.no_grad(), run.precision(x):
                run.compiled(x)
            synchronize(x.device)
    finally:
        net.train()
        _restore(net, run.optimizers, saved)
    return time.perf_counter() - start


def _snapshot(net: nn.Module, optimizers) -> dict:
    """Copies of the weights, buffers and optimiser states (momentum buffers, step counts, lrs)."""
    return dict(net={k: v.clone() for k, v in net.state_dict().items()},
                optimizers=[copy.deepcopy(opt.state_dict()) for opt in optimizers])


def _restore(net: nn.Module, optimizers, saved: dict) -> None:
    net.load_state_dict(saved["net"])
    for opt, state in zip(optimizers, saved["optimizers"]):
        opt.load_state_dict(state)


def _prepare(run: "_Run", note: str) -> tuple[float, str]:
    """Warm up where it pays (every CUDA run, every compiled one); returns (seconds, compile note).

    Compilation is lazy: a backend that cannot build the net fails here, and the run goes on
    uncompiled (warmed up again, uncompiled, on a GPU).
    """
    if run.compiled is run.net and not needs_warm_up(run.device):
        return 0.0, note
    try:
        return _warm_up(run, next(iter(run.train_loader))), note
    except Exception as err:
        if run.compiled is run.net or isinstance(err, torch.cuda.OutOfMemoryError):
            raise
        warnings.warn(f"torch.compile failed on the first step ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); training uncompiled")
        run.compiled = run.net
        note = f"compile failed: {type(err).__name__}; trained uncompiled"
    finally:
        run.train_loader.reset()
    return _prepare(run, note)


def _check_compiled(run: "_Run", note: str, gave_up_before: int) -> str:
    """The compile note, amended when torch.compile gave up during the run and ran (part of) it eager."""
    if run.compiled is run.net or dynamo_gave_up() == gave_up_before:
        return note
    warnings.warn("torch.compile gave up part-way through this run (recompile limit or tracing error) "
                  "and ran the rest eager; TORCH_LOGS=recompiles tells why")
    return f"{note}; fell back to eager part-way"


def shrink(x: torch.Tensor, size: int) -> torch.Tensor:
    """Progressive resizing (fast.ai's DAWNBench trick): early epochs see smaller images, which cost
    about (size/32)^2 as much; the global max-pool head makes the net indifferent to the input size."""
    if x.shape[-1] == size:
        return x
    # antialiased resizing has no half-precision kernel on every device: resize in fp32, cast back
    out = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def _peak_memory_mb(device) -> float:
    """Peak CUDA memory of this run; elsewhere the process's peak resident memory (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(cfg: TrainConfig | None = None, data=None, model: nn.Module | None = None,
          verbose: bool = True, *, loss_fn: LossFn | None = None,
          make_optimizers: OptimizerFactory | None = None) -> TrainResult:
    """Train once. `data` is a Cifar10 tuple or a source for `load_cifar10` (None: HLB_DATA).

    The learner's own pieces replace ours (notebooks 03 and 04 train with theirs):
    - `model`: trained with the same recipe (if it has `.whiten` and `.head`, they are treated like
      ours; otherwise all its weights are ordinary parameters);
    - `loss_fn(logits, labels)`: the loss summed over the batch (default: `smoothed_cross_entropy`
      with the config's label smoothing);
    - `make_optimizers(net, cfg)`: an optimiser or a list of them (default: `optim.make_optimizers`).
      The schedule scales each group's lr from its `initial_lr`, which defaults to the group's lr.
    """
    wall_start = time.perf_counter()
    cfg = cfg or get_profile()
    if data is None or isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        data = data_mod.load_cifar10(data)
    device = pick_device(cfg.device)
    dtype = pick_dtype(device, cfg.dtype, cfg.weights)
    channels_last = use_channels_last(device, cfg.channels_last)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        # Shapes stay fixed, so cuDNN may time its algorithms once and keep the fastest (as the anchors do).
        torch.backends.cudnn.benchmark = True

    train_loader, test_loader = make_loaders(cfg, data, device, dtype, channels_last)
    net = (model if model is not None else make_net(cfg, len(data.classes))).to(device)
    if cfg.weights == "half":
        # hiverge's record: every weight and buffer (BatchNorm's statistics too) in the compute precision
        net = net.to(dtype)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    init_start = time.perf_counter()
    if hasattr(net, "whiten"):
        # a seeded random sample: folder sources store the images class by class
        pick = data_mod.shuffled_indices(len(train_loader.images), cfg.whiten_images, cfg.seed)
        with region("hlb:whiten_init"):
            init_whitening(net, train_loader.images[pick.to(device)])
    init_seconds = time.perf_counter() - init_start
    # ours runs Newton-Schulz in the run's precision
    optimizers = _optimizers(make_optimizers or partial(optim_mod.make_optimizers, dtype=dtype), net, cfg)
    compiled, compile_note = maybe_compile(net, cfg.compile, device, cfg.compile_mode)
    # fp32 weights compute under autocast; a net held in half precision needs none
    autocast = dtype if dtype != torch.float32 and cfg.weights == "fp32" else None
    run = _Run(cfg, net, compiled, optimizers, train_loader, test_loader, device, autocast, verbose)
    if loss_fn is not None:
        run.loss_fn = loss_fn
    gave_up = dynamo_gave_up()
    compile_seconds, compile_note = _prepare(run, compile_note)
    if verbose and compile_note != "off":
        print(f"torch.compile: {compile_note}" + (f" ({compile_seconds:.1f} s warm-up, not timed)"
                                                   if compile_seconds else ""))
    history, interrupted = run.loop()
    final_net = run.ema.model if run.ema is not None else run.compiled
    tta_start = time.perf_counter()
    acc = math.nan
    if not interrupted or history:
        with region("hlb:tta_evaluate"):
            acc = evaluate(final_net, test_loader, tta=cfg.tta, autocast_dtype=autocast)["acc"]
        if history:
            history[-1]["tta_acc"] = acc
            run.table.update_last(history[-1])
    tta_seconds = time.perf_counter() - tta_start
    compile_note = _check_compiled(run, compile_note, gave_up)
    frame = pd.DataFrame(history, columns=COLUMNS + ["lr"])
    chance = at_chance(acc, len(data.classes), len(test_loader.labels))
    if verbose:
        note = f" (chance level for {len(data.classes)} classes: the net learned nothing)" if chance else ""
        print(f"final test accuracy (TTA {cfg.tta}): {acc:.4f}{note}   training: {run.timer.total:.2f} s")
    return TrainResult(config=cfg, history=frame, test_accuracy=acc, train_seconds=run.timer.total,
                       compile_seconds=compile_seconds, init_seconds=init_seconds, tta_seconds=tta_seconds,
                       wall_seconds=time.perf_counter() - wall_start, device=device_name(device),
                       precision=dtype_name(dtype),
                       peak_memory_mb=_peak_memory_mb(device), interrupted=interrupted,
                       at_chance=chance, compile_note=compile_note, model=net)


def at_chance(accuracy: float, classes: int, n_test: int) -> bool:
    """True when `accuracy` on n_test images is within 3 standard errors of guessing (1/classes).

    A run that diverged quietly (e.g. lr far too high) ends there; saying so keeps it from being
    read as a result. NaN (no evaluation) is not at chance: it is no figure at all.
    """
    if math.isnan(accuracy) or classes < 2 or n_test < 1:
        return False
    p = 1.0 / classes
    return accuracy <= p + 3 * math.sqrt(p * (1 - p) / n_test)


class _Run:
    """The state of one training loop. Private: `train()` is the public face."""

    def __init__(self, cfg, net, compiled, optimizers, train_loader, test_loader, device, autocast, verbose):
        self.cfg, self.net, self.compiled, self.optimizers = cfg, net, compiled, optimizers
        self.train_loader, self.test_loader, self.device, self.autocast = train_loader, test_loader, device, autocast
        self.steps_per_epoch = len(train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"TrainConfig.batch_size={cfg.batch_size} is larger than the "
                             f"{cfg.train_subset or 'all'} training images; lower it")
        self.total_steps = max(1, round(cfg.epochs * self.steps_per_epoch))
        # ceil, as the anchors count it (hiverge: ceil(0.19 * 32) = 7 steps); round() first drops float noise
        self.whiten_steps = math.ceil(round(cfg.whiten_bias_epochs * self.steps_per_epoch, 6))
        self.low_res_steps = round(cfg.low_res_epochs * self.steps_per_epoch) if cfg.low_res else 0
        self.ema_start = self.total_steps - round(cfg.ema_epochs * self.steps_per_epoch)
        self.ema = None  # made at the step where averaging starts (a copy of the weights then)
        self.timer = Timer(device)
        for opt in optimizers:
            if isinstance(opt, Muon):
                opt.total_steps = self.total_steps   # its renormalisation period grows with progress
        self.table = LiveTable(COLUMNS, enabled=verbose)
        self.loss_fn = self.default_loss

    def default_loss(self, logits, y):
        """Our loss: cross-entropy with the config's label smoothing, summed over the batch."""
        return smoothed_cross_entropy(logits, y, self.cfg.label_smoothing, reduction="sum")

    def precision(self, x):
        """Mixed precision (autocast to bf16/fp16) where the config asks for it, else a no-op."""
        return torch.autocast(x.device.type, dtype=self.autocast) if self.autocast else nullcontext()

    def step(self, x, y):
        """One optimisation step; returns (summed loss, correct count) as device tensors."""
        with region("hlb:forward_backward"):
            with self.precision(x):
                logits = self.compiled(x)
                loss = self.loss_fn(logits.float(), y)
            loss.backward()
        with region("hlb:optimizer"):
            for opt in self.optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    def loop(self) -> tuple[list[dict], bool]:
        history, step = [], 0
        epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        try:
            for epoch in range(1, epochs + 1):
                step, stats = self._epoch(epoch, step)
                history.append(self._row(epoch, stats, last=epoch == epochs))
                self.table.add(history[-1])
        except KeyboardInterrupt:
            if self.timer._start is not None:
                self.timer.stop()
            print(f"\ninterrupted: kept the history of {len(history)} finished epoch(s)")
            return history, True
        except torch.cuda.OutOfMemoryError as err:
            raise RuntimeError(f"CUDA ran out of memory at batch_size={self.cfg.batch_size}; try "
                               f"cfg.replace(batch_size={max(1, self.cfg.batch_size // 2)})") from err
        return history, False

    def _epoch(self, epoch: int, step: int):
        self.net.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, lr = 0, 0.0
        # The loader plans the epoch and copies its indices to the device here, before the clock starts.
        batches = iter(self.train_loader)
        self.timer.start()
        with region("hlb:train_epoch"):   # the timed part, for benchmarks/profile_run.py
            for x, y in batches:
                if step >= self.total_steps:
                    break
                lr = _set_lrs(self.optimizers, self.cfg, step, self.total_steps, self.whiten_steps)
                if step < self.low_res_steps:
                    with region("hlb:resize"):
                        x = shrink(x, self.cfg.low_res)
                loss, right = self.step(x, y)
                self._check_finite(loss, step)
                loss_sum += loss
                correct += right
                seen += len(y)
                step += 1
                with region("hlb:averaging"):
                    self._average(step)
                if self.device.type == "cpu":
                    done = step - (epoch - 1) * self.steps_per_epoch
                    self.table.status(f"epoch {epoch}: step {done}/{self.steps_per_epoch}",
                                      done / self.steps_per_epoch)
            self.timer.stop()
        if not math.isfinite(loss_sum.item()):
            self._check_finite(loss_sum, step, exact=False)
        return step, dict(loss=loss_sum.item() / max(seen, 1), acc=correct.item() / max(seen, 1), lr=lr)

    def _check_finite(self, loss, step, exact=True):
        # On the CPU a per-step check is free; on a GPU it would stall the queue, so the
        # epoch's summed loss is checked once at the end instead.
        if exact and self.device.type != "cpu":
            return
        if not math.isfinite(loss.item()):
            where = f"at step {step}" if exact else f"in the epoch ending at step {step}"
            raise TrainingDiverged(f"the loss became {loss.item()} {where}",
                                   {"lr": float(f"{self.cfg.lr / 2:.3g}")})

    def _average(self, step: int) -> None:
        if self.cfg.ema_decay > 0 and step > self.ema_start and step % self.cfg.ema_every == 0:
            if self.ema is None:
                self.ema = EMA(self.net, self.cfg.ema_decay)
            else:
                self.ema.update(self.net)

    def _row(self, epoch: int, stats: dict, last: bool) -> dict:
        every = self.cfg.eval_every
        row = dict(epoch=epoch, train_loss=stats["loss"], train_acc=stats["acc"], test_loss=math.nan,
                   test_acc=math.nan, ema_acc=math.nan, tta_acc=math.nan,
                   train_seconds=self.timer.total, lr=stats["lr"])
        if last or (every and epoch % every == 0):
            with region("hlb:evaluate"):
                res = evaluate(self.compiled, self.test_loader, autocast_dtype=self.autocast)
                row.update(test_loss=res["loss"], test_acc=res["acc"])
                if self.ema is not None:
                    row["ema_acc"] = evaluate(self.ema.model, self.test_loader, autocast_dtype=self.autocast)["acc"]
        return row



if __name__ == "__main__":
    # Run as a script, this file would be imported a second time by the command line it starts.
    raise SystemExit("the command line is `python -m hlb_utils train ...` (see `python -m hlb_utils --help`)")
