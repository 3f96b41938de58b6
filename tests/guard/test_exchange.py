"""Exchange with n > 1: each choice is watched and cut on its own; the others go on,
and the upstream is closed only when every choice is finished or cut."""

from __future__ import annotations

from typing import Any

import pytest

from degen.guard.exchange import CHAT, COMPLETIONS, Exchange

LOOP = "The cat sat on the mat. "
FINE = ("Paris is the capital of France. It lies on the Seine and has about two million "
        "people. Its museums include the Louvre and the Musée d'Orsay. ")


def chunk(chat: bool, index: int, text: str | None = None,
          finish: str | None = None) -> dict[str, Any]:
    if chat:
        ch: dict[str, Any] = {"index": index, "delta": {"content": text} if text else {},
                              "finish_reason": finish}
    else:
        ch = {"index": index, "text": text or "", "finish_reason": finish}
    return {"id": "x", "created": 1, "model": "m", "choices": [ch]}


def words(text: str) -> list[str]:
    return [w + " " for w in text.split()]


@pytest.mark.parametrize(("endpoint", "stream"), [(CHAT, True), (CHAT, False),
                                                   (COMPLETIONS, True)])
def test_two_choices_one_loops(endpoint: str, stream: bool) -> None:
    chat = endpoint == CHAT
    body = {"messages": [{"role": "user", "content": "Tell me about Paris."}]} if chat \
        else {"prompt": "Tell me about Paris."}
    ex = Exchange(endpoint, {**body, "stream": stream, "n": 2}, {**body, "n": 2}, 8192)
    looping, fine = words(LOOP * 40), words(FINE)
    cut_at = None
    for i in range(max(len(looping), len(fine))):
        for index, seq in ((0, looping), (1, fine)):
            if i < len(seq):
                c = chunk(chat, index, seq[i])
                changed, cut = ex.process(c)
                if cut:
                    assert cut == [0] and changed and c["choices"] == []  # not relayed
                    cut_at = i
            elif i == len(seq) and index == 1:
                ex.process(chunk(chat, 1, finish="stop"))
        if i == len(fine):
            # choice 1 finished, choice 0 cut: time to close the upstream
            assert ex.all_done() == (cut_at is not None)
    assert cut_at is not None and cut_at < 40  # within a few repetitions of the unit
    assert ex.finish_reasons() == ["repetition", "stop"]
    assert ex.cut_chunk(0)["choices"][0]["finish_reason"] == "repetition"
    assert ex.cut_chunk(0)["degen"]["index"] == 0
    # the cut chunk itself counts (it was generated), the dropped rest does not
    assert ex.final_usage()["completion_tokens"] == (cut_at + 1) + len(fine)
    if not stream:
        r = ex.response()
        assert [c["finish_reason"] for c in r["choices"]] == ["repetition", "stop"]
        assert r["degen"]["index"] == 0 and "degen" not in r["choices"][1]
        text = r["choices"][1]["message"]["content"] if chat else r["choices"][1]["text"]
        assert text == "".join(fine)


def test_not_done_until_every_choice_has_been_seen() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    ex = Exchange(CHAT, {**body, "n": 3}, {**body, "n": 3}, 100)
    ex.process(chunk(True, 0, "Hello.", finish="stop"))
    ex.process(chunk(True, 1, "Hi.", finish="stop"))
    assert not ex.all_done()  # choice 2 has not started yet
    ex.process(chunk(True, 2, "Hey.", finish="stop"))
    assert ex.all_done() and ex.finish_reasons() == ["stop"] * 3


def lp_chunk(chat: bool, text: str, lps: list[float]) -> dict[str, Any]:
    c = chunk(chat, 0, text)
    c["choices"][0]["logprobs"] = (
        {"content": [{"token": "t", "logprob": v, "top_logprobs": []} for v in lps]} if chat
        else {"tokens": ["t"] * len(lps), "token_logprobs": lps})
    return c


@pytest.mark.parametrize("endpoint", [CHAT, COMPLETIONS])
def test_logprobs_feed_the_watch_and_are_stripped_only_when_the_guard_asked(
        endpoint: str) -> None:
    chat = endpoint == CHAT
    body = {"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"}
    stripping = Exchange(endpoint, {**body, "stream": True}, body, 100, strip_logprobs=True)
    relaying = Exchange(endpoint, {**body, "stream": True}, body, 100)
    for ex in (stripping, relaying):
        plain = chunk(chat, 0, "Hello")
        assert ex.process(plain) == (False, [])  # nothing altered: relayed as it came
        c = lp_chunk(chat, " there, friend", [-0.5, -1.0, -1.5])
        changed, cut = ex.process(c)
        assert not cut and changed == ex.strip_logprobs
        assert (c["choices"][0]["logprobs"] is None) == ex.strip_logprobs
        st = ex.choices[0]
        assert st.tokens == 1 + 3  # a chunk with logprobs counts its tokens
        assert st.watch is not None and st.watch.surprise.tokens == 3
        # logprobs with no text (a token still held back by the server) are fed too
        ex.process(lp_chunk(chat, "", [-2.0]))
        assert st.watch.surprise.tokens == 4 and st.tokens == 5


def test_a_cut_kind_decides_and_the_reason_follows_the_config() -> None:
    from tests.guard.texts import BABBLE, LOOP

    body = {"messages": [{"role": "user", "content": "Tell me a story."}]}
    for kinds, reason, text, want in [
        (("loop", "gibberish", "spacing"), "kind", BABBLE, "degenerate"),
        (("loop",), "kind", BABBLE, None),
        (("loop",), "kind", LOOP, "repetition"),
        (("gibberish",), "length", BABBLE, "length"),
        ((), "kind", LOOP, None),
    ]:
        ex = Exchange(CHAT, {**body, "stream": False}, body, 1000, cut_kinds=kinds,
                      cut_reason=reason)
        for i in range(0, len(text), 4):
            ex.process(chunk(True, 0, text[i:i + 4]))
        ex.process(chunk(True, 0, finish="stop"))
        r = ex.response()
        assert r["choices"][0]["finish_reason"] == (want or "stop"), (kinds, reason)
        assert ("degen" in r) == (want is not None)
        assert ex.choices[0].watch is not None and ex.choices[0].watch.findings  # seen
