"""Stress plans: risky prompts drawn more often, and the original mix's failure rate
recovered without bias (simulated with known per-prompt rates), its interval
covering the truth, and the plan itself deterministic and checked."""

from __future__ import annotations

import random
import statistics

import pytest

from degen.errors import InvalidParams
from degen.experiments.load.schedule import Plan
from degen.measurement.stress import reweighted, stress_weights
from degen.prompts import Prompt
from degen.records import Completion, SamplingParams

PROMPTS = [Prompt(f"p-{i}", text=f"prompt {i}") for i in range(20)]
# rare failures overall, concentrated on three prompts: the case stress testing is for
RATES = {p.id: (0.5 if i < 2 else 0.25 if i == 2 else 0.01) for i, p in enumerate(PROMPTS)}
TRUTH = statistics.fmean(RATES.values())


def outcomes(plan: Plan, rng: random.Random) -> list[Completion]:
    return [Completion(r.request_id, r.prompt_id, r.params,
                       "length" if rng.random() < RATES[r.prompt_id] else "stop")
            for r in plan.requests_for(0)]


def one(seed: int, n: int = 64) -> tuple[dict, float]:
    rng = random.Random(seed)
    pilot = outcomes(Plan(tuple(PROMPTS), SamplingParams(), requests=40, seed=seed), rng)
    w = stress_weights(pilot, PROMPTS)
    stress = Plan(tuple(PROMPTS), SamplingParams(), requests=n, seed=seed + 10**6, weights=w)
    return reweighted(outcomes(stress, rng), PROMPTS, w), max(w) / min(w)


def test_the_reweighted_rate_is_unbiased_and_its_interval_covers() -> None:
    sims = [one(s)[0] for s in range(1500)]
    rates = [r["rate"] for r in sims]
    se = statistics.stdev(rates) / len(rates) ** 0.5
    assert abs(statistics.fmean(rates) - TRUTH) < 3 * se  # unbiased
    covered = sum(r["ci95"][0] <= TRUTH <= r["ci95"][1] for r in sims) / len(sims)
    assert covered >= 0.92
    # the stress suite fails more often than the original mix, which is its point (about
    # 1.75x here: two pilot requests per prompt only tell risky prompts apart so far)
    assert statistics.fmean(r["stress_rate"] for r in sims) > 1.5 * TRUTH


def test_risky_prompts_are_drawn_more_and_every_prompt_keeps_a_chance() -> None:
    _, spread = one(1)
    assert spread > 3
    w = stress_weights([], PROMPTS)
    assert w == pytest.approx([1 / 20] * 20)  # nothing seen: all equally risky
    assert min(stress_weights([Completion("x", "p-0", SamplingParams(), "length")] * 50,
                              PROMPTS)) >= 0.25 / 20


def test_a_stress_plan_is_deterministic_and_its_weights_are_checked() -> None:
    w = tuple([0.5] + [0.5 / 19] * 19)
    a = Plan(tuple(PROMPTS), SamplingParams(), requests=200, seed=3, weights=w)
    order = a.prompt_order(0)
    assert order == Plan(tuple(PROMPTS), SamplingParams(), requests=200, seed=3,
                         weights=w).prompt_order(0)
    assert 70 < order.count(0) < 130  # about half
    assert a.fingerprint()["weights"] == list(w)
    assert "weights" not in Plan(tuple(PROMPTS), SamplingParams()).fingerprint()
    for bad in ((0.5, 0.5), tuple([0.0] + [1 / 19] * 19), tuple([0.1] * 20)):
        with pytest.raises(InvalidParams, match="one weight > 0 per prompt"):
            Plan(tuple(PROMPTS), SamplingParams(), weights=bad)
