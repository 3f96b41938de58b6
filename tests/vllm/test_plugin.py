"""degen's logits processor inside a real vLLM server (``degen.integrations.vllm``).

The suite's one vLLM server (the ``vllm_server`` fixture) loads the processor with no
``DEGEN_VLLM_CUT``: it is idle for the other tests' requests and acts only for a
request that asks (``vllm_xargs: {"degen": ...}``). Here: the greedy sea poem, a loop
until the cap, ends early with finish reason "stop" and one event; clean answers are
the same with and without it; a bad switch is refused with HTTP 400; the batch
bookkeeping is checked in vLLM's venv with vLLM's own objects; the docs' snippet runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from degen.engines import hf
from degen.prompts import load_prompts
from degen.testing.vllm import VLLMServer, vllm_python
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

PROMPTS = {p.id: p for p in load_prompts()}
SEA = "story-07"  # greedy: the sea poem's last line over and over until the cap
CLEAN = ("qa-01", "qa-02", "code-01", "list-01")  # greedy: answers that do not degenerate
DOC = ROOT / "docs" / "integrations" / "vllm.md"


@pytest.fixture(scope="module")
def client(vllm_server: VLLMServer) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=vllm_server.base_url, api_key="unused", max_retries=0,
                      timeout=900)
    yield c
    c.close()


def chat(client: openai.OpenAI, model: str, prompt_id: str, max_tokens: int,
         xargs: dict[str, Any] | None = None) -> Any:
    extra = {"vllm_xargs": xargs} if xargs is not None else None
    return client.chat.completions.create(
        model=model, messages=list(PROMPTS[prompt_id].messages or ()), temperature=0,
        max_tokens=max_tokens, extra_body=extra)


def events(srv: VLLMServer, label: str) -> list[dict[str, Any]]:
    assert srv.events is not None
    if not srv.events.exists():
        return []
    rows = [json.loads(line) for line in srv.events.read_text().splitlines() if line]
    return [r for r in rows if r.get("id") == label]


def test_the_sea_poem_loop_is_ended_inside_vllm(vllm_server: VLLMServer,
                                                client: openai.OpenAI) -> None:
    free = chat(client, vllm_server.model, SEA, 400)
    assert free.choices[0].finish_reason == "length" and free.usage.completion_tokens == 400
    cut = chat(client, vllm_server.model, SEA, 400, {"degen": True, "degen_id": "sea"})
    text = cut.choices[0].message.content
    # vLLM lets a processor end a sequence only by its end token: "stop", not "repetition"
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 200, cut.usage.completion_tokens
    assert text and free.choices[0].message.content.startswith(text)
    (event,) = events(vllm_server, "sea")
    assert event["kind"] == "loop" and event["finish_reason"] == "repetition"
    assert event["ended"] is True
    # the end token is forced at the step after the watch confirmed the loop
    assert cut.usage.completion_tokens == event["tokens"] + 1
    assert event["evidence"]["repeats"] >= 2
    assert "text" not in event and not any(isinstance(v, str)
                                           for v in event["evidence"].values())
    log = (vllm_server.log_path or Path()).read_text(errors="replace")
    assert re.search(r"degen cut loop: row \d+ id=sea after \d+ tokens", log)


def test_only_the_kinds_a_request_names_are_cut(vllm_server: VLLMServer,
                                                client: openai.OpenAI) -> None:
    r = chat(client, vllm_server.model, SEA, 256, {"degen": "gibberish,spacing",
                                                   "degen_id": "sea-no-loop"})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 256
    assert events(vllm_server, "sea-no-loop") == []


def test_clean_answers_are_the_same_with_and_without_it(vllm_server: VLLMServer,
                                                        client: openai.OpenAI) -> None:
    for pid in CLEAN:
        plain = chat(client, vllm_server.model, pid, 96)
        watched = chat(client, vllm_server.model, pid, 96,
                       {"degen": True, "degen_id": f"clean-{pid}"})
        assert plain.choices[0].message.content, pid
        assert watched.choices[0].message.content == plain.choices[0].message.content, pid
        assert watched.choices[0].finish_reason == plain.choices[0].finish_reason, pid
        assert watched.usage.completion_tokens == plain.usage.completion_tokens, pid
        assert events(vllm_server, f"clean-{pid}") == [], pid


@pytest.mark.parametrize("bad", ["lop", 2])
def test_a_bad_switch_is_refused_with_a_clear_error(vllm_server: VLLMServer,
                                                    client: openai.OpenAI,
                                                    bad: object) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, vllm_server.model, "qa-01", 8, {"degen": bad})
    assert e.value.status_code == 400
    msg = str(e.value)
    assert "vllm_xargs.degen" in msg, msg
    assert ("unknown kind 'lop'" in msg) if bad == "lop" else ("got 2" in msg), msg
    # the server is fine afterwards
    assert chat(client, vllm_server.model, "qa-01", 8).choices[0].message.content


def test_batch_bookkeeping_with_vllms_own_objects(tmp_path: Path) -> None:
    """In vLLM's venv: the class loaded as ``--logits-processors`` loads it, rows added,
    removed, swapped and moved with vLLM's ``BatchUpdate``; the cut follows its request."""
    folder = hf.materialize(hf.resolve_model(None))
    ev = tmp_path / "events.jsonl"
    r = subprocess.run([str(vllm_python(ROOT)), str(Path(__file__).with_name("plugin_unit.py")),
                        str(folder), str(ev)], capture_output=True, text=True, timeout=900,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["subclass"] and out["argmax_invariant"] is False
    assert out["watched_rows"] == [0, 2]  # row 1 did not ask, and the server says none
    assert out["cut_step"] is not None and out["cut_step"] < out["loop_tokens"] // 2
    assert out["forced_at_cut"] == [0] and out["untouched_rows_zero"]
    assert out["clean_cut"] is False
    assert out["placeholder_not_fed"]
    assert out["after_swap"] == [2]  # swapped with row 0: the cut went along
    assert out["after_move_rows"] == [0] and out["after_move"] == [0]
    assert out["after_replace"] == [] and out["replaced_fed"] == 20
    assert out["after_opt_out_rows"] == []
    assert out["counts"] == {"loop": 1}
    assert "unknown kind 'lop'" in out["errors"]["'lop'"]
    assert "got 2" in out["errors"]["2"] and out["errors"]["['loop', 3]"]
    assert out["env_rows"] == [0] and out["env_kinds"] == ["loop"]
    assert "DEGEN_VLLM_CUT" in out["env_error"] and "'loops'" in out["env_error"]
    (event,) = [json.loads(line) for line in ev.read_text().splitlines()]
    assert event["id"] == "looper" and event["kind"] == "loop"
    assert event["tokens"] == out["cut_step"] and event["row"] == 0


def test_the_docs_snippet_runs(vllm_server: VLLMServer) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1
    code = blocks[0].replace("http://localhost:8000/v1", vllm_server.base_url)
    assert vllm_server.base_url in code and vllm_server.model in code
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    finish, tokens = r.stdout.split()
    assert finish == "stop" and int(tokens) < 200
    (event,) = events(vllm_server, "sea-poem")
    assert event["kind"] == "loop" and event["tokens"] + 1 == int(tokens)
