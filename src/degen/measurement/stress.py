"""Stress testing: send the risky prompts more often, and still report the failure
rate of the original prompt mix, without bias and with an interval.

When failures are rare in production, a plain run spends most of its requests on
prompts that never fail. A *stress plan* draws each request's prompt independently
with probability ``q_i``: a quarter of the mass spread evenly over the suite (so
every prompt keeps a chance, and no weight below is larger than 4) and three
quarters in proportion to each prompt's estimated risk from a first pass (failures
plus a half over requests plus one, so a prompt not yet seen counts as risky).

The failure rate of the original mix (every prompt equally likely, ``p_i = 1/K``)
is then estimated by importance weighting (Horvitz-Thompson): each request counts
``w = p_i / q_i``, and ``(1/n) * sum(w * failed)`` is unbiased whatever the
weights, because each request's prompt was drawn from ``q``. Its 95% interval is
Wilson's at Kish's effective sample size ``(sum w)^2 / sum w^2``. The stress-suite
rate (failures over requests, as sent) is reported beside it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from degen.measurement.failure import FAILURE_KINDS, is_failure
from degen.prompts import Prompt
from degen.records import Completion
from degen.stats import wilson_interval

#: the share of the sampling mass spread evenly over the suite
FLOOR = 0.25


def stress_weights(pilot: Sequence[Completion], prompts: Sequence[Prompt],
                   kinds: Sequence[str] = FAILURE_KINDS, floor: float = FLOOR
                   ) -> tuple[float, ...]:
    """Each prompt's chance in the stress plan, from a first pass ``pilot``.

    >>> from degen.records import SamplingParams
    >>> ps = [Prompt("a", text="x"), Prompt("b", text="y")]
    >>> pilot = [Completion(str(i), "a", SamplingParams(), "length") for i in range(3)]
    >>> # risk a: 3.5/4, b (unseen): 0.5/1; each gets 0.25/2 plus 0.75 of its share
    >>> [round(w, 3) for w in stress_weights(pilot, ps)]
    [0.602, 0.398]
    """
    if not 0 < floor <= 1:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    n: dict[str, int] = defaultdict(int)
    f: dict[str, int] = defaultdict(int)
    for c in pilot:
        if c.is_measured:
            n[c.prompt_id] += 1
            f[c.prompt_id] += is_failure(c, kinds)
    risk = [(f[p.id] + 0.5) / (n[p.id] + 1) for p in prompts]
    total = sum(risk)
    k = len(prompts)
    return tuple(floor / k + (1 - floor) * r / total for r in risk)


def reweighted(cs: Sequence[Completion], prompts: Sequence[Prompt],
               weights: Sequence[float], kinds: Sequence[str] = FAILURE_KINDS
               ) -> dict[str, Any]:
    """The original mix's failure rate from a stress plan's completions: ``rate``
    (unbiased), ``ci95`` (Wilson at the effective n), ``n_eff``, and the stress
    suite's own ``stress_rate`` over ``n`` measured requests."""
    share = {p.id: 1.0 / len(prompts) for p in prompts}
    q = {p.id: w for p, w in zip(prompts, weights, strict=True)}
    measured = [c for c in cs if c.is_measured and c.prompt_id in q]
    n = len(measured)
    if n == 0:
        return {"rate": None, "ci95": [0.0, 1.0], "n_eff": 0.0, "n": 0, "failures": 0,
                "stress_rate": None}
    ws = [share[c.prompt_id] / q[c.prompt_id] for c in measured]
    ys = [is_failure(c, kinds) for c in measured]
    rate = sum(w * y for w, y in zip(ws, ys, strict=True)) / n
    n_eff = sum(ws) ** 2 / sum(w * w for w in ws)
    lo, hi = wilson_interval(min(rate, 1.0) * n_eff, n_eff)
    return {"rate": rate, "ci95": [lo, hi], "n_eff": n_eff, "n": n, "failures": sum(ys),
            "stress_rate": sum(ys) / n}
