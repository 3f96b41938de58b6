"""Rates, arrivals and the determinism of a plan."""

from __future__ import annotations

import numpy as np
import pytest

from degen.errors import InvalidParams
from degen.experiments.load.schedule import Plan, derive_seed, parse_rate
from degen.prompts import load_prompts
from degen.records import SamplingParams


@pytest.mark.parametrize(("text", "rate"), [
    ("2", 2.0), ("1/s", 1.0), ("60/min", 1.0), ("30/m", 0.5), ("3600/h", 1.0),
    ("0.5/s", 0.5), (None, None), ("max", None), (5, 5.0),
])
def test_parse_rate(text, rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("bad", ["fast", "1/week", "0", "-1/s", "1/"])
def test_bad_rates_say_the_format(bad) -> None:
    with pytest.raises(InvalidParams, match="--rate must"):
        parse_rate(bad)


def plan(**kw) -> Plan:
    base = dict(prompts=tuple(load_prompts()), params=SamplingParams(max_tokens=8),
                requests=120, runs=2, rate=2.0, arrivals="poisson", seed=3)
    return Plan(**(base | kw))


def test_plan_is_deterministic_and_seeds_differ_per_request() -> None:
    a, b = plan(), plan()
    assert a.requests_for(1) == b.requests_for(1)
    assert a.offsets(1) == b.offsets(1)
    seeds = [r.params.seed for run in range(2) for r in a.requests_for(run)]
    assert len(set(seeds)) == len(seeds)
    assert plan(seed=4).requests_for(0)[0].params.seed != seeds[0]
    ids = [r.request_id for r in a.requests_for(1)]
    assert ids[:2] == ["1-0", "1-1"]


def test_runs_share_the_prompt_mix_but_not_the_arrivals() -> None:
    p = plan()
    assert [r.prompt_id for r in p.requests_for(0)] == [r.prompt_id for r in p.requests_for(1)]
    assert p.offsets(0) != p.offsets(1)
    # 120 requests over 64 prompts cycle through every prompt
    assert len({r.prompt_id for r in p.requests_for(0)}) == 64


def test_poisson_gaps_are_exponential_with_the_right_mean() -> None:
    p = plan(requests=4000, rate=5.0)
    gaps = np.diff(p.offsets(0))
    assert gaps.mean() == pytest.approx(0.2, rel=0.05)
    assert np.std(gaps) == pytest.approx(0.2, rel=0.08)  # exponential: sd == mean


def test_constant_and_unlimited_arrivals() -> None:
    assert plan(arrivals="constant", rate=4.0, requests=3).offsets(0) == [0.0, 0.25, 0.5]
    assert plan(rate=None, requests=3).offsets(0) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("kw", "needle"), [
    ({"requests": 0}, "--requests"), ({"runs": 0}, "--runs"),
    ({"arrivals": "burst"}, "--arrivals must be one of poisson, constant"),
    ({"seed": -1}, "--seed"),
])
def test_bad_plans(kw, needle) -> None:
    with pytest.raises(InvalidParams, match=needle):
        plan(**kw)


def test_derive_seed_is_stable() -> None:
    # pinned: a change here silently changes every recorded experiment
    assert derive_seed(0, "request", 0, 0) == derive_seed(0, "request", 0, 0)
    assert derive_seed(0, "request", 0, 0) != derive_seed(0, "request", 0, 1)
    assert 0 <= derive_seed(123, "x") < 2**63


def test_fingerprint_changes_with_anything_that_changes_requests() -> None:
    base = plan().fingerprint()
    assert plan().fingerprint() == base
    assert plan(seed=9).fingerprint() != base
    assert plan(params=SamplingParams(max_tokens=9)).fingerprint() != base
    assert plan(prompts=tuple(load_prompts())[:10]).fingerprint() != base
