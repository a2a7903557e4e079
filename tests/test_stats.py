"""Statistics: a textbook paired t-test, agreement with scipy.stats, and no NaN in any summary of 2+ runs."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from hlb_utils import history, runs, stats
from hlb_utils.config import get_profile
from hlb_utils.train import TrainResult

# Student (1908), "The probable error of a mean", from Cushny & Peebles: extra hours of sleep of ten
# patients under two drugs (R's `sleep` data set; group 1 is drug A, group 2 drug B).
DRUG_A = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
DRUG_B = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_student_sleep_data_gives_the_textbook_paired_test():
    d = stats.paired_difference(DRUG_B, DRUG_A)
    # by hand: differences 1.2 2.4 1.3 1.3 0.0 1.0 1.8 0.8 4.6 1.4, mean 1.58, squared deviations sum
    # to 13.616, so s = sqrt(13.616 / 9) = 1.22999 and t = 1.58 / (s / sqrt(10)) = 4.0621 on 9 df
    assert d["n"] == 10 and d["mean_diff"] == pytest.approx(1.58)
    assert d["std_diff"] == pytest.approx(math.sqrt(13.616 / 9))
    assert d["t"] == pytest.approx(4.0621, abs=1e-4)
    assert d["p_value"] == pytest.approx(0.002833, abs=1e-6)   # two-sided, as R's t.test(paired = TRUE)
    # t(0.975, 9) = 2.262157: 1.58 -+ 2.262157 * 0.388958
    assert (d["ci_low"], d["ci_high"]) == (pytest.approx(0.70011, abs=1e-5), pytest.approx(2.45989, abs=1e-5))
    assert stats.verdict(d) == "real"
    # the other way round: the same interval, mirrored
    back = stats.paired_difference(DRUG_A, DRUG_B)
    assert back["ci_high"] == pytest.approx(-d["ci_low"]) and back["p_value"] == pytest.approx(d["p_value"])


@pytest.mark.parametrize("n, shift", [(2, 0.0), (5, 0.003), (10, -0.001), (25, 0.0005)])
def test_paired_difference_matches_scipy_ttest_rel(n, shift):
    rng = np.random.default_rng(n)
    base = 0.9 + 0.01 * rng.standard_normal(n)
    other = base + shift + 0.002 * rng.standard_normal(n)
    ours = stats.paired_difference(other, base, confidence=0.9)
    ref = scipy_stats.ttest_rel(other, base)
    low, high = ref.confidence_interval(confidence_level=0.9)
    assert ours["t"] == pytest.approx(ref.statistic) and ours["p_value"] == pytest.approx(ref.pvalue)
    assert (ours["ci_low"], ours["ci_high"]) == (pytest.approx(low), pytest.approx(high))


def test_verdict_calls_real_only_what_the_interval_separates_from_zero():
    assert stats.verdict(stats.paired_difference([0.91, 0.92, 0.90], [0.90, 0.93, 0.89])) == "within noise"
    assert stats.verdict(stats.paired_difference([0.80, 0.81, 0.79], [0.90, 0.91, 0.90])) == "real"
    assert stats.verdict(stats.paired_difference([0.9], [0.8])) == "n/a (one seed)"


def test_one_sample_statistics_match_scipy():
    assert stats.t_quantile(0.975, 24) == pytest.approx(2.0639, abs=1e-4)
    assert stats.t_cdf(2.0, 5) == pytest.approx(0.94903, abs=1e-5)
    with pytest.raises(ValueError):
        stats.t_quantile(1.0, 3)
    accs = [0.94, 0.941, 0.939, 0.942, 0.9405]
    s = stats.summarize_accuracies(accs, target=0.94)
    assert s["mean"] == pytest.approx(0.9405) and s["share_at_target"] == 0.8
    assert s["p_value"] == pytest.approx(scipy_stats.ttest_1samp(accs, 0.94, alternative="greater").pvalue)
    assert s["ci95_low"] < s["mean"] < s["ci95_high"]


def _all_numbers(row: dict) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in row.values())


@pytest.mark.parametrize("accs", [[0.9, 0.9], [0.5, 0.6], [0.94] * 5, [0.1, 0.95, 0.3]])
def test_no_statistic_is_nan_with_two_or_more_runs(accs):
    assert _all_numbers(stats.summarize_accuracies(accs))
    diff = stats.paired_difference(accs, accs[::-1])
    assert _all_numbers(diff)


def test_runs_that_agree_exactly_have_a_zero_width_interval():
    s = stats.summarize_accuracies([0.95, 0.95], target=0.94)
    assert s["ci95_low"] == s["ci95_high"] == pytest.approx(0.95) and s["p_value"] == 0.0
    same = stats.paired_difference([0.9, 0.8], [0.9, 0.8])
    assert (same["ci_low"], same["ci_high"], same["p_value"]) == (0.0, 0.0, 1.0)
    assert stats.verdict(same) == "within noise"


def test_one_run_says_n_a_instead_of_nan():
    one = stats.summarize_accuracies([0.95])
    assert one["mean"] == 0.95
    assert [one[k] for k in ("std", "ci95_low", "ci95_high", "p_value")] == [stats.NA] * 4
    with pytest.raises(ValueError):
        stats.summarize_accuracies([])
    with pytest.raises(ValueError):
        stats.paired_difference([0.9, 0.8], [0.9])


def _series(accs: list[float]) -> runs.RunsResult:
    cfg = get_profile("quick")
    return runs.RunsResult(cfg, [TrainResult(cfg.replace(seed=i), pd.DataFrame(), a, 1.0 + i)
                                 for i, a in enumerate(accs)], requested=max(1, len(accs)))


def test_a_series_summary_prints_no_nan():
    two = _series([0.5, 0.7]).summary.iloc[0]
    assert not two.isna().any() and two["mean_seconds"] == 1.5
    for summary in (_series([0.5]).summary, _series([]).summary):
        assert not summary.isna().any(axis=None) and "nan" not in summary.to_string().lower()


def test_a_history_reads_n_a_where_an_epoch_was_not_tested():
    table = pd.DataFrame(dict(epoch=[1, 2], train_loss=[1.23456, 0.9], test_acc=[math.nan, 0.51234],
                              ema_acc=[math.nan, math.nan]))
    shown = history.readable(table)
    assert list(shown.columns) == ["epoch", "train_loss", "test_acc"]   # no weight average: no column
    assert shown["test_acc"].tolist() == [stats.NA, 0.5123] and shown["train_loss"].tolist() == [1.2346, 0.9]
    assert "nan" not in shown.to_string().lower()
