"""Statistics over seeds: a mean and its 95 % confidence interval, and when two differ.

A research number here is never one run: the same config is run over several seeds
(llmhalluc.seeds), and what is reported is the mean with a Student-t interval,
because five or ten seeds are far too few for the normal approximation. Two configs
are said to differ only when their intervals do not overlap (conservative on purpose:
a difference inside the noise is reported as no difference).

Nothing here needs SciPy: the t quantile is found by bisection on the t distribution's
CDF, itself the integral of the density by Simpson's rule (smooth and bounded, so a few
thousand intervals give far more digits than a report prints).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with df degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(t: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))

    steps = 4000
    h = abs(x) / steps
    total = density(0.0) + density(abs(x))
    total += sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    area = total * h / 3
    return 0.5 + area if x >= 0 else 0.5 - area


def t_quantile(p: float, df: int) -> float:
    """The x with P(T <= x) = p (0.5 < p < 1): e.g. t_quantile(0.975, 4) = 2.776."""
    if not 0.5 < p < 1:
        raise ValueError(f"p must lie in (0.5, 1), got {p}")
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class Estimate:
    """A mean over n seeds and the half-width of its confidence interval (None for n < 2: unknown)."""

    mean: float
    half_width: float | None
    n: int
    std: float | None
    #: Half-width of the 95 % prediction interval: where one more run (another seed, machine or thread
    #: count) is expected to land, wider than the interval of the mean by sqrt(n + 1).
    predict_half_width: float | None = None

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def text(self, digits: int = 3) -> str:
        if self.half_width is None:
            return f"{self.mean:.{digits}f} (n={self.n}, no CI)"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and Student-t confidence interval of the mean of independent runs (one value per seed)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to estimate from")
    mean = sum(values) / n
    if n < 2:
        return Estimate(mean=mean, half_width=None, n=n, std=None)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = t_quantile(0.5 + confidence / 2, n - 1)
    return Estimate(mean=mean, half_width=t * std / math.sqrt(n), n=n, std=std,
                    predict_half_width=t * std * math.sqrt(1 + 1 / n))


def compare(a: Estimate, b: Estimate) -> str:
    """'higher' / 'lower' when b's interval lies wholly above / below a's, else 'no difference'."""
    if a.half_width is None or b.half_width is None:
        return "no difference"
    if b.low > a.high:
        return "higher"
    if b.high < a.low:
        return "lower"
    return "no difference"
