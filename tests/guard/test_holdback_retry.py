"""Better than a cut: ``--holdback N`` keeps the start of a degeneration from ever
reaching the client and ends the answer at its last clean sentence; ``--on-degenerate
retry`` sends a request cut before any of its text was relayed once more with safer
parameters, so the client gets a good answer. Over real HTTP, in front of a scripted
upstream that loops or echoes on demand."""

from __future__ import annotations

import httpx
import pytest

from degen.guard.holdback import clean_end
from degen.guard.metrics import sample
from degen.testing.scripted import OK_TEXT, ScriptedServer
from tests.guard.test_kinds import CASES, ask, content
from tests.guard.test_proxy import MSGS, chat, events, text_of

PREFIX = "Once upon a time there was a cat."
ENDS = (".", "!", "?", "\n")


def stream_text(g, body) -> tuple[str, dict]:
    with httpx.stream("POST", g.url + "/chat/completions", json={**body, "stream": True},
                      timeout=30) as r:
        assert r.status_code == 200
        evs = events(r)
    assert evs[-1] == "[DONE]"
    return text_of(evs[:-1]), evs[-2]


# ---------------------------------------------------------------- holdback
@pytest.mark.parametrize(("text", "kind", "reason"), CASES)
@pytest.mark.parametrize("stream", [True, False])
def test_with_holdback_no_degenerate_text_is_relayed(make_guard, text, kind, reason,
                                                     stream) -> None:
    # held back: more chunks (3 characters each) than any kind takes to be confirmed
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up, holdback=256)
        last, evs = ask(g, text, stream=stream)
        plain = make_guard(up)
        plain_last, plain_evs = ask(plain, text, stream=stream)
    got = text_of(evs) if stream else content(last)
    was = text_of(plain_evs) if stream else content(plain_last)
    d = last["degen"]
    assert last["choices"][0]["finish_reason"] == reason and d["kind"] == kind
    assert text.startswith(got)
    assert len(got) <= d["start_char"]  # nothing from where the degeneration begins
    assert got == "" or got.endswith(ENDS)  # ends at a whole sentence
    assert len(got) < len(was)  # without holdback, degenerate text got through


def test_holdback_ends_a_loop_at_the_sentence_before_it(make_guard) -> None:
    with ScriptedServer(["loop"], interval_s=0.001, loop_prefix=PREFIX) as up:
        g = make_guard(up, holdback=64)
        got, last = stream_text(g, chat())
        assert last["choices"][0]["finish_reason"] == "repetition"
        assert got == PREFIX
        g0 = make_guard(up)
        got0, _ = stream_text(g0, chat())
    assert got0.startswith(PREFIX + " The cat sat on the mat.")


def test_holdback_relays_a_clean_answer_whole_and_in_order(make_guard) -> None:
    text = "First a sentence. " * 3 + "Then a list: one, two, three. The end"
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up, holdback=8)
        got, last = stream_text(g, {**chat(), "echo": text})
    assert got == text and last["choices"][0]["finish_reason"] == "stop"


def test_clean_end() -> None:
    assert clean_end("One. Two! Three? Four", 100) == 16
    assert clean_end("He said \"stop.\" Then went", 100) == 15
    assert clean_end("line one\nline two", 100) == 9
    assert clean_end("One. Two.", 5) == 4  # only what lies before the limit
    assert clean_end("version 1.5 is out", 100) == 0  # not a sentence end


# ---------------------------------------------------------------- retry
RETRY = {"on_degenerate": "retry", "retry_params": {"temperature": 0.3, "min_p": 0.1}}


def test_a_cut_request_is_retried_with_the_safer_parameters(make_guard) -> None:
    with ScriptedServer(["loop", "echo"], interval_s=0.001) as up:
        g = make_guard(up, **RETRY)
        r = httpx.post(g.url + "/chat/completions", json=chat(temperature=1.4), timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["choices"][0]["message"]["content"] == OK_TEXT
        assert "degen" not in body
        assert body["degen_retried"]["kind"] == "loop"  # why it was sent again
        assert len(up.bodies) == 2
        assert up.bodies[0]["temperature"] == 1.4 and "min_p" not in up.bodies[0]
        assert up.bodies[1]["temperature"] == 0.3 and up.bodies[1]["min_p"] == 0.1
        assert up.bodies[1]["messages"] == MSGS
        text = httpx.get(g.base + "/metrics").text
    assert sample(text, "degen:retries_total", outcome="ok") == 1
    assert sample(text, "degen:cuts_total", kind="loop") == 1  # the first answer's cut
    assert sample(text, "degen:responses_total", finish_reason="stop") == 1


def test_a_streamed_request_is_retried_while_its_text_is_held_back(make_guard) -> None:
    with ScriptedServer(["loop", "echo"], interval_s=0.001, loop_prefix="") as up:
        g = make_guard(up, holdback=64, **RETRY)
        got, last = stream_text(g, chat())
        assert len(up.bodies) == 2
    assert got == OK_TEXT and last["choices"][0]["finish_reason"] == "stop"


def test_no_retry_once_text_reached_the_client(make_guard) -> None:
    with ScriptedServer(["loop", "echo"], interval_s=0.001) as up:
        g = make_guard(up, **RETRY)  # no holdback: the loop's first words went out
        got, last = stream_text(g, chat())
        assert len(up.bodies) == 1
    assert last["choices"][0]["finish_reason"] == "repetition"
    assert got.startswith("Once upon a time")


def test_a_retry_is_sent_once_and_its_cut_stands(make_guard) -> None:
    with ScriptedServer(["loop"], interval_s=0.001) as up:
        g = make_guard(up, **RETRY)
        r = httpx.post(g.url + "/chat/completions", json=chat(), timeout=30).json()
        assert len(up.bodies) == 2
        text = httpx.get(g.base + "/metrics").text
    assert r["choices"][0]["finish_reason"] == "repetition" and r["degen"]["kind"] == "loop"
    assert sample(text, "degen:retries_total", outcome="cut") == 1
    assert sample(text, "degen:cuts_total", kind="loop") == 2


def test_a_retry_that_fails_leaves_the_cut_answer(make_guard) -> None:
    with ScriptedServer(["loop", "e500"], interval_s=0.001) as up:
        g = make_guard(up, **RETRY)
        r = httpx.post(g.url + "/chat/completions", json=chat(), timeout=30)
        text = httpx.get(g.base + "/metrics").text
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "repetition"
    assert sample(text, "degen:retries_total", outcome="error") == 1


def test_retry_needs_its_parameters() -> None:
    from degen.errors import InvalidParams
    from degen.guard import GuardConfig

    with pytest.raises(InvalidParams, match="--on-degenerate retry needs the safer"):
        GuardConfig(upstream="http://127.0.0.1:8000", on_degenerate="retry")
    with pytest.raises(InvalidParams, match="--holdback must be"):
        GuardConfig(upstream="http://127.0.0.1:8000", holdback=-1)
