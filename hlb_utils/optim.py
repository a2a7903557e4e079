"""Optimisation: parameter groups, the Muon optimiser, lr schedules, EMA, the loss.

Notebook 04 (the recipe) teaches `smoothed_cross_entropy`, `split_params` (a separate, larger lr for
biases), the schedules of `lr_multiplier` and `EMA`; notebook 05 (speed tricks) teaches `Muon` (a
learner writes `newton_schulz` and one Muon step, checked against these). `make_optimizers` puts them
together for `train.train`.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import NS_COEFFS, sgd_lr_scale
from .device import pick_dtype

PARAM_KINDS = ("filters", "norm_biases", "whiten_bias", "head", "other")


def split_params(net: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by role, each exactly once (the groups of DEVELOPERS.md).

    'filters': 4-D conv weights (whitening excluded); 'norm_biases': BN biases and other 1-D params;
    'whiten_bias'; 'head': net.head.weight; 'other': the rest (e.g. squeeze-and-excite weights).
    They differ enough in scale that each wants its own lr (hlb: biases x32, airbench x64).
    A learner's own net needs neither attribute: without `.head` its last nn.Linear is the head.
    """
    whiten = getattr(net, "whiten", None)
    head = getattr(net, "head", None)
    if head is None:
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    whiten_bias = getattr(whiten, "bias", None)
    whiten_weight = getattr(whiten, "weight", None)
    head_weight = getattr(head, "weight", None)
    parts: dict[str, list[nn.Parameter]] = {kind: [] for kind in PARAM_KINDS}
    for p in net.parameters():
        if not p.requires_grad:
            continue
        if p is whiten_bias:
            kind = "whiten_bias"
        elif p is head_weight:
            kind = "head"
        elif p.ndim == 4 and p is not whiten_weight:
            kind = "filters"
        elif p.ndim == 1:
            kind = "norm_biases"
        else:
            kind = "other"
        parts[kind].append(p)
    return parts


def newton_schulz(G: torch.Tensor, steps: int = 3, coeffs: tuple = NS_COEFFS) -> torch.Tensor:
    """Approximately orthogonalise a matrix: push every singular value of G towards 1 (notebook 05).

    G is first divided by its Frobenius norm (+1e-7), so that all its singular values are <= 1; then
    each step maps X to a X + (b A + c A^2) X with A = X X^T, which acts on each singular value s as
    a s + b s^3 + c s^5. After 3 steps they lie near 1, not on it, which trains as well as exactly 1.
    Runs in G's dtype. `coeffs` are (a, b, c). Muon runs the same iteration on a stack of matrices at
    once (`_newton_schulz_batched`).
    """
    a, b, c = coeffs
    # work on the wide orientation: X X^T is then the smaller Gram matrix
    X = G.T if G.shape[0] > G.shape[1] else G
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if G.shape[0] > G.shape[1] else X


def _newton_schulz_batched(G: torch.Tensor, steps: int = 3, dtype: torch.dtype | None = None,
                           coeffs: tuple = NS_COEFFS) -> torch.Tensor:
    """`newton_schulz` of each matrix in G (..., m, n) at once, three fused kernels per step.

    Runs in `dtype` (default: the device's compute precision, `device.pick_dtype`: bf16 on recent
    GPUs, fp16 on T4/V100, fp32 elsewhere) and returns that dtype.
    """
    a, b, c = coeffs
    X = G.to(dtype or pick_dtype(G.device))
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.mT
    batch_shape = X.shape[:-2]
    X = X.reshape(-1, *X.shape[-2:])   # one batch dimension, for baddbmm
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        # baddbmm(C, P, Q, beta, alpha) = beta C + alpha P @ Q in one kernel: three kernels per step
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)          # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a, alpha=1.0)        # a X + B X
    X = X.reshape(*batch_shape, *X.shape[-2:])
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """Momentum, then an orthogonalised update per conv filter bank (airbench94_muon, notebook 05).

    Each 4-D weight's update is reshaped to (out, in*k*k) and orthogonalised (`newton_schulz`);
    weights of the same shape are stacked and orthogonalised in one batched call (`batch='pad'`:
    all of them, zero-padded to one shape, as hiverge's record does; the zeros stay zero, so the
    result is the same). As in airbench94_muon, each weight is first rescaled to Frobenius norm
    sqrt(out channels); the orthogonalised update has about that norm too (its singular values are
    ~1 and there are min(out, in*k*k) = out of them for our convs), so `lr` is the relative step size
    whatever the shape. airbench rescales at every step (`renorm_every=1`); hiverge only once
    `renorm_every + int(renorm_growth * progress)` steps have passed since the last time, which needs
    `total_steps` (the trainer sets it). `weight_decay` is decoupled: w *= 1 - lr * weight_decay after
    each update (hiverge's; with a rescaling at every step it would be pointless).
    `dtype=None` picks `device.pick_dtype` of each weight's device.
    """

    def __init__(self, params, lr: float = 0.24, momentum: float = 0.6, nesterov: bool = True,
                 ns_steps: int = 3, dtype: torch.dtype | None = None, ns_coeffs: tuple = NS_COEFFS,
                 weight_decay: float = 0.0, renorm_every: int = 1, renorm_growth: float = 0.0,
                 batch: str = "shape", total_steps: int | None = None) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      ns_coeffs=tuple(ns_coeffs), weight_decay=weight_decay))
        self.ns_dtype, self.batch = dtype, batch
        self.renorm_every, self.renorm_growth, self.total_steps = renorm_every, renorm_growth, total_steps
        self.steps_done, self.last_renorm = 0, 0
        self.update = muon_update   # compiled by `compiling.prepare` on CUDA

    def state_dict(self) -> dict:
        """torch's state plus the rescaling clock, so a saved and restored Muon rescales on schedule."""
        return {**super().state_dict(), "renorm_clock": (self.steps_done, self.last_renorm)}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.steps_done, self.last_renorm = state_dict.pop("renorm_clock", (0, 0))
        super().load_state_dict(state_dict)

    def _renorm_due(self) -> bool:
        """Count this step; True if the weights are to be rescaled before it."""
        self.steps_done += 1
        growth = 0
        if self.renorm_growth:
            if not self.total_steps:
                raise ValueError("Muon: renorm_growth needs total_steps (the run's step count)")
            growth = int(self.renorm_growth * self.steps_done / self.total_steps)
        if self.steps_done - self.last_renorm < self.renorm_every + growth:
            return False
        self.last_renorm = self.steps_done
        return True

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        renorm = self._renorm_due()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            updates = self.update(params, [p.grad for p in params], bufs, group["momentum"], group["nesterov"],
                                  renorm, group["ns_steps"], group["ns_coeffs"], self.ns_dtype, self.batch)
            # the lr changes every step: applied here, outside the (compiled) update, so no step recompiles it
            torch._foreach_add_(params, updates, alpha=-group["lr"])
            decay = 1 - group["lr"] * group["weight_decay"]
            if decay != 1:
                torch._foreach_mul_(params, decay)
        return loss


def muon_update(params: list, grads: list, bufs: list, momentum: float, nesterov: bool, renorm: bool,
                ns_steps: int, coeffs: tuple, dtype: torch.dtype | None, batch: str) -> list:
    """Muon's step but for the lr: momentum, the orthogonalised updates and, when `renorm`, each weight
    rescaled in place to norm sqrt(out channels). One function, so that a compiled run compiles it
    into a few kernels (`compiling.prepare` replaces `Muon.update` with its compiled self on CUDA);
    eagerly it is the same arithmetic. Returns the updates, in the weights' dtypes."""
    updates = _orthogonalise(_momentum(grads, bufs, momentum, nesterov), ns_steps, coeffs, dtype, batch)
    if renorm:
        for p in params:
            p.mul_(p.shape[0] ** 0.5 / p.norm().clamp_min(1e-12))
    return [u.to(p.dtype) for p, u in zip(params, updates)]


def _momentum(grads: list, bufs: list, momentum: float, nesterov: bool) -> list:
    """buf <- momentum * buf + grad; the update is grad + momentum * buf (Nesterov) or buf.

    `torch._foreach_*` does each line for all weights at once (a few kernels, not a few per weight).
    """
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, grads)
    return torch._foreach_add(grads, bufs, alpha=momentum) if nesterov else bufs


def _orthogonalise(updates: list, ns_steps: int, coeffs: tuple, dtype: torch.dtype | None, batch: str) -> list:
    """Newton-Schulz of each update as an (out, in*k*k) matrix, batched by shape or all padded together."""
    mats = [u.reshape(u.shape[0], -1) for u in updates]
    def run(stack):
        return _newton_schulz_batched(stack, ns_steps, dtype, coeffs)

    if batch == "pad" and len({m.device for m in mats}) == 1:
        rows, cols = max(m.shape[0] for m in mats), max(m.shape[1] for m in mats)
        padded = run(torch.stack([F.pad(m, (0, cols - m.shape[1], 0, rows - m.shape[0])) for m in mats]))
        return [o[:m.shape[0], :m.shape[1]].reshape(u.shape) for o, m, u in zip(padded, mats, updates)]
    by_shape = defaultdict(list)
    for i, m in enumerate(mats):
        by_shape[(m.shape, m.device)].append(i)
    out = [None] * len(mats)
    for indices in by_shape.values():
        for i, o in zip(indices, run(torch.stack([mats[i] for i in indices]))):
            out[i] = o.reshape(updates[i].shape)
    return out


def _piecewise_linear(t: float, points: list[tuple[float, float]]) -> float:
    """Value at t of the polyline through (t, value) points sorted by t."""
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t <= t1:
            return v1 if t1 <= t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return points[-1][1]


def lr_multiplier(cfg, step: int, total_steps: int) -> float:
    """Factor on every group's `initial_lr` at `step` (0-based) of `total_steps` (notebook 04).

    'linear': 0 -> 1 over the first `cfg.warmup` of the steps, then linearly to `cfg.end_lr` at the
    end (airbench94_muon: no warm-up, 1 -> 0). 'onecycle': `cfg.start_lr` -> 1 at `cfg.peak`, then
    linearly to `cfg.end_lr` (hlb: 0 -> 1 -> 0.135).
    """
    if total_steps < 1:
        raise ValueError(f"lr_multiplier: total_steps={total_steps} must be >= 1")
    t = min(max(step / total_steps, 0.0), 1.0)
    if cfg.schedule == "linear":
        points = [(0.0, 0.0 if cfg.warmup > 0 else 1.0), (cfg.warmup, 1.0), (1.0, cfg.end_lr)]
    else:   # 'onecycle'
        points = [(0.0, cfg.start_lr), (cfg.peak, 1.0), (1.0, cfg.end_lr)]
    return float(_piecewise_linear(t, points))


def schedule_curve(cfg, total_steps: int) -> list[float]:
    """The multiplier at each step 0..total_steps-1, for `plots.plot_lr_schedule`."""
    return [lr_multiplier(cfg, s, total_steps) for s in range(total_steps)]


class EMA:
    """Exponential moving average of a net's weights (hlb, notebook 04).

    `ema.model` is a deep copy (eval mode, no grads) kept in sync by `update(net)`: each float
    parameter and float buffer moves to decay * ema + (1 - decay) * net. The BatchNorm running
    statistics are averaged too (as hlb did): copying the live ones would pair averaged weights with
    statistics of newer weights, which costs a short run tens of points. Integer buffers are copied.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA: decay={decay} must be in [0, 1)")
        self.decay = decay
        self.model = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        pairs = [*zip(self.model.parameters(), net.parameters()), *zip(self.model.buffers(), net.buffers())]
        for mine, theirs in pairs:
            if mine.is_floating_point():
                mine.lerp_(theirs.detach().to(mine.dtype), 1 - self.decay)
            else:
                mine.copy_(theirs)


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.2,
                           reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy against (1 - smoothing) one-hot + smoothing / classes, in fp32 (notebook 04).

    Summed over the batch by default, as in hlb and airbench: the lrs are per step of summed loss.
    """
    return F.cross_entropy(logits.float(), targets, label_smoothing=smoothing, reduction=reduction)


def _group(name: str, params: list, lr: float, wd: float) -> dict:
    # SGD adds weight_decay * w to the gradient, then scales by the group's lr; dividing by the base
    # lr makes the per-step decay wd * (schedule multiplier), whatever the group's lr (airbench).
    return dict(params=params, lr=lr, initial_lr=lr, name=name, weight_decay=wd / lr if lr > 0 else 0.0)


def make_optimizers(net: nn.Module, cfg, dtype: torch.dtype | None = None, fused: bool | None = None, *,
                    split: Callable[[nn.Module], dict] | None = None) -> list[torch.optim.Optimizer]:
    """The optimisers `cfg` asks for, each group tagged with `name` and `initial_lr` (used by `train.train`).

    'muon': Muon on the filters; Nesterov SGD on 'whiten_bias', 'norm_biases' and 'other' (bias_lr)
    and 'head' (head_lr). 'sgd': one Nesterov SGD; filters and other at lr. The config's SGD lrs and
    decay are per 1024 examples (`config.sgd_lr_scale`): here, and only here, they become PyTorch's
    per step of summed loss. The decay is `weight_decay * batch_size` per step at full lr, scaled by the
    schedule (see `_group`); as in airbench it is PyTorch's coupled L2 term, so it also flows through
    momentum. Muon's own decay (`cfg.filter_weight_decay`, hiverge's) is decoupled; its step count is
    set by the trainer. The trainer sets group['lr'] = group['initial_lr'] * lr_multiplier(...) each
    step, and sets the 'whiten_bias' group's lr on its own clock: linearly down to 0 over
    cfg.whiten_bias_epochs. `dtype` is the run's precision (`device.pick_dtype` of cfg.dtype): Muon's
    Newton-Schulz runs in it, so a "fp32" run orthogonalises in fp32 too (None: the device's default).
    `fused` (None: on CUDA) steps all SGD groups in one kernel, as hiverge's record does, instead of ten
    multi-tensor ones; the CPU keeps the multi-tensor step, whose results the CPU runs are checked against.
    `split(net)` sorts the parameters into groups (default `split_params`; notebook 04 passes the learner's).
    """
    scale = sgd_lr_scale(cfg.sgd_momentum)
    bias_lr, head_lr, wd = cfg.bias_lr / scale, cfg.head_lr / scale, cfg.weight_decay * cfg.batch_size / scale
    parts = (split or split_params)(net)
    sgd_groups = [_group("whiten_bias", parts["whiten_bias"], bias_lr, wd),
                  _group("norm_biases", parts["norm_biases"], bias_lr, wd),
                  _group("head", parts["head"], head_lr, wd)]
    if cfg.optimizer == "muon":
        sgd_groups.append(_group("other", parts["other"], bias_lr, wd))
        filters = dict(params=parts["filters"], lr=cfg.lr, initial_lr=cfg.lr, name="filters")
        optimizers = [Muon([filters], lr=cfg.lr, momentum=cfg.momentum, ns_steps=cfg.ns_steps,
                           ns_coeffs=cfg.ns_coeffs, weight_decay=cfg.filter_weight_decay * cfg.batch_size,
                           renorm_every=cfg.renorm_every, renorm_growth=cfg.renorm_growth,
                           batch=cfg.muon_batch, dtype=dtype)]
    else:   # 'sgd'
        sgd_groups.append(_group("filters", parts["filters"] + parts["other"], cfg.lr / scale, wd))
        optimizers = []
    sgd_groups = [g for g in sgd_groups if g["params"]]
    if fused is None:
        fused = all(p.is_cuda for g in sgd_groups for p in g["params"]) and bool(sgd_groups)
    # PyTorch refuses Nesterov without momentum, so sgd_momentum=0 means plain SGD.
    optimizers.insert(0, torch.optim.SGD(sgd_groups, lr=bias_lr, momentum=cfg.sgd_momentum,
                                         nesterov=cfg.sgd_momentum > 0, fused=fused or None))
    return optimizers
