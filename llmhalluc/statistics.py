"""Statistics over seeds: a mean and its 95 % confidence interval, and when two differ.

A research number here is never one run: the same config is run over several seeds
(llmhalluc.seeds), and what is reported is the mean with a Student-t interval,
because five or ten seeds are far too few for the normal approximation. Two configs
are said to differ only when their intervals do not overlap (conservative on purpose:
a difference inside the noise is reported as no difference).

The t quantile is SciPy's (scipy.stats.t.ppf): a maintained implementation accurate to
double precision for any degrees of freedom; a hand-written CDF (Simpson's rule) and
bisection would be numerics this project had to get right and test itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


def t_quantile(p: float, df: int) -> float:
    """The x with P(T <= x) = p (0.5 < p < 1) for Student's t: e.g. t_quantile(0.975, 4) = 2.776."""
    if not 0.5 < p < 1:
        raise ValueError(f"p must lie in (0.5, 1), got {p}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(stats.t.ppf(p, df))


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
