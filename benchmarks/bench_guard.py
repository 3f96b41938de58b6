"""``degen guard`` benchmarks: how early it cuts real loops, what it costs, what it
wrongly cuts.

The guard runs as ``degen guard`` in its own process, in front of a real llama.cpp
server (llama-cpp-python) serving the bundled SmolLM2-135M, as a user would run it.

1. Cuts on real generations: the built-in prompts at greedy decoding (loops on this
   model) streamed through the guard. For each loop cut: the loop's onset (the token
   holding the ``start_char`` of the guard's evidence; the guard's onset is the batch
   verdict's, see tests/detect/test_watch.py), the token where it cut, and the period
   in tokens (tokens spanned by one repetition of the unit); the watch confirms a loop
   after three whole repetitions and 2 units (``3 x period + 2``, 20 units at least).
   Tokens saved: the cap (8192, the guard's default) over the tokens generated when
   cut, for every cut. Goal: median >= 100x.
2. Overhead: prompts that were not cut, each sent straight to llama.cpp and through
   the guard, interleaved (greedy, so both generate the same tokens): tokens/s each
   way (goal: guard / direct >= 0.95) and time to first token, with the guard asking
   for log-probabilities (its default: the upstream computes them) and without
   (``--no-logprobs``: the guard's own cost). Then a fast scripted upstream (no model)
   streaming as fast as it can: the guard's added time per chunk, both ways.
3. False cuts: the 30 legitimately repetitive texts of tests/corpus, streamed through
   the guard by a scripted upstream with their prompts. Goal: 0.

    .venv/bin/python -m benchmarks.bench_guard [--prompts 64] [--max-tokens 256] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
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
from degen.testing.llamacpp import LlamaCppServer, free_port
from degen.testing.scripted import ScriptedServer

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "corpus"
CUT = ("repetition", "degenerate")  # what a guard's cut ends with
CAP = 8192
GREEDY = {"temperature": 0.0, "repeat_penalty": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}


class Guard:
    """``degen guard`` in a subprocess on a free port."""

    def __init__(self, upstream: str, *args: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "degen.cli.app", "guard", "--upstream", upstream,
             "--port", str(self.port), "--log-level", "warning", *args],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("degen guard did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.log.close()


def stream(client: httpx.Client, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed chat completion: the chunks' texts, their arrival times, the last
    chunk's finish_reason and ``degen`` evidence."""
    t0 = time.perf_counter()
    pieces: list[str] = []
    times: list[float] = []
    finish = degen = None
    with client.stream("POST", url + "/chat/completions", json={**body, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for c in chunk.get("choices") or ():
                piece = (c.get("delta") or {}).get("content")
                if piece:
                    pieces.append(piece)
                    times.append(time.perf_counter() - t0)
                if c.get("finish_reason"):
                    finish = c["finish_reason"]
            degen = chunk.get("degen") or degen
    return {"pieces": pieces, "times": times, "finish": finish, "degen": degen,
            "wall": time.perf_counter() - t0}


def token_at(pieces: list[str], char: int) -> int:
    """Index of the piece (token) holding character ``char`` of the joined text."""
    pos = 0
    for i, p in enumerate(pieces):
        if pos + len(p) > char:
            return i
        pos += len(p)
    return len(pieces)


def loops_through_guard(guard: Guard, prompts: list[Any], max_tokens: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    plain: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    with httpx.Client(timeout=600) as client:
        for p in prompts:
            body = {"model": "m", "messages": list(p.messages), "max_tokens": max_tokens,
                    **GREEDY}
            got = stream(client, guard.url, body)
            if got["finish"] not in CUT:
                plain.append({"prompt": p.id, "finish": got["finish"],
                              "tokens": len(got["pieces"])})
                continue
            d = got["degen"]
            if got["finish"] != "repetition":
                others.append({"prompt": p.id, "kind": d["kind"],
                               "cut_at": d["completion_tokens"],
                               "saved_x": CAP / d["completion_tokens"]})
                continue
            cut = d["completion_tokens"]  # tokens generated when cut (the last not relayed)
            onset = token_at(got["pieces"], d["start_char"])
            unit_chars = len(d["evidence"]["unit_text"])
            period = token_at(got["pieces"], d["start_char"] + unit_chars) - onset
            period = max(period, 1)
            rows.append({"prompt": p.id, "onset": onset, "cut_at": cut,
                         "latency": cut - onset, "period_tokens": period,
                         "period_units": d["evidence"]["period"],
                         "latency_units": d["evidence"]["detected_after_units"],
                         "goal": max(20, 3 * period + 2), "saved_x": CAP / cut,
                         "waited": d["evidence"]["waited"],
                         "unit": d["evidence"]["unit_text"][:60]})
            print(f"  {p.id:<16} cut at {cut:>4}  onset {onset:>4}  latency {cut - onset:>3}  "
                  f"period {period:>3}  rule {max(20, 3 * period + 2):>4}  {CAP / cut:6.1f}x  "
                  f"{d['evidence']['unit_text'][:40]!r}", flush=True)
    lat = [r["latency"] for r in rows]
    saved = [r["saved_x"] for r in rows + others]
    return {"prompts": len(prompts), "cuts": len(rows), "rows": rows, "not_cut": plain,
            "other_cuts": others,
            "median_latency": statistics.median(lat) if lat else None,
            "median_goal": statistics.median(r["goal"] for r in rows) if rows else None,
            "within_goal": sum(r["latency"] <= r["goal"] for r in rows),
            "median_saved_x": statistics.median(saved) if saved else None,
            "min_saved_x": min(saved, default=None)}


def overhead(guard: Guard, direct: str, prompts: list[Any], max_tokens: int,
             rounds: int) -> dict[str, Any]:
    """Interleaved direct / guarded requests on prompts that were not cut."""
    acc = {"direct": {"tokens": 0, "seconds": 0.0, "ttft": []},
           "guard": {"tokens": 0, "seconds": 0.0, "ttft": []}}
    pairs: list[float] = []  # guard / direct tokens/s of the same prompt, back to back
    with httpx.Client(timeout=600) as client:
        for r in range(rounds):
            for i, p in enumerate(prompts):
                body = {"model": "m", "messages": list(p.messages), "max_tokens": max_tokens,
                        "stream_options": {"include_usage": True}, **GREEDY}
                order = [("direct", direct), ("guard", guard.url)]
                if (r + i) % 2:
                    order.reverse()
                tps = {}
                for name, url in order:
                    got = stream(client, url, body)
                    a = acc[name]
                    a["tokens"] += len(got["pieces"])
                    a["seconds"] += got["wall"]
                    tps[name] = len(got["pieces"]) / got["wall"]
                    if got["times"]:
                        a["ttft"].append(got["times"][0])
                pairs.append(tps["guard"] / tps["direct"])
    out: dict[str, Any] = {}
    for name, a in acc.items():
        out[name] = {"tokens": a["tokens"], "seconds": a["seconds"],
                     "tokens_per_s": a["tokens"] / a["seconds"],
                     "ttft_median_ms": statistics.median(a["ttft"]) * 1e3}
    out["ratio"] = out["guard"]["tokens_per_s"] / out["direct"]["tokens_per_s"]
    # llama-cpp-python's speed wanders on this VM (22 to 89 tok/s for the same request,
    # no guard involved): the median of back-to-back pairs is the steadier figure
    out["paired_ratio_median"] = statistics.median(pairs)
    out["paired_ratios"] = [round(x, 3) for x in pairs]
    out["ttft_added_ms"] = out["guard"]["ttft_median_ms"] - out["direct"]["ttft_median_ms"]
    out["same_tokens"] = acc["direct"]["tokens"] == acc["guard"]["tokens"]
    return out


def chunk_overhead(chunks: int = 4000, repeats: int = 5, *flags: str) -> dict[str, Any]:
    """Per-chunk cost of relaying through the guard, against an upstream that streams
    ``chunks`` distinct words as fast as it can (with log-probabilities when asked)."""
    with ScriptedServer(["fast"], fast_chunks=chunks) as up:
        g = Guard(up.base_url, *flags)
        try:
            best = {}
            body = {"model": "m", "messages": [{"role": "user", "content": "go"}]}
            with httpx.Client(timeout=120) as client:
                for name, url in (("direct", up.base_url), ("guard", g.url)) * repeats:
                    got = stream(client, url, body)
                    assert len(got["pieces"]) == chunks, (name, len(got["pieces"]))
                    best[name] = min(best.get(name, 1e9), got["wall"])
        finally:
            g.stop()
    added = (best["guard"] - best["direct"]) / chunks
    return {"chunks": chunks, "direct_s": best["direct"], "guard_s": best["guard"],
            "added_us_per_chunk": added * 1e6}


def false_cuts() -> dict[str, Any]:
    texts = [json.loads(line) for line in
             (CORPUS / "legit_repetitive.jsonl").read_text().splitlines()]
    cut = []
    with ScriptedServer(["echo"]) as up:
        g = Guard(up.base_url)
        try:
            with httpx.Client(timeout=60) as client:
                for t in texts:
                    body = {"model": "m", "echo": t["text"],
                            "messages": [{"role": "user", "content": t["prompt"]}]}
                    got = stream(client, g.url, body)
                    if got["finish"] in CUT:
                        cut.append(t["id"])
                    assert got["finish"] in CUT or "".join(got["pieces"]) == t["text"]
        finally:
            g.stop()
    return {"texts": len(texts), "cut": len(cut), "ids": cut}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64, help="built-in prompts for part 1")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--overhead-prompts", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    out: dict[str, Any] = {"cpus": os.cpu_count(), "cap": CAP, "max_tokens": a.max_tokens}

    out["false_cuts"] = fc = false_cuts()
    print(f"false cuts: {fc['cut']} of {fc['texts']} legitimately repetitive texts "
          f"{fc['ids'] or ''}", flush=True)
    for key, flags in (("chunk_overhead", ()), ("chunk_overhead_no_logprobs",
                                                  ("--no-logprobs",))):
        out[key] = co = chunk_overhead(4000, 5, *flags)
        print(f"relay cost{' ' + ' '.join(flags) if flags else ''}: "
              f"{co['added_us_per_chunk']:.0f} us per chunk added ({co['chunks']} chunks: "
              f"{co['direct_s']:.3f} s direct, {co['guard_s']:.3f} s through the guard)",
              flush=True)

    prompts = list(load_prompts())[:a.prompts]
    llama = LlamaCppServer(bundled_model_path(), n_ctx=2048)
    try:
        g = Guard(llama.base_url)
        try:
            print(f"loops: {len(prompts)} prompts, greedy, max_tokens {a.max_tokens}, "
                  "through the guard", flush=True)
            out["loops"] = lp = loops_through_guard(g, prompts, a.max_tokens)
            print(f"loops: {lp['cuts']} cut of {lp['prompts']} (and {len(lp['other_cuts'])} "
                  f"cut as babble or glued); median latency {lp['median_latency']} tokens "
                  f"from onset (median of 3 x period + 2: {lp['median_goal']}); "
                  f"{lp['within_goal']}/{lp['cuts']} within it; tokens saved vs the {CAP} "
                  f"cap, every cut: median {lp['median_saved_x']:.0f}x, "
                  f"min {lp['min_saved_x']:.0f}x", flush=True)
            calm = [p for p in prompts if p.id in {r["prompt"] for r in lp["not_cut"]}]
            out["overhead"] = ov = overhead(g, llama.base_url, calm[:a.overhead_prompts],
                                            a.max_tokens, a.rounds)
        finally:
            g.stop()
        g = Guard(llama.base_url, "--no-logprobs")
        try:
            out["overhead_no_logprobs"] = overhead(g, llama.base_url,
                                                   calm[:a.overhead_prompts], a.max_tokens,
                                                   a.rounds)
        finally:
            g.stop()
        for key in ("overhead", "overhead_no_logprobs"):
            ov = out[key]
            print(f"{key}: {ov['direct']['tokens_per_s']:.1f} tok/s direct, "
                  f"{ov['guard']['tokens_per_s']:.1f} through the guard: ratio "
                  f"{ov['ratio']:.3f} (median of back-to-back pairs "
                  f"{ov['paired_ratio_median']:.3f}); first token "
                  f"{ov['direct']['ttft_median_ms']:.0f} ms vs "
                  f"{ov['guard']['ttft_median_ms']:.0f} ms (+{ov['ttft_added_ms']:.1f} ms); "
                  f"same tokens: {ov['same_tokens']}", flush=True)
    finally:
        llama.stop()
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
