"""Compiling a run: the mode this machine gets, what is compiled (`compile_scope`), the warm-up before the
clock, and the fallback to eager when a backend cannot build the graphs, so compiling never breaks a run.

Taught in notebook 05 (speed tricks). Only CUDA compiles here (DEVELOPERS.md says why); the tests trace
the same paths on the CPU with the `eager` backend.
"""
from __future__ import annotations

import copy
import sys
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn

from .device import mixed_precision, synchronize

def compile_choice(enabled: bool, device: torch.device, mode: str = "max-autotune") -> tuple[str | None, str]:
    """The torch.compile mode this machine gets (None: no compile) and a one-line note saying why.

    max-autotune warns "not enough SMs" on small GPUs (a T4 has 40, an L4 58); a plain compile still
    helps there, so they get mode 'default'.
    """
    if not enabled:
        return None, "off"
    if device.type != "cuda":
        return None, f"compile skipped on {device.type} (only CUDA is supported here)"
    try:
        import triton  # noqa: F401  (no Triton, e.g. on Windows: no compile)
    except ImportError:
        return None, "compile skipped: Triton is not installed"
    if mode.startswith("max-autotune") and torch.cuda.get_device_properties(device).multi_processor_count < 68:
        mode = "default"
    return mode, f"compiled ({mode})"


def needs_warm_up(device: torch.device) -> bool:
    """Whether the first steps on this device carry one-off costs that must stay out of the timer.

    On CUDA they do, compiled or not: cuDNN's benchmark mode times its algorithms on the first call
    of each shape, and kernels (the optimisers' too) load lazily on first use.
    """
    return device.type == "cuda"


# Compiled variants allowed per function (torch's default is 8). All our nets share one `forward`, and
# one net needs several: each image size with and without the whitening bias's gradient, training and
# evaluation, each precision of an ablation.
RECOMPILE_LIMIT = 64
_compiled_last = {"signature": None, "gave_up": 0}


def compile_model(model: nn.Module, mode: str = "default", backend: str = "inductor") -> Callable:
    """torch.compile as the trainer uses it, with static shapes: each image size (full, and the small
    one of progressive resizing) gets its own graph, compiled in the warm-up, instead of one slower
    graph for every size that torch would otherwise switch to when it sees a second size.

    A net shaped like the last one compiled reuses its code; a differently shaped one (notebook 05's
    ablation) starts from a fresh compiler cache, so that no net inherits a full recompile budget and
    silently runs eager. `backend='eager'` only traces (tests on the CPU).
    """
    signature = _signature(model)
    if signature != _compiled_last["signature"] or dynamo_gave_up() > _compiled_last["gave_up"]:
        torch._dynamo.reset()
        _compiled_last.update(signature=signature, gave_up=dynamo_gave_up())
    raise_recompile_limit(torch._dynamo.config, RECOMPILE_LIMIT)
    return _torch_compile(model, mode, backend)


def raise_recompile_limit(config, limit: int) -> None:
    """Give dynamo a budget of at least `limit` compiled variants per function (never lowers it).
    torch < 2.6 calls the entry `cache_size_limit`; each name is read with a default, so a config
    that lacks one spelling (an older torch, or an entry a tool removed) uses the other, or is left alone."""
    for name in ("recompile_limit", "cache_size_limit"):
        current = getattr(config, name, None)
        if current is not None:
            setattr(config, name, max(current, limit))
            return


def _torch_compile(fn: Callable, mode: str, backend: str, fullgraph: bool = False) -> Callable:
    if backend != "inductor":
        return torch.compile(fn, backend=backend, dynamic=False, fullgraph=fullgraph)
    return torch.compile(fn, mode=mode, dynamic=False, fullgraph=fullgraph)


def _signature(model: nn.Module) -> tuple:
    """What makes dynamo compile a net afresh: its class, and each tensor's name, shape, dtype,
    strides (memory format) and requires_grad."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return (type(model).__qualname__,
            tuple((name, tuple(t.shape), t.dtype, t.stride(), t.requires_grad) for name, t in tensors))


def dynamo_gave_up() -> int:
    """How many times, in this process, torch.compile gave up on a function and ran it eager
    (recompile limit reached, or an error while tracing)."""
    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters

    return counters["frames"]["total"] - counters["frames"]["ok"]


@dataclass
class CompiledRun:
    """What a run trains and evaluates with (notebook 05): `forward(x, y) -> (loss, logits)` for a
    training step, `model(x) -> logits` for evaluation, compiled or plain, and a note saying which;
    `seconds`: its compile and warm-up; `gave_up_before`: `dynamo_gave_up()` before it compiled."""

    net: nn.Module
    forward_loss: Callable     # (model, x, y) -> (summed loss, logits): the step before compiling
    forward: Callable
    model: Callable
    note: str = "off"
    seconds: float = 0.0
    gave_up_before: int = 0


# torch.compile's backend for every compile of a run; the tests set "eager" (traces, builds no kernels)
BACKEND = "inductor"


def compile_run(net: nn.Module, forward_loss: Callable, mode: str | None, scope: str = "model",
                note: str = "off", backend: str | None = None) -> CompiledRun:
    """Compile a run's network (`mode` from `compile_choice`; None: leave it plain).

    scope 'model' compiles the network, and the loss runs eagerly after it; 'step' (hiverge's record)
    compiles the forward pass and the loss as one graph (`fullgraph`: it never breaks into pieces) for
    training, and the network on its own for evaluation.
    """
    backend = backend or BACKEND
    if mode is None:
        return CompiledRun(net, forward_loss, partial(forward_loss, net), net, note)
    model = compile_model(net, mode, backend)
    if scope == "model":
        return CompiledRun(net, forward_loss, partial(forward_loss, model), model, note)
    step = _torch_compile(partial(forward_loss, net), mode, backend, fullgraph=True)
    return CompiledRun(net, forward_loss, step, model, f"{note}, forward+loss as one graph")


def compile_optimizers(optimizers: list, backend: str | None = None) -> None:
    """Compile Muon's momentum-orthogonalise-rescale (`optim.muon_update`) into one graph, as hiverge
    compiles its Newton-Schulz: a few kernels instead of dozens of small ones per step. Mode 'default':
    it updates the weights in place, which CUDA graphs would not record."""
    from .optim import Muon, muon_update

    for opt in optimizers:
        if isinstance(opt, Muon):
            # not fullgraph: at the recompile limit it runs eagerly (and `check_compiled` says so) instead of failing
            opt.update = _torch_compile(muon_update, "default", backend or BACKEND)


def prepare(net: nn.Module, forward_loss: Callable, optimizers: list, batches: Callable[[], list], *,
            device: torch.device, enabled: bool, mode: str = "max-autotune", scope: str = "model",
            evaluate: Callable | None = None, autocast: torch.dtype | None = None,
            stopping: Sequence[torch.Tensor] = (), evaluate_before_stop: bool = False,
            totals: torch.Tensor | None = None) -> CompiledRun:
    """Compiling a run, in one call: the mode this machine gets, the compiled step, network and Muon
    update, and the warm-up before the clock (every CUDA run, every compiled one); returns what the
    loop needs.

    `batches()` gives one (images, labels) batch per image size the run will train at; `stopping`, the
    parameters whose gradient the run switches off part-way (the whitening bias); `evaluate(model)`,
    the run's evaluations (warmed up at the sizes they run, with the gradient stopped, and also before
    the stop if `evaluate_before_stop`); `totals`, the running loss and correct count the step adds to
    (`train.forward_loss`). Compilation is lazy: a backend that cannot build the graphs fails here, and
    the run goes on uncompiled (warmed up again, uncompiled, on a GPU), its note saying so.
    """
    mode, note = compile_choice(enabled, device, mode)
    if totals is not None:
        forward_loss = partial(forward_loss, totals=totals)
        if mode is not None:   # updated in place by a recorded CUDA graph: its address must stay fixed
            torch._dynamo.mark_static_address(totals)
    run = compile_run(net, forward_loss, mode, scope, note)
    run.gave_up_before = gave_up = dynamo_gave_up()   # after compile_run: a new net's compile resets the counters
    if mode is not None:
        compile_optimizers(optimizers)
    if run.model is run.net and not needs_warm_up(device):
        return run
    try:
        run.seconds = warm_up(run, optimizers, batches(), autocast, stopping, evaluate, evaluate_before_stop)
    except Exception as err:
        if run.model is run.net or isinstance(err, torch.cuda.OutOfMemoryError):
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        warnings.warn(f"torch.compile failed on the first step ({type(err).__name__}: {first}); training uncompiled")
        from .optim import Muon, muon_update

        for opt in optimizers:
            if isinstance(opt, Muon):
                opt.update = muon_update
        run = compile_run(run.net, run.forward_loss, None,
                          note=f"compile failed: {type(err).__name__}; trained uncompiled")
        run.gave_up_before = gave_up
        if needs_warm_up(device):
            run.seconds = warm_up(run, optimizers, batches(), autocast, stopping, evaluate, evaluate_before_stop)
    finally:
        if totals is not None:
            totals.zero_()   # the warm-up's steps added to it
    return run


WARM_CALLS = 3   # calls of each compiled state before the clock: with CUDA graphs the 1st runs eager, the 2nd records


def warm_up(run: CompiledRun, optimizers: list, batches: list, autocast: torch.dtype | None = None,
            stopping: Sequence[torch.Tensor] = (), evaluate: Callable | None = None,
            evaluate_before_stop: bool = False) -> float:
    """Pay the one-off costs before the clock starts: compilation, CUDA graphs' recording, cuDNN's
    search for the fastest algorithms, the lazy loading of kernels (the optimisers' too). At each image
    size, `WARM_CALLS` real training steps with a gradient for `stopping` and as many without (each is
    its own graph), so that no state records a CUDA graph inside the timer; then the run's evaluations
    as many times, in the states they will run in (or one evaluation-mode call). Every weight, buffer,
    optimiser state and lr is then put back, so the run trains exactly as if none of this had happened.
    Returns the seconds it took."""
    net = run.net
    saved = dict(net={k: v.clone() for k, v in net.state_dict().items()},
                 optimizers=[copy.deepcopy(opt.state_dict()) for opt in optimizers])
    start = time.perf_counter()
    try:
        for x, y in batches:
            for trains in (True, False) if stopping else (True,):
                for p in stopping:
                    p.requires_grad_(trains)
                for _ in range(WARM_CALLS):
                    loss, _ = run.forward(x, y)
                    loss.backward()
                    for opt in optimizers:
                        opt.step()
                        opt.zero_grad(set_to_none=True)
        net.eval()
        for trains in ((True, False) if evaluate_before_stop else (False,)) if stopping else (True,):
            for p in stopping:
                p.requires_grad_(trains)
            for _ in range(WARM_CALLS if evaluate is not None else 1):
                if evaluate is not None:
                    evaluate(run.model)
                else:
                    with torch.no_grad(), mixed_precision(x.device, autocast):
                        run.model(x)
        synchronize(x.device)
    finally:
        for p in stopping:
            p.requires_grad_(True)
        net.train()
        net.load_state_dict(saved["net"])
        for opt, state in zip(optimizers, saved["optimizers"]):
            opt.load_state_dict(state)
    return time.perf_counter() - start


def check_compiled(run: CompiledRun, gave_up_before: int | None = None) -> str:
    """The run's compile note, amended when torch.compile gave up during the run and ran (part of) it
    eager (`gave_up_before`: `dynamo_gave_up()` before the run; default: before `prepare`)."""
    gave_up_before = run.gave_up_before if gave_up_before is None else gave_up_before
    if run.model is run.net or dynamo_gave_up() == gave_up_before:
        return run.note
    warnings.warn("torch.compile gave up part-way through this run (recompile limit or tracing error) "
                  "and ran the rest eager; TORCH_LOGS=recompiles tells why")
    return f"{run.note}; fell back to eager part-way"
