"""The networks: shapes, sizes, costs and the whitening layer (hlb_utils.model)."""
import pytest
import torch
from torch import nn

from hlb_utils import model as M
from hlb_utils.config import get_profile

SMALL_RECORD = (16, 32, 32)
SMALL_SEED = (8, 16, 32, 32)


def correlated_images(n: int, seed: int = 0) -> torch.Tensor:
    """Float images whose neighbouring pixels and channels are correlated, like real photos."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 36, 36, generator=g)
    x = nn.functional.avg_pool2d(x, 5, stride=1)
    mix = torch.tensor([[1.0, 0.6, 0.3], [0.2, 1.0, 0.5], [0.1, 0.4, 1.0]])
    return torch.einsum("dc,nchw->ndhw", mix, x) + 0.1


@pytest.mark.parametrize("make, widths", [(M.make_record_net, SMALL_RECORD), (M.make_seed_net, SMALL_SEED)])
def test_nets_give_ten_logits_for_any_batch_in_channels_last(make, widths):
    torch.manual_seed(0)
    net = make(widths).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    assert net(x).shape == (2, 10)
    net.eval()
    assert net(x[:1]).shape == (1, 10)
    assert torch.isfinite(net(x)).all()


def test_nets_run_in_the_dtype_they_were_cast_to():
    torch.manual_seed(0)
    net = M.make_record_net(SMALL_RECORD).to(torch.bfloat16)
    out = net(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 10)


def test_default_sizes_match_the_published_nets():
    record, seed = M.make_record_net(), M.make_seed_net()
    # airbench94: "about 2.0 M parameters"; measured 1,972,792 with our BN and whitening layers.
    assert 1_950_000 <= M.count_params(record) <= 2_000_000
    # hlb's SE-ResNet at base depth 64: measured 6,570,500.
    assert 6_500_000 <= M.count_params(seed) <= 6_650_000
    for net in (record, seed):
        frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
        assert frozen >= net.whiten.weight.numel()
        assert M.count_params(net) - M.count_params(net, trainable_only=True) == frozen


def test_flop_count_scales_with_batch_and_backward_costs_about_twice_forward():
    net = M.make_record_net(SMALL_RECORD)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    forward = M.count_flops(net, batch=1, train=False)
    train = M.count_flops(net, batch=1, train=True)
    assert M.count_flops(net, batch=2, train=False) == 2 * forward
    assert 2.7 * forward <= train <= 3.1 * forward
    # Counting must not touch the real net's statistics or gradients.
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_make_net_builds_what_the_config_names():
    seed = M.make_net(get_profile("seed"))
    record = M.make_net(get_profile("cpu"))
    assert seed.head.in_features == get_profile("seed").widths[-1]
    assert record.head.in_features == get_profile("cpu").widths[-1]
    assert seed.whiten.out_channels == 12 and record.whiten.out_channels == 24
    # the widths are checked where they come in, the config, so the nets a notebook shows stay plain
    with pytest.raises(ValueError, match="widths"):
        get_profile("cpu", widths=(16, 32))
    with pytest.raises(ValueError, match="widths"):
        get_profile("seed", widths=(16, 32, 64))


def test_record_groups_keep_the_layout_the_peers_weights_load_into():
    # tests/test_peers.py loads airbench's and hiverge's weights by name: their `layers.N.conv1.weight`
    # is our `body.N.conv1.weight`, for each of the three groups after the whitening's activation.
    names = [k for k in M.make_record_net(SMALL_RECORD).state_dict() if k.startswith("body.")]
    per_group = ["conv1.weight", "norm1.weight", "norm1.bias", "norm1.running_mean", "norm1.running_var",
                 "norm1.num_batches_tracked", "conv2.weight", "norm2.weight", "norm2.bias",
                 "norm2.running_mean", "norm2.running_var", "norm2.num_batches_tracked"]
    assert names == [f"body.{i}.{k}" for i in (1, 2, 3) for k in per_group]


def test_residual_group_adds_its_branch_to_the_pooled_input():
    torch.manual_seed(0)
    group = M.ResidualSEGroup(4, 8).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        pooled = group.down(x)
        full = group(x)
        group.conv_b.weight.zero_()   # the branch now ends in act(norm(0)) = 0 (BN bias 0, GELU(0) = 0)
        assert torch.equal(group(x), pooled)
    assert full.shape == (2, 8, 4, 4) and not torch.allclose(full, pooled)


def test_seed_net_has_residual_groups_first_and_last():
    body = M.make_seed_net(SMALL_SEED).body
    kinds = [type(m).__name__ for m in body]
    assert kinds == ["Conv2d", "BatchNorm", "GELU", "ResidualSEGroup", "Sequential", "ResidualSEGroup"]


def test_whitened_patches_have_identity_covariance():
    images = correlated_images(64)
    layer = M.Whitening(negate=True)
    M.init_whitening(layer, images, eps=1e-9)
    with torch.no_grad():
        out = layer(images)
    assert torch.allclose(out[:, 12:], -out[:, :12])
    rows = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    assert torch.allclose(torch.cov(rows.T), torch.eye(12, dtype=torch.float64), atol=1e-3)
    assert not layer.weight.requires_grad


def test_patch_covariance_is_the_covariance_of_every_patch():
    # The plain computation notebook 03 writes: unfold every 2x2 patch into a row, torch.cov of the rows.
    images = correlated_images(6, seed=2)
    rows = images.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
    torch.testing.assert_close(M.patch_covariance(images, 2, chunk=4), torch.cov(rows.T))
    filters, eigenvalues = M.whitening_filters(torch.cov(rows.T), eps=0.0)
    torch.testing.assert_close(filters @ torch.cov(rows.T) @ filters.T, torch.eye(12, dtype=torch.float64))
    assert torch.all(eigenvalues[1:] >= eigenvalues[:-1])   # smallest first


def test_whitening_is_the_same_in_small_chunks_and_lands_on_the_net():
    images = correlated_images(40, seed=1)
    net_a, net_b = M.make_seed_net(SMALL_SEED), M.make_seed_net(SMALL_SEED)
    M.init_whitening(net_a, images, chunk=7)
    M.init_whitening(net_b, images, chunk=1000)
    assert torch.allclose(net_a.whiten.weight, net_b.whiten.weight, rtol=1e-4, atol=1e-5)


def test_init_whitening_rejects_raw_images():
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="normalise"):
        M.init_whitening(M.make_record_net(SMALL_RECORD), images)


def test_dirac_init_makes_the_first_filters_pass_the_input_through():
    torch.manual_seed(0)
    conv = M.conv3x3(4, 6)
    M.dirac_init(conv)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(conv(x)[:, :4], x)


def test_batchnorm_trains_only_its_bias():
    bn = M.BatchNorm(8)
    assert not bn.weight.requires_grad and bn.bias.requires_grad
    assert torch.all(bn.weight == 1)


def test_squeeze_excite_only_shrinks_what_it_gates():
    torch.manual_seed(0)
    se = M.SqueezeExcite(32, ratio=16)
    x, y = torch.randn(3, 32, 4, 4), torch.randn(3, 32, 4, 4)
    out = se(x, apply_to=y)
    assert out.shape == y.shape
    assert torch.all(out.abs() <= y.abs()) and torch.all(out * y >= 0)
