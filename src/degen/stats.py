"""Small statistics used everywhere rates are reported: Wilson intervals and percentiles.

House rule: a rate is never printed without its 95% interval and its n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (default 95%).

    ``n == 0`` gives the uninformative ``(0.0, 1.0)``. Unlike the normal
    approximation it stays inside [0, 1] and is sensible at 0 and n successes,
    which is exactly where runaway rates live.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation; None when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: ``b`` pairs where only
    the first arm failed, ``c`` where only the second did. Under no difference each
    discordant pair goes either way with probability 1/2, so this is a binomial test.

    >>> mcnemar_exact_p(0, 0)
    1.0
    >>> round(mcnemar_exact_p(1, 9), 4)  # 2 * P(X <= 1), X ~ Bin(10, 0.5) = 2 * 11/1024
    0.0215
    """
    if b < 0 or c < 0:
        raise ValueError(f"need b, c >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(a: int, b: int, c: int, d: int, z: float = Z95) -> tuple[float, float, float]:
    """Difference of two paired proportions, p1 - p2, with Newcombe's (1998, method 10)
    hybrid score interval.

    The four counts are the 2x2 table of pairs: ``a`` both arms failed, ``b`` only the
    first, ``c`` only the second, ``d`` neither; p1 = (a + b) / n, p2 = (a + c) / n.
    Pairing (the same prompt and seed in both arms) removes the prompt-to-prompt
    variance, which is why degen compares arms on common random numbers.
    Returns ``(difference, low, high)``.
    """
    n = a + b + c + d
    if min(a, b, c, d) < 0:
        raise ValueError("counts must be >= 0")
    if n == 0:
        return (0.0, -1.0, 1.0)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    if denom == 0:
        phi = 0.0
    else:  # Newcombe's continuity-corrected phi
        num = a * d - b * c
        num = max(num - n / 2, 0.0) if num > 0 else num
        phi = num / math.sqrt(denom)
    diff = p1 - p2
    lo = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)
                              + (u2 - p2) ** 2))
    hi = diff + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2)
                              + (p2 - l2) ** 2))
    return (diff, max(-1.0, lo), min(1.0, hi))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (in their order): with m tests, the
    i-th smallest is multiplied by m - i + 1, and each adjusted value is at least the
    one before it. Rejecting where the adjusted value is below alpha keeps the chance
    of any false rejection at most alpha, with no assumption about dependence.

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out
