"""Evaluation, with and without test-time augmentation (TTA).

Taught in notebook 04 (the training recipe). TTA asks the network about a few cheap variants of each
test image (mirrored, shifted by one pixel) and averages the answers: a free ~0.3-0.5 points at the end
of a short run, because the network was trained on exactly such variants.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .device import memory_format_of, region

UNSURE_FRACTION = 0.25   # selective TTA: the share of test images (least confident first) that get six views


def tta_views(x: Tensor, mode: str) -> list[tuple[float, Tensor]]:
    """The (weight, view) pairs whose weighted logits make the TTA prediction; weights sum to 1.

    'flip' averages the image and its mirror. 'multi' (airbench's six views) gives that pair half the
    weight and spends the other half on the pair shifted one pixel up-left and the pair shifted one
    pixel down-right (reflect padding keeps the edges plausible). 'selective' (hiverge's record) has
    the same six views at 1/6 each; `selective_logits` spends them only on the least confident images.
    """
    if mode == "none":
        return [(1.0, x)]
    pairs = [x]
    if mode in ("multi", "selective"):
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        h, w = x.shape[-2:]
        pairs += [padded[..., :h, :w], padded[..., 2:, 2:]]
    pair_weights = {"flip": [1.0], "multi": [0.5, 0.25, 0.25], "selective": [1 / 3] * 3}[mode]
    views = []
    for weight, view in zip(pair_weights, pairs):
        views += [(weight / 2, view), (weight / 2, view.flip(-1))]
    return views


def tta_passes(mode: str) -> float:
    """Forward passes per test image that a TTA mode costs (for FLOP counts)."""
    views = len(tta_views(torch.zeros(1, 3, 4, 4), mode))
    return 1 + UNSURE_FRACTION * views if mode == "selective" else views


@torch.no_grad()
def selective_logits(net: nn.Module | callable, x: Tensor, fraction: float = UNSURE_FRACTION,
                     chunk: int = 2000) -> Tensor:
    """hiverge's selective TTA over a whole test set `x`: plain logits, except for the `fraction` of
    images with the lowest top softmax probability, which get the mean of the six views.

    Most test images are classified with confidence and would not change their answer; spending the
    views on the unsure quarter buys most of TTA's gain at 2.5 passes instead of 6 (notebook 06).
    """
    plain = torch.cat([net(part).float() for part in x.split(chunk)])
    unsure = int(len(x) * fraction)
    if unsure == 0:
        return plain
    confidence = plain.softmax(dim=1).amax(dim=1)
    pick = torch.topk(confidence, unsure, largest=False).indices
    out = plain.clone()
    out[pick] = torch.cat([tta_logits(net, part, "selective") for part in x[pick].split(chunk)])
    return out


@torch.no_grad()
def tta_logits(net: nn.Module | callable, x: Tensor, mode: str = "none") -> Tensor:
    """Weighted mean of the network's logits over the TTA views of a batch (in fp32)."""
    out = None
    for weight, view in tta_views(x, mode):
        logits = net(view.contiguous(memory_format=memory_format_of(x))).float() * weight
        out = logits if out is None else out + logits
    return out


@torch.no_grad()
def evaluate(net: nn.Module | callable, loader, tta: str = "none", autocast_dtype: torch.dtype | None = None,
             logits_fn: Callable | None = None) -> dict:
    """Mean loss and accuracy over every example of `loader` (a test DeviceLoader), in eval mode.

    `logits_fn(net, x, mode)` replaces `tta_logits` for the modes other than 'selective' (a learner's
    own views, notebook 04).

    Runs batch by batch, so only one batch's activations are in memory at a time (6 GB GPUs). The
    model is put back in the mode it was in.
    """
    module = getattr(net, "_orig_mod", net)
    was_training = getattr(module, "training", False)
    if hasattr(module, "eval"):
        module.eval()
    total_loss, correct, count = 0.0, 0, 0
    # selective TTA ranks the whole test set at once, so it sees all batches together (and runs the
    # network on pieces of the loader's batch size)
    batches, chunk = loader, None
    if tta == "selective":
        pairs = list(loader)
        batches = [(torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs]))] if pairs else []
        chunk = len(pairs[0][1]) if pairs else None
    try:
        for x, y in batches:
            ctx = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
            with ctx:
                logits = (selective_logits(net, x, chunk=chunk) if tta == "selective"
                          else (logits_fn or tta_logits)(net, x, tta))
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            count += y.numel()
    finally:
        if was_training:
            module.train()
    if count == 0:
        raise ValueError("evaluate() got an empty loader")
    return {"loss": total_loss / count, "acc": correct / count}


def epoch_scores(model: nn.Module | callable, ema, loader, autocast_dtype: torch.dtype | None = None) -> dict:
    """The test loss and accuracy after an epoch (without TTA), and the weight average's accuracy if
    there is one (`ema`: an `optim.EMA` or None): the history's test columns. The training loop calls it
    between epochs, outside the timer."""
    with region("hlb:evaluate"):
        res = evaluate(model, loader, autocast_dtype=autocast_dtype)
        scores = dict(test_loss=res["loss"], test_acc=res["acc"])
        if ema is not None:
            scores["ema_acc"] = evaluate(ema.model, loader, autocast_dtype=autocast_dtype)["acc"]
    return scores
