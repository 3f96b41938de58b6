"""Wilson intervals and percentiles against hand-computed values."""

from __future__ import annotations

import pytest

from degen.stats import percentile, wilson_interval


def test_wilson_matches_hand_computed_values() -> None:
    # 0 of 10: upper bound z^2/(n+z^2) = 3.8415/13.8415
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-5)
    # 5 of 10: centre 0.5, half-width z*sqrt(0.025 + z^2/400)/(1 + z^2/10)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.23659, abs=1e-5), pytest.approx(0.76341, abs=1e-5))
    # 16 of 16 -> [0.8064, 1]
    lo, hi = wilson_interval(16, 16)
    assert lo == pytest.approx(0.80639, abs=1e-5) and hi == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_percentile_interpolates() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5
    assert percentile([], 50) is None
    assert percentile([0, 10], 95) == pytest.approx(9.5)
