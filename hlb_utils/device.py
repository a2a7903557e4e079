"""Which device, precision and memory format to train with, and a torch.compile that never breaks a run.

Taught in notebook 05 (speed tricks). Every anchor hard-codes CUDA; here the device is a parameter and
each choice falls back to what the machine supports: bf16 where the GPU has it, fp16 where it lacks it
(T4, V100), fp32 on the CPU and on Apple's MPS.
"""
from __future__ import annotations

import copy
import re
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Callable, ContextManager, Sequence

import torch
from torch import nn


def pick_device(name: str = "auto") -> torch.device:
    """'auto' prefers CUDA, then Apple MPS, then the CPU. Asking for a missing device is an error,
    and so is a GPU that this torch build has no kernels for (see `check_cuda_arch`)."""
    if name == "auto":
        if torch.cuda.is_available():
            check_cuda_arch()
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was asked for, but torch sees no CUDA GPU; use device='auto' or 'cpu'")
        check_cuda_arch()
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device='mps' was asked for, but this machine has no Apple MPS; use 'auto' or 'cpu'")
    return torch.device(name)


def _arch_entries(prefix: str) -> list[tuple[int, int, str]]:
    """(major, minor, suffix) of the arch list's entries like 'sm_90a' or 'compute_75'."""
    found = []
    for entry in torch.cuda.get_arch_list():
        match = re.fullmatch(rf"{prefix}_(\d+)(\d)([a-z]?)", entry)
        if match:
            found.append((int(match[1]), int(match[2]), match[3]))
    return found


def cuda_arch_supported(capability: tuple[int, int]) -> bool:
    """Can this torch build run on a GPU of this compute capability?

    A wheel carries machine code (sm_XY) for some GPU generations: it runs on GPUs of the same major
    version and an equal or higher minor one ('a' entries, like sm_90a, only on exactly X.Y). It may
    also carry PTX (compute_XY), which the driver compiles for any newer GPU on first use.
    """
    major, minor = capability
    binary = any(x == major and (y == minor or (y < minor and not suffix))
                 for x, y, suffix in _arch_entries("sm"))
    ptx = any((x, y) <= (major, minor) for x, y, _ in _arch_entries("compute"))
    return binary or ptx


def check_cuda_arch(device: torch.device | int | None = None) -> None:
    """Stop early, with the wheel to install, when torch was built without kernels for this GPU.

    The CUDA 13 wheels, for example, start at sm_75: a V100 (7.0) would otherwise fail at the first
    convolution with "no kernel image is available". ROCm builds list gfx targets: not checked here.
    """
    arches = torch.cuda.get_arch_list()
    if torch.version.hip or not any(a.startswith(("sm_", "compute_")) for a in arches):
        return
    capability = tuple(torch.cuda.get_device_capability(device))
    if cuda_arch_supported(capability):
        return
    lowest = min((x, y) for x, y, _ in _arch_entries("sm") + _arch_entries("compute"))
    if capability < lowest:
        # CUDA 12.6 builds still carry kernels for 5.0 to 9.0 GPUs (Maxwell to Hopper).
        advice = ("install a torch build for CUDA 12.6: pip install torch torchvision "
                  "--index-url https://download.pytorch.org/whl/cu126")
    else:
        advice = "install a newer torch, built for a newer CUDA (see https://pytorch.org/get-started/locally/)"
    name = torch.cuda.get_device_name(device)
    raise RuntimeError(f"this torch ({torch.__version__}, CUDA {torch.version.cuda}) has no kernels for "
                       f"{name} (compute capability {capability[0]}.{capability[1]}; it was built for "
                       f"{' '.join(arches)}): {advice}")


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")   # torch.compile modes


WEIGHTS = ("fp32", "half")   # TrainConfig.weights: fp32 weights under autocast, or the net held in half precision


def pick_dtype(device: torch.device, name: str = "auto", weights: str = "fp32") -> torch.dtype:
    """Compute precision: 'auto' is bf16 on CUDA GPUs of capability 8.0 and up (A100, L4, H100...),
    fp16 on older ones (T4, V100), fp32 elsewhere.

    With `weights='half'` (the net itself held in the compute precision, as hiverge's record holds it)
    'auto' is fp16 on every CUDA GPU: a weight stored in bf16 keeps 8 significant bits, so a step
    smaller than about 1/256 of it rounds away; fp16 keeps 11 bits (1/2048).
    """
    if name != "auto":
        if device.type == "cpu" and name == "fp16":
            raise ValueError("dtype='fp16' is too slow or unsupported on the CPU; use 'fp32' or 'auto'")
        return DTYPES[name]
    if device.type == "cuda" and weights == "half":
        return torch.float16
    if device.type == "cuda":
        # Not torch.cuda.is_bf16_supported(): it also says yes on 7.x GPUs (T4, V100), where bf16 is
        # only emulated: cuDNN's bf16 convolutions and inductor's bf16 kernels need capability 8.0.
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """'bf16', 'fp16' or 'fp32': the config's spelling, for run records."""
    return next(name for name, value in DTYPES.items() if value == dtype)


def use_channels_last(device: torch.device, setting: str = "auto") -> bool:
    """channels_last pays on CUDA (tensor cores) and on the CPU (oneDNN); on MPS it slows convnets."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    return device.type in ("cuda", "cpu")


def device_name(device: torch.device) -> str:
    """The GPU's marketing name, or 'cpu' / 'mps', for run records."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def describe(device: torch.device) -> str:
    """'cuda (Tesla T4, capability 7.5)', or 'cpu' / 'mps': what a notebook's set-up cell prints."""
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"cuda ({device_name(device)}, capability {major}.{minor})"


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


def region(name: str) -> ContextManager:
    """A named range for torch.profiler (benchmarks/profile_run.py sorts a run's time by these names).

    Only a recording profiler pays for it: otherwise it is a no-op whose cost is negligible next to a
    training step, so the timed training loop can carry a few per step.
    """
    return torch.profiler.record_function(name) if torch.autograd._profiler_enabled() else nullcontext()


# Compiled variants allowed per function (torch's default is 8). All our nets share one `forward`, and
# one net needs several: each image size, training and evaluation, each precision of an ablation.
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
    config = torch._dynamo.config
    # torch < 2.6 calls the limit cache_size_limit
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    return _torch_compile(model, mode, backend)


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


# ---- Compiling a run: what is compiled, the warm-up before the clock, and the fallback ----------------

COMPILE_SCOPES = ("model", "step")   # TrainConfig.compile_scope


@dataclass
class CompiledRun:
    """What a run trains and evaluates with (notebook 05): `forward(x, y) -> (loss, logits)` for a
    training step, `model(x) -> logits` for evaluation, compiled or plain, and a note saying which."""

    net: nn.Module
    forward_loss: Callable     # (model, x, y) -> (summed loss, logits): the step before compiling
    forward: Callable
    model: Callable
    note: str = "off"


def compile_run(net: nn.Module, forward_loss: Callable, mode: str | None, scope: str = "model",
                note: str = "off", backend: str = "inductor") -> CompiledRun:
    """Compile a run's network (`mode` from `compile_choice`; None: leave it plain).

    scope 'model' compiles the network, and the loss runs eagerly after it; 'step' (hiverge's record)
    compiles the forward pass and the loss as one graph (`fullgraph`: it never breaks into pieces) for
    training, and the network on its own for evaluation.
    """
    if mode is None:
        return CompiledRun(net, forward_loss, partial(forward_loss, net), net, note)
    model = compile_model(net, mode, backend)
    if scope == "model":
        return CompiledRun(net, forward_loss, partial(forward_loss, model), model, note)
    step = _torch_compile(partial(forward_loss, net), mode, backend, fullgraph=True)
    return CompiledRun(net, forward_loss, step, model, f"{note}, forward+loss as one graph")


def prepare(run: CompiledRun, optimizers: list, batches: Callable[[], list], device: torch.device,
            autocast: torch.dtype | None = None, stopping: Sequence[torch.Tensor] = ()
            ) -> tuple[CompiledRun, float]:
    """Warm up where it pays (every CUDA run, every compiled one); returns the run and its seconds.

    `batches()` gives one (images, labels) batch per image size the run will train at; `stopping`, the
    parameters whose gradient the run switches off part-way (the whitening bias). Compilation
    is lazy: a backend that cannot build the graphs fails here, and the run goes on uncompiled
    (warmed up again, uncompiled, on a GPU), its note saying so.
    """
    compiled = run.model is not run.net
    if not compiled and not needs_warm_up(device):
        return run, 0.0
    try:
        return run, warm_up(run, optimizers, batches(), autocast, stopping)
    except Exception as err:
        if not compiled or isinstance(err, torch.cuda.OutOfMemoryError):
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        warnings.warn(f"torch.compile failed on the first step ({type(err).__name__}: {first}); training uncompiled")
        plain = compile_run(run.net, run.forward_loss, None,
                            note=f"compile failed: {type(err).__name__}; trained uncompiled")
        return prepare(plain, optimizers, batches, device, autocast, stopping)


def warm_up(run: CompiledRun, optimizers: list, batches: list, autocast: torch.dtype | None = None,
            stopping: Sequence[torch.Tensor] = ()) -> float:
    """Pay the one-off costs before the clock starts: compilation, cuDNN's search for the fastest
    algorithms, the lazy loading of kernels (the optimisers' too). Two real training steps at each
    image size, the second without a gradient for `stopping` (each is its own graph), and one
    evaluation-mode call; then every weight, buffer, optimiser state and lr is put back, so the run
    trains exactly as if none of this had happened. Returns the seconds it took."""
    net = run.net
    saved = dict(net={k: v.clone() for k, v in net.state_dict().items()},
                 optimizers=[copy.deepcopy(opt.state_dict()) for opt in optimizers])
    start = time.perf_counter()
    try:
        for x, y in batches:
            for step in range(2):
                for p in stopping:
                    p.requires_grad_(step == 0)
                loss, _ = run.forward(x, y)
                loss.backward()
                for opt in optimizers:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
        net.eval()
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


def check_compiled(run: CompiledRun, gave_up_before: int) -> str:
    """The run's compile note, amended when torch.compile gave up during the run and ran (part of) it
    eager (`gave_up_before`: `dynamo_gave_up()` before the run)."""
    if run.model is run.net or dynamo_gave_up() == gave_up_before:
        return run.note
    warnings.warn("torch.compile gave up part-way through this run (recompile limit or tracing error) "
                  "and ran the rest eager; TORCH_LOGS=recompiles tells why")
    return f"{run.note}; fell back to eager part-way"


def mixed_precision(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """Autocast to `dtype` (bf16 or fp16) on this device, or a no-op for None (fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read after it measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Timer:
    """Accumulates seconds of the timed regions only (training steps), as the anchors do.

    On CUDA it uses device events around each region, synchronised when read; elsewhere wall time.
    """

    def __init__(self, device: torch.device):
        self.device, self.total, self._start = device, 0.0, None
        self._cuda = device.type == "cuda"

    def start(self) -> None:
        if self._cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            synchronize(self.device)
            self._start = time.perf_counter()

    def stop_if_running(self) -> None:
        if self._start is not None:
            self.stop()

    def stop(self) -> float:
        """End the region; returns the total seconds so far (synchronises the device)."""
        if self._cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            self.total += self._start.elapsed_time(end) / 1000.0
        else:
            synchronize(self.device)
            self.total += time.perf_counter() - self._start
        self._start = None
        return self.total
