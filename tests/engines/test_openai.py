"""The openai engine: parameter names per dialect, retries, and every failure path.

Faults a real server will not produce on demand come from a scripted server on
127.0.0.1; the real llama.cpp server is exercised in the conformance suite.
"""

from __future__ import annotations

import time

import pytest

from degen.engines.evidence import STOP_TOP_LOGPROBS
from degen.engines.openai import (
    OpenAIEngine,
    build_body,
    normalize_base_url,
    token_logprobs,
    unsupported_fields,
)
from degen.errors import InvalidParams, ServerUnreachable, UsageError
from degen.measurement.failure import is_failure
from degen.records import Request, SamplingParams
from degen.testing.llamacpp import free_port
from degen.testing.scripted import OK_TEXT, ScriptedServer
from tests.guard.texts import BABBLE, GLUED

CHAT = ({"role": "user", "content": "hi"},)


def req(**kw) -> Request:
    return Request("r1", "p1", SamplingParams(**kw), messages=CHAT)


def engine(srv: ScriptedServer, **kw) -> OpenAIEngine:
    kw.setdefault("backoff", 0.01)
    return OpenAIEngine(srv.base_url, **kw)


# ---------------------------------------------------------------- request bodies
def test_vllm_gets_every_knob_explicitly() -> None:
    _, body = build_body(req(temperature=0.7, min_p=0.1, repetition_penalty=1.1, seed=5),
                         "m", "vllm", "auto", stream=False)
    assert body["repetition_penalty"] == 1.1 and body["min_p"] == 0.1
    assert body["top_k"] == -1  # off, sent so the model's generation_config cannot apply
    assert body["seed"] == 5 and body["messages"] == [{"role": "user", "content": "hi"}]
    assert "repeat_penalty" not in body and "repetition_detection" not in body  # off
    _, body = build_body(req(repetition_min_count=3, repetition_max_pattern=32), "m", "vllm",
                         "auto", stream=False)
    assert body["repetition_detection"] == {"max_pattern_size": 32, "min_pattern_size": 1,
                                            "min_count": 3}


def test_llamacpp_names_and_neutral_values_override_server_defaults() -> None:
    path, body = build_body(req(repetition_penalty=1.3), "m", "llamacpp", "auto", stream=True)
    assert path == "/chat/completions"
    assert body["repeat_penalty"] == 1.3 and "repetition_penalty" not in body
    # llama.cpp's own defaults are top_k 40, min_p 0.05: send the real values
    assert body["top_k"] == 0 and body["min_p"] == 0.0 and body["top_p"] == 1.0
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_plain_openai_gets_only_standard_fields() -> None:
    _, body = build_body(req(min_p=0.1, top_k=5, repetition_penalty=1.2, stop=["\n"]),
                         "m", "openai", "auto", stream=False)
    assert set(body) == {"model", "messages", "max_tokens", "temperature", "top_p",
                         "presence_penalty", "frequency_penalty", "stop"}


@pytest.mark.parametrize("dialect", ["vllm", "llamacpp", "openai"])
def test_logprobs_are_asked_in_every_dialect(dialect: str) -> None:
    _, body = build_body(req(), "m", dialect, "auto", stream=True, logprobs=True)
    assert body["logprobs"] is True and body["top_logprobs"] == 1
    _, body = build_body(req(), "m", dialect, "auto", stream=True, logprobs=True, top=20)
    assert body["top_logprobs"] == 20
    r = Request("r", "p", SamplingParams(), prompt="Once")
    _, body = build_body(r, "m", dialect, "auto", stream=True, logprobs=True)
    assert body["logprobs"] == 1 and "top_logprobs" not in body
    _, body = build_body(req(), "m", dialect, "auto", stream=True)
    assert "logprobs" not in body and "top_logprobs" not in body


def test_token_logprobs_reads_every_shape() -> None:
    chat = {"content": [{"token": "a", "logprob": -0.5, "top_logprobs": []},
                        {"token": "b", "logprob": None}], "refusal": None}
    assert token_logprobs(chat) == [-0.5]
    assert token_logprobs({"tokens": ["a", "b"], "token_logprobs": [-1, -2.5]}) == [-1.0, -2.5]
    assert token_logprobs({"content": None}) is None
    assert token_logprobs(None) is None and token_logprobs([1]) is None


def test_raw_prompts_go_to_completions() -> None:
    r = Request("r", "p", SamplingParams(), prompt="Once")
    path, body = build_body(r, "m", "openai", "auto", stream=False)
    assert path == "/completions" and body["prompt"] == "Once"


@pytest.mark.parametrize(("dialect", "params", "dropped"), [
    ("openai", {"min_p": 0.1, "top_k": 3}, {"min_p", "top_k"}),
    ("openai", {}, set()),
    ("vllm", {"no_repeat_ngram_size": 3}, {"no_repeat_ngram_size"}),
    ("vllm", {"repetition_penalty": 1.2, "penalize_eot": False}, {"penalize_eot"}),
    ("llamacpp", {"repetition_penalty": 1.2, "repetition_penalty_scope": "output"},
     {"repetition_penalty_scope"}),
    ("llamacpp", {"repetition_penalty_scope": "output"}, set()),  # penalty off: moot
    ("llamacpp", {"repetition_min_count": 3}, {"repetition_min_count"}),
    ("openai", {"repetition_min_count": 3}, {"repetition_min_count"}),
    ("vllm", {"repetition_min_count": 3}, set()),
])
def test_unsupported_fields_are_named(dialect, params, dropped) -> None:
    assert set(unsupported_fields(SamplingParams(**params), dialect)) == dropped


def test_base_url_normalization() -> None:
    assert normalize_base_url("http://h:1/") == "http://h:1/v1"
    assert normalize_base_url("http://h:1/v1/") == "http://h:1/v1"
    assert normalize_base_url("https://h/openai/v1") == "https://h/openai/v1"
    with pytest.raises(InvalidParams, match="http:// or https://"):
        normalize_base_url("h:1")


# ---------------------------------------------------------------- discovery
def test_unreachable_server_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ServerUnreachable, match=f"no server answered at {url}"):
        OpenAIEngine(url, connect_timeout=1)


def test_model_and_dialect_are_discovered() -> None:
    with ScriptedServer(["ok"], owned_by="vllm") as srv:
        e = engine(srv)
        assert (e.model, e.dialect) == ("scripted-model", "vllm")
        e.complete(req(min_p=0.2))
        assert srv.bodies[-1]["min_p"] == 0.2 and srv.bodies[-1]["model"] == "scripted-model"
    with ScriptedServer(["ok"], owned_by="someone") as srv:
        assert engine(srv).dialect == "openai"


def test_api_key_goes_in_the_authorization_header(monkeypatch) -> None:
    seen = {}
    with ScriptedServer(["ok"]) as srv:
        e = engine(srv, api_key="sk-test")
        orig = e._client.post

        def spy(*a, **kw):
            seen["auth"] = e._client.headers.get("authorization")
            return orig(*a, **kw)

        monkeypatch.setattr(e._client, "post", spy)
        e.complete(req())
    assert seen["auth"] == "Bearer sk-test"


# ---------------------------------------------------------------- faults
@pytest.mark.parametrize("stream", [False, True])
def test_retries_5xx_then_succeeds(stream: bool) -> None:
    with ScriptedServer(["e500", "e500", "ok"]) as srv:
        c = engine(srv, stream=stream).complete(req())
    assert c.finish_reason == "stop" and c.text == OK_TEXT and c.attempts == 3
    assert c.completion_tokens == 3


def test_persistent_5xx_becomes_an_error_record_not_a_runaway() -> None:
    with ScriptedServer(["e500"]) as srv:
        c = engine(srv, max_retries=2).complete(req())
    assert c.finish_reason == "error" and not c.is_capped
    assert "HTTP 500" in c.error and "internal boom" in c.error and c.attempts == 3


def test_4xx_is_not_retried() -> None:
    with ScriptedServer(["e400", "ok"]) as srv:
        c = engine(srv).complete(req())
        assert srv.calls == 1
    assert c.finish_reason == "error" and "prompt too long" in c.error


def test_429_honours_retry_after() -> None:
    with ScriptedServer(["e429", "ok"]) as srv:
        t0 = time.perf_counter()
        c = engine(srv).complete(req())
        assert time.perf_counter() - t0 >= 0.2
    assert c.finish_reason == "stop" and c.attempts == 2


def test_reset_mid_stream_is_retried() -> None:
    with ScriptedServer(["reset", "ok"]) as srv:
        c = engine(srv, stream=True).complete(req())
    assert c.finish_reason == "stop" and c.text == OK_TEXT and c.attempts == 2


def test_reset_every_time_becomes_an_error() -> None:
    with ScriptedServer(["reset"]) as srv:
        c = engine(srv, stream=True, max_retries=1).complete(req())
    assert c.finish_reason == "error" and "stream" in c.error


def test_hang_times_out_into_an_error() -> None:
    with ScriptedServer(["hang"], hang_s=3) as srv:
        t0 = time.perf_counter()
        c = engine(srv, timeout=0.3, max_retries=1).complete(req())
        took = time.perf_counter() - t0
    assert c.finish_reason == "error" and "Timeout" in c.error
    assert took < 2.5


def test_malformed_sse_is_an_error_without_retry() -> None:
    with ScriptedServer(["malformed", "ok"]) as srv:
        c = engine(srv, stream=True).complete(req())
        assert srv.calls == 1
    assert c.finish_reason == "error" and "malformed server-sent event" in c.error


def test_length_is_recorded_as_a_runaway() -> None:
    with ScriptedServer(["length"]) as srv:
        c = engine(srv).complete(req())
    assert c.is_capped and c.text == "again again again"


def test_streaming_records_time_to_first_token_and_usage() -> None:
    with ScriptedServer(["ok"]) as srv:
        c = engine(srv, stream=True).complete(req())
    assert c.timings.first_token_at is not None
    assert c.timings.started_at <= c.timings.first_token_at <= c.timings.finished_at
    assert (c.prompt_tokens, c.completion_tokens) == (5, 3)
    assert "completion_tokens_estimated" not in c.extra


def test_guard_cuts_a_looping_stream_and_closes_the_connection() -> None:
    # a pause between chunks: at full speed the server can write all 5000 into the
    # socket buffers and finish before the cut, and there is nothing left to abandon
    with ScriptedServer(["loop"], interval_s=0.001) as srv:
        c = engine(srv, stream=True, guard=True).complete(req(max_tokens=4000))
        deadline = time.monotonic() + 2
        while not srv.closed_at and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.closed_at  # the upstream request was abandoned, not read to the end
    assert c.finish_reason == "repetition" and is_failure(c)
    cut = c.extra["cut"]
    assert cut["kind"] == "loop"
    assert cut["evidence"]["period"] == 7  # "The cat sat on the mat ." (a rotation)
    assert "The cat sat on the mat" in cut["evidence"]["unit_text"]
    assert c.text.count("The cat sat on the mat.") < 10


def test_guard_leaves_what_the_prompt_asked_for_alone() -> None:
    """The engine's guard has the batch detector's vetoes: a repetition the prompt asked
    for, with its count, is not a loop; the same text unasked for is."""
    said = "I will not talk in class. " * 12
    asked = Request("r1", "p1", SamplingParams(), messages=(
        {"role": "user", "content": "Write 'I will not talk in class.' 12 times."},))
    with ScriptedServer(["echo"], echo_text=said) as srv:
        eng = engine(srv, stream=True, guard=True)
        c_asked, c_not = eng.complete(asked), eng.complete(req())
    assert c_asked.finish_reason == "stop" and c_asked.text == said
    assert c_not.finish_reason == "repetition"


@pytest.mark.parametrize(("text", "kind"), [(BABBLE, "gibberish"), (GLUED, "spacing")])
def test_guard_cuts_babble_and_glued_words_as_degenerate(text: str, kind: str) -> None:
    with ScriptedServer(["echo"], echo_text=text) as srv:
        c = engine(srv, stream=True, guard=True).complete(req())
    assert c.finish_reason == "degenerate" and c.is_cut and is_failure(c)
    assert c.extra["cut"]["kind"] == kind
    assert len(c.text) < len(text) and text.startswith(c.text)


def test_guard_with_some_kinds_only() -> None:
    with ScriptedServer(["echo"], echo_text=BABBLE) as srv:
        eng = engine(srv, stream=True, guard=("loop",))
        c = eng.complete(req())
    assert eng.cut_kinds == {"loop"} and c.finish_reason == "stop" and c.text == BABBLE


@pytest.mark.parametrize("stream", [True, False])
def test_logprobs_are_asked_fed_and_stored(stream: bool) -> None:
    text = "The sea is calm today, and the boats are out early."
    with ScriptedServer(["echo"], echo_text=text, logprob=-0.123456) as srv:
        if stream:
            eng = engine(srv, stream=True, guard=True)  # logprobs on by default with guard
            assert eng.logprobs and eng.describe()["logprobs"]
        else:
            eng = engine(srv, logprobs=True)
        c = eng.complete(req())
        sent = srv.bodies[-1]
    assert sent["logprobs"] is True and sent["top_logprobs"] == STOP_TOP_LOGPROBS
    if stream:
        assert c.extra["logprobs"] == [-0.1235] * -(-len(text) // 3)
        assert len(c.extra["logprobs"]) == c.completion_tokens
    else:  # the scripted server answers a whole response without logprobs
        assert "logprobs" not in c.extra


@pytest.mark.parametrize("stop", [-2.5, None])
def test_stopping_evidence_is_read_off_the_alternatives_and_stored(stop: float | None
                                                                   ) -> None:
    text = "The sea is calm today, and the boats are out early."
    with ScriptedServer(["echo"], echo_text=text, stop_logprob=stop) as srv:
        c = engine(srv, stream=True, logprobs=True).complete(req())
        only = engine(srv, stream=True, logprobs=True, stop_evidence=False).complete(req())
        assert srv.bodies[-1]["top_logprobs"] == 1
    n = len(c.extra["logprobs"])
    if stop is not None:  # exact: the end token was among the alternatives
        assert c.extra["stop_logprobs"] == [stop] * n and "stop_upper" not in c.extra
    else:  # not among them: below the last one, an upper bound
        assert c.extra["stop_logprobs"] == [-12.0] * n and c.extra["stop_upper"] == [1] * n
    assert "stop_logprobs" not in only.extra and len(only.extra["logprobs"]) == n
    with pytest.raises(InvalidParams, match="stop evidence comes with"):
        OpenAIEngine("http://127.0.0.1:1/v1", logprobs=False, stop_evidence=True)


def test_a_continuation_is_sent_as_the_text_so_far() -> None:
    so_far = Request("r", "p", SamplingParams(max_tokens=300), messages=CHAT,
                     continuation_text="Once upon a time", continued=100)
    path, body = build_body(so_far, "m", "vllm", "auto", stream=True)
    assert path == "/chat/completions" and body["max_tokens"] == 200
    assert body["messages"][-1] == {"role": "assistant", "content": "Once upon a time"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    raw = Request("r", "p", SamplingParams(max_tokens=300), prompt="Q: sky? A:",
                  continuation_text=" Blue", continued=1)
    path, body = build_body(raw, "m", "llamacpp", "auto", stream=False)
    assert path == "/completions" and body["prompt"] == "Q: sky? A: Blue"
    assert body["max_tokens"] == 299
    with ScriptedServer(["echo"]) as srv:  # a server that cannot continue a chat answer
        c = engine(srv, dialect="llamacpp").complete(so_far)
    assert c.finish_reason == "error" and "continue the last assistant message" in c.error
    assert not srv.bodies  # nothing was sent


@pytest.mark.parametrize(("kinds", "reason"), [(True, "runaway"), (("gibberish",), "degenerate")])
def test_babble_with_logprobs_is_judged_with_them(kinds, reason: str) -> None:
    """Tokens the model found this surprising: sure to run away before the babble is
    confirmed (the first look, token 48), and babble when only babble is cut."""
    with ScriptedServer(["echo"], echo_text=BABBLE, logprob=-9.0) as srv:
        c = engine(srv, stream=True, guard=kinds).complete(req())
    assert c.finish_reason == reason and c.is_cut
    assert c.extra["cut"]["evidence"]["measures"]["surprise"] > 5
    assert set(c.extra["logprobs"]) == {-9.0}


def test_a_runaway_look_on_the_chunk_that_ends_the_stream_cuts_nothing() -> None:
    """The stream ended in the chunk where the runaway was predicted (vLLM sends the
    finish_reason with the last text): it is no runaway and nothing was cut (as in the
    local engine, the model's own end wins)."""
    text = "wordy " * 24  # 48 chunks of 3 characters: the last is the first look
    with ScriptedServer(["echo"], echo_text=text, logprob=-9.0, finish_in_last=True) as srv:
        c = engine(srv, stream=True, guard=("runaway",)).complete(req())
    assert c.finish_reason == "stop" and "cut" not in c.extra, c.extra.get("cut")
    assert c.completion_tokens == 48


def test_no_logprobs_unless_asked_or_guarding() -> None:
    with ScriptedServer(["echo"]) as srv:
        c = engine(srv, stream=True).complete(req())
        assert "logprobs" not in srv.bodies[-1] and "logprobs" not in c.extra
        c = engine(srv, stream=True, guard=True, logprobs=False).complete(req())
        assert "logprobs" not in srv.bodies[-1] and "logprobs" not in c.extra


def test_a_server_that_refuses_logprobs_says_what_to_do() -> None:
    with ScriptedServer(["no_logprobs"]) as srv:
        c = engine(srv, stream=True, guard=True).complete(req())
    assert c.finish_reason == "error" and "pass --no-logprobs" in c.error


def test_bad_options() -> None:
    with pytest.raises(InvalidParams, match="dialect must be one of"):
        OpenAIEngine("http://127.0.0.1:1/v1", dialect="tgi")
    with pytest.raises(UsageError, match="api must be one of"):
        OpenAIEngine("http://127.0.0.1:1/v1", api="embeddings")


# ---------------------------------------------------------------- a real llama.cpp server
@pytest.mark.slow
@pytest.mark.parametrize(("api", "stream"), [("chat", True), ("chat", False),
                                             ("completions", True)])
def test_llamacpp_gives_one_logprob_per_token(llamacpp_server, api: str, stream: bool) -> None:
    """llama-cpp-python's server streams ``logprobs.content`` for chat and
    ``token_logprobs`` for completions when asked (``top_logprobs``/``logprobs`` 1)."""
    eng = OpenAIEngine(llamacpp_server.base_url, api=api, stream=stream, logprobs=True,
                       timeout=120)
    try:
        r = Request("lp", "p", SamplingParams(temperature=0, max_tokens=24),
                    messages=CHAT if api == "chat" else None,
                    prompt="The capital of France is" if api == "completions" else None)
        c = eng.complete(r)
    finally:
        eng.close()
    assert c.finish_reason in ("stop", "length"), c.error
    lps = c.extra["logprobs"]
    assert c.completion_tokens and abs(len(lps) - c.completion_tokens) <= 1
    assert all(isinstance(v, float) and v <= 0 and round(v, 4) == v for v in lps)
    # the stopping evidence, off llama.cpp's 20 alternatives (its special tokens are "")
    stops = c.extra["stop_logprobs"]
    upper = c.extra.get("stop_upper") or [0] * len(stops)
    assert len(stops) == len(upper) == len(lps) and all(v <= 0 for v in stops)
    if api == "chat":  # a short answer: its end token is among the alternatives at times
        assert any(not u for u in upper)
