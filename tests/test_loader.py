"""hlb_utils.loader: the augmentation pieces and DeviceLoader's epochs."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from hlb_utils import loader as L
from hlb_utils.plots import image_grid


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_uint8(n: int, seed: int = 0, low: int = 0) -> torch.Tensor:
    return torch.randint(low, 256, (n, 3, 32, 32), generator=gen(seed), dtype=torch.uint8)


def epoch(loader) -> list:
    return [(x.clone(), y.clone()) for x, y in loader]


def same_batches(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


# ---- the pieces --------------------------------------------------------------------------------

def test_channel_stats_and_normalize():
    images = random_uint8(300)
    mean, std = L.channel_stats(images)
    pixels = images.double() / 255
    assert torch.allclose(mean.double(), pixels.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(std.double(), pixels.std(dim=(0, 2, 3), unbiased=False), atol=1e-6)
    before = images.clone()
    x = L.normalize(images, mean, std)
    assert torch.equal(images, before) and x.dtype == torch.float32
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    half = L.normalize(images, mean, std, dtype=torch.float16, channels_last=True)
    assert half.dtype == torch.float16 and half.is_contiguous(memory_format=torch.channels_last)


def test_flip_twice_is_identity_and_flips_only_the_masked():
    x = torch.randn(64, 3, 8, 8, generator=gen())
    mask = L.random_flip_mask(64, gen(1))
    once = L.flip_images(x, mask)
    assert torch.equal(L.flip_images(once, mask), x)
    assert torch.equal(once[mask], x[mask].flip(-1)) and torch.equal(once[~mask], x[~mask])
    assert 0 < int(mask.sum()) < 64


def test_alternating_flip_mask_flips_each_image_every_other_epoch():
    base = L.random_flip_mask(1000, gen())
    masks = [L.alternating_flip_mask(base, e) for e in range(4)]
    assert torch.equal(masks[0], base)
    for previous, current in zip(masks, masks[1:]):
        assert torch.equal(current, ~previous)


def test_random_crop_moves_content_by_at_most_the_padding():
    pad, n = 2, 2000
    x = torch.zeros(n, 1, 32, 32)
    x[:, :, 16, 13] = 1.0
    out = L.random_crop(L.pad_reflect(x, pad), 32, gen())
    assert out.shape == (n, 1, 32, 32)
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.ones(n))
    where = out.flatten(1).argmax(dim=1)
    moves = torch.stack([where // 32 - 16, where % 32 - 13], dim=1)
    assert int(moves.abs().max()) <= pad
    assert len({tuple(m) for m in moves.tolist()}) == (2 * pad + 1) ** 2


def test_crop_at_matches_a_plain_loop():
    padded = torch.randn(40, 3, 12, 12, generator=gen())
    g = gen(1)
    dy, dx = torch.randint(0, 5, (30,), generator=g), torch.randint(0, 5, (30,), generator=g)
    index, flip = torch.randint(0, 40, (30,), generator=g), L.random_flip_mask(30, g)
    out = L.crop_at(padded, 8, dy, dx, index=index, flip=flip)
    for i in range(30):
        expected = padded[index[i], :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        assert torch.equal(out[i], expected.flip(-1) if flip[i] else expected)
    with pytest.raises(ValueError, match="offsets"):
        L.crop_at(padded, 8, dy + 1, dx)


def test_cutout_blanks_exactly_one_square_per_image_and_channel():
    x = torch.ones(500, 3, 32, 32)
    out = L.cutout(x, 8, gen())
    assert torch.equal(x, torch.ones(500, 3, 32, 32))
    blank = out == 0
    assert torch.equal(blank.sum(dim=(2, 3)), torch.full((500, 3), 64))
    rows, cols = blank[:, 0].any(dim=2), blank[:, 0].any(dim=1)
    assert torch.equal(rows.sum(dim=1), torch.full((500,), 8))
    assert torch.equal(cols.sum(dim=1), torch.full((500,), 8))
    assert len(set(rows.float().argmax(dim=1).tolist())) > 10
    assert torch.equal(L.cutout(x, 0, gen()), x)


# ---- DeviceLoader ------------------------------------------------------------------------------

def test_epoch_coverage_train_and_test():
    images, labels = random_uint8(1050), torch.arange(1050)
    train = L.DeviceLoader(images, labels, 100, translate=2, flip="random", cutout=4)
    assert len(train) == 10
    for _ in range(2):
        seen = torch.cat([y for _, y in train])
        assert len(seen) == 1000 and len(seen.unique()) == 1000
    test = L.DeviceLoader(images, labels, 100, train=False)
    batches = list(test)
    assert len(test) == len(batches) == 11 and len(batches[-1][1]) == 50
    assert torch.equal(torch.cat([y for _, y in batches]), labels)


def test_test_loader_keeps_order_and_does_not_augment():
    images = random_uint8(70)
    test = L.DeviceLoader(images, torch.arange(70), 32, train=False, translate=2, flip="random", cutout=8)
    x = torch.cat([x for x, _ in test])
    assert torch.equal(x, L.normalize(images, test.mean, test.std))


def test_training_batches_are_shifted_and_flipped_copies_of_their_sources():
    images, pad = random_uint8(200), 2
    loader = L.DeviceLoader(images, torch.arange(200), 50, translate=pad, flip="random", seed=3)
    padded = F.pad(L.normalize(images, loader.mean, loader.std), (pad,) * 4, mode="reflect")
    used = set()
    for x, y in loader:
        for image, label in zip(x, y):
            views = {(dy, dx, f) for dy, dx, f in itertools.product(range(5), range(5), (0, 1))
                     if torch.equal(image, (lambda v: v.flip(-1) if f else v)(
                         padded[label, :, dy:dy + 32, dx:dx + 32]))}
            assert views, f"image {int(label)} is not a translated/flipped copy of its source"
            used |= views
    assert len(used) > 40


def test_alternate_flip_in_the_loader_flips_each_image_every_other_epoch():
    images = random_uint8(300)
    loader = L.DeviceLoader(images, torch.arange(300), 100, flip="alternate")
    reference = L.normalize(images, loader.mean, loader.std)
    flipped = []
    for _ in range(3):
        state = torch.zeros(300, dtype=torch.bool)
        for x, y in loader:
            is_flipped = (x == reference[y].flip(-1)).flatten(1).all(dim=1)
            is_original = (x == reference[y]).flatten(1).all(dim=1)
            assert bool((is_flipped | is_original).all())
            state[y] = is_flipped
        flipped.append(state)
    assert 50 < int(flipped[0].sum()) < 250
    assert torch.equal(flipped[1], ~flipped[0]) and torch.equal(flipped[2], flipped[0])


def test_cutout_in_the_loader_blanks_the_asked_area():
    images = random_uint8(100, low=1)
    loader = L.DeviceLoader(images, torch.arange(100), 25, flip="none", cutout=6, mean=(0, 0, 0), std=(1, 1, 1))
    for x, _ in loader:
        assert torch.equal((x == 0).sum(dim=(2, 3)), torch.full((len(x), 3), 36))


def test_same_seed_same_batches_and_epochs_differ():
    images, labels = random_uint8(400), torch.arange(400)
    options = dict(translate=2, flip="alternate", cutout=4)
    a, b = (L.DeviceLoader(images, labels, 64, seed=7, **options) for _ in range(2))
    first_a, first_b = epoch(a), epoch(b)
    assert same_batches(first_a, first_b) and same_batches(epoch(a), epoch(b))
    assert not same_batches(first_a, epoch(a))
    assert not same_batches(first_a, epoch(L.DeviceLoader(images, labels, 64, seed=8, **options)))


def test_reset_replays_the_same_epochs():
    loader = L.DeviceLoader(random_uint8(300), torch.arange(300), 64, translate=2, flip="alternate", cutout=4)
    first, second = epoch(loader), epoch(loader)
    assert loader.epoch == 2
    loader.reset()
    assert loader.epoch == 0
    assert same_batches(epoch(loader), first) and same_batches(epoch(loader), second)


def test_whole_epoch_assembly_gives_the_same_batches_as_batch_by_batch():
    # CPU loaders assemble batch by batch, GPU loaders the whole epoch at once: same batches.
    images, labels = random_uint8(500), torch.arange(500)
    a, b = (L.DeviceLoader(images, labels, 64, translate=2, flip="random", cutout=4) for _ in range(2))
    b._whole_epoch = True
    assert same_batches(epoch(a), epoch(b))


def test_images_attribute_is_normalised_unaugmented_and_untouched_by_epochs():
    images = random_uint8(100)
    loader = L.DeviceLoader(images, torch.arange(100), 32, translate=3, flip="random", cutout=8)
    expected = L.normalize(images, loader.mean, loader.std)
    epoch(loader)
    assert torch.equal(loader.images, expected)
    assert torch.allclose(loader.mean, L.channel_stats(images)[0])


def test_dtype_and_memory_format_options():
    loader = L.DeviceLoader(random_uint8(64), torch.arange(64), 16, dtype=torch.float16, channels_last=True,
                            translate=2)
    x, y = next(iter(loader))
    assert x.dtype == torch.float16 and x.is_contiguous(memory_format=torch.channels_last)
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.int64


def test_changing_settings_mid_epoch_is_refused():
    loader = L.DeviceLoader(random_uint8(100), torch.arange(100), 10)
    batches = iter(loader)
    next(batches)
    loader.batch_size = 20
    with pytest.raises(RuntimeError, match="during an epoch"):
        next(batches)
    assert len(list(loader)) == 5


# The data is checked where it comes in; the settings (flip, translate, cutout, batch size, jitter) were
# checked by the config (tests/test_config.py), so the loader a notebook shows stays plain.
@pytest.mark.parametrize("change, message", [
    (dict(images=torch.zeros(4, 3, 32, 32)), "uint8"), (dict(labels=torch.arange(3)), "labels"),
])
def test_bad_data_is_named(change, message):
    options = {**dict(images=random_uint8(4), labels=torch.arange(4), batch_size=2), **change}
    with pytest.raises(ValueError, match=message):
        L.DeviceLoader(options.pop("images"), options.pop("labels"), options.pop("batch_size"), **options)


def test_image_grid_labels_each_image_and_undoes_the_normalisation():
    images = random_uint8(10)
    loader = L.DeviceLoader(images, torch.arange(10) % 3, 10, train=False)
    x, y = next(iter(loader))
    fig = image_grid(x, y, classes=["ant", "bee", "cat"], ncols=4, mean=loader.mean, std=loader.std)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 12 and len(shown) == 10
    assert [ax.get_title() for ax in shown[:4]] == ["ant", "bee", "cat", "ant"]
    pixels = torch.as_tensor(shown[0].images[0].get_array().data)
    assert torch.allclose(pixels, images[0].permute(1, 2, 0) / 255, atol=1e-5)


def test_color_jitter_shifts_then_scales_each_image():
    x = torch.randn(4, 3, 8, 8)
    shift, scale = torch.tensor([0.1, -0.1, 0.0, 0.05]), torch.tensor([1.1, 0.9, 1.0, 1.0])
    out = L.color_jitter_at(x, shift, scale)
    torch.testing.assert_close(out, (x + shift.view(-1, 1, 1, 1)) * scale.view(-1, 1, 1, 1))
    shift, scale = L.random_color_jitter(10_000, 0.14, 0.13, gen())
    assert shift.abs().max() <= 0.14 and (scale - 1).abs().max() <= 0.13
    assert shift.min() < -0.13 and shift.max() > 0.13 and abs(shift.mean()) < 0.01


def test_loader_jitters_colour_once_an_epoch_and_only_when_asked():
    images, labels = random_uint8(200), torch.arange(200) % 10
    plain = L.DeviceLoader(images, labels, 50, flip="none", translate=0, seed=1)
    jitter = L.DeviceLoader(images, labels, 50, flip="none", translate=0, seed=1, brightness=0.2, contrast=0.2)
    (a, ya), (b, yb) = next(iter(plain)), next(iter(jitter))
    assert torch.equal(ya, yb)   # colour draws come after the shuffle: the same images in the same order
    # per image, b = (a + shift) * scale: an affine map with one shift and one scale per image
    scale = b.std(dim=(1, 2, 3)) / a.std(dim=(1, 2, 3))
    assert (scale - 1).abs().max() <= 0.2 + 1e-5 and (scale - 1).abs().max() > 0.05
    torch.testing.assert_close(b / scale.view(-1, 1, 1, 1) - a, (b / scale.view(-1, 1, 1, 1) - a).mean(
        dim=(1, 2, 3), keepdim=True).expand_as(a), atol=1e-4, rtol=0)
    test = L.DeviceLoader(images, labels, 50, train=False, brightness=0.2, contrast=0.2)
    assert torch.equal(next(iter(test))[0], test.images[:50])


def test_a_channels_last_store_yields_the_same_batches_already_channels_last():
    # Off the CPU the padded store is kept channels_last (as the batches), so no epoch converts it; the
    # crops, flips and jitter come out the same, value for value. The CPU keeps its per-batch path.
    stats = dict(mean=[0.5] * 3, std=[0.25] * 3)
    images, labels = random_uint8(64), torch.arange(64) % 10
    options = dict(channels_last=True, translate=2, flip="alternate", brightness=0.1, contrast=0.1, seed=3, **stats)
    assert L.DeviceLoader(images.clone(), labels, 16, device="meta", **options)._padded.is_contiguous(
        memory_format=torch.channels_last)
    plain = L.DeviceLoader(images, labels, 16, **options)
    stored = L.DeviceLoader(images, labels, 16, **options)
    assert plain._padded.is_contiguous()
    stored._whole_epoch = True   # what the loader does on a GPU
    stored._padded = stored._padded.contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        ours = torch.cat([x for x, _ in stored])
        assert ours.is_contiguous(memory_format=torch.channels_last) and not ours.is_contiguous()
        assert torch.equal(torch.cat([x for x, _ in plain]), ours)
