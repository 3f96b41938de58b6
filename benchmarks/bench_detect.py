"""Detector benchmarks.

1. Streaming loop detector cost: microseconds per token fed, on 1K, 10K and 100K
   tokens of non-repeating text (Zipf-distributed token ids, like real text), token
   path and text-delta path. Goal: <= 5 us/token, flat in length.
2. Detection latency on real loops: the bundled model, greedy, 64 built-in prompts,
   256 tokens; for every completion that ends in a loop, tokens from the loop's onset
   (found afterwards on the whole sequence) to the streaming detector's answer.
   Goal: median <= 2.5 x period + 16.
3. ``degen scan`` throughput: completions judged per second by every detector.

    .venv/bin/python -m benchmarks.bench_detect [--skip-model] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from degen.detect.loop import StreamingLoopDetector, measure
from degen.detect.verdict import default_detectors, judge
from degen.records import Completion, SamplingParams


def zipf_tokens(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return (rng.zipf(1.3, size=n) % 49152).tolist()


def stream_cost(n: int) -> dict[str, float]:
    toks = zipf_tokens(n)
    d = StreamingLoopDetector()
    t0 = time.perf_counter()
    for t in toks:
        d.feed_token(t)
    tok_us = (time.perf_counter() - t0) / n * 1e6
    assert d.finding is None, "random text should not loop"
    words = [f"w{t}" for t in toks]
    text = " ".join(words) + " "
    deltas = [text[i:i + 6] for i in range(0, len(text), 6)]  # ~1 token's worth per delta
    d = StreamingLoopDetector()
    t0 = time.perf_counter()
    for piece in deltas:
        d.feed_text(piece)
    text_us = (time.perf_counter() - t0) / n * 1e6
    return {"tokens": n, "token_path_us": tok_us, "text_path_us": text_us}


def loop_latency(requests: int) -> dict[str, Any]:
    from degen.engines.local import LocalEngine
    from degen.load.schedule import Plan
    from degen.prompts import load_prompts

    plan = Plan(prompts=tuple(load_prompts()), requests=requests,
                params=SamplingParams(temperature=0, max_tokens=256))
    with LocalEngine(batch_size=32) as eng:
        cs = eng.generate(plan.requests_for(0), concurrency=requests)
    rows = []
    for c in cs:
        ids = list(c.token_ids or ())
        d = StreamingLoopDetector()
        at = None
        for k, t in enumerate(ids):
            if d.feed_token(t) is not None:
                at = k + 1
                break
        if at is None:
            continue
        f = d.finding
        p = f.evidence["period"]
        # the true onset: earliest start of the periodic region ending where it was found
        onset = f.start_unit
        while onset > 0 and ids[onset - 1] == ids[onset - 1 + p]:
            onset -= 1
        extent = measure(ids, onset, p)
        rows.append({"request": c.request_id, "period": p, "onset": onset, "detected_at": at,
                     "latency": at - onset, "goal": 2.5 * p + 16,
                     "to_end": onset + extent >= len(ids), "saved": len(ids) - at})
    lat = [r["latency"] for r in rows]
    goals = [r["goal"] for r in rows]
    return {"completions": len(cs), "loops": len(rows), "rows": rows,
            "median_latency": statistics.median(lat) if lat else None,
            "median_goal": statistics.median(goals) if goals else None,
            "within_goal": sum(r["latency"] <= r["goal"] for r in rows)}


def scan_throughput(n: int = 600) -> dict[str, float]:
    samples = [
        "To make green tea that is not bitter, heat the water to about 80 degrees, use one "
        "teaspoon per cup and steep for two to three minutes. " * 3,
        "Once upon a time. " + "The end. " * 40,
        "The album wasreleasedinSeptember and rankednumberone for fourweeks on the chart. " * 3,
        "Havok! Ein weilen Sand german zum Eisen und yeses. Egadu has meant of helps with hii "
        "worldwide vor Gott wllbe ingines heiress Horstloppar He in Busche Versuche ab " * 2,
    ]
    cs = [Completion(str(i), "p", SamplingParams(), finish_reason="stop",
                     text=samples[i % len(samples)] + f" {i}") for i in range(n)]
    dl = default_detectors()
    judge(cs[0], dl)  # load word lists
    t0 = time.perf_counter()
    for c in cs:
        judge(c, dl)
    dt = time.perf_counter() - t0
    return {"completions": n, "per_s": n / dt, "ms_each": dt / n * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    out: dict[str, Any] = {"stream": [stream_cost(n) for n in (1_000, 10_000, 100_000)]}
    for r in out["stream"]:
        print(f"stream {r['tokens']:>7} tokens: {r['token_path_us']:.2f} us/token (ids), "
              f"{r['text_path_us']:.2f} us/token (text deltas)", flush=True)
    out["scan"] = scan_throughput()
    print(f"scan: {out['scan']['per_s']:.0f} completions/s "
          f"({out['scan']['ms_each']:.2f} ms each)", flush=True)
    if not a.skip_model:
        lat = loop_latency(a.requests)
        out["latency"] = lat
        print(f"real loops: {lat['loops']} of {lat['completions']} greedy completions; median "
              f"latency {lat['median_latency']} tokens (median goal {lat['median_goal']}); "
              f"{lat['within_goal']}/{lat['loops']} within 2.5 x period + 16")
        for r in lat["rows"]:
            print(f"  {r['request']:>6} period {r['period']:>3} onset {r['onset']:>3} "
                  f"found at {r['detected_at']:>3} latency {r['latency']:>3} goal {r['goal']:.0f}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
