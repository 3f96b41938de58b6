"""The guard cuts every kind (loops, gibberish, glued words), each with its finish
reason and evidence, and watches the tokens' log-probabilities: asked from the upstream
when the client did not ask, taken out of what the client gets, relayed untouched when
the client asked. Over real HTTP on 127.0.0.1, in front of a scripted upstream that
streams what the request's ``echo`` field says (3 characters a chunk, one
log-probability each when asked) and records the bodies it received."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from degen.guard.metrics import sample
from degen.testing.scripted import ScriptedServer
from tests.guard.test_proxy import events, text_of
from tests.guard.texts import BABBLE, GLUED, LOOP

MSGS = [{"role": "user", "content": "Tell me about the singer."}]
CASES = [(BABBLE, "gibberish", "degenerate"), (GLUED, "spacing", "degenerate"),
         (LOOP, "loop", "repetition")]


def ask(g: Any, text: str, *, stream: bool, chat: bool = True, **extra: Any
        ) -> tuple[dict[str, Any], list[Any]]:
    """(the final answer or last chunk before [DONE], every streamed event)."""
    body: dict[str, Any] = {"model": "m", "echo": text, "stream": stream, **extra}
    if chat:
        body["messages"] = MSGS
    else:
        body["prompt"] = "Tell me about the singer."
    url = g.url + ("/chat/completions" if chat else "/completions")
    if not stream:
        r = httpx.post(url, json=body, timeout=20)
        assert r.status_code == 200, r.text
        return r.json(), []
    with httpx.stream("POST", url, json=body, timeout=20) as r:
        assert r.status_code == 200
        evs = events(r)
    assert evs[-1] == "[DONE]"
    return evs[-2], evs[:-1]


def content(answer: dict[str, Any]) -> str:
    c = answer["choices"][0]
    return c["message"]["content"] if "message" in c else c["text"]


# ---------------------------------------------------------------- every kind is cut
@pytest.mark.parametrize(("text", "kind", "reason"), CASES, ids=["babble", "glued", "loop"])
@pytest.mark.parametrize("stream", [True, False])
def test_each_kind_is_cut_with_its_finish_reason(make_guard, text, kind, reason,
                                                 stream) -> None:
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up)
        last, evs = ask(g, text, stream=stream)
    assert last["choices"][0]["finish_reason"] == reason
    d = last["degen"]
    assert d["kind"] == kind and d["index"] == 0 and d["max_tokens"] == 8192
    got = text_of(evs) if stream else content(last)
    assert len(got) < len(text) and text.startswith(got)  # cut before the end
    assert d["start_char"] < len(got)
    m = g.guard.metrics
    assert m.cuts.total(kind=kind) == 1 and m.detected.total(kind=kind) == 1
    assert m.responses.total(endpoint="/v1/chat/completions", finish_reason=reason) == 1
    assert sample(m.render(), "degen:cuts_total", kind=kind) == 1


@pytest.mark.parametrize("stream", [True, False])
def test_text_completions_are_cut_for_babble_too(make_guard, stream: bool) -> None:
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up)
        last, _ = ask(g, BABBLE, stream=stream, chat=False)
    assert last["object"] == "text_completion"
    assert last["choices"][0]["finish_reason"] == "degenerate"
    assert last["degen"]["kind"] == "gibberish"


@pytest.mark.parametrize("stream", [True, False])
def test_cut_reason_length_for_strict_clients(make_guard, stream: bool) -> None:
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up, cut_reason="length")
        last, _ = ask(g, BABBLE, stream=stream)
        assert last["choices"][0]["finish_reason"] == "length"
        assert last["degen"]["kind"] == "gibberish"  # the evidence still says what it was
        last, _ = ask(g, LOOP, stream=stream)
        assert last["choices"][0]["finish_reason"] == "length"
        assert last["degen"]["kind"] == "loop"
    m = g.guard.metrics  # counted under the true reason
    assert m.responses.total(endpoint="/v1/chat/completions", finish_reason="degenerate") == 1
    assert m.responses.total(endpoint="/v1/chat/completions", finish_reason="repetition") == 1
    assert m.responses.total(endpoint="/v1/chat/completions", finish_reason="length") == 0


def test_no_cut_gibberish_lets_babble_through_and_still_cuts_loops(make_guard) -> None:
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up, cut_kinds=frozenset({"loop", "spacing"}))
        last, evs = ask(g, BABBLE, stream=True)
        assert last["choices"][0]["finish_reason"] == "stop" and "degen" not in last
        assert text_of(evs) == BABBLE
        last, _ = ask(g, LOOP, stream=True)
        assert last["choices"][0]["finish_reason"] == "repetition"
    m = g.guard.metrics
    assert m.detected.total(kind="gibberish") == 1 and m.cuts.total(kind="gibberish") == 0
    assert m.cuts.total(kind="loop") == 1


# ---------------------------------------------------------------- log-probabilities
@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
@pytest.mark.parametrize("stream", [True, False])
def test_logprobs_are_asked_upstream_and_kept_from_the_client(make_guard, chat: bool,
                                                              stream: bool) -> None:
    text = "The sea is calm today, and the boats are out early."
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up)
        last, evs = ask(g, text, stream=stream, chat=chat)
        sent = up.bodies[-1]
    if chat:
        assert sent["logprobs"] is True and sent["top_logprobs"] == 1
    else:
        assert sent["logprobs"] == 1 and "top_logprobs" not in sent
    if stream:
        choices = [c for e in evs if isinstance(e, dict) for c in e.get("choices", [])]
        assert text_of(evs) == text and len(choices) >= len(text) // 3
        assert all(c.get("logprobs") is None for c in choices)
    else:
        assert content(last) == text and last["choices"][0]["logprobs"] is None
    assert last["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
@pytest.mark.parametrize("stream", [True, False])
def test_logprobs_the_client_asked_for_are_relayed(make_guard, chat: bool,
                                                   stream: bool) -> None:
    text = "The sea is calm today, and the boats are out early."
    asked = {"logprobs": True, "top_logprobs": 3} if chat else {"logprobs": 2}
    with ScriptedServer(["echo"], logprob=-0.25) as up:
        g = make_guard(up)
        last, evs = ask(g, text, stream=stream, chat=chat, **asked)
        sent = up.bodies[-1]
    assert {k: sent.get(k) for k in asked} == asked  # untouched
    if not chat:
        assert "top_logprobs" not in sent
    key = "content" if chat else "token_logprobs"
    if stream:
        lps = [c["logprobs"] for e in evs if isinstance(e, dict) for c in e.get("choices", [])
               if (c.get("delta") or {}).get("content") or c.get("text")]
        assert lps and all(lp is not None for lp in lps)
        n = sum(len(lp[key]) for lp in lps)
    else:
        n = len(last["choices"][0]["logprobs"][key])
    assert n == -(-len(text) // 3)  # one per streamed token
    if chat and not stream:
        assert {t["logprob"] for t in last["choices"][0]["logprobs"]["content"]} == {-0.25}


def test_no_logprobs_asks_for_none(make_guard) -> None:
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up, logprobs=False)
        last, _ = ask(g, BABBLE, stream=True)
        assert "logprobs" not in up.bodies[-1] and "top_logprobs" not in up.bodies[-1]
    assert last["degen"]["kind"] == "gibberish"
    assert "surprise" not in last["degen"]["evidence"]["measures"]


def test_chat_requests_with_tools_are_not_asked_for_logprobs(make_guard) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up)
        ask(g, "Fine.", stream=True, tools=tools)  # llama.cpp refuses logprobs + tools
        assert "logprobs" not in up.bodies[-1]


def test_the_watch_weighs_the_logprobs_in(make_guard) -> None:
    """Babble streamed with log-probabilities: the finding's measures include the
    tokens' surprise; from a server that ignores the request, the text alone judges."""
    with ScriptedServer(["echo"], logprob=-9.0) as up:
        g = make_guard(up)
        last, _ = ask(g, BABBLE, stream=True)
        assert up.bodies[-1]["logprobs"] is True
    measures = last["degen"]["evidence"]["measures"]
    assert last["degen"]["kind"] == "gibberish" and measures["surprise"] > 5
    with ScriptedServer(["echo"], logprobs=False) as up:  # asked, never sent
        g = make_guard(up)
        last, _ = ask(g, BABBLE, stream=True)
        assert up.bodies[-1]["logprobs"] is True
    assert last["choices"][0]["finish_reason"] == "degenerate"
    assert "surprise" not in last["degen"]["evidence"]["measures"]


def test_an_upstream_that_refuses_logprobs_is_asked_again_without(make_guard,
                                                                   caplog) -> None:
    with ScriptedServer(["no_logprobs"]) as up, caplog.at_level(logging.WARNING):
        g = make_guard(up)
        for stream in (True, False):
            last, _ = ask(g, "All is well here.", stream=stream)
            assert last["choices"][0]["finish_reason"] == "stop"
        assert content(last) == "All is well here."
        first, retry, second = up.bodies
    assert first["logprobs"] is True and "logprobs" not in retry
    assert "logprobs" not in second  # not asked again for that model
    assert caplog.text.count("refused logprobs for model m") == 1
    assert g.guard.metrics.upstream_errors.total(status="400") == 0


def test_a_client_error_is_still_the_clients(make_guard) -> None:
    with ScriptedServer(["e400"]) as up:
        g = make_guard(up)
        r = httpx.post(g.url + "/chat/completions", json={"model": "m", "messages": MSGS})
        assert r.status_code == 400 and "prompt too long" in r.json()["error"]["message"]
        assert len(up.bodies) == 2  # asked again without logprobs, refused again
        assert g.guard.no_logprobs == set()


def test_the_cut_chunk_is_json_the_sdk_reads(make_guard) -> None:
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up)
        last, _ = ask(g, GLUED, stream=True)
    json.dumps(last)  # the evidence is plain JSON
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                "finish_reason": "degenerate"}]
    assert last["degen"]["evidence"]["measures"]["glued"] > 0


# ---------------------------------------------------------------- runaways
# weights that read "the model never thinks of ending" as a runaway (the fitted ones
# are scored in benchmarks/fit_runaway.py; these make the cut's mechanics testable)
NEVER = {"stop": {"bias": -4.0, "stop_max": -1.5},
         "logprobs": {"bias": -30.0}, "text": {"bias": -30.0}}


@pytest.mark.parametrize("stream", [True, False])
def test_cut_runaway_reads_the_stopping_evidence_and_cuts_a_stream_that_never_ends(
        make_guard, stream: bool) -> None:
    from degen.testing.scripted import prose

    text = " ".join(prose(200))  # good prose: nothing degenerate in it
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up, cut_kinds=frozenset({"loop", "runaway"}),
                       runaway_weights=NEVER, horizon=4000)
        # the model never puts weight on its end token: predicted never to end
        last, evs = ask(g, text, stream=stream, scripted_stop_logprob=-20.0)
        sent = up.bodies[-1]
        # the same text from a model ready to end at every token: relayed whole
        calm, _ = ask(g, text, stream=stream, scripted_stop_logprob=-0.5)
    assert sent["top_logprobs"] == 20  # asked for the alternatives the evidence is in
    assert last["choices"][0]["finish_reason"] == "runaway"
    d = last["degen"]
    assert d["kind"] == "runaway" and d["evidence"]["evidence"] == "stop"
    assert d["evidence"]["at_token"] == 48 and d["evidence"]["horizon"] == 4000
    got = text_of(evs) if stream else content(last)
    assert text.startswith(got) and len(got) < len(text)
    if stream:  # the alternatives the guard asked for never reach the client
        assert all(c.get("logprobs") is None for e in evs if isinstance(e, dict)
                   for c in e.get("choices", []))
    assert calm["choices"][0]["finish_reason"] == "stop" and "degen" not in calm
    m = g.guard.metrics
    assert m.cuts.total(kind="runaway") == 1


def test_runaways_are_watched_but_not_cut_unless_asked(make_guard) -> None:
    from degen.testing.scripted import prose

    text = " ".join(prose(120))
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up, runaway_weights=NEVER)
        last, _ = ask(g, text, stream=True, scripted_stop_logprob=-20.0)
        assert up.bodies[-1]["top_logprobs"] == 1  # no alternatives asked
    assert last["choices"][0]["finish_reason"] == "stop"
    assert g.guard.metrics.cuts.total(kind="runaway") == 0


@pytest.mark.parametrize("finish_in_last", [False, True])
def test_a_generation_that_ends_in_the_chunk_of_a_cut_is_not_cut(make_guard,
                                                                  finish_in_last) -> None:
    """Tokens this surprising are predicted to run away at the first look (token 48).
    When that token's chunk also carries the upstream's finish_reason (vLLM's way), the
    generation ended by itself: the client gets it whole with its own finish_reason;
    when the finish comes in a chunk after (llama.cpp's), the guard could not know and
    cuts."""
    text = "wordy " * 24  # 48 chunks of 3 characters, one token each
    with ScriptedServer(["echo"], logprob=-9.0, finish_in_last=finish_in_last) as up:
        g = make_guard(up, cut_kinds="runaway")
        last, evs = ask(g, text, stream=True)
    got = text_of(evs)
    if finish_in_last:
        assert last["choices"][0]["finish_reason"] == "stop" and "degen" not in last
        assert got == text and g.guard.metrics.cuts.total(kind="runaway") == 0
    else:
        assert last["choices"][0]["finish_reason"] == "runaway"
        assert last["degen"]["kind"] == "runaway" and len(got) < len(text)
        assert g.guard.metrics.cuts.total(kind="runaway") == 1
