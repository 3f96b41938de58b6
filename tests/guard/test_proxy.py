"""The guard as a client sees it, over real HTTP on 127.0.0.1, in front of a scripted
upstream (loops on demand, errors, hangs, resets) that records what it was sent and
when its connections closed."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from degen.guard.metrics import sample
from degen.testing.llamacpp import free_port
from degen.testing.scripted import OK_TEXT, ScriptedServer

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MSGS = [{"role": "user", "content": "Tell me a story about a cat."}]


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MSGS, **kw}


def events(r: httpx.Response) -> list[Any]:
    """The data payloads of a streamed answer ("[DONE]" kept as a string)."""
    out = []
    for line in r.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def text_of(evs: list[Any]) -> str:
    return "".join((c.get("delta") or {}).get("content") or c.get("text") or ""
                   for e in evs if isinstance(e, dict) for c in e.get("choices", []))


def wait_for(cond, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# ---------------------------------------------------------------- cutting loops
def test_a_looping_stream_is_cut_with_evidence_and_the_upstream_closed(make_guard) -> None:
    with ScriptedServer(["loop"], interval_s=0.005) as up:
        g = make_guard(up)
        with httpx.stream("POST", g.url + "/chat/completions", json=chat(stream=True),
                          timeout=10) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            evs = events(r)
            got_done = time.monotonic()
        assert evs[-1] == "[DONE]"
        last = evs[-2]
        assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                    "finish_reason": "repetition"}]
        assert last["object"] == "chat.completion.chunk" and last["id"] == "scripted-1"
        d = last["degen"]
        assert d["kind"] == "loop" and d["evidence"]["period"] == 7
        assert d["evidence"]["unit_text"].strip() in (". The cat sat on the mat",
                                                      "The cat sat on the mat.")
        assert d["start_char"] == text_of(evs).index("The cat") - 2
        # every relayed chunk plus the one that confirmed the loop (not relayed)
        assert d["completion_tokens"] == len(evs) - 2 + 1 and d["max_tokens"] == 8192
        assert all(e["choices"][0]["finish_reason"] is None for e in evs[:-2])
        # the upstream saw its client leave (vLLM and llama.cpp abort there) at once
        assert wait_for(lambda: up.closed_at, 1.0)
        assert up.closed_at[0] - got_done < 1.0
        assert wait_for(lambda: up.open_connections == 0, 1.0)
    m = g.guard.metrics
    assert m.cuts.total(kind="loop") == 1
    assert m.tokens_saved.total() == 8192 - d["completion_tokens"]
    assert m.responses.total(endpoint="/v1/chat/completions", finish_reason="repetition") == 1


def test_a_non_streaming_request_is_streamed_upstream_and_answered_whole(make_guard) -> None:
    with ScriptedServer(["loop"], interval_s=0.002) as up:
        g = make_guard(up)
        r = httpx.post(g.url + "/chat/completions", json=chat(max_tokens=500), timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert up.bodies[0]["stream"] is True
        assert up.bodies[0]["stream_options"] == {"include_usage": True}
        assert up.bodies[0]["max_tokens"] == 500
        assert body["object"] == "chat.completion"
        (c,) = body["choices"]
        assert c["finish_reason"] == "repetition" and c["degen"] == body["degen"]
        assert c["message"]["role"] == "assistant"
        assert c["message"]["content"].startswith("Once upon a time there was a cat. The cat")
        assert body["usage"]["completion_tokens"] == body["degen"]["completion_tokens"] < 60
        assert body["degen"]["max_tokens"] == 500
        assert wait_for(lambda: up.closed_at, 1.0)
    assert g.guard.metrics.tokens_saved.total() == 500 - body["usage"]["completion_tokens"]


@pytest.mark.parametrize("stream", [True, False])
def test_text_completions_are_guarded_too(make_guard, stream: bool) -> None:
    with ScriptedServer(["loop"], interval_s=0.002) as up:
        g = make_guard(up)
        body = {"model": "m", "prompt": "Once", "stream": stream}
        with httpx.stream("POST", g.url + "/completions", json=body, timeout=10) as r:
            assert r.status_code == 200
            if stream:
                evs = events(r)
                assert evs[-1] == "[DONE]" and evs[-2]["object"] == "text_completion"
                assert evs[-2]["choices"][0] == {"index": 0, "text": "", "logprobs": None,
                                                 "finish_reason": "repetition"}
            else:
                r.read()
                out = r.json()
                assert out["object"] == "text_completion"
                assert out["choices"][0]["finish_reason"] == "repetition"
                assert out["choices"][0]["text"].startswith("Once upon a time")
        assert up.bodies[0]["prompt"] == "Once"


def test_no_cut_mode_only_counts(make_guard) -> None:
    with ScriptedServer(["loop"], interval_s=0, max_chunks=120) as up:
        g = make_guard(up, cut_kinds=frozenset())
        with httpx.stream("POST", g.url + "/chat/completions", json=chat(stream=True),
                          timeout=10) as r:
            evs = events(r)
        assert evs[-1] == "[DONE]" and evs[-2]["choices"][0]["finish_reason"] == "length"
        assert not any("degen" in e for e in evs if isinstance(e, dict))
    m = g.guard.metrics
    assert m.detected.total(kind="loop") == 1 and m.cuts.total(kind="loop") == 0


def test_the_legitimately_repetitive_corpus_passes_untouched(make_guard) -> None:
    texts = [json.loads(line) for line in
             (CORPUS / "legit_repetitive.jsonl").read_text().splitlines()]
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up)
        with httpx.Client(timeout=10) as client:
            for t in texts:
                r = client.post(g.url + "/chat/completions", json={
                    "model": "m", "messages": [{"role": "user", "content": t["prompt"]}],
                    "echo": t["text"]})
                c = r.json()["choices"][0]
                assert c["finish_reason"] == "stop", (t["id"], c.get("degen"))
                assert c["message"]["content"] == t["text"]
    m = g.guard.metrics
    assert all(m.cuts.total(kind=k) == 0 for k in ("loop", "gibberish", "spacing"))
    assert sum(m.vetoes.total(reason=r) for r in ("requested", "data", "counting")) >= 1


# ---------------------------------------------------------------- the request body
def test_parameters_cap_defaults_overrides_and_passthrough(make_guard) -> None:
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up, max_tokens_cap=100, defaults={"temperature": 0.7, "min_p": 0.05},
                       overrides={"repetition_penalty": 1.1}, system="Be brief.")
        sent = [
            chat(),
            chat(max_tokens=99999, temperature=0.2, min_p=None, repetition_penalty=2.0,
                 repetition_detection={"max_pattern_size": 10}, repeat_penalty=1.3,
                 stream_options={"continuous_usage_stats": True}),
            chat(max_completion_tokens=50, max_tokens=300.0),
            {"model": "m", "messages": [{"role": "system", "content": "S"}, *MSGS]},
        ]
        for body in sent:
            r = httpx.post(g.url + "/chat/completions", json=body, timeout=10)
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["choices"][0]["message"]["content"] == OK_TEXT
            assert out["usage"]["completion_tokens"] == 4  # the upstream's own usage
        a, b, c, d = up.bodies
    assert a["max_tokens"] == 100 and a["temperature"] == 0.7 and a["min_p"] == 0.05
    assert a["repetition_penalty"] == 1.1
    assert a["messages"] == [{"role": "system", "content": "Be brief."}, *MSGS]
    assert b["max_tokens"] == 100 and b["temperature"] == 0.2  # the client's value wins
    assert b["min_p"] is None  # sent (as null) by the client: not defaulted
    assert b["repetition_penalty"] == 1.1  # an override always wins
    assert b["repetition_detection"] == {"max_pattern_size": 10} and b["repeat_penalty"] == 1.3
    assert b["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}
    assert c["max_completion_tokens"] == 50 and c["max_tokens"] == 100
    assert d["messages"][0] == {"role": "system", "content": "S"} and len(d["messages"]) == 2


def test_usage_is_streamed_only_to_clients_that_asked(make_guard) -> None:
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up)
        for asked in (False, True):
            body = chat(stream=True, echo="Just a few words here.")
            if asked:
                body["stream_options"] = {"include_usage": True}
            with httpx.stream("POST", g.url + "/chat/completions", json=body) as r:
                evs = events(r)
            assert text_of(evs) == "Just a few words here."
            usage = [e for e in evs if isinstance(e, dict) and e.get("usage")]
            assert len(usage) == int(asked)
            assert evs[-1] == "[DONE]"


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(("step", "status", "message"), [
    ("e500", 500, "internal boom"),
    ("e400", 400, "bad request: prompt too long"),
    ("e429", 429, "slow down"),
])
@pytest.mark.parametrize("stream", [True, False])
def test_upstream_errors_come_back_openai_shaped(make_guard, step, status, message,
                                                  stream) -> None:
    with ScriptedServer([step]) as up:
        g = make_guard(up)
        r = httpx.post(g.url + "/chat/completions", json=chat(stream=stream), timeout=10)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["message"] == message and err["code"] == status
    assert err["type"] == ("invalid_request_error" if status == 400 else
                           "rate_limit_error" if status == 429 else "upstream_error")
    assert g.guard.metrics.upstream_errors.total(status=str(status)) == 1


def test_unreachable_upstream_is_502_and_silence_is_504(make_guard) -> None:
    g = make_guard(f"http://127.0.0.1:{free_port()}")
    r = httpx.post(g.url + "/chat/completions", json=chat(), timeout=10)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_unreachable"
    assert "cannot connect to" in r.json()["error"]["message"]
    with ScriptedServer(["hang"], hang_s=3) as up:
        g = make_guard(up, timeout=0.3)
        t0 = time.monotonic()
        for stream in (False, True):
            r = httpx.post(g.url + "/chat/completions", json=chat(stream=stream), timeout=10)
            assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
        assert time.monotonic() - t0 < 2.5
    assert g.guard.metrics.upstream_errors.total(status="504") == 2


def test_a_stream_that_breaks_off_ends_with_an_error_event(make_guard) -> None:
    with ScriptedServer(["reset"]) as up:
        g = make_guard(up)
        with httpx.stream("POST", g.url + "/chat/completions", json=chat(stream=True)) as r:
            evs = events(r)
        assert evs[0]["choices"][0]["delta"]["content"] == "Hel"
        assert evs[-1]["error"]["code"] == "upstream_unreachable"
        assert "[DONE]" not in evs
        r = httpx.post(g.url + "/chat/completions", json=chat(), timeout=10)
        assert r.status_code == 502
    with ScriptedServer(["malformed"]) as up:
        g = make_guard(up)
        r = httpx.post(g.url + "/chat/completions", json=chat(), timeout=10)
        assert r.status_code == 502 and "malformed event" in r.json()["error"]["message"]


def test_bad_requests_are_refused_before_the_upstream(make_guard) -> None:
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up, max_body=2000)
        url = g.url + "/chat/completions"
        r = httpx.post(url, json=chat(echo="x" * 3000))
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks():  # no Content-Length: the limit holds on the bytes read
            for _ in range(10):
                yield b" " * 500

        r = httpx.post(url, content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        assert httpx.post(url, json=[1, 2]).status_code == 400
        r = httpx.post(url, json=chat(max_tokens="many"))
        assert r.status_code == 400 and "max_tokens must be an integer" in r.text
        assert up.bodies == []
    assert g.guard.metrics.rejected.total(status="413") == 2


# ---------------------------------------------------------------- security
def test_api_key_and_upstream_authorization(make_guard) -> None:
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up, api_key="guard-key")
        url = g.url + "/chat/completions"
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "guard-key"}):
            r = httpx.post(url, json=chat(), headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(g.base + "/metrics").status_code == 401
        assert httpx.get(g.base + "/health").json()["status"] == "ok"
        auth = {"Authorization": "Bearer guard-key"}
        assert httpx.post(url, json=chat(), headers=auth).status_code == 200
        assert httpx.get(g.base + "/metrics", headers=auth).status_code == 200
        assert up.auths == ["Bearer guard-key"]  # the client's header goes upstream
        g2 = make_guard(up, upstream_key="upstream-key")
        httpx.post(g2.url + "/chat/completions", json=chat(),
                   headers={"Authorization": "Bearer client"})
        assert up.auths[-1] == "Bearer upstream-key"


def test_nothing_secret_or_private_is_logged(make_guard, caplog) -> None:
    secret_prompt = "my-private-prompt-7731"
    body = {"model": "m", "messages": [{"role": "user", "content": secret_prompt}],
            "echo": "private answer 5521"}
    headers = {"Authorization": "Bearer key-0042"}
    with ScriptedServer(["echo"]) as up, caplog.at_level(logging.DEBUG):
        g = make_guard(up, api_key="key-0042")
        assert httpx.post(g.url + "/chat/completions", json=body,
                          headers=headers).status_code == 200
        assert wait_for(lambda: "finish=stop" in caplog.text)  # logged once answered
        quiet = caplog.text
        caplog.clear()
        g2 = make_guard(up, api_key="key-0042", log_content=True)
        httpx.post(g2.url + "/chat/completions", json=body, headers=headers)
        assert wait_for(lambda: "output /v1/chat/completions" in caplog.text)
        loud = caplog.text
    assert "/v1/chat/completions model=other stream=false status=200 finish=stop" in quiet
    for s in ("my-private-prompt", "private answer", "key-0042"):
        assert s not in quiet
    assert "my-private-prompt-7731" in loud and "private answer 5521" in loud
    assert "key-0042" not in loud


# ---------------------------------------------------------------- clients that leave
def test_a_client_that_leaves_gets_its_upstream_request_closed(make_guard) -> None:
    with ScriptedServer(["drip"], interval_s=0.02) as up:
        g = make_guard(up)
        # a streaming client reads three chunks and hangs up
        with httpx.stream("POST", g.url + "/chat/completions", json=chat(stream=True)) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i >= 5:
                    break
        left = time.monotonic()
        assert wait_for(lambda: len(up.closed_at) == 1, 2.0)
        assert up.closed_at[0] - left < 1.0
        # a client waiting for a whole answer gives up
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(g.url + "/chat/completions", json=chat(), timeout=0.5)
        left = time.monotonic()
        assert wait_for(lambda: len(up.closed_at) == 2, 2.0)
        assert up.closed_at[1] - left < 1.0
        assert wait_for(lambda: up.open_connections == 0, 1.0)
    m = g.guard.metrics
    assert wait_for(lambda: m.disconnects.total() == 2 and m.running.total() == 0, 1.0)
    assert m.responses.total(endpoint="/v1/chat/completions", finish_reason="disconnected") == 2


# ---------------------------------------------------------------- other endpoints
def test_models_health_metrics(make_guard) -> None:
    with ScriptedServer(["loop"], owned_by="vllm", interval_s=0.002) as up:
        g = make_guard(up)
        models = httpx.get(g.url + "/models").json()
        assert models["data"][0] == {"id": "scripted-model", "object": "model",
                                     "owned_by": "vllm"}
        assert httpx.get(g.url + "/nothing-here").status_code == 404
        health = httpx.get(g.base + "/health").json()
        assert health["status"] == "ok"
        assert health["upstreams"]["default"]["up"] is True
        assert health["upstreams"]["default"]["models"] == ["scripted-model"]
        httpx.post(g.url + "/chat/completions", json=chat(stream=True))
        page = httpx.get(g.base + "/metrics")
    assert page.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = page.text
    assert sample(text, "degen:requests_total", endpoint="/v1/chat/completions",
                  stream="true") == 1
    assert sample(text, "degen:requests_total", endpoint="/v1/models", stream="false") == 1
    assert sample(text, "degen:cuts_total", kind="loop") == 1
    assert sample(text, "degen:upstream_errors_total", upstream="default", status="404") == 1
    assert sample(text, "degen:e2e_request_latency_seconds_count") == 1
    assert sample(text, "degen:cut_after_tokens_count", kind="loop") == 1
    assert sample(text, "degen:upstream_up", upstream="default") == 1


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("cut_reason", ["kind", "length"])
def test_an_upstream_that_stops_a_loop_itself_is_counted_as_its_cut(
        make_guard, stream: bool, cut_reason: str) -> None:
    """vLLM's repetition_detection ends a generation with finish_reason "repetition":
    relayed (as "length" to strict clients), counted as an upstream cut, never as the
    guard's own."""
    with ScriptedServer(["repetition"]) as up:
        g = make_guard(up, cut_reason=cut_reason,
                       overrides={"repetition_detection": {"max_pattern_size": 64,
                                                           "min_pattern_size": 1,
                                                           "min_count": 3}})
        if stream:
            with httpx.stream("POST", g.url + "/chat/completions", json=chat(stream=True),
                              timeout=10) as r:
                evs = [e for e in events(r) if isinstance(e, dict) and e.get("choices")]
            finish = evs[-1]["choices"][0]["finish_reason"]
        else:
            out = httpx.post(g.url + "/chat/completions", json=chat(), timeout=10).json()
            finish = out["choices"][0]["finish_reason"]
            assert out["choices"][0]["message"]["content"] == "again again again"
        assert up.bodies[0]["repetition_detection"]["min_count"] == 3  # the override sent
    assert finish == ("repetition" if cut_reason == "kind" else "length")
    m = g.guard.metrics
    assert m.upstream_cuts.total(finish_reason="repetition") == 1
    assert m.cuts.total(kind="loop") == 0
