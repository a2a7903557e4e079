"""Our `record` and `airbench` profiles against the peers' own code, step by step, on the CPU in fp32
(and in fp16, hiverge's precision, for the record's forward pass and optimiser steps).

The peers are hiverge's cifar10_speedrun.py (`record`) and airbench94_muon.py (`airbench`). Their scripts
are never part of this repository: give their paths at test time,

    HLB_PEER_SPEEDRUN=path/to/cifar10_speedrun.py HLB_PEER_AIRBENCH=path/to/airbench94_muon.py pytest tests/test_peers.py

and each test skips, naming the variable, when its peer is not given. A peer script is CUDA-only and
trains at import under `__main__`; here it is executed under another name, with `torch.compile` made
the identity, its fp16 model cast to fp32, and its `main()` stopped at its first CUDA call (the timer),
by which point it has built its optimisers: their hyperparameters are read from those objects, not
re-typed here. For the same weights and the same inputs the tests compare the forward pass, one
optimiser step of every parameter group (gradients copied across), the augmentations for the same
random draws, and the test-time augmentation's logits.
"""
from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hlb_utils import evaluate, loader as L, train
from hlb_utils.config import get_profile, sgd_lr_scale
from hlb_utils.model import init_whitening, make_net
from hlb_utils.optim import make_optimizers

# (config variable, profile it is compared with)
PEERS = {"speedrun": ("HLB_PEER_SPEEDRUN", "record"), "airbench": ("HLB_PEER_AIRBENCH", "airbench")}
BATCH = 32   # images per compared batch: enough for BatchNorm, small enough for seconds


class _Stop(Exception):
    """Raised by the stand-in for `torch.cuda.Event`: the peer's `main()` has built its optimisers."""


def _identity_compile(fn=None, **_options):
    """`torch.compile` as a no-op, both as `@torch.compile` and as `@torch.compile(...)`."""
    return fn if fn is not None else (lambda f: f)


def load_peer(kind: str, monkeypatch) -> SimpleNamespace:
    """The peer script's globals, executed without its main block; compile stays patched for the test."""
    var, _ = PEERS[kind]
    path = os.environ.get(var)
    if not path:
        pytest.skip(f"{var} is not set: give the path of the peer's script to compare with its code")
    if not Path(path).is_file():
        pytest.fail(f"{var}={path}: no such file", pytrace=False)
    monkeypatch.setattr(torch, "compile", _identity_compile)
    monkeypatch.setattr(sys, "argv", [path])   # the scripts read their own source at import
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    space = {"__name__": f"peer_{kind}", "__file__": path}
    with warnings.catch_warnings():   # their docstrings' escape sequences are theirs to fix
        warnings.simplefilter("ignore")
        code = compile(Path(path).read_text(), path, "exec")
    exec(code, space)
    return SimpleNamespace(**space)


class _FakeLoader:
    """Stands in for a peer's CifarLoader: sizes and augmentation settings only, no data on disk."""

    made: list = []

    def __init__(self, path, train=True, batch_size=500, aug=None):
        n = 50_000 if train else 10_000
        self.images = torch.zeros(1, 3, 32, 32).expand(n, 3, 32, 32)   # no memory: only len() is used
        self.labels = torch.zeros(n, dtype=torch.long)
        self.batch_size, self.aug, self.train = batch_size, aug or {}, train
        self.normalize = lambda x: x
        _FakeLoader.made.append(self)

    def __len__(self):
        return len(self.images) // self.batch_size


def peer_setup(peer: SimpleNamespace, monkeypatch, half: bool = False):
    """Run the peer's `main()` up to its timer: (model, optimisers, training loader), all on the CPU;
    the model in fp32, or as the peer builds it (`half`)."""
    made, sgd = [], torch.optim.SGD
    monkeypatch.setattr(torch.optim, "SGD", _recording(sgd, made))
    peer.main.__globals__["Muon"] = _recording(peer.Muon, made)
    peer.main.__globals__["CifarLoader"] = _FakeLoader
    _FakeLoader.made = []

    def stop(*_args, **_kwargs):
        raise _Stop

    monkeypatch.setattr(torch.cuda, "Event", stop)
    model = peer.CifarNet() if half else peer.CifarNet().float()
    model.reset()
    with pytest.raises(_Stop):
        peer.main(1, model)
    monkeypatch.setattr(torch.optim, "SGD", sgd)   # ours are plain again
    train_loader = next(ld for ld in _FakeLoader.made if ld.train)
    return model, made, train_loader


def _recording(cls, made: list):
    class Recording(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
    return Recording


def our_copy(peer_model, profile: str):
    """Our net of `profile`, holding the peer's weights and buffers (their `layers` are our `body`)."""
    net = make_net(get_profile(profile, device="cpu", dtype="fp32"))
    state = {k.replace("layers.", "body."): v for k, v in peer_model.state_dict().items()}
    net.load_state_dict(state)
    return net


def their_names(net) -> dict:
    """Our net's parameters under the peer's names (their `layers` are our `body`)."""
    return {k.replace("body.", "layers."): p for k, p in net.named_parameters()}


def images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth, channel-correlated noise: image-like enough for distinct whitening eigenvalues."""
    g = torch.Generator().manual_seed(seed)
    # a 3x2 box blur: rows and columns correlate differently, so no two eigenvalues tie
    x = F.avg_pool2d(torch.randn(n, 3, 34, 33, generator=g), (3, 2), stride=1)
    mix = torch.tensor([[1.0, 0.6, 0.3], [0.2, 1.0, 0.5], [0.1, 0.4, 1.0]])
    return torch.einsum("ij,njhw->nihw", mix, x) * 2


@pytest.fixture(params=sorted(PEERS))
def peer(request, monkeypatch):
    return request.param, load_peer(request.param, monkeypatch)


def test_forward_pass_and_batchnorm_statistics_are_identical(peer):
    kind, code = peer
    theirs = code.CifarNet().float()
    theirs.reset()
    theirs.init_whiten(images(960, seed=1))
    ours = our_copy(theirs, PEERS[kind][1])
    x = images(BATCH)
    # hiverge's forward makes its input channels_last; ours gets it so from the loader (on a GPU)
    mine = x.contiguous(memory_format=torch.channels_last) if kind == "speedrun" else x
    assert torch.equal(ours(mine), theirs(x))   # train mode: batch statistics
    # one training-mode pass moved both nets' running statistics by the same BatchNorm momentum
    for a, b in zip(ours.buffers(), theirs.buffers()):
        assert torch.equal(a, b)
    ours.eval(), theirs.eval()
    assert torch.equal(ours(mine), theirs(x))


def test_half_precision_forward_pass_matches_the_records_fp16_net(monkeypatch):
    # hiverge's net as it trains: every module cast to fp16 (BatchNorm's weights, biases and running
    # statistics too), channels_last. Ours in the record profile's precision, weights="half": train()
    # casts the whole net to the compute dtype (fp16 on a GPU), as here. CPU fp16 kernels, same input.
    code = load_peer("speedrun", monkeypatch)
    assert get_profile("record").weights == "half"
    theirs = code.CifarNet()
    theirs.reset()
    theirs.init_whiten(images(960, seed=1).half())
    ours = our_copy(theirs, "record").to(torch.float16)
    for net in (theirs, ours):
        assert {t.dtype for t in (*net.parameters(), *net.buffers()) if t.is_floating_point()} == {torch.float16}
    x = images(BATCH).half()
    mine = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(ours(mine), theirs(x))   # train mode: batch statistics, in fp16
    for a, b in zip(ours.buffers(), theirs.buffers()):
        assert torch.equal(a, b)
    ours.eval(), theirs.eval()
    assert torch.equal(ours(mine), theirs(x))


def test_whitening_filters_match(peer):
    # Ours: eigh of the centred patch covariance; theirs: eigh (airbench) or SVD (hiverge) of the uncentred
    # one, in another order and sign. The same filters up to order and sign, norms within a percent.
    kind, code = peer
    cfg = get_profile(PEERS[kind][1])
    x = images(cfg.whiten_images, seed=2)
    theirs = code.CifarNet().float()
    theirs.init_whiten(x)
    ours = make_net(cfg)
    init_whitening(ours, x)
    a, b = ours.whiten.weight.flatten(1)[:12], theirs.whiten.weight.flatten(1)[:12]
    cosine = (F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).abs()
    match = cosine.argmax(dim=1)
    assert sorted(match.tolist()) == list(range(12)) and cosine.amax(dim=1).min() > 0.999
    torch.testing.assert_close(a.norm(dim=1), b[match].norm(dim=1), rtol=0.01, atol=0)


def _neutral_magnitude(code):
    """hiverge's Newton-Schulz with its target magnitude pushed to ~4e11: the scaling it applies before
    normalising then changes nothing (t / (t + 1e-5) = 1 in fp32), isolating the rest of its step."""
    original = code.main.__globals__["_zeropower_via_newtonschulz5"]

    def call(grads, meta, max_d, max_k, current_step, total_steps):
        return original(grads, meta, max_d, max_k, -10**12, 1)
    return call


def _steps(kind, code, monkeypatch, neutral=True, steps=6, half=False):
    """Run `steps` optimiser steps on the same weights and gradients, theirs and ours; return both nets.
    `half`: hiverge's net in fp16 with its fp16 momentum buffers, ours as train() holds it (weights='half')."""
    if kind == "airbench":   # its Newton-Schulz casts to bf16; on the CPU in fp32 it stays fp32, as ours
        monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self, *a, **k: self.float())
    theirs, their_opts, loader = peer_setup(code, monkeypatch, half=half)
    cfg = get_profile(PEERS[kind][1], device="cpu", dtype="fp32")
    ours = our_copy(theirs, PEERS[kind][1])
    if half:
        ours = ours.to(torch.float16)
    our_opts = make_optimizers(ours, cfg, torch.float16 if half else None)
    muon = their_opts[-1]
    total = math.ceil(cfg.epochs * len(loader))
    if kind == "speedrun":
        # a 40-step run, so that its rescaling period grows within 6 steps (rescaled at steps 2 and 5)
        total = muon.total_train_steps = our_opts[-1].total_steps = 40
        group = muon.param_groups[0]
        assert group["momentum_buffer_dtype"] == torch.half
        for p in group["params"]:   # fp32 buffers in an fp32 run: its fp16 ones would round each step
            if not half:
                muon.state[p]["momentum_buffer"] = torch.zeros_like(p)
        if neutral:
            code.main.__globals__["_zeropower_via_newtonschulz5"] = _neutral_magnitude(code)
    whiten_steps = math.ceil(round(cfg.whiten_bias_epochs * len(loader), 6))
    names = dict(theirs.named_parameters())
    g = torch.Generator().manual_seed(3)
    for step in range(steps):
        grads = {n: torch.randn(p.shape, generator=g).to(p.dtype) for n, p in names.items() if p.requires_grad}
        mult = train.set_lrs(our_opts, cfg, step, total, whiten_steps)
        for i, group in enumerate(their_opts[0].param_groups + muon.param_groups):
            # their loop: the whitening bias (group 0) on its own clock, the rest linear to 0
            group["lr"] = group["initial_lr"] * (max(0.0, 1 - step / whiten_steps) if i == 0 else mult)
        mine = their_names(ours)
        for n, p in names.items():
            if p.requires_grad:
                p.grad, mine[n].grad = grads[n].clone(), grads[n].clone()
        for opt in their_opts + our_opts:
            opt.step()
    return theirs, ours


def _relative_gaps(theirs, ours) -> dict:
    mine = their_names(ours)
    return {n: ((mine[n].float() - p.float()).norm() / p.float().norm()).item()
            for n, p in theirs.named_parameters() if p.requires_grad}


def test_optimiser_hyperparameters_are_theirs(peer, monkeypatch):
    kind, code = peer
    _, their_opts, loader = peer_setup(code, monkeypatch)
    cfg = get_profile(PEERS[kind][1])
    assert loader.batch_size == cfg.batch_size
    sgd, muon = their_opts[0], their_opts[-1]
    assert math.isclose(sgd.defaults["momentum"], cfg.sgd_momentum) and sgd.defaults["nesterov"]
    bias, norms, head = sgd.param_groups
    scale = sgd_lr_scale(cfg.sgd_momentum)   # the config's SGD lrs and decay are per 1024 examples
    wd = cfg.weight_decay * cfg.batch_size / scale
    assert math.isclose(bias["lr"], cfg.bias_lr / scale) and math.isclose(norms["lr"], cfg.bias_lr / scale)
    assert math.isclose(head["lr"], cfg.head_lr / scale)
    for group in (bias, norms, head):
        assert math.isclose(group["weight_decay"] * group["lr"], wd)
    assert math.isclose(muon.defaults["lr"], cfg.lr) and math.isclose(muon.defaults["momentum"], cfg.momentum)
    assert muon.defaults["nesterov"]
    aug = loader.aug
    assert aug["flip"] and cfg.flip == "alternate" and aug["translate"] == cfg.translate
    if kind == "speedrun":
        assert math.isclose(muon.defaults["weight_decay"], cfg.filter_weight_decay * cfg.batch_size)
        jitter = aug["color_jitter"]
        assert jitter["enabled"] and math.isclose(jitter["brightness_range"], cfg.brightness)
        assert math.isclose(jitter["contrast_range"], cfg.contrast)
    else:
        assert cfg.filter_weight_decay == 0 and cfg.brightness == cfg.contrast == 0


def test_six_optimiser_steps_of_every_group_agree(peer, monkeypatch):
    # Six steps: hiverge's Muon rescales the weights at steps 2 and 5 of a 40-step run, airbench's at each.
    kind, code = peer
    theirs, ours = _steps(kind, code, monkeypatch)
    gaps = _relative_gaps(theirs, ours)
    assert max(gaps.values()) < 1e-6, gaps


def test_speedrun_target_magnitude_changes_a_step_by_rounding_only(monkeypatch):
    # With their code untouched: the scaling to a target magnitude, undone by the normalisation after
    # it, leaves a factor t / (t + 1e-5) (t >= 0.0786) on the input of Newton-Schulz: at most 1.3e-4.
    code = load_peer("speedrun", monkeypatch)
    theirs, ours = _steps("speedrun", code, monkeypatch, neutral=False)
    gaps = _relative_gaps(theirs, ours)
    assert max(gaps.values()) < 1e-4, gaps


def test_six_half_precision_optimiser_steps_agree_to_fp16_rounding(monkeypatch):
    # hiverge's optimisers as they run: fp16 weights, fp16 momentum buffers, Newton-Schulz in fp16, its
    # target-magnitude scaling left in; ours with the net held in fp16 as train() holds it for the record.
    code = load_peer("speedrun", monkeypatch)
    theirs, ours = _steps("speedrun", code, monkeypatch, neutral=False, half=True)
    assert {p.dtype for p in (*theirs.parameters(), *ours.parameters())} == {torch.float16}
    gaps = _relative_gaps(theirs, ours)
    # not bit-equal: their SGD step is fused (fp32 inside), ours rounds each foreach result to fp16, and
    # their Newton-Schulz rounds b A + c A^2 in two operations where our baddbmm rounds once. Each is
    # an fp16 rounding (spacing 9.8e-4 relative); after six steps the weights differ by a few of them.
    assert max(gaps.values()) < 4e-3, gaps


def test_augmentations_agree_for_the_same_random_draws(peer):
    kind, code = peer
    x = images(BATCH)
    padded = L.pad_reflect(x, 2)
    # translation: their offsets, drawn from the global generator, fed to our crop
    torch.manual_seed(5)
    their_crop = code.batch_crop(padded, 32)
    torch.manual_seed(5)
    if kind == "speedrun":   # offsets uniform in 0..4: rand * 5, rows then columns
        dy, dx = (torch.rand(BATCH) * 5).long(), (torch.rand(BATCH) * 5).long()
    else:                    # shifts in -2..2 around the centre
        shifts = torch.randint(-2, 3, size=(BATCH, 2))
        dy, dx = 2 + shifts[:, 0], 2 + shifts[:, 1]
    assert torch.equal(L.crop_at(padded, 32, dy, dx), their_crop)
    # flips: the random flip of epoch 0, then every image mirrored in odd epochs (alternating flip)
    torch.manual_seed(6)
    their_flip = code.batch_flip_lr(x)
    torch.manual_seed(6)
    mask = torch.rand(BATCH) < 0.5
    assert torch.equal(L.flip_images(x, mask), their_flip)
    assert torch.equal(L.flip_images(x, L.alternating_flip_mask(mask, 1)), their_flip.flip(-1))
    if kind == "speedrun":
        # colour: the same generator state gives our loader's draws and theirs
        cfg = get_profile("record")
        torch.manual_seed(7)
        their_jitter = code.batch_color_jitter(x, cfg.brightness, cfg.contrast)
        shift, scale = L.random_color_jitter(BATCH, cfg.brightness, cfg.contrast, torch.Generator().manual_seed(7))
        torch.testing.assert_close(L.color_jitter_at(x, shift, scale), their_jitter, rtol=1e-6, atol=1e-6)


def test_tta_logits_agree(peer):
    kind, code = peer
    theirs = code.CifarNet().float()
    theirs.reset()
    theirs.init_whiten(images(960, seed=1))
    ours = our_copy(theirs, PEERS[kind][1]).eval()
    x = images(4 * BATCH, seed=4)   # selective TTA: the 32 least confident of 128 get six views
    their_logits = code.infer(theirs, SimpleNamespace(images=x, normalize=lambda t: t), tta_level=2)
    if kind == "speedrun":
        mine = evaluate.selective_logits(ours, x)
        with torch.no_grad():
            plain = ours(x)
        assert (mine != plain).any(dim=1).sum() == int(len(x) * evaluate.UNSURE_FRACTION)
    else:
        mine = evaluate.tta_logits(ours, x, "multi")
    torch.testing.assert_close(mine, their_logits.float(), rtol=1e-5, atol=1e-6)
