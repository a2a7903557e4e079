"""Small statistics for "is the mean really above 94%?" and "is this change really a gain?".

Taught in notebook 06 (one setting against a target) and notebooks 04, 05 and 07 (one setting
against another over the same seeds). Per-run accuracy of these recipes varies by about 0.13 points
on a GPU, and by far more in the short runs a CPU affords, so one run proves nothing: the anchors
report means over 25 to 1000 runs and test them against the target.

Student's t distribution comes from scipy.stats (a well-kept library, preinstalled on Colab), not
from a hand-written special function. A statistic that is undefined (the spread of a single run, its
interval, its test) is the string `NA` ("n/a"), never NaN: a table a learner prints then says what
is missing instead of showing NaN.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

from scipy import stats as _scipy_stats

NA = "n/a"   # an undefined statistic (one run has no spread): printed as is, written as null in records


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    return float(_scipy_stats.t.cdf(t, df))


def t_quantile(p: float, df: float) -> float:
    """The t value below which a fraction p of the distribution lies."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p} must lie strictly between 0 and 1")
    return float(_scipy_stats.t.ppf(p, df))


def summarize_accuracies(accs: Sequence[float], target: float = 0.94) -> dict:
    """Mean, sample std, 95% interval, share of runs >= target, and a one-sided t-test of mean > target.

    `p_value` is the chance of a mean this high if the true mean were only `target`. With one run
    the spread, the interval and the test are undefined: `std`, `ci95_low`, `ci95_high` and `p_value`
    are then `NA` ("n/a"). With two or more runs every field is a number: runs that agree exactly
    have a zero-width interval, and a p-value of 0 (mean above target) or 1 (at or below it).
    """
    n = len(accs)
    if n == 0:
        raise ValueError("summarize_accuracies() needs at least one accuracy")
    accs = [float(a) for a in accs]
    mean = statistics.fmean(accs)
    out = dict(runs=n, mean=mean, std=NA, min=min(accs), max=max(accs), ci95_low=NA, ci95_high=NA,
               share_at_target=sum(a >= target for a in accs) / n, target=target, p_value=NA)
    if n > 1:
        std = statistics.stdev(accs)
        low, high = _t_interval(mean, std, n, 0.95)
        out.update(std=std, ci95_low=low, ci95_high=high, p_value=_p_greater(mean - target, std, n))
    return out


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of a - b over paired runs (the same seed with and without a change), with its interval.

    Pairing removes what the two runs of a seed share (its initialisation, its data order), so a
    small effect shows with fewer seeds than two independent samples would need (notebooks 04, 05,
    07). Returns `n`, `mean_diff`, `std_diff`, `ci_low`, `ci_high` (Student's t at `confidence`),
    `t` and `p_value` (two-sided paired t-test, as scipy.stats.ttest_rel). With one pair the
    spread, interval and test are `NA`; pairs that all differ by the same amount have a zero-width
    interval and a p-value of 0 (or 1 when that amount is 0).
    """
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"paired_difference() needs two equally long, non-empty lists; got {len(a)} and {len(b)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must lie strictly between 0 and 1")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    n, mean = len(diffs), statistics.fmean(diffs)
    out = dict(n=n, mean_diff=mean, std_diff=NA, ci_low=NA, ci_high=NA, t=NA, p_value=NA, confidence=confidence)
    if n > 1:
        std = statistics.stdev(diffs)
        low, high = _t_interval(mean, std, n, confidence)
        t = mean / (std / math.sqrt(n)) if std > 0 else (math.copysign(math.inf, mean) if mean else 0.0)
        p = 2 * min(_p_greater(mean, std, n), _p_greater(-mean, std, n))
        out.update(std_diff=std, ci_low=low, ci_high=high, t=t, p_value=min(1.0, p))
    return out


def verdict(diff: dict) -> str:
    """"real" where the interval of a `paired_difference` excludes zero, else "within noise".

    With one pair there is no interval, so nothing can be called real: "n/a (one seed)".
    """
    low, high = diff["ci_low"], diff["ci_high"]
    if low == NA or high == NA:
        return f"{NA} (one seed)"
    return "real" if low > 0 or high < 0 else "within noise"


def _t_interval(mean: float, std: float, n: int, confidence: float) -> tuple[float, float]:
    """mean -+ t * std / sqrt(n): Student's interval of a mean of n values."""
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def _p_greater(excess: float, std: float, n: int) -> float:
    """One-sided p-value of "the true mean exceeds the reference" when the sample mean exceeds it by
    `excess`; with no spread the answer is certain (0 above, 1 at or below)."""
    if std == 0:
        return 0.0 if excess > 0 else 1.0
    return float(_scipy_stats.t.sf(excess / (std / math.sqrt(n)), n - 1))
