"""The statistics the diagnostics report: AUROC, pass@k, majority vote, a rounded mean."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """P(a random positive scores above a random negative), ties counting one half (Mann-Whitney U).

    None when either side is empty. A score that does not separate the two sets
    (every value equal) gives exactly 0.5.
    """
    if not positives or not negatives:
        return None
    ranked = sorted([(v, True) for v in positives] + [(v, False) for v in negatives], key=lambda x: x[0])
    rank_sum, index = 0.0, 0
    while index < len(ranked):  # mid-ranks over runs of ties
        end = index
        while end + 1 < len(ranked) and ranked[end + 1][0] == ranked[index][0]:
            end += 1
        mid = (index + end) / 2 + 1
        rank_sum += mid * sum(1 for v in ranked[index:end + 1] if v[1])
        index = end + 1
    n_pos, n_neg = len(positives), len(negatives)
    return round((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg), 6)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), from n samples of which c are right."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer (no answer does not vote); a tie goes to the answer given first."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == top)


def mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None

