"""The official ``openai`` SDK, unchanged but for ``base_url``, against the guard in front
of a real llama.cpp server serving the bundled model.

The guard makes the server decode greedily (``--default temperature=0``, ``--override
repeat_penalty=1.0``): the bundled SmolLM2-135M then loops on some prompts of the
built-in suite, and the guard must cut those loops while other answers pass untouched.
The guard asks the server for log-probabilities (llama-cpp-python streams them for
chat and completions); the SDK sees them only when it asked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from degen.guard import GuardConfig
from degen.prompts import load_prompts
from degen.testing.llamacpp import LlamaCppServer
from tests.guard.conftest import GuardServer

pytestmark = pytest.mark.slow

PROMPTS = {p.id: list(p.messages or ()) for p in load_prompts()}
LOOPING = "story-03"  # greedy: ",\nA silent night" over and over, from char 39 on
CALM = "qa-01"  # greedy: a short answer that stops


@pytest.fixture(scope="module")
def upstream(llamacpp_server: LlamaCppServer) -> LlamaCppServer:
    return llamacpp_server  # the session's server (one process for the whole run)


@pytest.fixture(scope="module")
def guard(upstream: LlamaCppServer) -> Iterator[GuardServer]:
    g = GuardServer(GuardConfig(upstream=upstream.base_url, max_tokens_cap=1500,
                                defaults={"temperature": 0, "top_k": 0, "min_p": 0},
                                overrides={"repeat_penalty": 1.0}))
    yield g
    g.stop()


@pytest.fixture(scope="module")
def client(guard: GuardServer) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=guard.url, api_key="unused", max_retries=0, timeout=120)
    yield c
    c.close()


def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id  # /v1/models, relayed


def test_a_calm_answer_passes_untouched(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=model(client), messages=PROMPTS[CALM],
                                       max_tokens=64)
    c = r.choices[0]
    assert c.finish_reason in ("stop", "length") and c.message.content
    assert c.message.role == "assistant"
    assert c.logprobs is None  # asked by the guard, not by the client: not shown
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 64
    assert "degen" not in (r.model_extra or {})
    chunks = list(client.chat.completions.create(
        model=model(client), messages=PROMPTS[CALM], max_tokens=64, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == c.message.content  # greedy: the same answer streamed
    assert all(ch.choices[0].logprobs is None for ch in chunks if ch.choices)
    # llama-cpp-python sends no usage in a stream; the guard counts it for the client
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens


def test_a_looping_stream_is_cut_and_the_server_stops(client: openai.OpenAI) -> None:
    t0 = time.monotonic()
    chunks = list(client.chat.completions.create(
        model=model(client), messages=PROMPTS[LOOPING], stream=True))
    last = chunks[-1]
    assert last.choices[0].finish_reason == "repetition"
    d = last.model_extra["degen"]
    assert d["kind"] == "loop" and d["evidence"]["repeats"] >= 2
    assert d["completion_tokens"] < 300 and d["max_tokens"] == 1500
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks[:-1])
    unit = d["evidence"]["unit_text"].strip()
    assert text.count(unit) >= 2
    cut_after = time.monotonic() - t0
    # llama.cpp serves one request at a time: had it gone on to 1500 tokens, this one
    # would wait for it; it answers at once because the cut aborted the first
    t1 = time.monotonic()
    r = client.chat.completions.create(model=model(client), messages=PROMPTS[CALM],
                                       max_tokens=4)
    assert r.choices[0].message.content
    assert time.monotonic() - t1 < max(5.0, cut_after)


def test_a_looping_non_streaming_request_is_cut(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=model(client), messages=PROMPTS[LOOPING])
    c = r.choices[0]
    assert c.finish_reason == "repetition"
    d = r.model_extra["degen"]
    assert d["evidence"]["period"] >= 1 and d["start_char"] < len(c.message.content)
    assert r.usage.completion_tokens == d["completion_tokens"] < 300


@pytest.mark.parametrize("stream", [True, False])
def test_logprobs_the_client_asks_for_come_through(client: openai.OpenAI, stream: bool) -> None:
    kw = {"model": model(client), "messages": PROMPTS[CALM], "max_tokens": 8,
          "logprobs": True, "top_logprobs": 2}
    if stream:
        chunks = list(client.chat.completions.create(**kw, stream=True))
        content = [t for ch in chunks if ch.choices and ch.choices[0].logprobs
                   for t in ch.choices[0].logprobs.content or ()]
    else:
        content = client.chat.completions.create(**kw).choices[0].logprobs.content
    assert 0 < len(content) <= 8
    assert all(t.logprob <= 0 and len(t.top_logprobs) >= 1 for t in content)


def test_text_completions_through_the_sdk(client: openai.OpenAI) -> None:
    r = client.completions.create(model=model(client), prompt="The capital of France is",
                                  max_tokens=8)
    assert r.choices[0].text and r.choices[0].finish_reason in ("stop", "length")
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model=model(client), prompt="The capital of France is", max_tokens=8, stream=True)
        if ch.choices)
    assert streamed == r.choices[0].text


def test_sdk_errors(upstream: LlamaCppServer) -> None:
    with GuardServer(GuardConfig(upstream=upstream.base_url, api_key="right")) as g:
        bad = openai.OpenAI(base_url=g.url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.chat.completions.create(model="m", messages=PROMPTS[CALM])
        assert e.value.code == "invalid_api_key"
        good = openai.OpenAI(base_url=g.url, api_key="right", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:  # refused by llama.cpp itself,
            good.chat.completions.create(model="m", messages=PROMPTS[CALM], max_tokens=4,
                                         extra_body={"temperature": "hot"})
        assert e.value.status_code == 500  # which says 500 for a validation error
        assert "float_parsing" in e.value.message
