"""The GPU paths of hlb_utils.device, with CUDA GPUs simulated on the CPU.

No GPU is needed: `simulated_gpu` monkeypatches what torch.cuda reports (availability, compute
capability, SM count, name, the wheel's arch list), which is all these choices read.
"""
from __future__ import annotations

import sys
import types

import pytest
import torch

from hlb_utils import compiling as comp
from hlb_utils import device as dev

# The arch lists of two torch 2.x wheels: CUDA 13.0 (no V100 kernels) and CUDA 12.6.
CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
# (name, compute capability, SMs) of the GPUs a learner meets in Colab and the clouds.
GPUS = {
    "V100": ("Tesla V100-SXM2-16GB", (7, 0), 80),
    "T4": ("Tesla T4", (7, 5), 40),
    "A100": ("NVIDIA A100-SXM4-40GB", (8, 0), 108),
    "L4": ("NVIDIA L4", (8, 9), 58),
    "H100": ("NVIDIA H100 80GB HBM3", (9, 0), 132),
}


def simulate_gpu(monkeypatch, gpu: str, arch_list=CU130) -> None:
    """Make torch.cuda describe one GPU of the table above, with this wheel's arch list."""
    name, capability, sms = GPUS[gpu]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: types.SimpleNamespace(name=name, major=capability[0],
                                                                  minor=capability[1], multi_processor_count=sms))
    monkeypatch.setattr(torch.version, "hip", None)
    # What fooled the old check: torch says bf16 "is supported" (emulated) on 7.x too.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)


@pytest.mark.parametrize("gpu, expected", [("V100", torch.float16), ("T4", torch.float16),
                                           ("A100", torch.bfloat16), ("L4", torch.bfloat16),
                                           ("H100", torch.bfloat16)])
def test_auto_precision_is_bf16_only_from_capability_8(monkeypatch, gpu, expected):
    simulate_gpu(monkeypatch, gpu, CU126)
    assert dev.pick_dtype(torch.device("cuda"), "auto") == expected
    assert dev.pick_dtype(torch.device("cuda"), "fp32") == torch.float32   # an explicit choice stays
    assert dev.pick_dtype(torch.device("cpu"), "auto") == torch.float32
    # a net held in half precision (the record's weights="half") gets fp16 on every GPU, fp32 on the CPU
    assert dev.pick_dtype(torch.device("cuda"), "auto", "half") == torch.float16
    assert dev.pick_dtype(torch.device("cuda"), "bf16", "half") == torch.bfloat16
    assert dev.pick_dtype(torch.device("cpu"), "auto", "half") == torch.float32


@pytest.mark.parametrize("gpu, expected", [("V100", "max-autotune"), ("T4", "default"), ("A100", "max-autotune"),
                                           ("L4", "default"), ("H100", "max-autotune")])
def test_compile_mode_follows_the_sm_count(monkeypatch, gpu, expected):
    simulate_gpu(monkeypatch, gpu)
    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))   # whether installed or not
    compiled = []
    monkeypatch.setattr(comp, "compile_model", lambda model, mode, backend="inductor": compiled.append(mode) or model)
    net = torch.nn.Linear(2, 2)
    mode, note = comp.compile_choice(True, torch.device("cuda"), "max-autotune")
    run = comp.compile_run(net, lambda model, x, y: (model(x).sum(), model(x)), mode, note=note)
    assert compiled == [expected] and run.note == note == f"compiled ({expected})"
    assert comp.compile_choice(True, torch.device("cpu"))[1].startswith("compile skipped on cpu")
    plain = comp.compile_run(net, lambda model, x, y: (model(x).sum(), model(x)), None)
    assert plain.model is net and plain.note == "off" and len(compiled) == 1


@pytest.mark.parametrize("gpu, arch_list, runs", [
    ("V100", CU130, False), ("T4", CU130, True), ("A100", CU130, True), ("L4", CU130, True),
    ("H100", CU130, True), ("V100", CU126, True), ("T4", CU126, True), ("L4", CU126, True),
    # sm_90a is Hopper-only machine code: an 8.9 GPU cannot run it, and nothing else is listed
    ("L4", ["sm_80a", "sm_90a"], False), ("H100", ["sm_90a"], True),
    # PTX (compute_XY) is compiled by the driver for any GPU of capability XY or newer
    ("H100", ["sm_80", "compute_80"], True), ("V100", ["sm_75", "compute_75"], False),
    ("V100", ["sm_80", "compute_70"], True),
])
def test_arch_list_check(monkeypatch, gpu, arch_list, runs):
    simulate_gpu(monkeypatch, gpu, arch_list)
    assert dev.cuda_arch_supported(GPUS[gpu][1]) is runs
    if runs:
        assert dev.pick_device("auto").type == dev.pick_device("cuda").type == "cuda"
    else:
        for name in ("auto", "cuda"):
            with pytest.raises(RuntimeError, match=GPUS[gpu][0]):
                dev.pick_device(name)


def test_a_v100_on_a_cuda_13_wheel_is_told_which_wheel_to_install(monkeypatch):
    simulate_gpu(monkeypatch, "V100", CU130)
    with pytest.raises(RuntimeError, match=r"capability 7\.0.*sm_75.*whl/cu126"):
        dev.pick_device("auto")


def test_a_gpu_newer_than_the_wheel_is_told_to_upgrade(monkeypatch):
    simulate_gpu(monkeypatch, "H100", ["sm_70", "sm_75", "sm_80"])
    with pytest.raises(RuntimeError, match="newer torch"):
        dev.pick_device("cuda")


def test_rocm_builds_are_not_checked(monkeypatch):
    simulate_gpu(monkeypatch, "V100", ["gfx90a", "gfx942"])
    assert dev.pick_device("auto").type == "cuda"
