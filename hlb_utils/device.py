"""Which device, precision and memory format to train with, and a clock for the training steps.

Taught in notebook 05 (speed tricks). Every anchor hard-codes CUDA; here the device is a parameter and
each choice falls back to what the machine supports: bf16 where the GPU has it, fp16 where it lacks it
(T4, V100), fp32 on the CPU and on Apple's MPS. Compiling a run lives in `compiling.py`.
"""
from __future__ import annotations

import re
import time
from contextlib import nullcontext
from typing import ContextManager

import torch

from .config import DTYPES


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


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last if the batch is stored that way (and has more than one channel), else contiguous."""
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


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


def region(name: str) -> ContextManager:
    """A named range for torch.profiler (benchmarks/profile_run.py sorts a run's time by these names).

    Only a recording profiler pays for it: otherwise it is a no-op whose cost is negligible next to a
    training step, so the timed training loop can carry a few per step.
    """
    return torch.profiler.record_function(name) if torch.autograd._profiler_enabled() else nullcontext()


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
