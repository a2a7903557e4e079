"""What train() does differently on a GPU, checked on the CPU.

CUDA is simulated where a choice depends on it (torch.cuda's answers are monkeypatched, or the one
function that asks is); everything that runs, runs on the CPU (`device="cpu"` is pinned).
"""
from __future__ import annotations

import pytest
import torch

from hlb_utils import device as dev
from hlb_utils import model, optim, train
from hlb_utils.config import get_profile

from test_device import simulate_gpu

TINY = dict(widths=(8, 16, 16), batch_size=100, epochs=2, tta="flip", eval_every=1, whiten_bias_epochs=1.0,
            device="cpu")


def tiny_cfg(**changes):
    return get_profile("quick", **{**TINY, **changes})


def spy_on_newton_schulz(monkeypatch) -> list:
    """Record the dtype each Newton-Schulz call of Muon runs in."""
    seen, real = [], optim.newton_schulz

    def recording(G, steps=3, dtype=None):
        out = real(G, steps, dtype)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(optim, "newton_schulz", recording)
    return seen


@pytest.mark.parametrize("gpu, setting, expected", [
    ("T4", "auto", torch.float16), ("T4", "fp32", torch.float32), ("A100", "auto", torch.bfloat16),
    ("A100", "fp16", torch.float16), ("A100", "fp32", torch.float32)])
def test_newton_schulz_runs_in_the_configs_precision(monkeypatch, gpu, setting, expected):
    # The precision is resolved for a simulated GPU; the optimiser then steps a CPU net with it.
    simulate_gpu(monkeypatch, gpu)
    cfg = tiny_cfg(dtype=setting)
    dtype = dev.pick_dtype(torch.device("cuda"), cfg.dtype)
    seen = spy_on_newton_schulz(monkeypatch)
    net = model.make_net(cfg)
    muon = optim.make_optimizers(net, cfg, dtype)[-1]
    net(torch.randn(4, 3, 32, 32)).square().sum().backward()
    muon.step()
    assert seen and set(seen) == {expected}


@pytest.mark.parametrize("setting, expected", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_train_hands_its_precision_to_muon(synthetic, monkeypatch, setting, expected):
    seen = spy_on_newton_schulz(monkeypatch)
    result = train.train(tiny_cfg(dtype=setting, epochs=1), synthetic, verbose=False)
    assert result.precision == setting and seen and set(seen) == {expected}
