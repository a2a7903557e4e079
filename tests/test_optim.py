"""Optimisation pieces: parameter groups, Muon, schedules, EMA, loss (hlb_utils.optim)."""
import math

import pytest
import torch
from torch import nn

from hlb_utils import model as M
from hlb_utils import optim as O
from hlb_utils.config import get_profile, sgd_lr_scale


def small_nets():
    torch.manual_seed(0)
    return [M.make_record_net((16, 32, 32)), M.make_seed_net((8, 16, 32, 32))]


@pytest.mark.parametrize("net", small_nets(), ids=["record", "seed"])
def test_split_params_lists_every_trainable_parameter_once(net):
    parts = O.split_params(net)
    assert set(parts) == set(O.PARAM_KINDS)
    listed = [id(p) for group in parts.values() for p in group]
    trainable = [id(p) for p in net.parameters() if p.requires_grad]
    assert len(listed) == len(set(listed)) and sorted(listed) == sorted(trainable)
    assert parts["whiten_bias"] == [net.whiten.bias] and parts["head"] == [net.head.weight]
    assert all(p.ndim == 4 for p in parts["filters"]) and all(p.ndim == 1 for p in parts["norm_biases"])


def test_split_params_puts_squeeze_excite_weights_in_other():
    record, seed = small_nets()
    assert O.split_params(record)["other"] == []
    assert len(O.split_params(seed)["other"]) == 4  # two SE blocks, two Linear weights each


@pytest.mark.parametrize("steps", [3, 4, 5])
def test_newton_schulz_brings_singular_values_near_one(steps):
    torch.manual_seed(0)
    # Conv-filter shapes (out, in*3*3) like the record net's; measured band 0.68..1.21.
    for shape in [(64, 216), (128, 576), (576, 128)]:
        G = torch.randn(*shape) * 5.0
        s = torch.linalg.svdvals(O.newton_schulz(G, steps))
        assert s.min() > 0.6 and s.max() < 1.3, (shape, steps, s.min(), s.max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_newton_schulz_half_precision_paths_stay_in_band(dtype):
    # The paths GPUs take in Muon (bf16; fp16 on T4/V100), exercised on the CPU; measured 0.67..1.15.
    torch.manual_seed(0)
    X = O._newton_schulz_batched(torch.randn(2, 64, 216) * 5.0, 3, dtype)
    s = torch.linalg.svdvals(X.float())
    assert X.dtype == dtype and s.min() > 0.55 and s.max() < 1.35


@pytest.mark.parametrize("coeffs", [O.NS_COEFFS, (3.4576, -4.7391, 2.0843)], ids=["airbench", "hiverge"])
@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (32, 32), (64, 576), (256, 2304)])
def test_fast_newton_schulz_equals_the_readable_one(shape, coeffs):
    # Muon's batched, fused version against the per-matrix one notebook 05 shows, in fp32.
    torch.manual_seed(0)
    G = torch.randn(3, *shape)
    G[1] *= 50.0   # the norms differ: each matrix must be normalised on its own
    fast = O._newton_schulz_batched(G, 3, torch.float32, coeffs)
    readable = torch.stack([O.newton_schulz(g, 3, coeffs) for g in G])
    assert fast.dtype == torch.float32 and fast.shape == G.shape
    torch.testing.assert_close(fast, readable)
    assert O._newton_schulz_batched(G).dtype == torch.float32   # the CPU's precision when none is asked for


def singular_value_oracle(G, steps, coeffs=O.NS_COEFFS):
    """What the iteration should give, computed another way: each step maps every singular value s of
    the normalised matrix to a s + b s^3 + c s^5 and keeps the singular vectors, so the result is
    U p(p(p(S / |G|))) V^T from G's SVD (float64)."""
    a, b, c = coeffs
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    s = S / (G.double().norm() + 1e-7)
    for _ in range(steps):
        s = a * s + b * s ** 3 + c * s ** 5
    return U @ torch.diag(s) @ Vh


@pytest.mark.parametrize("coeffs", [O.NS_COEFFS, (3.4576, -4.7391, 2.0843)], ids=["airbench", "hiverge"])
@pytest.mark.parametrize("shape", [(3, 16, 40), (2, 40, 16)])
def test_newton_schulz_is_the_quintic_on_singular_values(shape, coeffs):
    torch.manual_seed(0)
    G = torch.randn(*shape)
    got = O._newton_schulz_batched(G, 3, torch.float64, coeffs)
    want = torch.stack([singular_value_oracle(g, 3, coeffs) for g in G])
    assert got.shape == G.shape and torch.allclose(got, want, atol=1e-10)
    assert torch.allclose(O.newton_schulz(G[0].double(), 3, coeffs), want[0], atol=1e-10)


def test_muon_step_is_nesterov_momentum_then_orthogonalise_then_rescale():
    torch.manual_seed(0)
    shapes = [(8, 4, 3, 3), (8, 4, 3, 3), (16, 8, 3, 3)]   # two share a shape (one batched call), one does not
    params = [nn.Parameter(torch.randn(*s, dtype=torch.float64)) for s in shapes]
    lr, momentum = 0.1, 0.6
    opt = O.Muon(params, lr=lr, momentum=momentum, dtype=torch.float64)
    weights = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    for _ in range(2):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            bufs[i] = momentum * bufs[i] + g
            update = singular_value_oracle((g + momentum * bufs[i]).reshape(len(g), -1), 3).reshape(g.shape)
            weights[i] = weights[i] * math.sqrt(len(g)) / weights[i].norm() - lr * update
    for p, w in zip(params, weights):
        assert torch.allclose(p.detach(), w, atol=1e-10)


def test_muon_renormalises_weights_and_steps_by_lr_relative_to_them():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(32, 16, 3, 3) * 7.0)
    opt = O.Muon([w], lr=0.1, momentum=0.0)
    w.grad = torch.randn_like(w)
    before = w.detach().clone()
    opt.step()
    renormed = before * math.sqrt(32) / before.norm()
    change = (w.detach() - renormed).norm() / renormed.norm()
    assert 0.06 < change < 0.13


def test_linear_schedule_warms_up_then_decays():
    cfg = get_profile("airbench", schedule="linear", warmup=0.1, end_lr=0.0)
    assert [O.lr_multiplier(cfg, s, 100) for s in (0, 5, 10, 55, 100)] == pytest.approx([0, 0.5, 1, 0.5, 0])
    airbench = get_profile("airbench", warmup=0.0, end_lr=0.0)
    assert O.lr_multiplier(airbench, 0, 80) == 1.0 and O.lr_multiplier(airbench, 60, 80) == pytest.approx(0.25)


def test_onecycle_schedule_rises_to_the_peak_then_falls_to_end():
    cfg = get_profile("airbench", schedule="onecycle", start_lr=0.2, peak=0.25, end_lr=0.07)
    got = [O.lr_multiplier(cfg, s, 200) for s in (0, 25, 50, 125, 200)]
    assert got == pytest.approx([0.2, 0.6, 1.0, 0.535, 0.07])
    curve = O.schedule_curve(cfg, 200)
    assert len(curve) == 200 and max(curve) == pytest.approx(1.0) and curve[0] == pytest.approx(0.2)


def test_ema_after_k_updates_is_one_minus_decay_to_the_k():
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    ema = O.EMA(net, decay=0.9)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
        net[1].running_mean.fill_(3.0)
    for _ in range(3):
        ema.update(net)
    for p in ema.model.parameters():
        assert torch.allclose(p, torch.full_like(p, 1 - 0.9 ** 3))
    # running statistics are averaged like the weights (from BatchNorm's initial mean of 0)
    assert torch.allclose(ema.model[1].running_mean, torch.full((2,), 3.0 * (1 - 0.9 ** 3)))
    assert ema.model[1].num_batches_tracked == net[1].num_batches_tracked
    assert torch.equal(net[0].weight, torch.ones_like(net[0].weight))   # the live net is left alone


def test_smoothed_cross_entropy_matches_the_formula():
    torch.manual_seed(0)
    logits, targets, s = torch.randn(5, 10), torch.randint(0, 10, (5,)), 0.2
    logp = logits.log_softmax(-1)
    manual = -((1 - s) * logp.gather(1, targets[:, None]).squeeze(1) + s / 10 * logp.sum(-1)).sum()
    assert torch.allclose(O.smoothed_cross_entropy(logits, targets, s), manual, atol=1e-5)
    assert torch.allclose(O.smoothed_cross_entropy(logits, targets, s, "mean"), manual / 5, atol=1e-5)


@pytest.mark.parametrize("optimizer, n_opts", [("muon", 2), ("sgd", 1)])
def test_make_optimizers_groups_every_parameter_once_with_names(optimizer, n_opts):
    cfg = get_profile("quick", net="seed", widths=(8, 16, 32, 32), optimizer=optimizer)
    net = M.make_net(cfg)
    opts = O.make_optimizers(net, cfg)
    groups = [g for opt in opts for g in opt.param_groups]
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(opts) == n_opts and len(listed) == len(set(listed))
    assert sorted(listed) == sorted(id(p) for p in net.parameters() if p.requires_grad)
    by_name = {g["name"]: g for g in groups}
    assert by_name["whiten_bias"]["params"] == [net.whiten.bias]
    scale = sgd_lr_scale(cfg.sgd_momentum)   # the config's SGD lrs and decay are per 1024 examples
    assert by_name["head"]["initial_lr"] == pytest.approx(cfg.head_lr / scale)
    for g in groups:
        assert g["lr"] == g["initial_lr"]
        if isinstance(opts[-1], O.Muon) and g in opts[-1].param_groups:
            continue  # Muon renormalises its weights instead of decaying them
        # Per-step decay at full lr is weight_decay * batch_size (PyTorch's unit), whatever the group's lr.
        assert g["weight_decay"] * g["lr"] == pytest.approx(cfg.weight_decay * cfg.batch_size / scale)


def test_record_net_with_muon_learns_synthetic_classes_in_a_few_steps():
    torch.manual_seed(0)
    n = 128
    labels = torch.randint(0, 10, (n,))
    images = torch.randn(10, 3, 32, 32)[labels] * 0.5 + torch.randn(n, 3, 32, 32)
    cfg = get_profile("quick", batch_size=n)
    net = M.make_net(cfg)
    M.init_whitening(net, images)
    opts = O.make_optimizers(net, cfg)
    losses = []
    for step in range(6):
        for opt in opts:
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * O.lr_multiplier(cfg, step, 6)
        loss = O.smoothed_cross_entropy(net(images), labels, cfg.label_smoothing)
        loss.backward()
        for opt in opts:
            opt.step()
        net.zero_grad(set_to_none=True)
        losses.append(loss.item() / n)
    assert losses[-1] < 0.7 * losses[0], losses


def test_newton_schulz_takes_other_coefficients():
    torch.manual_seed(0)
    G = torch.randn(16, 40, dtype=torch.float64)
    assert not torch.allclose(O.newton_schulz(G, 3, (3.4576, -4.7391, 2.0843)), O.newton_schulz(G, 3))


def test_muon_padded_batch_gives_the_per_shape_result():
    # Zero padding to one shape cannot change an orthogonalisation: the zeros stay zero.
    torch.manual_seed(0)
    shapes = [(8, 4, 3, 3), (16, 8, 3, 3), (24, 2, 3, 3)]   # (24, 18) is tall: padded into a wide (24, 72)
    grads = [torch.randn(*s, dtype=torch.float64) for s in shapes]
    results = []
    for batch in ("shape", "pad"):
        params = [nn.Parameter(torch.ones(*s, dtype=torch.float64)) for s in shapes]
        opt = O.Muon(params, lr=0.1, momentum=0.5, dtype=torch.float64, batch=batch)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        results.append([p.detach().clone() for p in params])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-12)


def test_muon_renormalises_on_hiverges_growing_period_and_decays_in_between():
    w = nn.Parameter(torch.full((4, 2, 3, 3), 3.0, dtype=torch.float64))
    total, decay = 40, 0.1   # lr 0: the update does nothing, and nor does the decay (lr * decay)
    opt = O.Muon([w], lr=0.0, momentum=0.0, dtype=torch.float64, weight_decay=decay, renorm_every=2,
                 renorm_growth=15, total_steps=total)
    renormed = []
    for step in range(1, total + 1):
        w.grad = torch.ones_like(w)
        with torch.no_grad():
            w.mul_(1.5)   # off norm sqrt(4) = 2, unless this step rescales it back
        opt.step()
        if math.isclose(w.norm().item(), 2.0):
            renormed.append(step)
    # due once 2 + int(15 * step / 40) steps have passed since the last time: 2, 3, 5, 8, 13 steps apart
    assert renormed == [2, 5, 10, 18, 31]
    # decoupled decay: w *= 1 - lr * decay after the update (here lr 0.5, one step, no rescaling due)
    v = nn.Parameter(torch.full((4, 2, 3, 3), 3.0, dtype=torch.float64))
    opt = O.Muon([v], lr=0.5, momentum=0.0, dtype=torch.float64, weight_decay=decay, renorm_every=2)
    v.grad = torch.zeros_like(v)
    opt.step()
    assert torch.allclose(v.detach(), torch.full_like(v, 3.0 * (1 - 0.5 * decay)))
    with pytest.raises(ValueError, match="total_steps"):
        O.Muon([v], renorm_growth=1.0).step()


def test_record_profile_reaches_muon():
    net = M.make_record_net((16, 32, 32))
    muon = O.make_optimizers(net, get_profile("record"))[-1]
    assert isinstance(muon, O.Muon) and muon.batch == "pad"
    assert (muon.renorm_every, muon.renorm_growth) == (2, 15.0)
    group = muon.param_groups[0]
    assert group["ns_coeffs"] == (3.4576, -4.7391, 2.0843)
    assert math.isclose(group["weight_decay"], 1.0418e-6 * 1536)


def test_muon_state_dict_carries_its_rescaling_clock():
    # The CUDA warm-up steps the optimisers and restores them from state_dict(): a restored Muon must
    # rescale on the same steps as one that never stepped (the clock is no tensor state of torch's).
    def steps(opt, w, n):
        norms = []
        for _ in range(n):
            w.grad = torch.ones_like(w)
            with torch.no_grad():
                w.mul_(1.5)
            opt.step()
            norms.append(w.norm().item())
        return norms

    def fresh():
        w = nn.Parameter(torch.full((4, 2, 3, 3), 3.0, dtype=torch.float64))
        return w, O.Muon([w], lr=0.0, momentum=0.0, dtype=torch.float64, renorm_every=2,
                         renorm_growth=15, total_steps=40)

    w, opt = fresh()
    w2, untouched = fresh()
    assert steps(opt, w, 5) == steps(untouched, w2, 5)
    saved, start = opt.state_dict(), w.detach().clone()
    steps(opt, w, 3)                       # a warm-up's worth of steps ...
    opt.load_state_dict(saved)             # ... then put back, as train's warm-up does
    with torch.no_grad():
        w.copy_(start)
    assert steps(opt, w, 20) == steps(untouched, w2, 20)
