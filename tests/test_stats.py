"""Wilson intervals, exact McNemar and paired flips against known and hand-derived values."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from adaras_vllm.pipeline.stats import mcnemar_exact, paired_flips, wilson_interval


def test_wilson_81_of_263() -> None:
    low, high = wilson_interval(81, 263)
    assert low == pytest.approx(0.2553, abs=5e-5)
    assert high == pytest.approx(0.3662, abs=5e-5)


def test_wilson_zero_successes_matches_closed_form() -> None:
    # Derived by hand: at x = 0 the Wilson bounds reduce to 0 and z^2 / (n + z^2);
    # z = 1.959964, z^2 = 3.841459, so for n = 10: 3.841459 / 13.841459 = 0.277533.
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.277533, abs=1e-6)


def test_wilson_all_successes_mirrors_zero() -> None:
    low, high = wilson_interval(10, 10)
    assert high == 1.0
    assert low == pytest.approx(1 - 0.277533, abs=1e-6)


def test_wilson_half_matches_hand_derivation() -> None:
    # p = 0.5, n = 10: centre 0.5, half-width z*sqrt(p(1-p)/n + z^2/(4n^2)) / (1 + z^2/n)
    # = 1.959964 * sqrt(0.025 + 0.0096036) / 1.3841459 = 0.263407.
    low, high = wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.5 - 0.263407, 0.5 + 0.263407), abs=1e-6)


def test_wilson_wider_at_higher_confidence() -> None:
    low95, high95 = wilson_interval(81, 263, 0.95)
    low99, high99 = wilson_interval(81, 263, 0.99)
    assert low99 < low95 < 81 / 263 < high95 < high99


def test_wilson_z_comes_from_normal_quantile() -> None:
    # At x = 0 the upper bound is z^2 / (n + z^2); invert it to recover z for 90%.
    high = wilson_interval(0, 20, 0.90)[1]
    z = math.sqrt(20 * high / (1 - high))
    assert z == pytest.approx(NormalDist().inv_cdf(0.95), rel=1e-9)


@pytest.mark.parametrize(
    ("successes", "n", "confidence", "message"),
    [(1, 0, 0.95, "n must be a positive"), (11, 10, 0.95, "successes must be between 0 and n=10"),
     (-1, 10, 0.95, "successes must be between"), (1, 10, 1.0, r"confidence must be in \(0, 1\)")],
)
def test_wilson_rejects_bad_arguments(successes: int, n: int, confidence: float,
                                      message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wilson_interval(successes, n, confidence)


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [(1, 9, 0.021484375), (9, 1, 0.021484375), (0, 0, 1.0), (5, 5, 1.0), (0, 6, 0.03125),
     (0, 1, 1.0)],
)
def test_mcnemar_known_values(b: int, c: int, expected: float) -> None:
    # (1, 9): 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024 = 0.021484375; (0, 6): 2 / 64.
    assert mcnemar_exact(b, c) == expected


def test_mcnemar_large_counts_are_exact() -> None:
    # 2^n overflows a float past n = 1024; the exact sum must not. Cross-check against the
    # continuity-corrected normal approximation, which is close at this size.
    b, c = 3000, 3200
    z = (abs(b - c) - 1) / math.sqrt(b + c)
    approx = 2 * (1 - NormalDist().cdf(z))
    assert mcnemar_exact(b, c) == pytest.approx(approx, rel=0.02)


def test_mcnemar_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="b must be a non-negative count, got -1"):
        mcnemar_exact(-1, 3)


def test_paired_flips_counts_each_direction() -> None:
    baseline = [True, True, False, False, True, False]
    treated = [True, False, True, True, False, False]
    assert paired_flips(baseline, treated) == (2, 2)
    assert paired_flips([True, True, True], [False, False, True]) == (2, 0)


def test_paired_flips_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="baseline has 3 verdicts but treated has 2"):
        paired_flips([True, False, True], [True, False])
