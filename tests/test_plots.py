"""Figures: each draws what it is given (axes, lines, bars counted on small inputs), renders, and
survives edge cases (one run, nothing changed); none is registered with pyplot."""
import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from hlb_utils import compare, optim, plots, runs  # noqa: E402
from hlb_utils.config import get_profile  # noqa: E402
from hlb_utils.train import TrainResult  # noqa: E402


@pytest.fixture(autouse=True)
def no_figure_left_open():
    yield
    assert plt.get_fignums() == [], "a figure was registered with pyplot"
    plt.close("all")


def rendered(fig: Figure) -> Figure:
    """Draw the figure for real (layout, text, error bars), as a notebook would show it."""
    assert isinstance(fig, Figure)
    fig.savefig(io.BytesIO(), format="png", dpi=20)
    return fig


def _series(accs: dict) -> runs.RunsResult:
    cfg = get_profile("quick")
    return runs.RunsResult(cfg, [TrainResult(cfg.replace(seed=s), pd.DataFrame(), a, 1.0) for s, a in accs.items()])


def test_paired_differences_marks_each_change():
    base = _series({0: 0.80, 1: 0.70, 2: 0.90})
    table = compare.paired_table(base, {"better": _series({0: 0.85, 1: 0.76, 2: 0.94}),
                                        "noisy": _series({0: 0.82, 1: 0.66, 2: 0.93})})
    ax, = rendered(plots.plot_paired_differences(table)).axes
    assert len(ax.containers) == 2 and [t.get_text() for t in ax.get_yticklabels()] == ["better", "noisy"]
    assert [t.get_text().strip() for t in ax.texts] == ["real", "within noise"]
    one_seed = compare.paired_table(base, {"once": _series({0: 0.9})})
    assert [t.get_text().strip() for t in rendered(plots.plot_paired_differences(one_seed)).axes[0].texts] \
        == ["n/a (one seed)"]
    assert len(rendered(plots.plot_paired_differences(compare.paired_table(base, {}))).axes[0].texts) == 0


def test_epochs_to_target_draws_curves_read_offs_and_savings():
    lengths = [2, 4, 6, 8, 10]
    curves = {"base": (lengths, [0.1 * e for e in lengths]), "better": (lengths, [0.1 * e + 0.2 for e in lengths]),
              "worse": (lengths, [0.05 * e for e in lengths])}
    ax, = rendered(plots.plot_epochs_to_target(curves, 0.8)).axes
    assert len(ax.lines) == 1 + 3 + 2   # the target, three curves, two read-offs (one never reaches it)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[1:] == ["base: 8.00 epochs", "better: 6.00 epochs, +2.00 saved", "worse: not reached"]


def test_newton_schulz_curves_are_what_the_iteration_does_to_singular_values():
    fig = rendered(plots.plot_newton_schulz(steps=3))
    assert len(fig.axes) == 2 and all(len(ax.lines) == 3 + 2 for ax in fig.axes)
    assert "3.4576" in fig.axes[1].get_title()   # hiverge's coefficients, from the record preset
    # a matrix with known singular values, through the library's own iteration
    s = torch.tensor([0.9, 0.3, 0.1, 0.03], dtype=torch.float64)
    q1, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    q2, _ = torch.linalg.qr(torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    out = torch.linalg.svdvals(optim.newton_schulz(q1 @ torch.diag(s) @ q2.T, steps=3)).numpy()
    x, y = next(line for line in fig.axes[0].lines if line.get_label() == "after step 3").get_data()
    drawn = np.interp((s / s.norm()).numpy(), x, y)   # airbench's coefficients, the default's first panel
    # the map is not monotone near 1, so the output's singular values come in another order
    assert np.sort(drawn) == pytest.approx(np.sort(out), rel=2e-2)
    mine = rendered(plots.plot_newton_schulz(lambda x: 1.5 * x - 0.5 * x**3, steps=2))
    assert len(mine.axes) == 1 and len(mine.axes[0].lines) == 2 + 2 and mine.axes[0].get_title() == "your iteration"


def test_newton_schulz_curves_from_a_matrix_function_match_the_formula():
    # a learner's whole iteration (here the library's), read step by step, draws a s + b s^3 + c s^5
    coeffs = {"airbench": optim.NS_COEFFS, "record": get_profile("record").ns_coeffs}
    fig = rendered(plots.plot_newton_schulz(coeffs, steps=3, newton_schulz=optim.newton_schulz))
    assert len(fig.axes) == 2 and all(len(ax.lines) == 3 + 2 for ax in fig.axes)
    for ax, (a, b, c) in zip(fig.axes, coeffs.values()):
        y, want = np.asarray(ax.lines[0].get_data()[0]), []
        for _ in range(3):
            y = a * y + b * y**3 + c * y**5
            want.append(y)
        for line, y in zip(ax.lines[1:4], want):   # after steps 1, 2 and 3
            assert np.asarray(line.get_data()[1]) == pytest.approx(y, rel=1e-6, abs=1e-9)
    with pytest.raises(ValueError, match="coefficients"):
        plots.plot_newton_schulz(lambda x: x, newton_schulz=optim.newton_schulz)


def test_flip_schedule_as_cells_and_as_images():
    gen = torch.Generator().manual_seed(0)
    random = torch.stack([torch.randint(0, 2, (3,), generator=gen).bool() for _ in range(4)])
    base = random[0]
    alternating = torch.stack([~base if e % 2 else base for e in range(4)])
    cells = rendered(plots.plot_flip_schedule(random, alternating))
    assert len(cells.axes) == 2 and cells.axes[1].images[0].get_array().shape == (3, 4)
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8, generator=gen)
    fig = rendered(plots.plot_flip_schedule(random, alternating, images=images))
    assert len(fig.axes) == 2 * 3 * 4
    # the alternating panel's image 0 in epoch 1 is image 0 mirrored exactly when the mask says so
    shown = fig.subfigs[1].axes[1].images[0].get_array()
    expected = (images[0].flip(-1) if alternating[1, 0] else images[0]).permute(1, 2, 0).float() / 255
    assert np.allclose(shown, expected.numpy())


@pytest.mark.parametrize("smoothing, loss_lines", [(0.2, 3), (0.0, 2)])
def test_label_smoothing_targets_and_loss(smoothing, loss_lines):
    ax_target, ax_loss = rendered(plots.plot_label_smoothing(smoothing, classes=10)).axes
    one_hot, smoothed = ax_target.containers
    assert len(one_hot) == len(smoothed) == 10
    assert smoothed[1].get_height() == pytest.approx(smoothing / 10)
    assert smoothed[0].get_height() == pytest.approx(1 - smoothing + smoothing / 10)
    assert len(ax_loss.lines) == loss_lines
    if smoothing:   # the smoothed loss is lowest where the dotted line says
        z, loss = ax_loss.lines[1].get_data()
        assert z[np.argmin(loss)] == pytest.approx(ax_loss.lines[2].get_xdata()[0], abs=0.1)


def test_label_smoothing_draws_a_learners_loss():
    calls = []

    def mine(logits, labels, smoothing):
        calls.append(smoothing)
        return optim.smoothed_cross_entropy(logits, labels, smoothing) * 2   # visibly not the library's

    ax_loss = rendered(plots.plot_label_smoothing(0.2, classes=10, loss_fn=mine)).axes[1]
    z, doubled = ax_loss.lines[0].get_data()
    library = optim.smoothed_cross_entropy(torch.tensor([[z[0]] + [0.0] * 9]), torch.tensor([0]), 0.0)
    assert doubled[0] == pytest.approx(2 * float(library)) and sorted(set(calls)) == [0.0, 0.2]


def test_accuracy_over_time_shares_the_accuracy_axis():
    slow = pd.DataFrame(dict(epoch=[1, 2, 3], test_acc=[0.3, 0.4, 0.45], train_seconds=[10.0, 20.0, 30.0]))
    fast = pd.DataFrame(dict(epoch=[1, 2, 3], test_acc=[0.4, None, 0.6], train_seconds=[4.0, 8.0, 12.0],
                             tta_acc=[None, None, 0.62]))
    ax_epochs, ax_seconds = rendered(plots.plot_accuracy_over_time({"slow": slow, "fast": fast})).axes
    assert [len(ax.lines) for ax in (ax_epochs, ax_seconds)] == [3, 3]   # two curves and one TTA star
    x, y = ax_seconds.lines[1].get_data()   # the fast run, its untested epoch skipped
    assert list(x) == [4.0, 12.0] and list(y) == [0.4, 0.6]
    assert list(ax_epochs.lines[0].get_xdata()) == [1, 2, 3]
    labels = [t.get_text() for t in ax_epochs.get_legend().get_texts()]
    assert labels == ["slow", "fast", "fast, with TTA"]


@pytest.mark.parametrize("changed", [[True, False] * 50, [False] * 100])
def test_confidence_histogram_with_and_without_changed_answers(changed):
    probs = np.linspace(0.2, 1.0, 100)
    ax, = rendered(plots.plot_confidence(probs, 0.6, changed)).axes
    assert len(ax.patches) == 2 * 20 and len(ax.lines) == 1
    assert f"({sum(changed)})" in ax.get_legend().get_texts()[1].get_text()


def test_loss_and_lr_share_the_step_axis():
    steps = np.arange(50)
    fig = rendered(plots.plot_loss_and_lr(steps, np.exp(-steps / 20), np.linspace(1, 0, 50)))
    assert len(fig.axes) == 2 and [len(ax.lines) for ax in fig.axes] == [1, 1]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["training loss", "learning rate"]


def test_spread_of_one_run_has_no_interval():
    ax, = rendered(plots.plot_spread([0.9])).axes
    assert not ax.patches   # no interval band
    ax, = rendered(plots.plot_spread([0.9, 0.92, 0.91])).axes
    assert len(ax.patches) == 1


def test_loss_and_lr_read_a_runs_steps_with_its_epochs():
    steps = pd.DataFrame(dict(step=range(6), epoch=[1, 1, 1, 2, 2, 2], loss=[2.0, 1.8, 1.5, 1.4, 1.2, 1.1],
                              lr=[1.0, 0.8, 0.6, 0.4, 0.2, 0.0]))
    fig = rendered(plots.plot_loss_and_lr(steps))
    ax, ax_lr = fig.axes
    assert list(ax.lines[0].get_ydata()) == list(steps["loss"]) and list(ax_lr.lines[0].get_ydata()) == list(steps["lr"])
    assert [line.get_xdata()[0] for line in ax.lines[1:]] == [3]   # where epoch 2 starts
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["training loss", "learning rate"]


def test_sweep_draws_each_points_interval_and_rings_the_fastest_to_the_target():
    series = {f"epochs={e}": runs.RunsResult(get_profile("quick", epochs=e), [
        TrainResult(get_profile("quick", epochs=e, seed=s), pd.DataFrame(), a + 0.05 * e, float(e))
        for s, a in enumerate((0.6, 0.62))]) for e in (1, 2, 4)}
    table = compare.sweep_table(series, 0.7)
    ax, = rendered(plots.plot_sweep(table, "epochs", 0.7)).axes
    assert [t.get_text() for t in ax.texts] == ["epochs=1", "epochs=2", "epochs=4"]
    assert list(ax.lines[0].get_xdata()) == [1.0, 2.0, 4.0]
    assert len(ax.containers) == 1   # the error bars
    ringed = ax.collections[-1].get_offsets()
    assert [list(p) for p in ringed] == [[2.0, pytest.approx(0.71)]]   # epochs=2: the first mean at 70%
    assert "fastest to reach the target" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_epochs_to_target_draws_every_single_run_as_a_dot():
    curves = {"base": ([1, 2], [0.5, 0.7]), "other": ([1, 2], [0.4, 0.6])}
    single = {"base": ([1, 1, 2, 2], [0.48, 0.52, 0.69, 0.71]), "other": ([1, 1, 2, 2], [0.4, 0.4, 0.6, 0.6])}
    ax, = rendered(plots.plot_epochs_to_target(curves, 0.6, runs=single)).axes
    assert [len(c.get_offsets()) for c in ax.collections] == [4, 4]
