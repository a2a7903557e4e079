"""The config owns the knobs' allowed values, and each value works in the module that uses it.

config.py imports none of our modules and defines every allowed value once (the modules import them
from it); here every allowed value is fed to the module that uses it. The SGD learning rates are read
per 1024 examples (`config.sgd_lr_scale`): each profile must still make exactly the PyTorch
optimisers it made with the published figures.
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

import hlb_utils
from hlb_utils import compiling as Co
from hlb_utils import config as C
from hlb_utils import device as D
from hlb_utils import evaluate as E
from hlb_utils import loader as L
from hlb_utils import model as M
from hlb_utils import optim as O

ALLOWED = ("NETS", "ACTIVATIONS", "FLIP_MODES", "TTA_MODES", "OPTIMIZERS", "MUON_BATCHES", "SCHEDULES",
           "DEVICES", "DTYPES", "WEIGHTS", "CHANNELS_LAST", "COMPILE_MODES", "COMPILE_SCOPES", "NS_COEFFS")


def test_config_imports_none_of_our_modules():
    tree = ast.parse(Path(C.__file__).read_text())
    relative = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0]
    assert relative == [], f"config.py imports {relative}"


def test_allowed_values_are_defined_in_config_only():
    # Every other module may import them from config, never assign its own.
    package = Path(hlb_utils.__file__).parent
    for path in package.glob("*.py"):
        if path.name == "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            assert not names & set(ALLOWED), f"{path.name} defines {names & set(ALLOWED)}"
    assert all(hasattr(C, name) for name in ALLOWED)


def test_every_choice_is_a_config_constant():
    # the validation table uses the named values, so a new value is added in one place
    named = {id(getattr(C, name)) for name in ALLOWED}
    for field, allowed in C._CHOICES.items():
        assert id(allowed) in named or field == "dtype", field
    assert C._CHOICES["dtype"] == ("auto", *C.DTYPES)


def test_every_activation_runs_in_the_net():
    for name in C.ACTIVATIONS:
        assert isinstance(M.make_act(name), nn.Module)
        cfg = C.get_profile("quick", act=name, whiten_act=name)
        assert M.make_net(cfg)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_every_flip_mode_runs_in_the_loader():
    images, labels = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8)
    flipped = {}
    for flip in C.FLIP_MODES:
        loader = L.DeviceLoader(images, labels, 8, train=True, flip=flip, translate=0, seed=1)
        x, y = next(iter(loader))
        assert x.shape == (8, 3, 32, 32) and len(y) == 8
        flipped[flip] = x
    # 'none' leaves every image as it is; the other two mirror some of them
    plain = next(iter(L.DeviceLoader(images, labels, 8, train=True, flip="none", translate=0, seed=1)))[0]
    assert torch.equal(flipped["none"], plain) and not torch.equal(flipped["random"], plain)


def test_every_tta_mode_runs_in_the_evaluation():
    net = M.make_net(C.get_profile("quick")).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for mode in C.TTA_MODES:
            assert E.tta_logits(net, x, mode).shape == (4, 10) and E.tta_passes(mode) >= 1


def test_every_precision_is_taken_as_asked():
    for name, dtype in C.DTYPES.items():
        # a CUDA device object needs no GPU; named precisions are taken as asked there
        assert D.pick_dtype(torch.device("cuda"), name) == dtype
        assert D.dtype_name(dtype) == name
    for weights in C.WEIGHTS:   # pick_dtype takes every holding of the weights config allows
        assert D.pick_dtype(torch.device("cuda"), "fp16", weights) == torch.float16
        assert D.pick_dtype(torch.device("cpu"), "auto", weights) == torch.float32


def test_every_compile_mode_is_torchs_and_is_chosen_on_a_large_gpu(monkeypatch):
    from torch import _inductor

    # A large GPU with Triton, simulated: every allowed mode is the one compile_choice picks.
    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(
        multi_processor_count=132))
    for mode in C.COMPILE_MODES:
        _inductor.list_mode_options(mode)   # torch refuses a mode it does not know
        assert Co.compile_choice(True, torch.device("cuda"), mode)[0] == mode


def test_newton_schulz_defaults_to_the_configs_coefficients():
    default = inspect.signature(O.newton_schulz).parameters["coeffs"].default
    assert default == C.NS_COEFFS == C.TrainConfig().ns_coeffs


def test_the_remaining_choices_work_in_their_modules():
    quick = C.get_profile("quick")
    net = M.make_net(quick)
    for schedule in C.SCHEDULES:
        assert 0 <= O.lr_multiplier(quick.replace(schedule=schedule), 3, 10) <= 1
    assert O.lr_multiplier(quick.replace(schedule="onecycle", start_lr=0.0), 0, 10) == 0.0
    for optimizer in C.OPTIMIZERS:
        kinds = {type(opt).__name__ for opt in O.make_optimizers(net, quick.replace(optimizer=optimizer))}
        assert kinds == ({"SGD", "Muon"} if optimizer == "muon" else {"SGD"})
    for batch in C.MUON_BATCHES:
        muon = O.make_optimizers(net, quick.replace(muon_batch=batch))[-1]
        assert isinstance(muon, O.Muon) and muon.batch == batch
    for kind in C.NETS:
        cfg = quick.replace(net=kind, widths=(8, 8, 8, 8) if kind == "seed" else (8, 8, 8))
        assert M.make_net(cfg)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert {D.use_channels_last(torch.device("cpu"), s) for s in C.CHANNELS_LAST} == {True, False}
    assert D.pick_device("cpu").type == "cpu"


@pytest.mark.parametrize("field, value", [
    ("flip", "sideways"), ("tta", "all"), ("act", "tanh"), ("net", "resnet"), ("optimizer", "adam"),
    ("schedule", "cosine"), ("muon_batch", "all"), ("dtype", "fp8"), ("compile_mode", "fast"),
    ("translate", 9), ("cutout", 40), ("batch_size", 0), ("brightness", -0.1),
])
def test_a_value_out_of_the_allowed_ones_is_refused_at_the_config(field, value):
    # the one check: the modules that use these values trust the config
    with pytest.raises(ValueError, match=f"TrainConfig.{field}="):
        C.get_profile("quick", **{field: value})


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


def test_first_res_is_a_smaller_stage_inside_the_low_resolution_epochs():
    cfg = C.get_profile("cpu", first_res=16, first_res_epochs=3)
    assert (cfg.first_res, cfg.first_res_epochs, cfg.low_res) == (16, 3, 24)
    with pytest.raises(ValueError, match=r"first_res=16 needs progressive resizing \(low_res > 0\)"):
        C.get_profile("cpu", low_res=0, first_res=16, first_res_epochs=3)
    with pytest.raises(ValueError, match=r"first_res=28 .* a size from 9 to low_res=24 pixels"):
        C.get_profile("cpu", first_res=28, first_res_epochs=3)
    with pytest.raises(ValueError, match=r"first_res_epochs=8 is more than low_res_epochs=7"):
        C.get_profile("cpu", epochs=10, low_res_epochs=7, first_res=16, first_res_epochs=8)
    assert C.get_profile("cpu", first_res_epochs=9).first_res_epochs == 9   # off (first_res=0): nothing to refuse


def test_the_smallest_size_allowed_is_the_smallest_both_nets_train_at():
    for profile in ("quick", "seed"):                       # the record net and the SE-ResNet
        net = M.make_net(C.get_profile(profile)).train()
        net(torch.randn(4, 3, C.MIN_IMAGE_SIZE, C.MIN_IMAGE_SIZE)).sum().backward()
        with pytest.raises(RuntimeError, match="too small"):
            net(torch.randn(4, 3, C.MIN_IMAGE_SIZE - 1, C.MIN_IMAGE_SIZE - 1))
    assert C.get_profile("cpu", low_res=C.MIN_IMAGE_SIZE).low_res == C.MIN_IMAGE_SIZE
    with pytest.raises(ValueError, match=rf"low_res={C.MIN_IMAGE_SIZE - 1} is too small for the nets' poolings"):
        C.get_profile("cpu", low_res=C.MIN_IMAGE_SIZE - 1)
    with pytest.raises(ValueError, match=rf"a size from {C.MIN_IMAGE_SIZE} to low_res=24"):
        C.get_profile("cpu", first_res=C.MIN_IMAGE_SIZE - 1, first_res_epochs=3)


def test_low_res_epochs_must_leave_full_size_epochs():
    # Halving `epochs` alone must not silently train the whole run at low resolution (issue 21).
    with pytest.raises(ValueError, match=r"low_res_epochs=7 is more than epochs=5: the whole run would train at 24 px; "
                                         r"change both, e\.g\. \.replace\(epochs=5, low_res_epochs=3\.5\)"):
        C.get_profile("cpu", epochs=5, low_res_epochs=7)
    half = C.get_profile("cpu", epochs=10, low_res_epochs=7)
    half = half.replace(epochs=half.epochs / 2, low_res_epochs=half.low_res_epochs / 2)
    assert (half.epochs, half.low_res_epochs) == (5, 3.5)
    assert C.get_profile("cpu", epochs=5, low_res=0).epochs == 5   # no resizing: nothing to refuse
