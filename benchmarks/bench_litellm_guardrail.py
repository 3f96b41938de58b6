"""What degen's LiteLLM guardrail costs, and how soon it stops a loop.

Three LiteLLM proxies (``.venv-litellm``, one worker each) serve the same upstreams:
``plain`` (no guardrail), ``noop`` (a guardrail whose stream hook relays every chunk
untouched: what LiteLLM's guardrail machinery costs by itself) and ``guardrail``
(:class:`degen.integrations.litellm.DegenGuardrail`):

1. **llama.cpp** (the bundled SmolLM2-135M, greedy: ``temperature=0``, ``top_k=0``,
   ``min_p=0``, ``repeat_penalty=1.0``): the built-in prompts, streamed through each
   proxy in turn (the order rotating). For the answers the guardrail did not cut (the
   same chunks every way), the time per chunk through each proxy: what the guardrail
   adds when a real server generates (mostly noise next to a decode step).
2. **a fast upstream** (:mod:`benchmarks.fast_upstream`: ``--fast-chunks`` chunks as
   fast as the socket takes them, prose that never loops): the same streamed requests
   through each proxy, one at a time; the time per chunk, a ceiling on the proxy's own
   cost (nothing else takes time).
3. **in process**: the guardrail's stream hook alone, in LiteLLM's venv, over
   ``--fast-chunks`` prebuilt ``ModelResponseStream`` chunks of prose, against a hook
   that relays them (best of five): degen's own time per chunk.
4. **loops**: each answer the guardrail cut in (1), and the looping prompt ``story-03``
   at ``--loop-max-tokens``: the kind, the tokens when the watch confirmed it
   (``completion_tokens`` of the evidence), the loop's onset in tokens (llama.cpp's
   ``/extras/tokenize`` of the text before ``start_char``), the tokens from onset to
   stop, and the tokens the plain proxy let the server generate.

    .venv/bin/python -m benchmarks.bench_litellm_guardrail [--prompts 16] [--max-tokens 256]
        [--fast-requests 20] [--fast-chunks 1000]
        [--json benchmarks/results/integrations-litellm.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from degen.engines.hf import bundled_model_path
from degen.prompts import load_prompts
from degen.testing.litellm import GUARDRAIL, LiteLLMProxy, litellm_python, write_config
from degen.testing.llamacpp import LlamaCppServer, free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2"
LOOPING = "story-03"
GREEDY = {"temperature": 0, "top_k": 0, "min_p": 0, "repeat_penalty": 1.0}
ARMS = ("plain", "noop", "guardrail")
QUIET = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}

# a guardrail that relays every chunk: loaded by the proxy from the config's folder
NOOP = """
from litellm.integrations.custom_guardrail import CustomGuardrail


class NoopGuardrail(CustomGuardrail):
    async def async_post_call_streaming_iterator_hook(self, user_api_key_dict, response,
                                                      request_data):
        async for chunk in response:
            yield chunk

    async def async_post_call_success_hook(self, data, user_api_key_dict, response):
        return response
"""

# run in LiteLLM's venv: the stream hook alone, microseconds per chunk
HOOK = """
import asyncio, json, sys, time
from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices
from degen.integrations.litellm import DegenGuardrail
from degen.testing.scripted import _PIECE, prose

n = int(sys.argv[1])
words = _PIECE.findall(" ".join(prose(n)))[:n]
chunks = [ModelResponseStream(id="x", created=1, model="m", choices=[
    StreamingChoices(index=0, delta=Delta(content=w))]) for w in words]
data = {"model": "m", "stream": True, "max_tokens": n + 8,
        "messages": [{"role": "user", "content": "Tell me a story."}]}


async def source():
    for c in chunks:
        yield c


async def relay(user_api_key_dict, response, request_data):
    async for c in response:
        yield c


async def timed(hook):
    t = time.perf_counter()
    got = [c async for c in hook(None, source(), data)]
    assert len(got) == len(chunks), "cut"
    return time.perf_counter() - t


g = DegenGuardrail()
best = {k: min(asyncio.run(timed(h)) for _ in range(5)) for k, h in
        (("relay", relay), ("degen", g.async_post_call_streaming_iterator_hook))}
print(json.dumps({k: 1e6 * v / len(chunks) for k, v in best.items()}))
"""


def stream(url: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed chat request: wall time, chunks with text, text, the finish reason
    and degen's evidence (None when not cut)."""
    t0 = time.perf_counter()
    chunks, parts, finish, degen = 0, [], None, None
    with httpx.stream("POST", url + "/chat/completions", json={**body, "stream": True},
                      headers={"Authorization": f"Bearer {key}"}, timeout=900) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            for ch in ev.get("choices") or ():
                text = (ch.get("delta") or {}).get("content")
                if text:
                    chunks += 1
                    parts.append(text)
                if ch.get("finish_reason"):
                    finish = ch["finish_reason"]
            degen = ev.get("degen") or degen
    return {"s": time.perf_counter() - t0, "chunks": chunks, "text": "".join(parts),
            "finish": finish, "degen": degen}


def reset(upstream: str) -> None:
    """A one-token request of another prompt: llama.cpp reuses the previous request's
    KV cache for a shared prefix, and a greedy answer can then differ (seen on
    ``instruction-06``); after this, every arm's request starts from the same state."""
    httpx.post(upstream + "/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hello."}],
        "max_tokens": 1, **GREEDY}, timeout=900).raise_for_status()


def rotated(i: int) -> tuple[str, ...]:
    """The arms in the order request ``i`` visits them (each goes first in turn)."""
    k = i % len(ARMS)
    return ARMS[k:] + ARMS[:k]


def per_chunk_us(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Microseconds per chunk over ``runs``: all together, and the median and least of
    the requests (the least: the request the busy machine disturbed least)."""
    each = [1e6 * r["s"] / r["chunks"] for r in runs if r["chunks"]]
    total = 1e6 * sum(r["s"] for r in runs) / max(1, sum(r["chunks"] for r in runs))
    return {"mean": round(total, 1), "median": round(statistics.median(each), 1),
            "min": round(min(each), 1)}


def added(by_arm: dict[str, dict[str, float]], arm: str, base: str) -> dict[str, float]:
    return {k: round(by_arm[arm][k] - by_arm[base][k], 1) for k in ("median", "min")}


def onset_tokens(upstream: str, text: str) -> int | None:
    """Tokens of ``text`` by llama.cpp's own tokenizer (llama-cpp-python's extras)."""
    try:
        r = httpx.post(upstream.removesuffix("/v1") + "/extras/tokenize",
                       json={"input": text, "model": MODEL}, timeout=60)
        r.raise_for_status()
        return len(r.json()["tokens"])
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def loop_row(upstream: str, pid: str, cut: dict[str, Any], plain: dict[str, Any]
             ) -> dict[str, Any]:
    d = cut["degen"]
    onset = onset_tokens(upstream, cut["text"][:d["start_char"]]) if d.get(
        "start_char") is not None else None
    return {"prompt": pid, "kind": d["kind"], "finish_reason": cut["finish"],
            "stop_tokens": d["completion_tokens"], "onset_tokens": onset,
            "onset_to_stop_tokens": d["completion_tokens"] - onset if onset is not None
            else None, "plain_tokens": plain["chunks"], "plain_finish": plain["finish"],
            "max_tokens": d["max_tokens"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--loop-max-tokens", type=int, default=512)
    ap.add_argument("--fast-requests", type=int, default=20)
    ap.add_argument("--fast-chunks", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    prompts = [p for p in load_prompts() if p.messages][:a.prompts]
    tmp = Path(tempfile.mkdtemp(prefix="bench-litellm-"))
    fast_port = free_port()
    procs: list[Any] = []
    try:
        fast = subprocess.Popen([sys.executable, "-m", "benchmarks.fast_upstream", "--port",
                                 str(fast_port), "--chunks", str(a.fast_chunks)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(fast)
        server = LlamaCppServer(bundled_model_path(), log=tmp / "llama.log")
        procs.append(server)
        fast_url = f"http://127.0.0.1:{fast_port}/v1"
        (tmp / "bench_noop_guardrail.py").write_text(NOOP)
        proxies = {}
        t0 = time.perf_counter()
        for arm in ARMS:
            cfg = write_config(tmp / f"{arm}.yaml", server.base_url, MODEL,
                               guardrail=arm != "plain", more_models={"fast": fast_url},
                               guardrail_class="bench_noop_guardrail.NoopGuardrail"
                               if arm == "noop" else GUARDRAIL)
            proxies[arm] = LiteLLMProxy(cfg, python=litellm_python(ROOT),
                                        log=tmp / f"{arm}.log")
            procs.append(proxies[arm])
        started_s = time.perf_counter() - t0

        def ask(arm: str, body: dict[str, Any]) -> dict[str, Any]:
            px = proxies[arm]
            if body["model"] == MODEL:  # the same cache state before every request
                reset(server.base_url)
            return stream(px.base_url, px.api_key, body)

        # 1. llama.cpp, the same greedy requests through both proxies
        for arm in ARMS:  # warm-up
            ask(arm, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                      "max_tokens": 4, **GREEDY})
        runs: dict[str, dict[str, dict[str, Any]]] = {arm: {} for arm in ARMS}
        for i, p in enumerate(prompts):
            body = {"model": MODEL, "messages": list(p.messages or ()),
                    "max_tokens": a.max_tokens, **GREEDY}
            for arm in rotated(i):
                runs[arm][p.id] = ask(arm, body)
        same = [pid for pid, g in runs["guardrail"].items() if g["degen"] is None]
        unchanged = sum(runs["guardrail"][pid]["text"] == runs["plain"][pid]["text"]
                        for pid in same)
        llama = {arm: per_chunk_us([runs[arm][pid] for pid in same]) for arm in ARMS}

        # 2. the fast upstream: the proxy's own cost per chunk
        fast_runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
        body = {"model": "fast", "messages": [{"role": "user", "content": "Go."}],
                "max_tokens": a.fast_chunks + 8}
        for arm in ARMS:
            ask(arm, body)
        for i in range(a.fast_requests):
            for arm in rotated(i):
                fast_runs[arm].append(ask(arm, body))
        fast_cut = sum(r["degen"] is not None for r in fast_runs["guardrail"])

        # 3. loops: the cut answers of (1) and the looping prompt
        loops = [loop_row(server.base_url, pid, g, runs["plain"][pid])
                 for pid, g in runs["guardrail"].items() if g["degen"] is not None]
        loop_prompt = next(p for p in load_prompts() if p.id == LOOPING)
        body = {"model": MODEL, "messages": list(loop_prompt.messages or ()),
                "max_tokens": a.loop_max_tokens, **GREEDY}
        g, pl = ask("guardrail", body), ask("plain", body)
        if g["degen"] is not None:
            loops.append(loop_row(server.base_url, f"{LOOPING}@{a.loop_max_tokens}", g, pl))
    finally:
        for proc in reversed(procs):
            if isinstance(proc, subprocess.Popen):
                proc.terminate()
                proc.wait(30)
            else:
                proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    hook = json.loads(subprocess.run(
        [str(litellm_python(ROOT)), "-c", HOOK, str(a.fast_chunks)], cwd=ROOT, check=True,
        capture_output=True, text=True, env={**os.environ, **QUIET}, timeout=900).stdout)
    fast = {arm: per_chunk_us(fast_runs[arm]) for arm in ARMS}
    out = {
        "setup": {"litellm": "1.108.5", "proxies_started_s": round(started_s, 1),
                  "model": "SmolLM2-135M-Instruct Q4_1 (llama-cpp-python server)",
                  "prompts": len(prompts), "max_tokens": a.max_tokens,
                  "fast_requests": a.fast_requests, "fast_chunks": a.fast_chunks},
        "llamacpp": {"answers_compared": len(same), "answers_cut": len(prompts) - len(same),
                     "unchanged_text": unchanged, "chunks": sum(
                         runs["plain"][pid]["chunks"] for pid in same),
                     "us_per_chunk": llama,
                     "guardrail_added_us_per_chunk": added(llama, "guardrail", "plain")},
        "fast_upstream": {"us_per_chunk": fast,
                          "litellm_guardrail_machinery_us_per_chunk": added(
                              fast, "noop", "plain"),
                          "degen_watch_us_per_chunk": added(fast, "guardrail", "noop"),
                          "guardrail_added_us_per_chunk": added(fast, "guardrail", "plain"),
                          "cut": fast_cut},
        "in_process_us_per_chunk": {k: round(v, 1) for k, v in hook.items()} | {
            "degen_added": round(hook["degen"] - hook["relay"], 1)},
        "loops": loops,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
