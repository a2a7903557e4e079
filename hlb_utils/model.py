"""The networks, built from small blocks that a notebook can show one at a time.

Notebook 03 (SE-ResNet) shows the blocks (`conv3x3`, `BatchNorm`, `SqueezeExcite`, `ResidualSEGroup`),
builds `make_seed_net`, the SE-ResNet of hlb-CIFAR10, and teaches patch whitening (`patch_covariance`,
`whitening_filters`, `init_whitening`); notebook 05 (speed tricks) slims it into `make_record_net`,
the airbench94_muon network of straight-line `ConvGroup`s (no residuals, no SE, identity init). Notebooks 02, 03 and 05 count costs with `count_params`
and `count_flops` (a whole run's: `runs.run_flops`).

Every net exposes `net.whiten` (the frozen whitening conv, with a trainable bias) and `net.head`
(the final `nn.Linear`), so that `optim.split_params` can give each kind of parameter its own lr.
The models hold no precision logic: the trainer casts them or runs them under `torch.autocast`.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .config import ACTIVATIONS


def make_act(name: str) -> nn.Module:
    """A fresh activation module by name (one of `config.ACTIVATIONS`: 'gelu', 'silu' or 'relu')."""
    return ACTIVATIONS[name]()


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    """3x3 'same' convolution without bias: the BatchNorm that follows supplies the bias."""
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding="same", bias=False)


def dirac_init(conv: nn.Conv2d) -> None:
    """Make the first `in_channels` filters identity maps (airbench's init, notebook 05).

    A fresh net then starts close to passing its input through, which airbench measured as worth
    about 3 epochs (21 -> 18) on the way to 94%. The remaining filters keep their random init.
    """
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: conv.in_channels])


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with its scale frozen at 1 and only the bias trained (hlb and airbench).

    The next conv can absorb any scale, so a trainable one only adds noise. `momentum` follows
    PyTorch (weight of the newest batch): 0.4 in airbench94, 0.8 in hlb's SE-ResNet era.
    """

    def __init__(self, c: int, momentum: float = 0.4, eps: float = 1e-12) -> None:
        super().__init__(c, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


class SqueezeExcite(nn.Module):
    """Per-channel gates from globally averaged features (squeeze-and-excite, notebook 03).

    `forward(x, apply_to)` computes the gates from `x` and scales `apply_to` (default `x`): hlb
    computed them from a residual block's input and applied them to the block's last conv output.
    """

    def __init__(self, c: int, ratio: int = 16, act: str = "gelu") -> None:
        super().__init__()
        hidden = max(1, c // ratio)
        self.squeeze = nn.Linear(c, hidden)
        self.excite = nn.Linear(hidden, c)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor, apply_to: torch.Tensor | None = None) -> torch.Tensor:
        gates = torch.sigmoid(self.excite(self.act(self.squeeze(x.mean(dim=(2, 3))))))
        target = x if apply_to is None else apply_to
        return target * gates[:, :, None, None]


class ConvGroup(nn.Module):
    """airbench's conv group, the record net's (notebook 05): conv, max-pool 2, norm, act, conv, norm, act.

    Pooling right after the first conv lets the norm, the activation and the second conv run on a
    quarter of the pixels.
    """

    def __init__(self, c_in: int, c_out: int, act: str = "gelu", bn_momentum: float = 0.4,
                 bn_eps: float = 1e-12) -> None:
        super().__init__()
        self.conv1, self.pool = conv3x3(c_in, c_out), nn.MaxPool2d(2)
        self.norm1 = BatchNorm(c_out, bn_momentum, bn_eps)
        self.conv2, self.norm2 = conv3x3(c_out, c_out), BatchNorm(c_out, bn_momentum, bn_eps)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


def pool_block(c_in: int, c_out: int, act: str = "gelu", bn_momentum: float = 0.8,
               bn_eps: float = 1e-12) -> nn.Sequential:
    """conv, max-pool 2, norm, act: the seed net's middle group, and how its residual groups begin."""
    return nn.Sequential(conv3x3(c_in, c_out), nn.MaxPool2d(2), BatchNorm(c_out, bn_momentum, bn_eps),
                         make_act(act))


class ResidualSEGroup(nn.Module):
    """hlb-CIFAR10's residual group, the seed net's first and last (notebook 03).

    A `pool_block`, then x + act(norm(se(conv(act(norm(conv(x))))))): a residual branch of two
    convs whose output the squeeze-and-excite gates scale, the gates computed from the branch input.
    """

    def __init__(self, c_in: int, c_out: int, act: str = "gelu", bn_momentum: float = 0.8,
                 bn_eps: float = 1e-12) -> None:
        super().__init__()
        self.down = pool_block(c_in, c_out, act, bn_momentum, bn_eps)
        self.conv_a, self.norm_a = conv3x3(c_out, c_out), BatchNorm(c_out, bn_momentum, bn_eps)
        self.conv_b, self.norm_b = conv3x3(c_out, c_out), BatchNorm(c_out, bn_momentum, bn_eps)
        self.se, self.act = SqueezeExcite(c_out, act=act), make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        branch = self.conv_b(self.act(self.norm_a(self.conv_a(x))))
        return x + self.act(self.norm_b(self.se(x, apply_to=branch)))


class Whitening(nn.Conv2d):
    """The first layer: a frozen 2x2 conv whose filters decorrelate pixel patches (notebook 03).

    With `negate` (airbench), each of the 3*2*2 = 12 eigen-filters comes with its negation, so the
    activation after it keeps both signs: 24 channels. hlb's SE-ResNet used the 12 alone. The weight
    is meaningless until `init_whitening` sets it; the bias starts at 0 (airbench94_muon keeps nn.Conv2d's
    random init) and trains (the trainer may stop it early).
    `eps` is the default added to the eigenvalues: 5e-4 in airbench, 1e-2 in hlb.
    """

    def __init__(self, patch: int = 2, negate: bool = True, eps: float = 5e-4) -> None:
        dims = 3 * patch * patch
        super().__init__(3, 2 * dims if negate else dims, kernel_size=patch, bias=True)
        self.weight.requires_grad_(False)
        self.eps = eps
        with torch.no_grad():
            self.bias.zero_()


def patch_covariance(images: torch.Tensor, patch: int = 2, chunk: int = 1024) -> torch.Tensor:
    """Covariance of all patch x patch pixel patches of `images`, in fp64 on the CPU (notebook 03).

    Each patch is a row of C*patch*patch values in the (c, h, w) order of a conv weight. The sums
    are accumulated `chunk` images at a time where the images are, so that 50,000 images fit and a
    GPU does it in milliseconds (Apple's MPS has no fp64: there the CPU does it).
    """
    dims = images.shape[1] * patch * patch
    work = images.device if images.device.type in ("cpu", "cuda") else torch.device("cpu")
    total = torch.zeros(dims, dtype=torch.float64, device=work)
    outer, count = torch.zeros(dims, dims, dtype=torch.float64, device=work), 0
    for part in images.split(chunk):
        # (N, C, H', W', p, p) -> rows of C*p*p values
        p = part.detach().to(work, torch.float64).unfold(2, patch, 1).unfold(3, patch, 1)
        rows = p.permute(0, 2, 3, 1, 4, 5).reshape(-1, dims)
        total += rows.sum(0)
        outer += rows.T @ rows
        count += rows.shape[0]
    mean = total / count
    return ((outer - count * torch.outer(mean, mean)) / (count - 1)).cpu()


def whitening_filters(covariance: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(filters, eigenvalues) of a patch covariance: each eigenvector divided by sqrt(eigenvalue + eps).

    Filters come one per row, smallest eigenvalue first (`eigh`'s order); whitened patches then have
    covariance close to the identity, `eps` keeping the weakest directions (pixel noise) from blowing up.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    return eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None], eigenvalues


def init_whitening(net_or_layer: nn.Module, images: torch.Tensor, eps: float | None = None,
                   chunk: int = 1024) -> torch.Tensor:
    """Set the whitening filters from the patch statistics of `images`; returns the eigenvalues.

    `images`: normalised float (N, 3, H, W), a few thousand training images (airbench uses 5000).
    The filters are `whitening_filters` of `patch_covariance`, plus their negations where the layer
    has twice as many channels (airbench's net); the 12x12 eigendecomposition runs on the CPU (cheap,
    and `eigh` is missing on some devices); the result is copied to the layer's device and dtype.
    `eps=None` uses the layer's own default (`Whitening.eps`).
    """
    layer = getattr(net_or_layer, "whiten", net_or_layer)
    if not isinstance(layer, nn.Conv2d):
        raise TypeError("init_whitening needs a net with a `.whiten` conv, or the conv itself")
    if images.ndim != 4 or images.shape[1] != layer.in_channels or not images.is_floating_point():
        raise ValueError(f"init_whitening: images must be normalised float (N, {layer.in_channels}, H, W), "
                         f"got {tuple(images.shape)} {images.dtype}; normalise the uint8 images first")
    patch, dims = layer.kernel_size[0], layer.in_channels * layer.kernel_size[0] ** 2
    if layer.out_channels not in (dims, 2 * dims):
        raise ValueError(f"init_whitening: the whitening conv needs {dims} or {2 * dims} output channels")
    eps = getattr(layer, "eps", 5e-4) if eps is None else eps
    filters, eigenvalues = whitening_filters(patch_covariance(images, patch, chunk), eps)
    filters = filters.reshape(dims, layer.in_channels, patch, patch)
    if layer.out_channels == 2 * dims:
        filters = torch.cat((filters, -filters))
    with torch.no_grad():
        layer.weight.copy_(filters.to(layer.weight.device, layer.weight.dtype))
    layer.weight.requires_grad_(False)
    return eigenvalues.float()


class Net(nn.Module):
    """whiten -> body -> global max-pool -> Linear -> x head_scale. Both nets are this shape."""

    def __init__(self, whiten: nn.Conv2d, body: nn.Module, width: int, head_scale: float,
                 classes: int = 10) -> None:
        super().__init__()
        self.whiten, self.body = whiten, body
        self.head = nn.Linear(width, classes, bias=False)
        self.head_scale = head_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.whiten(x))
        # Global max: cheaper than adaptive pooling and layout-agnostic (works on channels_last).
        return self.head(torch.amax(x, dim=(2, 3))) * self.head_scale


def make_record_net(widths: tuple = (64, 256, 256), act: str = "gelu", bn_momentum: float = 0.4,
                    bn_eps: float = 1e-12, whiten_act: str | None = None, classes: int = 10) -> nn.Module:
    """The airbench94_muon network (notebooks 05 and 06): about 2.0 M parameters at default widths.

    whiten (24 ch) -> act -> 3 groups of conv-pool-BN-act-conv-BN-act -> global max -> Linear -> /width.
    As in airbench94_muon: identity init on each 3x3 conv, head weight rescaled to unit std, logits
    divided by the feature count (256 there), so the head starts neither tiny nor saturated.
    airbench pools with MaxPool2d(3) on the final 3x3 map: the same forward pass as our global max at
    32x32 input; only where a map has ties does the gradient differ (amax splits it, MaxPool2d picks one
    position; DEVELOPERS.md has the step-by-step check).
    `whiten_act` is the activation after the whitening (default: `act`); hiverge's record uses SiLU in
    the groups (`act='silu'`) and keeps GELU there.
    """
    whiten = Whitening(negate=True, eps=5e-4)
    groups, c_in = [], whiten.out_channels
    for w in widths:
        groups.append(ConvGroup(c_in, int(w), act, bn_momentum, bn_eps))
        c_in = int(w)
    net = Net(whiten, nn.Sequential(make_act(whiten_act or act), *groups), c_in, head_scale=1.0 / c_in,
              classes=classes)
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            dirac_init(m)
    with torch.no_grad():
        net.head.weight.div_(net.head.weight.std())
    return net


def make_seed_net(widths: tuple = (32, 128, 256, 512), act: str = "gelu", bn_momentum: float = 0.8,
                  bn_eps: float = 1e-12, classes: int = 10) -> nn.Module:
    """hlb-CIFAR10's SE-ResNet, as of the commit that first trained under 10 A100-seconds (notebook 03).

    Followed from hlb's main.py of 2023-01-29 (commit cb53b42): 2x2 whitening to 12 channels (no
    negated copies, eps 1e-2), a 1x1 projection to widths[0] (hlb: base_depth/2 = 32) + BN + GELU,
    then three groups: conv-pool-BN-GELU with a residual branch of two convs and squeeze-and-excite
    (ratio 16) to widths[1] = 128; the same without branch to widths[2] = 256; with branch again to
    widths[3] = 512; global max-pool, Linear without bias, logits x 1/10. BN: momentum 0.8 (PyTorch
    convention, as hlb passed it), eps 1e-12, scale frozen. PyTorch's default init everywhere.
    Ours differs in two small ways: the whitening conv has a bias (held at 0 when the seed profile
    sets whiten_bias_epochs=0), and hlb's in-network flip averaging at eval lives in `evaluate`.
    """
    w0, w1, w2, w3 = (int(w) for w in widths)
    whiten = Whitening(negate=False, eps=1e-2)
    body = nn.Sequential(
        nn.Conv2d(whiten.out_channels, w0, kernel_size=1, bias=False), BatchNorm(w0, bn_momentum, bn_eps),
        make_act(act),
        ResidualSEGroup(w0, w1, act, bn_momentum, bn_eps),
        pool_block(w1, w2, act, bn_momentum, bn_eps),
        ResidualSEGroup(w2, w3, act, bn_momentum, bn_eps),
    )
    return Net(whiten, body, w3, head_scale=0.1, classes=classes)


def make_net(cfg, classes: int = 10) -> nn.Module:
    """The network a `TrainConfig` asks for (`cfg.net`, `widths`, `act`, `whiten_act`, `bn_momentum`, `bn_eps`).

    `classes` sizes the head: `train()` passes the data's own count, so a learner's own image folder
    (see `data.load_cifar10`) trains unchanged whatever its number of classes.
    """
    if cfg.net == "record":
        return make_record_net(tuple(cfg.widths), cfg.act, cfg.bn_momentum, cfg.bn_eps, cfg.whiten_act, classes)
    return make_seed_net(tuple(cfg.widths), cfg.act, cfg.bn_momentum, cfg.bn_eps, classes)


def count_params(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters; by default all of them, frozen ones (whitening, BN scales) included."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def count_flops(net: nn.Module, batch: int = 1, train: bool = True, image_size: int = 32) -> int:
    """FLOPs (2 per multiply-add) of one forward pass, plus the backward pass when `train`.

    Measured with `torch.utils.flop_counter` on a copy of the net (so BN statistics and gradients of
    the real one are untouched), on random input of the net's device and dtype. Counts convs,
    matmuls and the like; elementwise ops (BN, activations) are not counted.
    """
    probe = copy.deepcopy(net).train(train)
    ref = next(probe.parameters())
    x = torch.randn(batch, 3, image_size, image_size, device=ref.device, dtype=ref.dtype)
    counter = FlopCounterMode(display=False)
    with counter, torch.set_grad_enabled(train):
        out = probe(x)
        if train:
            out.float().sum().backward()
    return int(counter.get_total_flops())
