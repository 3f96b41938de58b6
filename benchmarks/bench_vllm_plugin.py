"""degen's logits processor inside vLLM (``degen.integrations.vllm``): what it costs and
what it stops, on the same greedy requests to two vLLM servers started in turn.

- ``plain``: a vLLM server (CPU build, ``.venv-vllm``) without the processor;
- ``degen``: the same server with ``--logits-processors
  degen.integrations.vllm:DegenLogitsProcessor`` and ``DEGEN_VLLM_CUT=all`` (every
  request watched, every kind cut).

Each arm sends the built-in prompts (``degen.prompts``; ``--requests`` of them, cycled)
concurrently, greedy, ``--max-tokens`` each, after one warm-up request, and measures
output tokens per second over the batch (the degen arm makes fewer tokens: its cut
requests end early). The processor's own cost is measured apart: the prompts whose plain
answer ended by itself, sent again on each server, the same tokens either way, their
tokens per second compared. Greedy answers are deterministic, so where
the processor cut nothing the answer must be the plain one token for token (checked);
where it cut, the answer must be a prefix of the plain one. A plain answer that ran to
the cap is a *loop* when its last quarter repeats one unit (``bench_vllm.loop_onset``):
for those, the tokens from the loop's onset to the cut. Then the sea poem (``story-07``,
greedy, ``--sea-max-tokens``) alone on each server: its plain length, the loop's onset,
and the tokens at which the processor ended it.

    .venv/bin/python -m benchmarks.bench_vllm_plugin [--requests 64] [--max-tokens 256] \\
        [--json benchmarks/results/integrations-vllm.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bench_vllm import loop_onset
from degen.engines import hf
from degen.prompts import load_prompts
from degen.testing.vllm import VLLMServer, vllm_python

ROOT = Path(__file__).resolve().parents[1]
MODEL = "SmolLM2-135M-Instruct"
FQCN = "degen.integrations.vllm:DegenLogitsProcessor"
SEA = "story-07"


def ask(client: httpx.Client, url: str, messages: list[Any], max_tokens: int,
        label: str) -> dict[str, Any]:
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0, "return_token_ids": True,
            "vllm_xargs": {"degen_id": label}}
    r = client.post(url + "/chat/completions", json=body)
    r.raise_for_status()
    d = r.json()
    c = d["choices"][0]
    return {"id": label, "text": c["message"]["content"] or "", "finish": c["finish_reason"],
            "tokens": d["usage"]["completion_tokens"], "ids": c.get("token_ids") or []}


def batch(client: httpx.Client, url: str, prompts: list[Any], max_tokens: int,
          concurrency: int, tag: str) -> tuple[list[dict[str, Any]], float]:
    """The prompts sent at once (``concurrency`` at a time): their answers, and the
    seconds until the last one ended."""
    def one(i_p: tuple[int, Any]) -> dict[str, Any]:
        i, p = i_p
        return ask(client, url, list(p.messages), max_tokens, f"{tag}{p.id}#{i}")

    t = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        rows = list(pool.map(one, enumerate(prompts)))
    return rows, time.monotonic() - t


def arm(name: str, folder: Path, prompts: list[Any], max_tokens: int, concurrency: int,
        sea_tokens: int, tmp: Path, clean: list[int] | None = None) -> dict[str, Any]:
    """One server's run: the batch, then the *clean* prompts alone (those whose plain
    answer ended by itself: ``clean``, else this run's own), then the sea poem."""
    events = tmp / f"events-{name}.jsonl"
    on = name == "degen"
    t0 = time.monotonic()
    with VLLMServer(folder, python=vllm_python(ROOT), name=MODEL, log=tmp / f"{name}.log",
                    logits_processors=[FQCN] if on else (),
                    env={"DEGEN_VLLM_CUT": "all" if on else "",
                         "DEGEN_VLLM_EVENTS": str(events)}) as srv:
        started = time.monotonic() - t0
        with httpx.Client(timeout=1800) as client:
            ask(client, srv.base_url, [{"role": "user", "content": "Hi"}], 8, "warm-up")
            rows, wall = batch(client, srv.base_url, prompts, max_tokens, concurrency, "")
            if clean is None:
                clean = [i for i, r in enumerate(rows) if r["finish"] == "stop"]
            clean_rows, clean_wall = batch(client, srv.base_url, [prompts[i] for i in clean],
                                           max_tokens, concurrency, "clean:")
            sea_prompt = next(p for p in load_prompts() if p.id == SEA)
            sea = ask(client, srv.base_url, list(sea_prompt.messages), sea_tokens, "sea")
    cuts = [json.loads(line) for line in events.read_text().splitlines()] \
        if events.exists() else []
    tokens = sum(r["tokens"] for r in rows)
    clean_tokens = sum(r["tokens"] for r in clean_rows)
    print(f"  {name:<6} up in {started:4.0f} s; {len(rows)} requests, {tokens:,} tokens in "
          f"{wall:.1f} s: {tokens / wall:.1f} tok/s; {len(cuts)} cuts; the {len(clean)} "
          f"clean ones alone: {clean_tokens / max(clean_wall, 1e-9):.1f} tok/s", flush=True)
    return {"rows": rows, "sea": sea, "cuts": cuts, "wall_s": round(wall, 2),
            "tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
            "started_s": round(started, 1), "clean": clean, "clean_rows": clean_rows,
            "clean_tokens_per_s": round(clean_tokens / clean_wall, 2) if clean_rows else None}


def compare(plain: dict[str, Any], degen: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    cut_ids = {c["id"]: c for c in degen["cuts"] if not c["id"].startswith("clean:")}
    same = differ = prefix = 0
    loops = stopped_loops = 0
    onset_to_stop: list[int] = []
    cut_rows = []
    for a, b in zip(plain["rows"], degen["rows"], strict=True):
        cut = cut_ids.get(b["id"])
        onset = loop_onset(a["ids"]) if a["finish"] == "length" else None
        loops += onset is not None
        if cut is None:
            if a["ids"] == b["ids"] and a["finish"] == b["finish"]:
                same += 1
            else:
                differ += 1
            continue
        prefix += a["ids"][:len(b["ids"]) - 1] == b["ids"][:-1]  # less the forced end token
        if onset is not None:
            stopped_loops += 1
            onset_to_stop.append(b["tokens"] - onset)
        cut_rows.append({"id": b["id"], "kind": cut["kind"], "plain_finish": a["finish"],
                         "plain_tokens": a["tokens"], "tokens": b["tokens"],
                         "loop_onset": onset})
    clean_same = sum(a["ids"] == b["ids"]
                     for a, b in zip(plain["clean_rows"], degen["clean_rows"], strict=True))
    sea_onset = loop_onset(plain["sea"]["ids"]) if plain["sea"]["finish"] == "length" else None
    sea_cut = cut_ids.get("sea")
    return {
        "requests": len(plain["rows"]), "max_tokens": max_tokens,
        "tokens_per_s": {"plain": plain["tokens_per_s"], "degen": degen["tokens_per_s"]},
        "tokens": {"plain": plain["tokens"], "degen": degen["tokens"]},
        "wall_s": {"plain": plain["wall_s"], "degen": degen["wall_s"]},
        "throughput_ratio": round(degen["tokens_per_s"] / plain["tokens_per_s"], 3),
        "tokens_saved": plain["tokens"] - degen["tokens"],
        "clean": {"requests": len(plain["clean"]), "same_answers": clean_same,
                  "cut": sum(c["id"].startswith("clean:") for c in degen["cuts"]),
                  "tokens_per_s": {"plain": plain["clean_tokens_per_s"],
                                   "degen": degen["clean_tokens_per_s"]},
                  "throughput_ratio": round(degen["clean_tokens_per_s"]
                                            / plain["clean_tokens_per_s"], 3)
                  if plain["clean_rows"] else None},
        "uncut_same": same, "uncut_different": differ, "cut": len(cut_rows),
        "cut_is_prefix_of_plain": prefix, "cut_kinds": dict(sorted(
            {k: sum(r["kind"] == k for r in cut_rows) for k in {r["kind"] for r in cut_rows}}
            .items())),
        "plain_loops": loops, "loops_cut": stopped_loops,
        "median_onset_to_stop": statistics.median(onset_to_stop) if onset_to_stop else None,
        "cuts": cut_rows,
        "sea_poem": {"plain_finish": plain["sea"]["finish"],
                     "plain_tokens": plain["sea"]["tokens"], "loop_onset": sea_onset,
                     "degen_finish": degen["sea"]["finish"], "degen_tokens": degen["sea"]["tokens"],
                     "kind": sea_cut["kind"] if sea_cut else None,
                     "onset_to_stop": degen["sea"]["tokens"] - sea_onset
                     if sea_cut and sea_onset is not None else None},
        "started_s": {"plain": plain["started_s"], "degen": degen["started_s"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--sea-max-tokens", type=int, default=256)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results"
                    / "integrations-vllm.json")
    args = ap.parse_args()
    builtin = load_prompts()
    prompts = [builtin[i % len(builtin)] for i in range(args.requests)]
    folder = hf.materialize(hf.resolve_model(None))
    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-plugin-"))
    print(f"{args.requests} greedy requests x {args.max_tokens} tokens, concurrency "
          f"{args.concurrency}; logs in {tmp}", flush=True)
    plain = arm("plain", folder, prompts, args.max_tokens, args.concurrency,
                args.sea_max_tokens, tmp)
    arms = {"plain": plain, "degen": arm("degen", folder, prompts, args.max_tokens,
                                         args.concurrency, args.sea_max_tokens, tmp,
                                         plain["clean"])}
    res = compare(arms["plain"], arms["degen"], args.max_tokens)
    res["concurrency"] = args.concurrency
    print(f"  throughput degen/plain {res['throughput_ratio']:.3f}; uncut answers the same "
          f"{res['uncut_same']}/{res['uncut_same'] + res['uncut_different']}; cut "
          f"{res['cut']} ({res['cut_kinds']}), loops cut {res['loops_cut']}/"
          f"{res['plain_loops']}, median onset->stop {res['median_onset_to_stop']}", flush=True)
    c = res["clean"]
    print(f"  the {c['requests']} clean requests: degen/plain {c['throughput_ratio']} "
          f"({c['tokens_per_s']['degen']} vs {c['tokens_per_s']['plain']} tok/s), answers "
          f"the same {c['same_answers']}/{c['requests']}, cut {c['cut']}", flush=True)
    s = res["sea_poem"]
    print(f"  sea poem: plain {s['plain_finish']} {s['plain_tokens']} tokens (loop from "
          f"{s['loop_onset']}); degen {s['degen_finish']} {s['degen_tokens']} tokens "
          f"({s['kind']}, {s['onset_to_stop']} after the onset)", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
