"""Batches straight from device memory, with the augmentations done batched on the device.

Taught in notebook 01 (the data pipeline). CIFAR-10 fits in GPU memory (50,000 images in fp16 are
about 300 MB), so instead of a DataLoader with worker processes decoding PIL images one at a time,
`DeviceLoader` keeps the normalised, reflect-padded dataset on the device and makes each epoch with
a handful of tensor operations: random translation (cropping the padded images), horizontal flips
(random, or airbench's "alternating" flips), cutout, and hiverge's brightness and contrast jitter. The small functions below are the pieces; a
notebook can show and call each one on its own. Each returns a new tensor and leaves its input alone.
`shrink` (progressive resizing, notebook 05) is the one the training loop applies to a batch itself.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .device import memory_format_of, region

STATS_CHUNK = 2000   # images per step of channel_stats (float32: ~25 MB per 2,000 CIFAR images)


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images, in 0..1 units (float32 on the CPU).

    Each chunk is summed in float32 (torch sums pairwise, so 2,000 images lose nothing that matters)
    and the chunks are added up in float64: 50,000 images need little memory and keep full precision.
    """
    _check_uint8(images, "images")
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for part in images.split(STATS_CHUNK):   # summed where the images are (fast on a GPU), added up on the CPU
        x = part.to(torch.float32)
        total += x.sum(dim=(0, 2, 3)).cpu().double()
        total_sq += x.square().sum(dim=(0, 2, 3)).cpu().double()
    count = images.numel() // images.shape[1]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    # pixel values are 0..255; report in 0..1 units
    return (mean / 255).float(), (std / 255).float()


def normalize(images: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor,
              dtype: torch.dtype = torch.float32, channels_last: bool = False) -> torch.Tensor:
    """(images / 255 - mean) / std per channel, as `dtype`, on the images' device."""
    _check_uint8(images, "images")
    shape = (1, images.shape[1], 1, 1)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(shape)
    x = images.to(torch.float32).div_(255).sub_(mean).div_(std).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def pad_reflect(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad each side by `pad` pixels, mirroring the border (no black frame for crops to find)."""
    if not 0 <= pad < min(x.shape[-2:]):
        raise ValueError(f"pad={pad} must be in 0..{min(x.shape[-2:]) - 1} (pixels) for {tuple(x.shape)} images")
    return F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x.clone()


def crop_at(x_padded: torch.Tensor, size: int, dy: torch.Tensor, dx: torch.Tensor,
            index: torch.Tensor | None = None, flip: torch.Tensor | None = None) -> torch.Tensor:
    """out[i] = x_padded[index[i]] cropped to size x size at corner (dy[i], dx[i]), mirrored where flip[i].

    One index_select per distinct (offset, flip) pair (50 for a 2-pixel translation), never a loop
    over images. Mirroring here, group by group, costs less than a separate pass over the batch.
    The group sizes are worked out on the CPU, so a GPU never waits for the host. When the keys come
    sorted (as DeviceLoader arranges) every group lands in place, with no reordering pass.
    """
    return _apply_crops(x_padded, size, _plan_crops(x_padded, size, dy, dx, index, flip))


def _plan_crops(x_padded: torch.Tensor, size: int, dy: torch.Tensor, dx: torch.Tensor,
                index: torch.Tensor | None = None, flip: torch.Tensor | None = None) -> tuple:
    """crop_at's host half: the groups, (corner, mirrored, count) each, and the source rows (and the
    inverse order, when the keys came unsorted) already on x_padded's device. DeviceLoader makes an
    epoch's plans before the training clock starts, so that no timed step waits for a copy."""
    n, span = len(dy), x_padded.shape[-1] - size + 1
    dy, dx = dy.cpu().long(), dx.cpu().long()
    if n and not (0 <= min(dy.min(), dx.min()) and max(dy.max(), dx.max()) < span):
        raise ValueError(f"crop offsets must be in 0..{span - 1} (pixels) for {size}-pixel crops of "
                         f"{tuple(x_padded.shape)} images")
    index = torch.arange(n) if index is None else index.cpu()
    flip = torch.zeros(n, dtype=torch.bool) if flip is None else flip.cpu()
    key = (dy * span + dx) * 2 + flip.long()
    order = torch.argsort(key, stable=True)
    groups = [(divmod(k // 2, span), k % 2, count)
              for k, count in zip(*(t.tolist() for t in torch.unique_consecutive(key[order], return_counts=True)))]
    inverse = None
    if not bool((order == torch.arange(n)).all()):
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(n)
        inverse = inverse.to(x_padded.device)
    return groups, index[order].to(x_padded.device), inverse


def _apply_crops(x_padded: torch.Tensor, size: int, plan: tuple) -> torch.Tensor:
    """crop_at's device half: only kernels, no copy from the host."""
    groups, sources, inverse = plan
    # the crops keep the store's memory format, so a channels_last store needs no conversion per epoch
    out = torch.empty((len(sources), x_padded.shape[1], size, size), dtype=x_padded.dtype, device=x_padded.device,
                      memory_format=memory_format_of(x_padded))
    start = 0
    for (y, x), mirrored, count in groups:
        view = x_padded[:, :, y:y + size, x:x + size]
        rows, part = sources[start:start + count], out[start:start + count]
        if mirrored:
            part.copy_(view.index_select(0, rows).flip(-1))
        else:
            torch.index_select(view, 0, rows, out=part)
        start += count
    return out if inverse is None else out.index_select(0, inverse)


def random_crop(x_padded: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A random size x size window of each padded image: translation by up to the padding."""
    n, shift = len(x_padded), x_padded.shape[-1] - size
    if shift < 0 or x_padded.shape[-2] != x_padded.shape[-1]:
        raise ValueError(f"random_crop needs square images of at least {size} pixels, got {tuple(x_padded.shape)}")
    dy = torch.randint(0, shift + 1, (n,), generator=generator, device=generator.device)
    dx = torch.randint(0, shift + 1, (n,), generator=generator, device=generator.device)
    return crop_at(x_padded, size, dy, dx)


def flip_images(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where mask is True."""
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def random_flip_mask(n: int, generator: torch.Generator) -> torch.Tensor:
    """n fair coin flips (bool): which images to mirror."""
    return torch.randint(0, 2, (n,), generator=generator, device=generator.device).bool()


def alternating_flip_mask(base_mask: torch.Tensor, epoch: int) -> torch.Tensor:
    """airbench's derandomised flip: random in epoch 0, then each image flips every other epoch.

    Over two epochs every image is seen both ways, instead of both ways only half the time.
    """
    return ~base_mask if epoch % 2 else base_mask.clone()


def cutout_at(x: torch.Tensor, size: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Set a size x size square (top-left corner top[i], left[i]) to 0 in every channel of image i.

    0 in normalised units is the dataset mean, so the square carries no information.
    """
    height, width = x.shape[-2:]
    rows = torch.arange(height, device=x.device).view(1, -1, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, -1)
    top, left = top.to(x.device).view(-1, 1, 1), left.to(x.device).view(-1, 1, 1)
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return torch.where(inside.unsqueeze(1), torch.zeros((), dtype=x.dtype, device=x.device), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Blank one size x size square per image, at a random place fully inside the image."""
    height, width = x.shape[-2:]
    if not 0 <= size <= min(height, width):
        raise ValueError(f"cutout size={size} must be in 0..{min(height, width)} (pixels)")
    top = torch.randint(0, height - size + 1, (len(x),), generator=generator, device=generator.device)
    left = torch.randint(0, width - size + 1, (len(x),), generator=generator, device=generator.device)
    return cutout_at(x, size, top, left)


def color_jitter_at(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(x[i] + shift[i]) * scale[i]: brightness, then contrast about 0, in normalised units (hiverge's record).

    0 is the dataset mean, so scaling about it changes contrast without moving the mean colour.
    """
    shape = (-1,) + (1,) * (x.dim() - 1)
    shift = shift.to(x.device, x.dtype).view(shape)
    return (x + shift) * scale.to(x.device, x.dtype).view(shape)


def random_color_jitter(n: int, brightness: float, contrast: float,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n brightness shifts uniform in +-brightness and contrast factors uniform in 1 +- contrast."""
    shift = (torch.rand(n, generator=generator, device=generator.device) * 2 - 1) * brightness
    scale = 1 + (torch.rand(n, generator=generator, device=generator.device) * 2 - 1) * contrast
    return shift, scale


def shrink(x: torch.Tensor, size: int) -> torch.Tensor:
    """Progressive resizing (fast.ai's DAWNBench trick): early epochs see smaller images, which cost
    about (size/32)^2 as much; the global max-pool head makes the net indifferent to the input size."""
    if x.shape[-1] == size:
        return x
    # antialiased resizing has no half-precision kernel on every device: resize in fp32, cast back
    out = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def _check_uint8(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a uint8 tensor (N, C, H, W), got {got}; pass the raw dataset "
                         "images (e.g. data.train_images), not normalised ones")


class DeviceLoader:
    """Shuffled, augmented batches of a dataset that lives on `device`.

    Normalising and reflect-padding happen once, here; each `iter(loader)` starts a new epoch: it
    draws the epoch's shuffle and augmentation for the whole dataset at once from a generator seeded
    with `seed`, then yields (inputs, labels) batches. Only a training loader (train=True) shuffles
    and augments. `reset()` goes back to epoch 0, so a re-run cell sees exactly the same batches.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool = True,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, mean=None, std=None, flip: str = "alternate",
                 translate: int = 0, cutout: int = 0, brightness: float = 0.0, contrast: float = 0.0,
                 seed: int = 0, drop_last: bool | None = None, flip_masks: Callable | None = None):
        _check_uint8(images, "images")
        _check_labels(images, labels)
        self.device, self.dtype, self.channels_last = torch.device(device), dtype, channels_last
        images = images.to(self.device)
        if mean is None or std is None:
            mean, std = channel_stats(images)   # on the device: fast on a GPU
        self.mean = torch.as_tensor(mean, dtype=torch.float32).cpu()
        self.std = torch.as_tensor(std, dtype=torch.float32).cpu()
        self.train, self.batch_size, self.seed = train, batch_size, seed
        self.flip, self.cutout = flip, cutout
        # a learner's flips (notebook 04): (n, epochs, generator) -> one bool mask per epoch, used in place of `flip`
        self.flip_masks = flip_masks
        self.brightness, self.contrast = brightness, contrast
        self.drop_last = train if drop_last is None else drop_last
        # only the padded copy is stored: `images` is a view of its centre
        self._pad = translate if train else 0
        normalised = normalize(images, self.mean, self.std, dtype)
        self._padded = pad_reflect(normalised, self._pad)
        del normalised
        self.labels = labels.to(self.device, torch.int64)
        # On the CPU one batch at a time stays in cache; elsewhere the whole epoch in a few big kernels,
        # cut from a store already in the batches' memory format (as hiverge's), not converted every epoch.
        self._whole_epoch = self.device.type != "cpu"
        if self._whole_epoch and channels_last:
            self._padded = self._padded.contiguous(memory_format=torch.channels_last)
        self._resets = 0
        self.reset()

    @property
    def translate(self) -> int:
        """Pixels of random translation (fixed at construction: the padding is made once)."""
        return self._pad

    @property
    def images(self) -> torch.Tensor:
        """The normalised, un-augmented images (a view: use for whitening init and evaluation)."""
        p, size = self._pad, self._padded.shape[-1] - 2 * self._pad
        return self._padded[:, :, p:p + size, p:p + size]

    def reset(self) -> None:
        """Back to epoch 0 with the original seed."""
        self.epoch = 0
        self._resets += 1
        self._generator = torch.Generator().manual_seed(self.seed)
        self._base_flip = random_flip_mask(len(self.labels), self._generator)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        with region("hlb:augment_plan"):   # the epoch's plan, for benchmarks/profile_run.py
            state, chunks = self._state(), self._chunks(*self._plan())
        self.epoch += 1
        return self._batches(state, chunks)

    def _plan(self) -> tuple:
        """The epoch's random choices, on the CPU: order, offsets, flips, cutout corners, colour jitter."""
        n, batch, gen = len(self.labels), self.batch_size, self._generator
        used = min(n, len(self) * batch)
        order = torch.randperm(n, generator=gen)[:used] if self.train else torch.arange(n)
        span = 2 * self._pad + 1
        dy, dx = (torch.randint(0, span, (n,), generator=gen) for _ in range(2))
        flips = None
        if self.train and self.flip_masks is not None:
            flips = self.flip_masks(n, self.epoch + 1, torch.Generator().manual_seed(self.seed))[self.epoch]
        elif self.train and self.flip == "alternate":
            flips = alternating_flip_mask(self._base_flip, self.epoch)
        elif self.train and self.flip == "random":
            flips = random_flip_mask(n, gen)
        corners = None
        if self.train and self.cutout:
            room = self._padded.shape[-1] - 2 * self._pad - self.cutout + 1
            corners = [torch.randint(0, room, (n,), generator=gen) for _ in range(2)]
        jitter = None
        if self.train and (self.brightness or self.contrast):
            jitter = random_color_jitter(n, self.brightness, self.contrast, gen)
        # Within a batch the order does not matter, so sort each batch by (offset, flip): crop_at
        # can then write every group in place.
        mirrored = torch.zeros(n, dtype=torch.long) if flips is None else flips.long()
        key = ((torch.arange(used) // batch * span * span + dy[order] * span + dx[order]) * 2
               + mirrored[order])
        order = order[torch.argsort(key, stable=True)]
        return order, dy, dx, flips, corners, jitter

    def _chunks(self, order, dy, dx, flips, corners, jitter) -> list[tuple]:
        """Everything the epoch's kernels need, worked out on the host and copied to the device at
        `iter(loader)`: the trainer calls it before its clock starts, so no timed step waits for a copy."""
        size = self._padded.shape[-1] - 2 * self._pad
        chunk = max(1, len(order)) if self._whole_epoch else self.batch_size
        chunks = []
        for start in range(0, len(order), chunk):
            idx = order[start:start + chunk]
            crops = _plan_crops(self._padded, size, dy[idx], dx[idx], index=idx,
                                flip=None if flips is None else flips[idx])
            cut = None if corners is None else [c[idx].to(self.device) for c in corners]
            jit = None if jitter is None else [j[idx].to(self.device) for j in jitter]
            chunks.append((crops, cut, jit, idx.to(self.device)))
        return chunks

    def _batches(self, state, chunks) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self._padded.shape[-1] - 2 * self._pad
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for crops, cut, jitter, idx in chunks:
            with region("hlb:augment"):
                x = _apply_crops(self._padded, size, crops)
                if cut is not None:
                    x = cutout_at(x, self.cutout, *cut)
                if jitter is not None:
                    x = color_jitter_at(x, *jitter)
                x = x.contiguous(memory_format=memory_format)
                y = self.labels[idx]
            for b in range(0, len(idx), self.batch_size):
                if self._state() != state:
                    raise RuntimeError("DeviceLoader settings changed (or reset() was called) during an epoch; "
                                       "change them between epochs, after the for loop")
                yield x[b:b + self.batch_size], y[b:b + self.batch_size]

    def _state(self) -> tuple:
        return (self.batch_size, self.train, self.flip, self.cutout, self.brightness, self.contrast,
                self.drop_last, self.channels_last, self._resets)

    def __repr__(self) -> str:
        return (f"DeviceLoader({len(self.labels)} images, batch_size={self.batch_size}, train={self.train}, "
                f"device={self.device}, flip={self.flip!r}, translate={self._pad}, cutout={self.cutout}, "
                f"epoch={self.epoch})")


def _check_labels(images, labels) -> None:
    # the data's shape is checked here, where the data comes in; the settings were checked by the config
    if not isinstance(labels, torch.Tensor) or labels.shape != (len(images),):
        raise ValueError(f"labels must be a tensor of shape ({len(images)},), one per image")
