"""Statistics for comparing steered and unsteered accuracy on the same problems.

Accuracy differences of a point or two on a few hundred problems are within noise, so an
evaluation reports a confidence interval per arm (Wilson: sensible at 0% and 100%, unlike the
normal approximation) and, because both arms answer the same problems, a paired exact McNemar
test on the problems whose verdict flipped. Pure Python: no scipy dependency for this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from statistics import NormalDist

__all__ = ["mcnemar_exact", "paired_flips", "wilson_interval"]


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (low, high) for a binomial proportion successes / n."""
    for name, value in (("successes", successes), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if n <= 0:
        raise ValueError(f"n must be a positive number of trials, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    # Clamp float noise: at 0/n and n/n the bounds are exactly 0 and 1.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs.

    b = right->wrong, c = wrong->right. Under no effect each flip is a fair coin, so
    p = min(1, 2 * P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2); computed in exact integers
    so it stays right for large counts.
    """
    for name, value in (("b", b), ("c", c)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int count, got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be a non-negative count, got {value}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def paired_flips(baseline: Sequence[bool], treated: Sequence[bool]) -> tuple[int, int]:
    """(right_to_wrong, wrong_to_right) over problems graded in both arms, in the same order."""
    if len(baseline) != len(treated):
        raise ValueError(
            f"baseline has {len(baseline)} verdicts but treated has {len(treated)}; "
            "they must be the same problems in the same order"
        )
    right_to_wrong = sum(1 for a, b in zip(baseline, treated) if a and not b)
    wrong_to_right = sum(1 for a, b in zip(baseline, treated) if not a and b)
    return right_to_wrong, wrong_to_right
