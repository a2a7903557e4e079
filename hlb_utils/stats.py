"""Small statistics for "is the mean really above 94%?" (Student's t, no SciPy needed).

Taught in notebook 06. Per-run accuracy of these recipes varies by about 0.13 points, so one run
proves nothing: the anchors report means over 25 to 1000 runs and test them against the target.
"""
from __future__ import annotations

import math


def _betacf(a: float, b: float, x: float, iters: int = 300, eps: float = 1e-14) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iters + 1):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value below which a fraction p of the distribution lies (by bisection)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p} must lie strictly between 0 and 1")
    low, high = -1e3, 1e3
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def summarize_accuracies(accs: list[float], target: float = 0.94) -> dict:
    """Mean, sample std, 95% interval, share of runs >= target, and a one-sided t-test of mean > target.

    `p_value` is the chance of a mean this high if the true mean were only `target`; with one run
    (or no spread) the interval and the test are undefined (NaN).
    """
    n = len(accs)
    if n == 0:
        raise ValueError("summarize_accuracies() needs at least one accuracy")
    mean = sum(accs) / n
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (n - 1)) if n > 1 else math.nan
    out = dict(runs=n, mean=mean, std=std, min=min(accs), max=max(accs), ci95_low=math.nan,
               ci95_high=math.nan, share_at_target=sum(a >= target for a in accs) / n,
               target=target, p_value=math.nan)
    if n > 1 and std > 0:
        sem = std / math.sqrt(n)
        half = t_quantile(0.975, n - 1) * sem
        out.update(ci95_low=mean - half, ci95_high=mean + half,
                   p_value=1.0 - t_cdf((mean - target) / sem, n - 1))
    return out
