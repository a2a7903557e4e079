"""Where one training run's time goes, and how far it is from the FLOP floor.

Why: if `airbench` misses its target against airbench94_muon (benchmarks/README.md), the next question is
whether the GPU is busy with the wrong work, busy with the right work done slowly, or idle while Python
launches kernels. One command answers it:

    python benchmarks/profile_run.py --profile record --data .carry/cifar10-jpeg.tar.gz --out "$OUT/profile"

It trains once uncounted (compilation, autotuning), once more for a clean time, then once under
torch.profiler, and prints (and writes as CSV under --out):

- summary.csv: the run's own timer (clean and profiled), how much of the timed training the device was
  busy, the training FLOPs (`hlb_utils.runs.run_flops`), this machine's measured dense-matmul rate in the
  precision the run's convolutions use (TF32 in an fp32 run on an A100 or newer GPU), and the FLOP
  floor = FLOPs / that rate: the time a perfect implementation would need.
- phases.csv: host and device milliseconds of each phase of the training code, read from the ranges
  the profiler records anyway, nothing patched: the library's own (`hlb_utils.device.region`:
  hlb:train_epoch, what the timer times; hlb:evaluate; hlb:augment; hlb:augment_plan, the loader's plan
  of an epoch, before the clock) and torch's inside the timed epoch: each optimiser step
  (`Optimizer.step#...`: optimizer), zero_grad, and each node of the backward pass
  (`autograd::engine::evaluate_function: ...`: backward); every other operator the epoch runs directly
  is the forward pass with its loss (and the step's running totals): forward. Backward kernels run on
  autograd's own thread on a GPU, so there they appear as "backward (autograd's thread)".
- kernels.csv / categories.csv: the device kernels of the timed training by name and by kind (conv,
  matmul, fused by compile, ...); on a CPU, the operators by host time instead.

On a CPU it runs too (that is how tests/test_bench.py checks it): `--profile quick --set epochs=1`.
"""
from __future__ import annotations

import argparse
import gzip
import re
import shutil
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hlb_utils.cli import parse_changes  # noqa: E402
from hlb_utils.config import DTYPES, get_profile  # noqa: E402
from hlb_utils.data import load_cifar10  # noqa: E402
from hlb_utils.device import pick_device, synchronize  # noqa: E402
from hlb_utils.runs import run_flops  # noqa: E402
from hlb_utils.train import train  # noqa: E402

EPOCH = "hlb:train_epoch"   # the region that holds exactly what the run's timer times
# Kernel kinds by name, first match wins. Names differ across GPUs and libraries; "other" catches the rest.
KINDS = (
    ("convolution", r"conv|cudnn|implicit_gemm|fprop|dgrad|wgrad|winograd"),
    ("matmul", r"gemm|matmul|cutlass|nvjet|xmma|_mm_|bmm"),
    ("fused by torch.compile", r"^triton"),
    ("activation", r"gelu|silu|relu|sigmoid"),
    ("normalisation", r"batch_?norm|bn_fw|bn_bw|welford"),
    ("copy, index, pad", r"copy|index|gather|scatter|cat|pad|memcpy|memset|flip|fill"),
    ("reduction", r"reduce|sum|norm|max|argmax"),
)


def conv_precision(device: torch.device, precision: str) -> str:
    """The precision the run's convolutions really compute in: in an fp32 run on an Ampere or newer
    GPU, cuDNN runs them in TF32 (its default), while matmuls stay strict fp32 unless asked."""
    if (precision == "fp32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32
            and torch.cuda.get_device_capability(device)[0] >= 8):
        return "tf32"
    return precision


@contextmanager
def _tf32_matmuls(enabled: bool):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def matmul_rate(device: torch.device, precision: str, seconds: float = 0.5, bursts: int = 5) -> float:
    """Dense matmul FLOP/s measured here in `precision` ('bf16', 'fp16', 'fp32' or 'tf32', from
    `conv_precision`): the pace no training step can beat on this machine. The fastest of a few
    bursts counts, so that another process sharing the machine for a moment does not lower the floor."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.float32 if precision == "tf32" else DTYPES[precision]
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    best = 0.0
    with _tf32_matmuls(precision == "tf32"):
        (a @ b).sum().item()   # warm up (library choice, clocks)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        reps = max(1, int(seconds / bursts / max(time.perf_counter() - start, 1e-6)))
        for _ in range(bursts):
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            synchronize(device)
            best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - start))
    return best


def _device_us(event) -> float:
    """Device microseconds of an event and its children (named cuda_time_total before torch 2.4)."""
    total = getattr(event, "device_time_total", None)
    return event.cuda_time_total if total is None else total


def _hlb_ancestor(event) -> str | None:
    """The outermost hlb:* region that holds this event (None: none does)."""
    found, parent = None, event.cpu_parent
    while parent is not None:
        if parent.name.startswith("hlb:"):
            found = parent.name
        parent = parent.cpu_parent
    return found


# torch's own ranges inside the timed epoch, by phase (first match wins); the rest is the forward pass
STEP_PHASES = (("optimizer", "Optimizer.step#"), ("zero_grad", "Optimizer.zero_grad#"),
               ("backward", "autograd::engine::evaluate_function"))


def step_phase(name: str) -> str:
    """The phase of an event that the timed epoch runs directly (not inside one of our regions)."""
    return next((phase for phase, prefix in STEP_PHASES if name.startswith(prefix)), "forward")


def phase_table(events, on_device: bool, busy_us: float) -> pd.DataFrame:
    """Milliseconds per phase: our named regions, and inside the timed epoch torch's own ranges (the
    optimiser steps, the backward pass's nodes), the other operators being the forward pass. Inside the
    epoch they are listed as 'training: ...'."""
    rows = defaultdict(lambda: [0, 0.0, 0.0])
    for e in events:
        if e.device_type != torch.autograd.DeviceType.CPU:
            continue
        if e.name.startswith("hlb:"):
            outer = _hlb_ancestor(e)
            if outer not in (None, EPOCH):
                continue   # e.g. the test loader's augment_plan inside hlb:evaluate
            key = e.name if outer is None else f"training: {e.name[4:]}"
        elif e.cpu_parent is not None and e.cpu_parent.name == EPOCH:
            key = f"training: {step_phase(e.name)}"
        else:
            continue
        row = rows[key]
        row[0] += 1
        row[1] += e.cpu_time_total / 1e3
        row[2] += _device_us(e) / 1e3
    table = pd.DataFrame([(k, *v) for k, v in rows.items()], columns=["region", "calls", "host_ms", "device_ms"])
    if on_device:
        launched = table.loc[table.region == EPOCH, "device_ms"].sum()
        # kernels no named region launched: the backward pass, which autograd runs on its own thread
        table.loc[len(table)] = ["training: backward (autograd's thread)", "", float("nan"), busy_us / 1e3 - launched]
    else:
        table["device_ms"] = float("nan")
    return table


def training_kernels(events, windows: list[tuple[float, float]]) -> pd.DataFrame:
    """Every device kernel (memcpy/memset included) that ran inside the timed epochs: name, calls, ms."""
    rows = defaultdict(lambda: [0, 0.0])
    for e in events:
        # the GPU timeline also carries a copy of each named region (a user annotation): not a kernel
        if (e.device_type == torch.autograd.DeviceType.CPU or getattr(e, "is_user_annotation", False)
                or e.name.startswith("hlb:")):
            continue
        start = e.time_range.start
        if any(lo <= start <= hi for lo, hi in windows):
            rows[e.name][0] += 1
            rows[e.name][1] += e.time_range.elapsed_us() / 1e3
    return pd.DataFrame([(k, *v) for k, v in rows.items()], columns=["name", "calls", "ms"])


def host_operators(events) -> pd.DataFrame:
    """On a CPU: operators inside the timed epochs by their own (self) host time."""
    rows = defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.name.startswith("hlb:") or _hlb_ancestor(e) != EPOCH:
            continue
        rows[e.name][0] += 1
        rows[e.name][1] += e.self_cpu_time_total / 1e3
    return pd.DataFrame([(k, *v) for k, v in rows.items()], columns=["name", "calls", "ms"])


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, pattern in KINDS if re.search(pattern, low)), "other")


def profile_once(cfg, data, trace: Path | None = None) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """One run under torch.profiler: (figures, phases, kernels or host operators); `trace` keeps the timeline."""
    device = pick_device(cfg.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        result = train(cfg, data, verbose=False)
    if trace is not None:
        prof.export_chrome_trace(str(trace.with_suffix("")))
        with open(trace.with_suffix(""), "rb") as raw, gzip.open(trace, "wb") as packed:
            shutil.copyfileobj(raw, packed)
        trace.with_suffix("").unlink()
    events = prof.events()
    windows = [(e.time_range.start, e.time_range.end) for e in events
               if e.name == EPOCH and e.device_type == torch.autograd.DeviceType.CPU]
    on_device = device.type == "cuda"
    kernels = training_kernels(events, windows) if on_device else host_operators(events)
    busy_us = 1e3 * kernels["ms"].sum() if on_device else float("nan")
    phases = phase_table(events, on_device, busy_us)
    figures = dict(profiled_train_seconds=result.train_seconds, device_busy_seconds=busy_us / 1e6,
                   accuracy=result.test_accuracy, precision=result.precision, compile=result.compile_note,
                   device=result.device)
    return figures, phases, kernels.sort_values("ms", ascending=False, ignore_index=True)


def summarise(cfg, clean_seconds: float, figures: dict, rate: float, data_source: str,
              rate_precision: str | None = None) -> pd.DataFrame:
    """The summary table; `rate_precision` names what the matmul rate was timed in (the convs' precision)."""
    rate_precision = rate_precision or figures["precision"]
    flops = run_flops(cfg)["train_pflops"] * 1e15
    timed = figures["profiled_train_seconds"]
    busy = figures["device_busy_seconds"]
    rows = [
        ("profile", cfg.profile), ("device", figures["device"]), ("torch", torch.__version__),
        ("data", data_source), ("precision", figures["precision"]), ("compile", figures["compile"]),
        ("test accuracy (profiled run)", round(figures["accuracy"], 4)),
        ("train seconds, clean run (the run's own timer)", round(clean_seconds, 4)),
        ("train seconds, profiled run", round(timed, 4)),
        ("device busy during timed training, seconds", round(busy, 4)),
        ("device idle share of the profiled training", round(1 - busy / timed, 3) if busy == busy else "n/a on CPU"),
        ("training TFLOPs (convs and matmuls, forward + backward)", round(flops / 1e12, 2)),
        (f"measured dense matmul rate, TFLOP/s ({rate_precision}, the convs' precision)", round(rate / 1e12, 2)),
        ("FLOP floor seconds (TFLOPs / that rate)", round(flops / rate, 4)),
        ("clean train seconds / FLOP floor", round(clean_seconds / (flops / rate), 2)),
    ]
    return pd.DataFrame(rows, columns=["figure", "value"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="record", help="the profile to train (default record)")
    p.add_argument("--data", required=True, help="CIFAR-10 source: a torchvision folder or the replica's .tar.gz")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                   help="change the profile's config, as in gpu_bench.py (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="folder for the CSV files (default: print only)")
    p.add_argument("--trace", action="store_true", help="also write trace.json.gz (chrome://tracing, Perfetto)")
    p.add_argument("--top", type=int, default=15, help="kernels (operators on a CPU) to print")
    args = p.parse_args(argv)
    if not Path(args.data).exists():
        p.error(f"--data {args.data}: no such file or folder")
    if args.trace and not args.out:
        p.error("--trace needs --out (the folder for trace.json.gz)")
    try:
        args.cfg = get_profile(args.profile, **parse_changes(args.sets))
    except (TypeError, ValueError) as err:
        p.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg, data = args.cfg, load_cifar10(args.data, verbose=False)
    print(f"== {cfg.profile}: warm-up run (compile, autotune; not counted)", flush=True)
    train(cfg, data, verbose=False)
    print("== clean run", flush=True)
    clean = train(cfg, data, verbose=False).train_seconds
    print("== profiled run", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    figures, phases, kernels = profile_once(cfg, data, args.out / "trace.json.gz" if args.trace else None)
    device = pick_device(cfg.device)
    floor_precision = conv_precision(device, figures["precision"])
    summary = summarise(cfg, clean, figures, matmul_rate(device, floor_precision), data.source, floor_precision)
    kernels["kind"] = [kind_of(name) for name in kernels["name"]]
    categories = kernels.groupby("kind", as_index=False)[["calls", "ms"]].sum().sort_values("ms", ascending=False)
    what = "device kernels" if device.type == "cuda" else "host operators (self time)"
    pd.set_option("display.width", 200)
    pd.set_option("display.max_colwidth", 90)
    for title, table in (("summary", summary), ("phases", phases), (f"{what} by kind", categories),
                         (f"top {args.top} {what}", kernels.head(args.top))):
        print(f"\n== {title}\n{table.to_string(index=False, float_format=lambda v: f'{v:.2f}')}")
    if args.out:
        for name, table in (("summary", summary), ("phases", phases), ("kernels", kernels),
                            ("categories", categories)):
            table.to_csv(args.out / f"{name}.csv", index=False)
        print(f"\nwrote {', '.join(sorted(p.name for p in args.out.iterdir()))} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
