"""The config owns its allowed values; the modules that use them agree (issue 14).

config.py imports none of our modules, so it names the activations, flips, TTA modes, precisions,
compile modes and Newton-Schulz coefficients itself. Here every allowed value is fed to the module
that uses it, and every value a module knows must be allowed by the config. The SGD learning rates
are read per 1024 examples (`config.sgd_lr_scale`): each profile must still make exactly the
PyTorch optimisers it made with the published figures.
"""
from __future__ import annotations

import ast
import inspect
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from hlb_utils import compiling as Co
from hlb_utils import config as C
from hlb_utils import device as D
from hlb_utils import evaluate as E
from hlb_utils import loader as L
from hlb_utils import model as M
from hlb_utils import optim as O


def test_config_imports_none_of_our_modules():
    tree = ast.parse(Path(C.__file__).read_text())
    relative = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0]
    assert relative == [], f"config.py imports {relative}"


def test_activations_agree():
    assert set(M.ACTIVATIONS) == set(C.ACTIVATIONS)
    for name in C.ACTIVATIONS:
        assert isinstance(M.make_act(name), nn.Module)
        cfg = C.get_profile("quick", act=name, whiten_act=name)
        assert M.make_net(cfg)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_flip_modes_agree():
    assert set(L.FLIP_MODES) == set(C.FLIP_MODES)
    images, labels = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8)
    for flip in C.FLIP_MODES:
        x, y = next(iter(L.DeviceLoader(images, labels, 4, train=True, flip=flip, translate=2)))
        assert x.shape == (4, 3, 32, 32) and len(y) == 4


def test_tta_modes_agree():
    assert set(E.TTA_MODES) == set(C.TTA_MODES)
    net = M.make_net(C.get_profile("quick")).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for mode in C.TTA_MODES:
            assert E.tta_logits(net, x, mode).shape == (4, 10) and E.tta_passes(mode) >= 1


def test_precisions_agree():
    assert set(D.DTYPES) == set(C.DTYPES)
    for name in C.DTYPES:
        # a CUDA device object needs no GPU; named precisions are taken as asked there
        dtype = D.pick_dtype(torch.device("cuda"), name)
        assert D.dtype_name(dtype) == name
    assert set(D.WEIGHTS) == set(C.WEIGHTS)
    for weights in C.WEIGHTS:   # pick_dtype takes every holding of the weights config allows
        assert D.pick_dtype(torch.device("cuda"), "fp16", weights) == torch.float16
        assert D.pick_dtype(torch.device("cpu"), "auto", weights) == torch.float32


def test_compile_modes_agree_with_the_module_and_with_torch(monkeypatch):
    assert set(Co.COMPILE_MODES) == set(C.COMPILE_MODES)
    from torch import _inductor

    # A large GPU with Triton, simulated: every allowed mode is the one compile_choice picks.
    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(
        multi_processor_count=132))
    for mode in C.COMPILE_MODES:
        _inductor.list_mode_options(mode)   # torch refuses a mode it does not know
        assert Co.compile_choice(True, torch.device("cuda"), mode)[0] == mode


def test_newton_schulz_coefficients_agree():
    default = inspect.signature(O.newton_schulz).parameters["coeffs"].default
    assert C.NS_COEFFS == O.NS_COEFFS == default == C.TrainConfig().ns_coeffs


def test_the_remaining_choices_work_in_their_modules():
    quick = C.get_profile("quick")
    net = M.make_net(quick)
    for schedule in C._CHOICES["schedule"]:
        assert 0 <= O.lr_multiplier(quick.replace(schedule=schedule), 3, 10) <= 1
    for optimizer in C._CHOICES["optimizer"]:
        assert O.make_optimizers(net, quick.replace(optimizer=optimizer))
    for batch in C._CHOICES["muon_batch"]:
        muon = O.make_optimizers(net, quick.replace(muon_batch=batch))[-1]
        assert isinstance(muon, O.Muon) and muon.batch == batch
    for kind in C._CHOICES["net"]:
        cfg = quick.replace(net=kind, widths=(8, 8, 8, 8) if kind == "seed" else (8, 8, 8))
        assert M.make_net(cfg)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert {D.use_channels_last(torch.device("cpu"), s) for s in C._CHOICES["channels_last"]} == {True, False}
    assert D.pick_device("cpu").type == "cpu"


# ---- learning rates per 1024 examples -----------------------------------------------------------

def test_sgd_lr_scale_is_airbench94s_unit():
    # airbench94's 11.5 per 1024 examples at momentum 0.85 is PyTorch's 0.0015 (to two digits)
    assert math.isclose(C.sgd_lr_scale(0.85), 1024 * (1 + 1 / 0.15))
    assert round(11.5 / C.sgd_lr_scale(0.85), 4) == 0.0015
    with pytest.raises(ValueError, match="sgd_momentum"):
        C.get_profile("quick", sgd_momentum=1.0)


# Each profile's optimisers in PyTorch's units, from the figures published with each recipe (the
# values the config held before it read them per 1024 examples): SGD lrs per step of summed loss,
# the coupled decay per step at full lr, Muon's lr.
_HLB = 1.15 * 1.35 / 512
_BEFORE = {
    "record": dict(bias=0.0573, head=0.5415, decay=1.0418e-6 * 1536, filters=0.205),
    "airbench": dict(bias=0.053, head=0.67, decay=2e-6 * 2000, filters=0.24),
    "seed": dict(bias=_HLB * 32, head=_HLB, decay=_HLB * 0.85 * 4.8e-4 * 512, filters=_HLB),
    "cpu": dict(bias=0.0573, head=0.5415, decay=1.0418e-6 * 500, filters=0.205),
    "quick": dict(bias=0.053, head=0.67, decay=2e-6 * 250, filters=0.24),
}


@pytest.mark.parametrize("profile", C.PROFILE_NAMES)
def test_every_profile_makes_the_optimisers_it_made_before(profile):
    assert set(_BEFORE) == set(C.PROFILE_NAMES)
    cfg = C.get_profile(profile)
    net = M.make_net(cfg.replace(widths=(8, 8, 8, 8) if cfg.net == "seed" else (8, 8, 8)))
    groups = {g["name"]: (opt, g) for opt in O.make_optimizers(net, cfg) for g in opt.param_groups}
    expected = _BEFORE[profile]
    wanted = {"whiten_bias": expected["bias"], "norm_biases": expected["bias"], "head": expected["head"],
              "filters": expected["filters"]}
    if "other" in groups:
        wanted["other"] = expected["filters"] if cfg.optimizer == "sgd" else expected["bias"]
    for name, lr in wanted.items():
        opt, group = groups[name]
        assert math.isclose(group["lr"], lr, rel_tol=1e-12), (name, group["lr"], lr)
        assert math.isclose(group["initial_lr"], lr, rel_tol=1e-12)
        if not isinstance(opt, O.Muon):
            assert math.isclose(group["weight_decay"] * group["lr"], expected["decay"], rel_tol=1e-12)


# ---- the notebooks' sizes ------------------------------------------------------------------------

# Which recipe each named size changes: a profile's own, the seed profile's, or none (plain values).
_SIZED_RECIPE = {"seed_net": "seed", "recipe_steps": "seed", "ablation": "own", "sweep": "own"}


@pytest.mark.parametrize("profile", C.PROFILE_NAMES)
def test_every_notebook_size_is_valid_in_every_profile(profile):
    for name in C.NOTEBOOK_SIZE_NAMES:
        size = C.notebook_size(name, profile)
        if name in _SIZED_RECIPE:
            base = C.get_profile(profile if _SIZED_RECIPE[name] == "own" else _SIZED_RECIPE[name])
            base.replace(**size)   # validated: a misspelt field or a value out of range raises
        elif name == "se_widths":
            C.get_profile("seed", widths=size)
        elif name == "sweep_epochs":
            # each value in the sweep's own recipe (which turns progressive resizing off where it would outlast it)
            swept = C.get_profile(profile, **C.notebook_size("sweep", profile))
            assert size and all(swept.replace(epochs=e).epochs == e for e in size)
        elif name == "baseline":
            assert {"subset", "epochs", "widths", "num_workers"} <= set(size)
        else:
            assert isinstance(size, int) and size >= 1, (name, size)


def test_notebook_size_defaults_to_the_resolved_profile_and_hands_out_copies(monkeypatch):
    monkeypatch.setenv("HLB_PROFILE", "quick")
    assert C.notebook_size("record_runs") == C.notebook_size("record_runs", "quick") == 2
    assert C.notebook_size("record_runs", "record") == 5   # GPU profiles run at full size
    changes = C.notebook_size("ablation")
    changes["epochs"] = 99
    assert C.notebook_size("ablation")["epochs"] != 99
    with pytest.raises(ValueError, match="did you mean 'ablation'"):
        C.notebook_size("ablations")


def test_low_res_epochs_must_leave_full_size_epochs():
    # Halving `epochs` alone must not silently train the whole run at low resolution (issue 21).
    with pytest.raises(ValueError, match=r"low_res_epochs=7 is more than epochs=5: the whole run would train at 24 px; "
                                         r"change both, e\.g\. \.replace\(epochs=5, low_res_epochs=3\.5\)"):
        C.get_profile("cpu", epochs=5)
    half = C.get_profile("cpu")
    half = half.replace(epochs=half.epochs / 2, low_res_epochs=half.low_res_epochs / 2)
    assert (half.epochs, half.low_res_epochs) == (5, 3.5)
    assert C.get_profile("cpu", epochs=5, low_res=0).epochs == 5   # no resizing: nothing to refuse
