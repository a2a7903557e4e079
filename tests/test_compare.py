"""Comparing settings: epochs to a target read off synthetic curves, and paired seeds end to end."""
import pandas as pd
import pytest

from hlb_utils import compare, runs
from hlb_utils.config import get_profile
from hlb_utils.train import TrainResult

TINY = dict(widths=(8, 16, 16), batch_size=100, epochs=1, tta="none", eval_every=0, device="cpu")


@pytest.mark.parametrize("target, expected", [(0.8, 2.5), (0.9, 3.0), (0.95, 4.0), (0.4, 1.0)])
def test_epochs_to_target_interpolates_between_the_bracketing_lengths(target, expected):
    # 0.4 is reached by the shortest run already: its length is all the data can say
    assert compare.epochs_to_target([1, 2, 3, 4], [0.5, 0.7, 0.9, 0.95], target) == pytest.approx(expected)


def test_epochs_to_target_sorts_its_points_and_says_when_never_reached():
    assert compare.epochs_to_target([4, 1, 3, 2], [0.95, 0.5, 0.9, 0.7], 0.8) == pytest.approx(2.5)
    assert compare.epochs_to_target([1, 2, 3], [0.5, 0.6, 0.7], 0.94) is None
    with pytest.raises(ValueError):
        compare.epochs_to_target([1, 2], [0.5], 0.5)


def test_a_lucky_short_run_is_averaged_not_trusted():
    # The raw curve first crosses 0.85 between 1 and 2 epochs, on a spike the next two lengths lose.
    # The monotone fit pools 0.87, 0.82 and 0.83 into 0.84, so the crossing lies between 4 (0.84)
    # and 5 (0.90) epochs: 4 + 0.01 / 0.06.
    need = compare.epochs_to_target([1, 2, 3, 4, 5], [0.80, 0.87, 0.82, 0.83, 0.90], 0.85)
    assert need == pytest.approx(4 + 1 / 6)


def test_epochs_saved_between_two_curves():
    lengths = [2, 4, 6, 8, 10]
    base = (lengths, [0.1 * e for e in lengths])          # reaches 0.8 at 8 epochs
    better = (lengths, [0.1 * e + 0.2 for e in lengths])  # ... at 6
    worse = (lengths, [0.05 * e for e in lengths])        # never
    assert compare.epochs_saved(base, better, 0.8) == pytest.approx(2.0)
    assert compare.epochs_saved(base, worse, 0.8) is None
    table = compare.target_table({"base": base, "better": better, "worse": worse}, 0.8)
    assert list(table["epochs_to_target"]) == [pytest.approx(8.0), pytest.approx(6.0), "not reached"]
    assert list(table["epochs_saved"]) == [0.0, pytest.approx(2.0), "n/a"]
    assert not table.isna().any(axis=None)


def _series(accs: dict, interrupted=()) -> runs.RunsResult:
    cfg = get_profile("quick")
    return runs.RunsResult(cfg, [TrainResult(cfg.replace(seed=s), pd.DataFrame(), a, 2.0, interrupted=s in interrupted)
                                 for s, a in accs.items()])


def test_paired_table_pairs_by_seed_and_drops_unfinished_seeds():
    base = _series({0: 0.80, 1: 0.70, 2: 0.90})
    # seed 1 was cut short in the change: only seeds 0 and 2 pair, each 0.05 better
    table = compare.paired_table(base, {"change": _series({2: 0.95, 0: 0.85, 1: 0.99}, interrupted={1})})
    assert list(table.columns) == compare.COLUMNS
    base_row, row = table.iloc[0], table.iloc[1]
    assert (base_row["setting"], base_row["verdict"], base_row["difference"]) == ("base", "base", 0.0)
    assert base_row["runs"] == 3 and base_row["accuracy"] == pytest.approx(0.8)
    assert row["runs"] == 2 and row["difference"] == pytest.approx(0.05) and row["accuracy"] == pytest.approx(0.9)
    assert row["ci_low"] == row["ci_high"] == pytest.approx(0.05) and row["verdict"] == "real"
    one = compare.paired_table(base, {"one seed": _series({0: 0.9})}).iloc[1]
    assert one["ci_low"] == "n/a" and one["verdict"] == "n/a (one seed)"
    with pytest.raises(ValueError, match="no finished seed"):
        compare.paired_table(base, {"elsewhere": _series({7: 0.9})})


def test_compare_settings_trains_every_setting_on_the_same_seeds(synthetic):
    cfg = get_profile("quick", **TINY)
    changes = {"the same again": dict(label_smoothing=cfg.label_smoothing), "no smoothing": dict(label_smoothing=0.0)}
    table = compare.compare_settings(cfg, changes, synthetic, seeds=2, verbose=False)
    assert list(table["setting"]) == ["base", "the same again", "no smoothing"]
    assert list(table["runs"]) == [2, 2, 2] and (table["seconds"] > 0).all()
    assert not table.isna().any(axis=None)
    # training is deterministic per seed, so an unchanged setting differs from the base by exactly 0
    same = table.iloc[1]
    assert (same["difference"], same["ci_low"], same["ci_high"], same["verdict"]) == (0.0, 0.0, 0.0, "within noise")
    with pytest.raises(ValueError, match="seed"):
        compare.compare_settings(cfg, {"bad": dict(seed=3)}, synthetic, seeds=2, verbose=False)


def _at(epochs: float, accs: dict, seconds: float = 1.0) -> runs.RunsResult:
    """A finished series of the quick profile at `epochs`, one run per seed: accuracy, seconds."""
    cfg = get_profile("quick", epochs=epochs)
    return runs.RunsResult(cfg, [TrainResult(cfg.replace(seed=s), pd.DataFrame(), a, seconds * epochs)
                                 for s, a in accs.items()])


def test_sweep_table_answers_the_fastest_point_that_reaches_the_target_not_the_most_accurate():
    swept = {"epochs=1": _at(1, {0: 0.60, 1: 0.64}), "epochs=2": _at(2, {0: 0.71, 1: 0.73}),
             "epochs=4": _at(4, {0: 0.80, 1: 0.82}), "epochs=8": _at(8, {}),   # nothing finished there
             "epochs=3": _at(3, {0: 0.74})}   # one seed: no interval
    table = compare.sweep_table(swept, 0.7)
    assert list(table["setting"][table["fastest"]]) == ["epochs=2"]   # not epochs=4, the most accurate
    assert list(table["reaches"]) == [False, True, True, False, True]
    row = table.set_index("setting").loc["epochs=2"]
    assert row["accuracy"] == pytest.approx(0.72) and row["seconds"] == pytest.approx(2.0)
    assert row["ci_low"] < 0.72 < row["ci_high"]
    assert table.set_index("setting").loc["epochs=3", "ci_low"] == "n/a"
    assert table.set_index("setting").loc["epochs=8", "accuracy"] == "n/a"
    assert not table.isna().any().any()
    assert not compare.sweep_table(swept, 0.9)["fastest"].any()   # nobody reaches 90%
    assert compare.mean_curve(swept) == ([1, 2, 4, 3], [pytest.approx(0.62), pytest.approx(0.72),
                                                        pytest.approx(0.81), 0.74])
