"""Small statistics used everywhere rates are reported: Wilson intervals and percentiles.

House rule: a rate is never printed without its 95% interval and its n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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


def two_phase(items: Sequence[tuple[float, float | None]], share: float,
              z: float = Z95) -> dict[str, Any]:
    """A rate from a prediction on every unit and the truth on a random share of them.

    Each item is ``(prediction, truth or None)``: the prediction (a probability, or
    0/1) for every unit, the truth (0 or 1) for those drawn into the second phase, each
    drawn with probability ``share`` independently of its value (units whose truth the
    first phase already knows carry it as both). Every unit counts
    ``prediction + (truth - prediction) / share`` when drawn, else its prediction: the
    mean of those is unbiased for the rate whatever the predictions are (a good
    predictor only makes it tighter). The 95% interval is Wilson's at the effective n
    ``rate (1 - rate) / var``, with the variance of the mean estimated from the units'
    values.

    >>> two_phase([(1.0, 1.0), (0.0, 0.0), (0.5, 1.0), (0.5, None)], 0.5)["rate"]
    0.75
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    n = len(items)
    drawn = sum(t is not None for _, t in items)
    if n == 0:
        return {"rate": None, "ci95": [0.0, 1.0], "n": 0, "n_eff": 0.0, "share": share,
                "known": 0}
    ys = [p + (t - p) / share if t is not None else p for p, t in items]
    mean = sum(ys) / n
    var = sum((y - mean) ** 2 for y in ys) / (n - 1) if n > 1 else 0.0
    rate = min(1.0, max(0.0, mean))
    se2 = var / n
    n_eff = rate * (1 - rate) / se2 if se2 > 0 and 0 < rate < 1 else float(n)
    n_eff = max(1.0, n_eff)
    lo, hi = wilson_interval(rate * n_eff, n_eff, z)
    return {"rate": rate, "ci95": [lo, hi], "n": n, "n_eff": n_eff, "share": share,
            "known": drawn}


def kaplan_meier(data: Sequence[Sequence[int]]) -> list[tuple[int, float]]:
    """The Kaplan-Meier estimate of the share still going after each length, from
    ``[length, ended]`` pairs (``ended`` 0: last seen still going there, censored).
    Returns ``(length, share)`` steps, starting at ``(0, 1.0)``; past the longest
    length seen the share is unknown.

    >>> kaplan_meier([[10, 1], [20, 0], [30, 1]])
    [(0, 1.0), (10, 0.6667), (30, 0.0)]
    """
    times = sorted({int(t) for t, _ in data})
    out = [(0, 1.0)]
    s = 1.0
    for t in times:
        at_risk = sum(1 for x, _ in data if x >= t)
        ended = sum(1 for x, e in data if x == t and e)
        if ended and at_risk:
            s *= 1 - ended / at_risk
            out.append((t, round(s, 4)))
    return out
