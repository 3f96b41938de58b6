"""Engine throughput on the bundled model: 64 prompts, up to 256 new tokens each.

Three ways to run the same 64 greedy requests (the built-in suite):

1. ``local`` batched: continuous batching, batch size 32, all 64 submitted at once;
2. ``local`` one at a time: batch size 1, one request after another;
3. ``openai`` engine against a real llama.cpp server (llama-cpp-python) serving the
   same GGUF on 127.0.0.1, concurrency 4 — what a user would run instead;
4. ``openai`` engine against a real vLLM server (CPU build, ``.venv-vllm``) serving
   degen's cached checkpoint of the same model in float32, concurrency 16 (vLLM
   batches what is in flight).

Greedy decoding makes 1 and 2 produce the same tokens (tests prove it), so their
tokens/s compare like for like, and vLLM's float32 greedy answers are the local
engine's (tests/vllm prove it on four prompts). llama.cpp runs the quantized weights
and may produce different (similar-length) answers; its tokens/s is its own count.

    .venv/bin/python -m benchmarks.bench_engines [--requests 64] [--skip-single]
        [--skip-llamacpp] [--skip-vllm] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from degen.engines.base import Engine
from degen.engines.hf import bundled_model_path
from degen.engines.local import LocalEngine
from degen.engines.openai import OpenAIEngine
from degen.experiments.load.schedule import Plan
from degen.prompts import load_prompts
from degen.records import SamplingParams


def timed(name: str, engine: Engine, plan: Plan, concurrency: int) -> dict[str, Any]:
    reqs = plan.requests_for(0)
    t0 = time.perf_counter()
    cs = engine.generate(reqs, concurrency=concurrency)
    wall = time.perf_counter() - t0
    tokens = sum(c.completion_tokens or 0 for c in cs)
    row = {"name": name, "requests": len(cs), "errors": sum(c.is_error for c in cs),
           "runaways": sum(c.is_capped for c in cs), "tokens": tokens, "wall_s": wall,
           "tok_s": tokens / wall}
    print(f"{name:<28} {tokens:>6} tokens in {wall:7.1f} s = {row['tok_s']:7.1f} tok/s "
          f"(runaways {row['runaways']}, errors {row['errors']})", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--skip-single", action="store_true")
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    plan = Plan(prompts=tuple(load_prompts()), requests=a.requests,
                params=SamplingParams(temperature=0, max_tokens=a.max_tokens))
    rows = []
    eng = LocalEngine(batch_size=32)
    eng.load()
    eng.generate(plan.requests_for(0)[:2])  # warm-up
    rows.append(timed("local batched (32)", eng, plan, a.requests))
    eng.close()
    if not a.skip_single:
        one = LocalEngine(batch_size=1)
        one.load()
        rows.append(timed("local one at a time", one, plan, 1))
        one.close()
    if not a.skip_llamacpp:
        from degen.testing.llamacpp import LlamaCppServer

        srv = LlamaCppServer(bundled_model_path())
        try:
            oa = OpenAIEngine(srv.base_url, timeout=600)
            oa.generate(plan.requests_for(0)[:2], concurrency=1)  # warm-up
            rows.append(timed("openai -> llama.cpp server", oa, plan, 4))
            oa.close()
        finally:
            srv.stop()
    if not a.skip_vllm:
        import tempfile

        from degen.engines import hf
        from degen.testing.vllm import VLLMServer, vllm_python

        root = Path(__file__).resolve().parents[1]
        t0 = time.perf_counter()
        with VLLMServer(hf.materialize(hf.resolve_model(None)), python=vllm_python(root),
                        log=Path(tempfile.mkdtemp()) / "vllm.log") as vs:
            print(f"vLLM answered after {time.perf_counter() - t0:.0f} s", flush=True)
            oa = OpenAIEngine(vs.base_url, timeout=600)
            oa.generate(plan.requests_for(0)[:2], concurrency=1)  # warm-up
            rows.append(timed("openai -> vLLM server", oa, plan, 16))
            oa.close()
    by = {r["name"]: r["tok_s"] for r in rows}
    ratios = {}
    if "local one at a time" in by:
        ratios["batched / one at a time"] = by["local batched (32)"] / by["local one at a time"]
    if "openai -> llama.cpp server" in by:
        ratios["local batched / llama.cpp"] = (by["local batched (32)"]
                                               / by["openai -> llama.cpp server"])
    if "openai -> vLLM server" in by:
        ratios["local batched / vLLM"] = by["local batched (32)"] / by["openai -> vLLM server"]
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    if a.json:
        a.json.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows, "ratios": ratios},
                                     indent=1))


if __name__ == "__main__":
    main()
