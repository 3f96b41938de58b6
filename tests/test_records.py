"""SamplingParams validation and Completion JSON round-trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from degen.errors import InvalidParams
from degen.records import Completion, Request, SamplingParams, Timings


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("temperature", -0.1, "temperature must be in [0, 100]"),
        ("top_p", 0.0, "top_p must be in (0, 1]"),
        ("top_p", 1.5, "top_p must be in (0, 1]"),
        ("top_k", -1, "top_k must be >= 0"),
        ("min_p", 1.2, "min_p must be in [0, 1]"),
        ("repetition_penalty", 0.0, "repetition_penalty must be in (0, 10]"),
        ("repetition_penalty_scope", "prompt", "repetition_penalty_scope must be one of"),
        ("presence_penalty", 3.0, "presence_penalty must be in [-2, 2]"),
        ("frequency_penalty", -2.5, "frequency_penalty must be in [-2, 2]"),
        ("no_repeat_ngram_size", -3, "no_repeat_ngram_size must be >= 0"),
        ("max_tokens", 0, "max_tokens must be >= 1"),
        ("seed", -1, "seed must be [0,"),
        ("stop", [""], "stop must be a list of non-empty strings"),
        ("temperature", float("nan"), "temperature must be in"),
        ("temperature", "hot", "temperature must be a number"),
        ("penalize_eot", "yes", "penalize_eot must be true or false"),
        ("repetition_min_count", 1, "repetition_min_count must be 0 (off) or at least 2"),
        ("repetition_min_count", -2, "repetition_min_count must be >= 0"),
        ("repetition_min_pattern", 0, "repetition_min_pattern must be >= 1"),
        ("repetition_max_pattern", 0, "repetition_max_pattern must be >= 1"),
    ],
)
def test_invalid_params_say_the_valid_range(field: str, value: object, needle: str) -> None:
    with pytest.raises(InvalidParams) as e:
        SamplingParams(**{field: value})
    assert needle in str(e.value)


def test_params_normalize_and_round_trip() -> None:
    p = SamplingParams(temperature=0, top_k=5, stop=["\n\n"], seed=7, max_tokens=3.0)
    assert p.greedy and p.stop == ("\n\n",) and p.max_tokens == 3
    assert SamplingParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert p.changed() == {"temperature": 0.0, "top_k": 5, "stop": ["\n\n"], "seed": 7,
                           "max_tokens": 3}


def test_unknown_param_field_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidParams, match=r"unknown sampling parameter field.*temprature"):
        SamplingParams.from_dict({"temprature": 1})


def test_request_needs_exactly_one_of_messages_or_prompt() -> None:
    with pytest.raises(InvalidParams):
        Request("r", "p", SamplingParams())
    with pytest.raises(InvalidParams):
        Request("r", "p", SamplingParams(), messages=({"role": "user", "content": "x"},),
                prompt="x")


def test_error_completion_needs_an_error_text() -> None:
    with pytest.raises(InvalidParams, match="needs an error text"):
        Completion("r", "p", SamplingParams(), finish_reason="error")
    with pytest.raises(InvalidParams, match="finish_reason must be one of"):
        Completion("r", "p", SamplingParams(), finish_reason="eos")


texts = st.text(max_size=40)
floats = st.floats(min_value=0, max_value=2e9, allow_nan=False)


@given(
    text=texts,
    temperature=st.floats(0, 2),
    ids=st.none() | st.lists(st.integers(0, 50000), max_size=20),
    fr=st.sampled_from(["stop", "length"]),
    t=st.lists(st.none() | floats, min_size=4, max_size=4),
    msgs=st.none() | st.lists(st.fixed_dictionaries({"role": st.just("user"),
                                                      "content": texts}), min_size=1),
    extra=st.dictionaries(st.sampled_from(["note", "future"]), st.integers() | texts),
    verdict=st.none() | st.fixed_dictionaries({"degenerate": st.booleans(),
                                               "kinds": st.lists(st.sampled_from(["loop"]))}),
)
def test_completion_json_round_trips_exactly(text, temperature, ids, fr, t, msgs, extra,
                                             verdict) -> None:
    c = Completion(
        request_id="0-1", prompt_id="qa-01", params=SamplingParams(temperature=temperature),
        finish_reason=fr, text=text, messages=msgs, prompt=None if msgs else "raw",
        token_ids=ids, prompt_tokens=3, completion_tokens=len(ids or []),
        timings=Timings(*t), engine="local", model="m", run=1, index=2, extra=extra,
        verdict=verdict,
    )
    back = Completion.from_json(c.to_json())
    assert back == c
    assert back.to_json() == c.to_json()


def test_unknown_record_keys_survive_a_rewrite() -> None:
    c = Completion("r", "p", SamplingParams(), finish_reason="length", text="x")
    d = c.to_dict() | {"future_field": {"a": 1}}
    again = Completion.from_dict(d)
    assert again.extra == {"future_field": {"a": 1}}
    assert again.to_dict()["future_field"] == {"a": 1}
    assert again.is_capped and not again.is_error


def test_timings_derive_latencies() -> None:
    t = Timings(scheduled_at=10.0, started_at=10.5, first_token_at=11.0, finished_at=13.0)
    assert (t.queue_s, t.ttft_s, t.latency_s) == (0.5, 0.5, 2.5)
    assert Timings().latency_s is None
