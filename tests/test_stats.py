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


def test_mcnemar_exact_by_hand() -> None:
    from degen.stats import mcnemar_exact_p

    # 3 vs 0 discordant pairs: 2 * (1/8) = 0.25
    assert mcnemar_exact_p(3, 0) == 0.25
    assert mcnemar_exact_p(5, 5) == 1.0
    # 0 vs 10: 2 / 1024
    assert abs(mcnemar_exact_p(0, 10) - 2 / 1024) < 1e-12


def test_paired_difference_newcombe() -> None:
    from degen.stats import paired_difference, wilson_interval

    # ad - bc = 0: no correlation term, so the interval is the square-and-add of the
    # two Wilson intervals, computed here by hand
    a, b, c, d = 2, 6, 1, 3
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n)
    l2, u2 = wilson_interval(a + c, n)
    diff, lo, hi = paired_difference(a, b, c, d)
    assert abs(diff - (p1 - p2)) < 1e-12
    assert abs(lo - (diff - ((p1 - l1) ** 2 + (u2 - p2) ** 2) ** 0.5)) < 1e-12
    assert abs(hi - (diff + ((p2 - l2) ** 2 + (u1 - p1) ** 2) ** 0.5)) < 1e-12
    # positive correlation (most pairs agree) narrows it
    _, lo_c, hi_c = paired_difference(40, 6, 1, 53)
    _, lo_u, hi_u = paired_difference(0, 46, 41, 13)  # same margins' spread, disagreeing
    assert hi_c - lo_c < hi_u - lo_u
    # identical arms: difference 0, interval around it; symmetric when b and c swap
    d0, lo0, hi0 = paired_difference(5, 0, 0, 45)
    assert d0 == 0 and lo0 < 0 < hi0
    d1, l1, h1 = paired_difference(10, 7, 3, 30)
    d2, l2, h2 = paired_difference(10, 3, 7, 30)
    assert abs(d1 + d2) < 1e-12 and abs(l1 + h2) < 1e-9 and abs(h1 + l2) < 1e-9
