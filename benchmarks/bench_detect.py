"""Watch benchmarks: cost per token, scan throughput, and how soon real loops are cut.

1. Cost per token with every kind watched, the text fed as a server streams it (a
   delta of about 4 characters, a token): on plain prose that never repeats (so the
   watch reads to the end) at 1K, 10K and 100K tokens, and over the labelled dev set
   (degenerate texts included, each read until the watch has found every kind it can).
   Goal: <= 10 us per token, flat in length.
2. ``degen scan`` throughput on the dev set: completions judged per second by the
   library on one core (the watch, the runaway detector and the metrics), and by the
   CLI with --jobs 1 and 2. Goal: >= 300 completions/s per core.
3. Real loops (``--model``): the bundled model, greedy, 64 built-in prompts, 256 tokens,
   with the engine's guard: for every generation cut as a loop, tokens from the loop's
   onset to the cut.

    .venv/bin/python -m benchmarks.bench_detect [--model] [--json F]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.corpus import load
from degen.detect import lexicon
from degen.detect.watch import Watch
from degen.testing.scripted import prose_words

DELTA = 4  # characters per delta: about a token
REPEATS = 3  # each timing is the best of this many (a shared VM's clock wanders)


def _deltas(text: str) -> list[str]:
    return [text[i:i + DELTA] for i in range(0, len(text), DELTA)]


def stream_cost(tokens: int, seed: int = 1) -> dict[str, float]:
    """Microseconds per delta on prose that never repeats, read to the end."""
    text = ""
    words = prose_words(seed)
    while len(text) < tokens * DELTA:
        text += " ".join(itertools.islice(words, 1000)) + " "
    deltas = _deltas(text[:tokens * DELTA])
    best = float("inf")
    for _ in range(REPEATS):
        w = Watch("Tell me a long story.")
        t0 = time.perf_counter()
        for d in deltas:
            w.feed(d)
        w.finish()
        best = min(best, time.perf_counter() - t0)
        assert not w.findings, f"prose should be clean: {w.findings}"
    return {"tokens": len(deltas), "us_per_token": best / len(deltas) * 1e6}


def corpus_cost(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Microseconds per delta over whole texts, as the guard reads them."""
    feeds = [(r["prompt"], _deltas(r["text"])) for r in rows]
    n = sum(len(d) for _, d in feeds)
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for prompt, deltas in feeds:
            w = Watch(prompt)
            for d in deltas:
                w.feed(d)
            w.finish()
        best = min(best, time.perf_counter() - t0)
    return {"texts": len(rows), "tokens": n, "us_per_token": best / n * 1e6}


def scan_throughput(rows: list[dict[str, Any]], jobs: tuple[int, ...] = (1, 2)
                    ) -> dict[str, Any]:
    from degen.detect.verdict import default_detectors, judge
    from degen.records import Completion, SamplingParams

    cs = [Completion(r["id"], r["id"], SamplingParams(), finish_reason="length",
                     text=r["text"], prompt=r["prompt"]) for r in rows]
    dl = default_detectors()
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for c in cs:
            judge(c, dl)
        best = min(best, time.perf_counter() - t0)
    lib = len(cs) / best
    out: dict[str, Any] = {"completions": len(cs), "library_per_s": lib}
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "dev.jsonl"
        copies = 4  # a file big enough that start-up does not dominate
        f.write_text("".join(json.dumps({"id": f"{k}-{r['id']}", "text": r["text"],
                                         "prompt": r["prompt"]}) + "\n"
                             for k in range(copies) for r in rows))
        degen = str(Path(sys.executable).parent / "degen")
        for j in jobs:
            t0 = time.perf_counter()
            subprocess.run([degen, "scan", str(f), "--jobs", str(j), "--format", "jsonl"],
                           check=True, stdout=subprocess.DEVNULL, env=os.environ)
            out[f"cli_jobs{j}_per_s"] = copies * len(rows) / (time.perf_counter() - t0)
    return out


def real_loops(requests: int) -> dict[str, Any]:
    from degen.engines.local import LocalEngine
    from degen.experiments.load.schedule import Plan
    from degen.prompts import load_prompts
    from degen.records import SamplingParams

    plan = Plan(prompts=tuple(load_prompts()), requests=requests,
                params=SamplingParams(temperature=0, max_tokens=256))
    with LocalEngine(batch_size=32, guard=True) as eng:
        cs = eng.generate(plan.requests_for(0), concurrency=requests)
        tok = eng.tokenizer
    rows = []
    for c in cs:
        cut = (c.extra or {}).get("cut")
        if c.finish_reason != "repetition" or not cut:
            continue
        onset = len(tok(c.text[:cut["start_char"]], add_special_tokens=False)["input_ids"])
        rows.append({"request": c.request_id, "period": cut["evidence"].get("period"),
                     "onset_token": onset, "cut_at": c.completion_tokens,
                     "latency": (c.completion_tokens or 0) - onset})
    lat = [r["latency"] for r in rows]
    return {"completions": len(cs), "cut": len(rows), "rows": rows,
            "by_reason": {k: sum(c.finish_reason == k for c in cs)
                          for k in ("stop", "length", "repetition", "degenerate")},
            "median_tokens_onset_to_cut": statistics.median(lat) if lat else None,
            "tokens": sum(c.completion_tokens or 0 for c in cs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="store_true", help="also the bundled model's loops")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    lexicon.lexicon()
    rows = load(("dev",))
    stream_cost(2_000, seed=2)  # warm the word caches, as a running guard has them
    out: dict[str, Any] = {"stream": [stream_cost(n) for n in (1_000, 10_000, 100_000)]}
    for r in out["stream"]:
        print(f"prose, {r['tokens']:>7} tokens: {r['us_per_token']:.2f} us/token", flush=True)
    out["corpus"] = corpus_cost(rows)
    print(f"dev set ({out['corpus']['texts']} texts, {out['corpus']['tokens']} tokens): "
          f"{out['corpus']['us_per_token']:.2f} us/token", flush=True)
    out["scan"] = scan_throughput(rows)
    print("scan: " + ", ".join(f"{k} {v:.0f}" for k, v in out["scan"].items()), flush=True)
    if a.model:
        out["loops"] = real_loops(a.requests)
        lo = out["loops"]
        print(f"bundled model, greedy, {lo['completions']} prompts: {lo['by_reason']}; "
              f"{lo['cut']} loops cut, median {lo['median_tokens_onset_to_cut']} tokens from "
              f"onset to cut")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
