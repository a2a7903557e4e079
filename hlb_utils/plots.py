"""Matplotlib figures for the notebooks.

`image_grid` is taught in notebook 01 (looking at the data, and at what augmentation does to it),
with `plot_flip_schedule`; two recipes' accuracy against epochs and seconds (`plot_accuracy_over_time`)
in notebook 02; the training curves, the lr schedule and the spread over runs in notebooks
04 and 06, with `plot_label_smoothing` (04), `plot_confidence` and `plot_loss_and_lr` (06);
`plot_newton_schulz` in 05; changes against a base over paired seeds (`plot_paired_differences`)
in 04, 05 and 07, and epochs to a target (`plot_epochs_to_target`) in 05 and 07; a sweep's
accuracy against time in notebook 07. Every figure takes plain data and returns a Figure.
Figures are built with matplotlib's object API (`matplotlib.figure.Figure`), not pyplot: nothing
is registered globally, so a notebook shows the returned figure exactly once and tests leak nothing.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

CELL_INCHES = 1.2   # width of one image in the grid, in inches (its title adds a little height)


def image_grid(images: torch.Tensor, labels: torch.Tensor | Sequence[int] | None = None,
               classes: Sequence[str] | None = None, nrows: int | None = None, ncols: int = 8,
               title: str | None = None, mean=None, std=None) -> Figure:
    """A grid of images, each titled with its class name (or label number).

    images: uint8 (N, C, H, W), or float: normalised images when mean/std (per channel, 0..1
    units) are given, which are undone, else values in 0..1. Shows the first nrows * ncols images
    (nrows defaults to as many as N needs).
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0:
        raise ValueError("images must be a non-empty (N, C, H, W) tensor")
    pixels = _to_unit_range(images.detach().cpu(), mean, std)
    ncols = max(1, min(ncols, len(pixels)))
    nrows = nrows or math.ceil(len(pixels) / ncols)
    fig = Figure(figsize=(ncols * CELL_INCHES, nrows * (CELL_INCHES + 0.2)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(pixels):
            continue
        picture = pixels[i].permute(1, 2, 0).numpy()
        ax.imshow(picture[:, :, 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1)
        if labels is not None:
            label = int(labels[i])
            ax.set_title(classes[label] if classes is not None else str(label), fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def _to_unit_range(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Float pixels in 0..1, whatever the input's dtype and normalisation."""
    if images.dtype == torch.uint8:
        return images.float() / 255
    images = images.float()
    if mean is not None and std is not None:
        shape = (1, images.shape[1], 1, 1)
        images = images * torch.as_tensor(std, dtype=torch.float32).view(shape) \
            + torch.as_tensor(mean, dtype=torch.float32).view(shape)
    return images.clamp(0, 1)


def plot_curves(history, title: str | None = None):
    """Loss and accuracy per epoch (train, test, EMA and final TTA where present), side by side."""
    fig = Figure(figsize=(10, 3.6))
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = history["epoch"]
    ax_loss.plot(epochs, history["train_loss"], "o-", label="train")
    tested = history["test_loss"].notna()  # with eval_every > 1 only some epochs were evaluated
    if tested.any():
        ax_loss.plot(epochs[tested], history["test_loss"][tested], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss (label-smoothed for train)", title="loss")
    for column, style, label in (("train_acc", "o-", "train"), ("test_acc", "s-", "test"),
                                 ("ema_acc", "^-", "test, EMA weights"), ("tta_acc", "*", "test, with TTA")):
        if column in history and history[column].notna().any():
            known = history[column].notna()
            ax_acc.plot(epochs[known], history[column][known], style, label=label,
                        markersize=8 if style == "*" else 5)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_accuracy_over_time(histories: dict):
    """Several runs' test accuracy on one axis, against epochs (left) and training seconds (right).

    `histories` maps a name to a run's history (`TrainResult.history`, or notebook 02's baseline's):
    columns `epoch`, `test_acc` and the cumulative `train_seconds`. The same curves read two ways:
    which recipe learns more per pass over the data, and which gets there sooner (notebook 02).
    Epochs without a test are skipped; a final accuracy with TTA (`tta_acc`) is a star.
    """
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax_epochs, ax_seconds = fig.subplots(1, 2, sharey=True)
    for k, (name, history) in enumerate(histories.items()):
        tested = history["test_acc"].notna()
        tta = history["tta_acc"].notna() if "tta_acc" in history else tested & False
        for ax, x in ((ax_epochs, "epoch"), (ax_seconds, "train_seconds")):
            ax.plot(history[x][tested], history["test_acc"][tested], "o-", color=f"C{k}", label=name)
            if tta.any():
                ax.plot(history[x][tta], history["tta_acc"][tta], "*", color=f"C{k}", markersize=10,
                        label=f"{name}, with TTA")
    ax_epochs.set(xlabel="epoch", ylabel="test accuracy", title="against epochs")
    ax_epochs.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_seconds.set(xlabel="training seconds", title="against time")
    for ax in (ax_epochs, ax_seconds):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def plot_lr_schedule(cfg, steps_per_epoch: int):
    """The learning-rate multiplier over training, and when the whitening bias stops learning."""
    from .optim import schedule_curve

    total = max(1, round(cfg.epochs * steps_per_epoch))
    curve = schedule_curve(cfg, total)
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    ax.plot([s / steps_per_epoch for s in range(total)], curve, label=f"{cfg.schedule} schedule")
    if 0 < cfg.whiten_bias_epochs < cfg.epochs:
        ax.axvline(cfg.whiten_bias_epochs, color="gray", ls="--", label="whitening bias frozen")
    ax.set(xlabel="epoch", ylabel="lr multiplier", title=f"learning-rate schedule ({total} steps)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_spread(accuracies, target: float = 0.94, title: str | None = None):
    """Each run's accuracy as a dot, with the mean, a 95% interval and the target line."""
    from .stats import NA, summarize_accuracies

    accs = [float(a) for a in accuracies]
    s = summarize_accuracies(accs, target)
    fig = Figure(figsize=(6, 2.6))
    ax = fig.subplots()
    jitter = [0.05 * ((i * 7) % 5 - 2) for i in range(len(accs))]  # spread dots vertically, reproducibly
    ax.scatter([a * 100 for a in accs], jitter, alpha=0.7, label=f"{len(accs)} run{'s' * (len(accs) != 1)}")
    ax.axvline(s["mean"] * 100, color="C1", label=f"mean {s['mean'] * 100:.2f}%")
    if s["ci95_low"] != NA:  # one run has no interval
        ax.axvspan(s["ci95_low"] * 100, s["ci95_high"] * 100, color="C1", alpha=0.2, label="95% interval of the mean")
    ax.axvline(target * 100, color="k", ls="--", label=f"target {target * 100:g}%")
    ax.set(xlabel="test accuracy (%)", yticks=[], ylim=(-0.5, 0.5), title=title or "spread over runs")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_sweep(table, knob: str, target: float = 0.94):
    """Accuracy against training seconds, one labelled point per row of a sweep's table (notebook 07).

    `table` is `notebook.results_table(...)` of one sweep, or `compare.sweep_table(...)`: then each
    point carries its 95% interval over seeds as an error bar, and the fastest point that reaches
    the target is ringed. The target line is drawn once the sweep comes within 4 points of it.
    """
    from .stats import NA

    if len(table) == 0:
        raise ValueError(f"no runs of the {knob} sweep to plot yet: run the sweep cell first "
                         "(the config cell starts a new, empty sweep)")
    names = table["setting"] if "setting" in table else table["change"]
    shown = table[table["accuracy"] != NA]   # a point with no finished run has nothing to draw
    seconds, accuracy = shown["seconds"].astype(float), shown["accuracy"].astype(float)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(seconds, accuracy, "o-")
    for name, x, y in zip(names[shown.index], seconds, accuracy):
        ax.annotate(name, (x, y), fontsize=8)
    if "ci_low" in shown:
        spread = shown[shown["ci_low"] != NA]
        if len(spread):
            mean = spread["accuracy"].astype(float)
            ax.errorbar(spread["seconds"].astype(float), mean, fmt="none", ecolor="C0", capsize=3,
                        yerr=[mean - spread["ci_low"].astype(float), spread["ci_high"].astype(float) - mean])
    legend = False
    if "fastest" in shown and shown["fastest"].any():
        best = shown[shown["fastest"].astype(bool)]
        ax.scatter(best["seconds"].astype(float), best["accuracy"].astype(float), s=200, facecolors="none",
                   edgecolors="C3", linewidths=2, label="fastest to reach the target", zorder=3)
        legend = True
    if len(accuracy) and accuracy.max() > target - 0.04:
        ax.axhline(target, ls="--", color="grey", label=f"target {target:.1%}")
        legend = True
    if legend:
        ax.legend(fontsize=8)
    ax.set(xlabel="training seconds", ylabel="test accuracy" + (" (mean, 95% interval)" if "ci_low" in table else ""),
           title=f"sweep of {knob}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_paired_differences(table):
    """Each change's mean difference from the base with its 95% interval, a zero line, and its verdict.

    `table` is `compare.compare_settings(...)` (or `compare.paired_table`); the base row is skipped.
    An effect is drawn as real only where its interval misses zero (notebooks 04, 05, 07).
    """
    from .stats import NA

    rows = table[table["verdict"] != "base"].reset_index(drop=True)
    fig = Figure(figsize=(7, 1.2 + 0.45 * max(1, len(rows))), layout="constrained")
    ax = fig.subplots()
    for y, row in rows.iterrows():
        diff = row["difference"] * 100
        has_ci = row["ci_low"] != NA
        err = [[diff - row["ci_low"] * 100], [row["ci_high"] * 100 - diff]] if has_ci else None
        color = "C2" if row["verdict"] == "real" and diff > 0 else "C3" if row["verdict"] == "real" else "gray"
        ax.errorbar([diff], [y], xerr=err, fmt="o", color=color, capsize=4)
        ax.annotate(f"  {row['verdict']}", (diff if not has_ci else row["ci_high"] * 100, y), va="center",
                    fontsize=8, color=color)
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(range(len(rows)), [str(s) for s in rows["setting"]])
    ax.set_ylim(-0.7, max(1, len(rows)) - 0.3)
    ax.invert_yaxis()
    ax.set(xlabel="accuracy difference from the base (points), 95% interval",
           title="which changes are real, and which are within noise")
    ax.grid(alpha=0.3, axis="x")
    return fig


def plot_epochs_to_target(curves: dict, target: float, runs: dict | None = None):
    """Accuracy against training length per setting, with the epochs each needs to reach `target`.

    `curves` maps a name to (epochs, accuracies), the first being the base; arrows at the target
    line show the epochs each other setting saves, the way airbench reports its tricks (notebooks
    05 and 07). The read-off is `compare.epochs_to_target`. `runs` (optional) maps the same names to
    (epochs, accuracies) of every single run, drawn as faint dots: the spread the curves average over.
    """
    from .compare import epochs_to_target

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target:.1%}")
    needs = {name: epochs_to_target(epochs, accs, target) for name, (epochs, accs) in curves.items()}
    base_need = next(iter(needs.values()), None)
    for k, (name, (epochs, accs)) in enumerate(curves.items()):
        need, color = needs[name], f"C{k}"
        text = "not reached" if need is None else f"{need:.2f} epochs"
        if k and need is not None and base_need is not None:
            text += f", {base_need - need:+.2f} saved"
            ax.annotate("", xy=(need, target), xytext=(base_need, target),
                        arrowprops=dict(arrowstyle="->", color=color, lw=2))
        ax.plot(epochs, accs, "o-", color=color, label=f"{name}: {text}")
        if runs and name in runs:
            ax.scatter(*runs[name], s=12, color=color, alpha=0.4)
        if need is not None:
            ax.axvline(need, color=color, ls=":", lw=1)
    ax.set(xlabel="training length (epochs; each point its own run)", ylabel="test accuracy",
           title="epochs to reach the target")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_newton_schulz(iterations=None, steps: int = 3, smallest: float = 1e-3, newton_schulz=None):
    """What each Newton-Schulz step does to a singular value: input on x, output after each step.

    Muon's iteration X <- a X + b (X X^T) X + c (X X^T)^2 X acts on each singular value s alone,
    as s <- a s + b s^3 + c s^5, so these curves are exactly what `optim.newton_schulz` does to a
    gradient's spectrum (notebook 05). `iterations`: coefficients (a, b, c), a function of a numpy
    array (a learner's own sketch), or a dict of names to either; default: airbench94_muon's and
    hiverge's coefficients, side by side. Singular values start at most 1 (the gradient is divided
    by its norm first); x is logarithmic because most of a gradient's singular values are small.
    `newton_schulz(G, steps=k, coeffs=(a, b, c))`: a whole iteration on a matrix (notebook 05 passes
    its learner's); the curves are then read from it, k = 0 .. steps (see `_matrix_curves`), and
    `iterations` holds coefficients only.
    """
    import numpy as np

    from .config import get_profile

    if iterations is None:   # the coefficients live in the presets: airbench94_muon's and hiverge's record
        iterations = {"airbench94_muon": get_profile("airbench").ns_coeffs,
                      "hiverge": get_profile("record").ns_coeffs}
    elif not isinstance(iterations, dict):
        iterations = {"your iteration": iterations}
    if newton_schulz is not None and any(callable(it) for it in iterations.values()):
        raise ValueError("with newton_schulz=..., iterations must be coefficients (a, b, c), not functions")
    fig = Figure(figsize=(4.5 * len(iterations), 3.8), layout="constrained")
    axes = fig.subplots(1, len(iterations), squeeze=False)[0]
    s = np.geomspace(smallest, 1.0, 400 if newton_schulz is None else 120)
    for ax, (name, it) in zip(axes, iterations.items()):
        if newton_schulz is not None:
            curves = _matrix_curves(newton_schulz, tuple(it), s, steps)
        else:
            step = it if callable(it) else (lambda x, a=it[0], b=it[1], c=it[2]: a * x + b * x**3 + c * x**5)
            curves = [s]
            for _ in range(steps):
                curves.append(step(curves[-1]))
        x = curves[0]
        ax.plot(x, x, color="gray", ls="--", label="before (input)")
        for k, y in enumerate(curves[1:], start=1):
            ax.plot(x, y, label=f"after step {k}")
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        coeffs = "" if callable(it) else f"\n(a, b, c) = {tuple(it)}"
        ax.set(xscale="log", xlabel="singular value in", ylabel="singular value out", title=f"{name}{coeffs}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _matrix_curves(newton_schulz, coeffs: tuple, s, steps: int) -> list:
    """Each value of `s` after k = 0 .. steps steps of a matrix iteration, read off 2x2 matrices.

    The matrix diag(s, sqrt(1 - s^2)) has norm 1, so the iteration's own normalisation leaves s in
    place (what it does leave, k = 0, is the x the curves are drawn against), and every product of
    diagonal matrices stays diagonal: entry [0, 0] is what the iteration does to that one singular value.
    """
    import numpy as np

    out = np.empty((steps + 1, len(s)))
    for j, value in enumerate(s):
        G = torch.diag(torch.tensor([value, (1.0 - value * value) ** 0.5], dtype=torch.float64))
        for k in range(steps + 1):
            out[k, j] = float(newton_schulz(G, steps=k, coeffs=coeffs)[0, 0])
    return list(out)


def plot_flip_schedule(random_masks, alternating_masks, images=None):
    """Which images are mirrored in which epoch: fair coins each epoch against airbench's alternation.

    Masks are bool (epochs, n_images), e.g. `loader.random_flip_mask` per epoch and
    `loader.alternating_flip_mask(base, epoch)`. Without `images`, two grids of cells (dark: mirrored);
    with uint8 `images` (n_images, C, H, W), the images themselves as each epoch shows them (notebook
    01). Alternation shows every image both ways within any two epochs; coins can repeat a side.
    """
    import numpy as np

    masks = {"random flip": np.asarray(random_masks, dtype=bool),
             "alternating flip": np.asarray(alternating_masks, dtype=bool)}
    epochs, n = masks["random flip"].shape
    if images is None:
        fig = Figure(figsize=(2 + 0.5 * epochs, 1 + 0.45 * n), layout="constrained")
        for ax, (name, mask) in zip(fig.subplots(1, 2), masks.items()):
            ax.imshow(mask.T, cmap="Greys", vmin=0, vmax=1.5)
            ax.set(title=f"{name} (dark: mirrored)", xlabel="epoch", ylabel="image", xticks=range(epochs),
                   yticks=range(n))
        return fig
    pixels = _to_unit_range(torch.as_tensor(images)[:n].cpu(), None, None)
    fig = Figure(figsize=(2 * epochs * 0.9 + 0.5, n * 0.9 + 0.6), layout="constrained")
    for sub, (name, mask) in zip(fig.subfigures(1, 2), masks.items()):
        sub.suptitle(f"{name} (columns: epochs)", fontsize=9)
        for i, row in enumerate(sub.subplots(n, epochs, squeeze=False)):
            for e, ax in enumerate(row):
                picture = pixels[i].flip(-1) if mask[e, i] else pixels[i]
                ax.imshow(picture.permute(1, 2, 0).numpy())
                ax.axis("off")
    return fig


def plot_label_smoothing(smoothing: float = 0.2, classes: int = 10, loss_fn=None):
    """Label smoothing's target distribution, and the loss against the true class's logit (notebook 04).

    Left: the one-hot target against the smoothed one. Right: the loss of one image whose other
    logits are 0, with and without smoothing: without it the loss keeps falling as the logit grows,
    so training pushes logits up forever; with it the loss has a minimum (dotted), so over-confident
    logits are pulled back. `loss_fn(logits, labels, smoothing)` is the loss drawn, called on one
    image at a time (a learner's own sketch; default `optim.smoothed_cross_entropy`).
    """
    import numpy as np

    from .optim import smoothed_cross_entropy

    loss_fn = loss_fn or smoothed_cross_entropy
    fig = Figure(figsize=(10, 3.5), layout="constrained")
    ax_target, ax_loss = fig.subplots(1, 2)
    x = np.arange(classes)
    one_hot = (x == 0).astype(float)
    ax_target.bar(x - 0.2, one_hot, 0.4, label="one-hot")
    ax_target.bar(x + 0.2, one_hot * (1 - smoothing) + smoothing / classes, 0.4, label=f"smoothed ({smoothing:g})")
    ax_target.set(xlabel="class (0 is the true class)", ylabel="target probability", xticks=x,
                  title="what the loss asks the net to predict")
    ax_target.legend()
    z = torch.linspace(-2, 14, 200)
    logits = torch.cat([z[:, None], torch.zeros(len(z), classes - 1)], dim=1)
    labels = torch.zeros(len(z), dtype=torch.long)
    for s, label in ((0.0, "without smoothing"), (smoothing, f"with smoothing {smoothing:g}")):
        loss = [float(loss_fn(row[None], labels[:1], s)) for row in logits]
        ax_loss.plot(z.numpy(), loss, label=label)
    if 0 < smoothing < 1:
        # read off the drawn curve, so that a learner's changed loss shows its own minimum
        best = float(z[int(np.argmin(loss))])
        ax_loss.axvline(best, color="C1", ls=":", label=f"smoothed loss is lowest near {best:.1f}")
    ax_loss.set(xlabel="true class's logit (the others at 0)", ylabel="loss", title="loss against the logit")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    return fig


def plot_confidence(probs_top, cutoff: float, changed_mask):
    """Histogram of the top class's probability per test image, selective TTA's cut-off, and the
    answers TTA changed (notebook 06).

    `probs_top`: the highest softmax probability of each image without TTA; `cutoff`: the
    probability below which selective TTA spends its extra views (the least confident quarter);
    `changed_mask`: bool, True where the TTA prediction differs from the plain one. The changed
    answers sit left of the cut-off: TTA only helps where the net was unsure.
    """
    import numpy as np

    probs, changed = np.asarray(probs_top, dtype=float), np.asarray(changed_mask, dtype=bool)
    bins = np.linspace(0, 1, 21)
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.hist(probs, bins=bins, color="C0", alpha=0.6, label=f"all {len(probs)} test images")
    ax.hist(probs[changed], bins=bins, color="C3", label=f"answer changed by TTA ({int(changed.sum())})")
    share = float((probs < cutoff).mean()) if len(probs) else 0.0
    ax.axvline(cutoff, color="k", ls="--", label=f"cut-off {cutoff:.2f} ({share:.0%} of images below)")
    ax.set(xlabel="top-class probability (confidence)", ylabel="test images", yscale="log",
           title="selective TTA: extra views only for the unsure")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def plot_loss_and_lr(steps, losses=None, lrs=None):
    """Training loss per step, with the learning rate on a second axis (notebook 06).

    Per step, not per epoch: a short run has a handful of epochs, and the schedule's effect (the
    loss falling faster as the lr decays) happens within them. `steps` is a run's `TrainResult.steps`
    (columns step, epoch, loss, lr: the schedule's multiplier of each group's base lr; each epoch
    after the first starts at a dotted line), or plain arrays of steps, losses and lrs from any run.
    """
    epoch_starts = []
    if losses is None and lrs is None:
        table = steps
        steps, losses, lrs, epochs = (list(table[c]) for c in ("step", "loss", "lr", "epoch"))
        # the first step of each epoch after the first
        epoch_starts = [s for s, e, before in zip(steps[1:], epochs[1:], epochs) if e != before]
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, losses, color="C0", lw=1, label="training loss")
    for start in epoch_starts:
        ax.axvline(start, color="gray", ls=":", lw=0.8)
    ax.set(xlabel="step", ylabel="training loss", title="loss and learning rate per step")
    ax.grid(alpha=0.3)
    ax_lr = ax.twinx()
    ax_lr.plot(steps, lrs, color="C1", label="learning rate")
    ax_lr.set_ylabel("learning rate", color="C1")
    lines = ax.get_lines()[:1] + ax_lr.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="upper right")
    return fig
