"""degen's guardrail in a real LiteLLM proxy (``.venv-litellm``, started from a
config.yaml written by :func:`degen.testing.litellm.write_config`) in front of the
session's llama.cpp server, with the official ``openai`` SDK as the client.

Requests decode greedily (``temperature=0`` and llama.cpp's ``top_k=0, min_p=0,
repeat_penalty=1.0`` through ``extra_body``): the bundled SmolLM2-135M then loops on
the built-in prompt ``story-03`` and answers ``qa-01`` briefly and cleanly, so what
the proxy relays can be compared with what llama.cpp answers when asked directly.
A scripted upstream that loops forever (``loop``) shows that a cut closes the
upstream's stream.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from degen.prompts import load_prompts
from degen.testing.litellm import LiteLLMProxy, config_yaml, litellm_python, write_config
from degen.testing.llamacpp import LlamaCppServer
from degen.testing.scripted import ScriptedServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "integrations" / "litellm.md"
PROMPTS = {p.id: list(p.messages or ()) for p in load_prompts()}
LOOPING = "story-03"  # greedy: ",\nA silent night" over and over, from char 39 on
CALM = "qa-01"  # greedy: one short sentence, then stop
FICKLE = "instruction-06"  # greedy: its answer depends on the request before (see reset)
MODEL = "smollm2"
GREEDY: dict[str, Any] = {"temperature": 0,
                          "extra_body": {"top_k": 0, "min_p": 0, "repeat_penalty": 1.0}}


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedServer]:
    srv = ScriptedServer(["loop"], interval_s=0.01)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def proxy(llamacpp_server: LlamaCppServer, scripted: ScriptedServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteLLMProxy]:
    d = tmp_path_factory.mktemp("litellm")
    cfg = write_config(d / "config.yaml", llamacpp_server.base_url, MODEL,
                       more_models={"scripted-loop": scripted.base_url})
    px = LiteLLMProxy(cfg, python=litellm_python(ROOT), log=d / "proxy.log")
    yield px
    px.stop()


@pytest.fixture(scope="module")
def client(proxy: LiteLLMProxy) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=proxy.base_url, api_key=proxy.api_key, max_retries=0,
                      timeout=900)
    yield c
    c.close()


@pytest.fixture(scope="module")
def direct(llamacpp_server: LlamaCppServer) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=llamacpp_server.base_url, api_key="unused", max_retries=0,
                      timeout=900)
    yield c
    c.close()


@pytest.fixture(scope="module")
def looping_whole(direct: openai.OpenAI) -> str:
    """What llama.cpp answers to the looping prompt, asked directly (300 tokens)."""
    reset(direct)
    c = direct.chat.completions.create(model=MODEL, messages=PROMPTS[LOOPING],
                                       max_tokens=300, **GREEDY).choices[0]
    assert c.finish_reason == "length"
    return c.message.content


def reset(direct: openai.OpenAI) -> None:
    """A one-token request of another prompt. llama.cpp reuses the previous request's KV
    cache for a shared prefix, and a greedy answer can then differ from the same request
    asked after another prompt (seen on ``instruction-06``): every compared request is
    sent after this one, so each starts from the same state."""
    direct.chat.completions.create(model=MODEL, messages=[{"role": "user", "content":
                                                           "Hello."}], max_tokens=1, **GREEDY)


def streamed_text(chunks: list[Any]) -> str:
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


def degen_of(obj: Any) -> dict[str, Any] | None:
    return (obj.model_extra or {}).get("degen")


def test_a_looping_stream_ends_with_degens_reason_and_evidence(
        client: openai.OpenAI, direct: openai.OpenAI, looping_whole: str) -> None:
    reset(direct)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=PROMPTS[LOOPING], max_tokens=1500, stream=True,
        stream_options={"include_usage": True}, **GREEDY))
    ends = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(ends) == 1 and ends[0].choices[0].finish_reason == "repetition"
    d = degen_of(ends[0])
    assert d is not None and d["kind"] == "loop" and d["evidence"]["repeats"] >= 2
    assert ends[0].model_extra["provider_specific_fields"]["degen"] == d
    assert d["max_tokens"] == 1500 and 0 < d["completion_tokens"] < 300
    text = streamed_text(chunks)
    assert text.count(d["evidence"]["unit_text"].strip()) >= 2
    assert d["start_char"] < len(text)
    # what came before the cut is exactly what llama.cpp generates, and it stopped early
    assert looping_whole.startswith(text) and len(text) < len(looping_whole) / 2
    # the usage asked for: the tokens generated until the cut
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == d["completion_tokens"]
    assert not any(degen_of(ch) for ch in chunks if ch is not ends[0])


def test_a_looping_answer_is_cut_where_the_watch_confirmed(
        client: openai.OpenAI, direct: openai.OpenAI, looping_whole: str) -> None:
    reset(direct)
    r = client.chat.completions.create(model=MODEL, messages=PROMPTS[LOOPING],
                                       max_tokens=300, **GREEDY)
    c = r.choices[0]
    assert c.finish_reason == "repetition"
    d = degen_of(r)
    assert d is not None and d["kind"] == "loop"
    assert degen_of(c) == d and r.model_extra["provider_specific_fields"]["degen"] == d
    text = c.message.content
    assert looping_whole.startswith(text) and len(text) < len(looping_whole) / 2
    assert d["start_char"] < len(text)
    assert text.count(d["evidence"]["unit_text"].strip()) >= 2
    # the same watch as the stream: cut at about the same place (whole words here)
    reset(direct)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=PROMPTS[LOOPING], max_tokens=300, stream=True, **GREEDY))
    assert abs(len(streamed_text(chunks)) - len(text)) <= 20
    assert r.usage is not None and r.usage.completion_tokens == 300  # all was generated


@pytest.mark.parametrize("pid", [CALM, FICKLE])
def test_a_clean_answer_passes_unchanged(client: openai.OpenAI, direct: openai.OpenAI,
                                         pid: str) -> None:
    kw = {"model": MODEL, "messages": PROMPTS[pid], "max_tokens": 64, **GREEDY}
    reset(direct)
    r = client.chat.completions.create(**kw)
    reset(direct)
    want = direct.chat.completions.create(**kw)
    assert r.choices[0].message.content == want.choices[0].message.content
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason == want.choices[0].finish_reason
    assert degen_of(r) is None and degen_of(r.choices[0]) is None
    assert "degen" not in (r.model_extra.get("provider_specific_fields") or {})


@pytest.mark.parametrize("pid", [CALM, FICKLE])
def test_a_clean_stream_passes_unchanged(client: openai.OpenAI, direct: openai.OpenAI,
                                         pid: str) -> None:
    kw = {"model": MODEL, "messages": PROMPTS[pid], "max_tokens": 64, **GREEDY}
    reset(direct)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    reset(direct)
    want = list(direct.chat.completions.create(**kw, stream=True))
    assert streamed_text(chunks) == streamed_text(want) != ""
    reasons = [ch.choices[0].finish_reason for ch in chunks
               if ch.choices and ch.choices[0].finish_reason]
    assert reasons == [ch.choices[0].finish_reason for ch in want
                       if ch.choices and ch.choices[0].finish_reason]
    assert reasons in (["stop"], ["length"])
    assert not any(degen_of(ch) for ch in chunks)


def test_a_cut_closes_the_upstream_stream(client: openai.OpenAI,
                                          scripted: ScriptedServer) -> None:
    """The scripted upstream loops for 5000 chunks (50 s) and notes when its client
    hangs up: after the cut, LiteLLM closes it."""
    before = len(scripted.closed_at)
    chunks = list(client.chat.completions.create(
        model="scripted-loop", messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=5000, stream=True))
    assert chunks[-1].choices[0].finish_reason == "repetition"
    cut_at = time.monotonic()
    deadline = cut_at + 120
    while len(scripted.closed_at) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(scripted.closed_at) > before, "the upstream's stream was not closed"
    assert degen_of(chunks[-1])["completion_tokens"] < 100


def test_the_documented_config_is_what_write_config_writes(tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    want = config_yaml("http://127.0.0.1:8080/v1", MODEL, master_key="sk-change-me")
    assert blocks and blocks[0] == want
    p = write_config(tmp_path / "config.yaml", "http://127.0.0.1:8080/v1", MODEL,
                     master_key="sk-change-me")
    assert p.read_text() == want


# Run in LiteLLM's venv: the guardrail built as the proxy builds it from a config entry
# (InMemoryGuardrailHandler.initialize_custom_guardrail, its options in litellm_params),
# its stream hook fed a loop as LiteLLM's chunks, and a whole answer that loops.
OPTIONS = """
import asyncio, json
from litellm.proxy.guardrails.guardrail_registry import InMemoryGuardrailHandler
from litellm.types.guardrails import LitellmParams
from litellm.types.utils import (Choices, Delta, Message, ModelResponse, ModelResponseStream,
                                 StreamingChoices)

params = LitellmParams(guardrail="degen.integrations.litellm.DegenGuardrail", mode="post_call",
                       default_on=True, cut_reason="length", cut_kinds=["loop"], max_tokens=900)
g = InMemoryGuardrailHandler().initialize_custom_guardrail(
    guardrail={"guardrail_name": "degen", "litellm_params": params},
    guardrail_type=params.guardrail, litellm_params=params, config_file_path="/nonexistent.yaml")
words = ("Once upon a time there was a cat. " + "The cat sat on the mat. " * 40).split(" ")
data = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "A story."}]}

async def source():
    for w in words:
        yield ModelResponseStream(id="c", created=1, model="m", choices=[
            StreamingChoices(index=0, delta=Delta(content=w + " "))])

async def main():
    return [c async for c in g.async_post_call_streaming_iterator_hook(None, source(), data)]

out = asyncio.run(main())
whole = ModelResponse(id="r", model="m", choices=[Choices(index=0, finish_reason="length",
                      message=Message(role="assistant", content=" ".join(words)))])
r = asyncio.run(g.async_post_call_success_hook({**data, "stream": False}, None, whole))
print(json.dumps({"type": type(g).__name__, "kinds": sorted(g.cut_kinds),
                  "name": g.guardrail_name, "event_hook": g.event_hook,
                  "chunks": len(out), "words": len(words), "whole": len(" ".join(words)),
                  "last": json.loads(out[-1].model_dump_json()),
                  "text": r.choices[0].message.content, "reason": r.choices[0].finish_reason,
                  "degen": r.degen}))
"""


def test_options_from_the_config_entry() -> None:
    """``cut_reason: length`` (for strict clients) and ``cut_kinds``/``max_tokens`` reach
    the guardrail the way the proxy passes a config entry's ``litellm_params``."""
    run = subprocess.run([str(litellm_python(ROOT)), "-c", OPTIONS], cwd=ROOT, timeout=900,
                         capture_output=True, text=True,
                         env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["type"] == "DegenGuardrail" and got["kinds"] == ["loop"]
    assert got["name"] == "degen" and got["event_hook"] == "post_call"
    last = got["last"]
    assert last["choices"][0]["finish_reason"] == "length"  # what strict clients accept
    assert last["degen"]["kind"] == "loop" and last["degen"]["max_tokens"] == 900
    assert last["provider_specific_fields"]["degen"] == last["degen"]
    assert got["chunks"] < got["words"] / 2  # ended early
    assert got["reason"] == "length" and got["degen"]["kind"] == "loop"
    assert "The cat sat on the mat." in got["text"]
    assert len(got["text"]) < got["whole"] / 2
