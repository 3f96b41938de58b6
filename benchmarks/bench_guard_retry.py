"""``degen guard --on-degenerate retry``: the share of requests that end with a good
answer, against a plain cut.

One llama.cpp server (llama-cpp-python, the bundled SmolLM2-135M, Q4_1, n_ctx 2048)
and two ``degen guard`` processes in front of it, as a user would run them:

- **cut**: the default, a degenerate generation is cut and the client gets the cut
  answer (finish_reason "repetition" or "degenerate", evidence in "degen");
- **retry**: ``--on-degenerate retry --retry-param temperature=0.3 --retry-param
  min_p=0.1``: a request cut before any of its text reached the client (every
  non-streaming request) is sent once more with those parameters on top, and the
  client gets that second answer.

Both guards run with ``--no-logprobs``: llama-cpp-python computes log-probabilities in
Python for every token (a sort of the whole vocabulary), a third of its speed; the
guard then judges on the text alone, as ``degen scan`` does on a file of texts.

The requests are sampled at settings that babble (default temperature 1.5, top_p 1,
min_p 0, top_k 0 = off in llama.cpp, repeat_penalty 1), 256 max tokens, non-streaming
chat completions of the built-in prompts, one at a time (llama-cpp-python serves one
request at a time). Each prompt goes to both guards with the same ``seed`` (llama.cpp
honours it), back to back, the order alternating by prompt.

An answer is **good** when its finish_reason is "stop" (not "length", not a cut) and
the project's batch verdict (:func:`degen.detect.verdict.judge`, what ``degen scan``
runs: the same watch as the guard, read to the end, with the prompt) finds nothing
degenerate in its final text. Reported: the good share of each arm with its Wilson 95%
interval, the paired difference (Newcombe's interval) with the exact McNemar test, the
retries by outcome (guard B's ``degen:retries_total``), tokens generated upstream (a
retried request's cut first attempt included, from per-request /metrics differences:
``degen:cut_after_tokens`` and ``degen:generation_tokens_total``) and the mean wall
time per request.

    .venv/bin/python -m benchmarks.bench_guard_retry [--prompts 48] [--json F]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bench_guard import Guard
from degen.detect.inputs import completion_from_obj
from degen.detect.verdict import default_detectors, judge
from degen.engines.hf import bundled_model_path
from degen.guard.metrics import parse_page, sample
from degen.prompts import load_prompts
from degen.stats import mcnemar_exact_p, paired_difference, wilson_interval
from degen.testing.llamacpp import LlamaCppServer

RETRY_PARAMS = {"temperature": 0.3, "min_p": 0.1}
ARMS = ("cut", "retry")


def babble(temperature: float) -> dict[str, Any]:
    return {"temperature": temperature, "top_p": 1.0, "min_p": 0.0, "top_k": 0,
            "repeat_penalty": 1.0}


def scrape(guard: Guard, client: httpx.Client, answered: int) -> str:
    """The guard's /metrics page once ``answered`` responses are counted on it (a
    request is accounted for just after its answer is sent)."""
    deadline = time.monotonic() + 10
    while True:
        page = client.get(guard.base + "/metrics").text
        if sample(page, "degen:responses_total") >= answered or time.monotonic() > deadline:
            return page
        time.sleep(0.02)


COUNTERS = ("degen:generation_tokens_total", "degen:cut_after_tokens_sum",
            "degen:cut_after_tokens_count")


def counters(page: str) -> dict[str, float]:
    out = {n: sample(page, n) for n in COUNTERS}
    for o in ("ok", "cut", "error"):
        out["retry_" + o] = sample(page, "degen:retries_total", outcome=o)
    return out


def ask(guard: Guard, client: httpx.Client, prompt: Any, body: dict[str, Any],
        answered: int, before: dict[str, float], detectors: Any
        ) -> tuple[dict[str, Any], dict[str, float]]:
    """One request; its row and the guard's counters after it."""
    t0 = time.perf_counter()
    r = client.post(guard.url + "/chat/completions", json=body)
    wall = time.perf_counter() - t0
    r.raise_for_status()
    answer = r.json()
    after = counters(scrape(guard, client, answered))
    d = {k: after[k] - before[k] for k in after}
    choice = answer["choices"][0]
    finish = choice["finish_reason"]
    text = choice["message"].get("content") or ""
    cut = "degen" in answer
    # the verdict `degen scan` gives this response object, judged with its prompt
    completion = dataclasses.replace(completion_from_obj(answer, 0),
                                     messages=tuple(prompt.messages))
    verdict = judge(completion, detectors)
    outcome = next((o for o in ("ok", "cut", "error") if d["retry_" + o]), None)
    # tokens generated upstream: the answer's, plus a retried request's cut first attempt
    # (every cut's tokens are observed in cut_after; the final answer's, cut or not, in
    # generation_tokens)
    final_tokens = int(d["degen:generation_tokens_total"])
    first_tokens = 0
    if outcome is not None:
        first_tokens = int(d["degen:cut_after_tokens_sum"]) - (final_tokens if cut else 0)
    return {"prompt": prompt.id, "seed": body["seed"], "finish": finish, "cut": cut,
            "cut_kind": answer["degen"]["kind"] if cut else None,
            "completion_tokens": (answer.get("usage") or {}).get("completion_tokens"),
            "upstream_tokens": final_tokens + first_tokens,
            "retried": outcome is not None, "retry_outcome": outcome,
            "first_attempt_tokens": first_tokens if outcome is not None else None,
            "wall_s": round(wall, 3), "judged_degenerate": verdict["degenerate"],
            "judged_kinds": verdict["kinds"],
            "good": finish == "stop" and not verdict["degenerate"], "text": text}, after


def run(guards: dict[str, Guard], prompts: list[Any], sampling: dict[str, Any],
        max_tokens: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {a: [] for a in guards}
    detectors = default_detectors()
    with httpx.Client(timeout=900) as client:
        before = {a: counters(scrape(g, client, 0)) for a, g in guards.items()}
        for i, p in enumerate(prompts):
            body = {"model": "m", "messages": list(p.messages), "max_tokens": max_tokens,
                    "seed": seed + i, **sampling}
            order = list(guards) if i % 2 == 0 else list(reversed(guards))
            for arm in order:
                row, before[arm] = ask(guards[arm], client, p, body, i + 1, before[arm],
                                       detectors)
                rows[arm].append(row)
            a, b = (rows[x][-1] for x in ARMS)
            retry = (f"retried ({b['retry_outcome']}, first {b['first_attempt_tokens']} tok)"
                     if b["retried"] else "")
            print(f"  {p.id:<16} cut: {a['finish']:<10} {a['completion_tokens']:>4} tok "
                  f"{'good' if a['good'] else 'bad ':<4} {a['wall_s']:5.1f}s | retry: "
                  f"{b['finish']:<10} {b['completion_tokens']:>4} tok "
                  f"{'good' if b['good'] else 'bad ':<4} {b['wall_s']:5.1f}s {retry}",
                  flush=True)
    return rows


def arm_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    good = sum(r["good"] for r in rows)
    lo, hi = wilson_interval(good, n)
    stop_bad = sum(r["finish"] == "stop" and r["judged_degenerate"] for r in rows)
    return {"n": n, "good": good, "good_share": good / n if n else None,
            "good_ci95": [lo, hi],
            "finish_reasons": {f: sum(r["finish"] == f for r in rows)
                               for f in sorted({r["finish"] for r in rows})},
            "cut": sum(r["cut"] for r in rows),
            "stop_but_judged_degenerate": stop_bad,
            "completion_tokens": sum(r["completion_tokens"] or 0 for r in rows),
            "upstream_tokens": sum(r["upstream_tokens"] for r in rows),
            "wall_s": sum(r["wall_s"] for r in rows),
            "mean_wall_s": statistics.mean(r["wall_s"] for r in rows) if rows else None}


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=48, help="built-in prompts, in order")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0, help="seed of the first prompt (+1 each)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    prompts = list(load_prompts())[:a.prompts]
    sampling = babble(a.temperature)
    retry_flags = ["--on-degenerate", "retry"]
    for k, v in RETRY_PARAMS.items():
        retry_flags += ["--retry-param", f"{k}={v}"]
    out: dict[str, Any] = {
        "cpus": os.cpu_count(), "model": bundled_model_path().name, "upstream":
        "llama-cpp-python server, n_ctx 2048", "prompts": len(prompts),
        "max_tokens": a.max_tokens, "sampling": sampling, "seeds": [a.seed,
                                                                      a.seed + len(prompts) - 1],
        "guard_flags": {"cut": ["--no-logprobs"], "retry": ["--no-logprobs", *retry_flags]},
        "retry_params": RETRY_PARAMS,
        "good": "finish_reason stop and the batch verdict (degen.detect.verdict.judge) "
                "finds nothing degenerate in the final text"}
    print(f"{len(prompts)} prompts, {a.max_tokens} max tokens, {sampling}, seeds "
          f"{a.seed}..{a.seed + len(prompts) - 1}; guards --no-logprobs; retry with "
          f"{RETRY_PARAMS}", flush=True)
    t0 = time.monotonic()
    llama = LlamaCppServer(bundled_model_path(), n_ctx=2048)
    guards: dict[str, Guard] = {}
    try:
        guards["cut"] = Guard(llama.base_url, "--no-logprobs")
        guards["retry"] = Guard(llama.base_url, "--no-logprobs", *retry_flags)
        rows = run(guards, prompts, sampling, a.max_tokens, a.seed)
        page = httpx.get(guards["retry"].base + "/metrics", timeout=10).text
    finally:
        for g in guards.values():
            g.stop()
        llama.stop()
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["retries_total"] = {lab.get("outcome", ""): v for n, lab, v in parse_page(page)
                            if n == "degen:retries_total"}
    out["arms"] = {arm: arm_summary(rows[arm]) for arm in ARMS}
    fails = [(not x["good"], not y["good"]) for x, y in zip(rows["cut"], rows["retry"],
                                                            strict=True)]
    both = sum(x and y for x, y in fails)
    only_cut = sum(x and not y for x, y in fails)
    only_retry = sum(y and not x for x, y in fails)
    neither = sum(not x and not y for x, y in fails)
    # failure rate of cut minus that of retry = good share of retry minus that of cut
    diff, lo, hi = paired_difference(both, only_cut, only_retry, neither)
    p = mcnemar_exact_p(only_cut, only_retry)
    out["paired"] = {"both_bad": both, "only_cut_bad": only_cut, "only_retry_bad": only_retry,
                     "both_good": neither, "retry_minus_cut": diff, "ci95": [lo, hi],
                     "mcnemar_exact_p": p}
    out["rows"] = rows

    s = out["arms"]
    print()
    for arm in ARMS:
        x = s[arm]
        print(f"{arm:>5}: good {x['good']}/{x['n']} = {pct(x['good_share'])} "
              f"({pct(x['good_ci95'][0])}-{pct(x['good_ci95'][1])}); finish "
              f"{x['finish_reasons']}; stop but judged degenerate "
              f"{x['stop_but_judged_degenerate']}; tokens {x['completion_tokens']} in answers, "
              f"{x['upstream_tokens']} generated upstream; mean {x['mean_wall_s']:.2f} s a "
              f"request ({x['wall_s']:.0f} s)")
    pr = out["paired"]
    print(f"retry - cut: {100 * diff:+.1f} points ({100 * lo:+.1f} to {100 * hi:+.1f}); "
          f"discordant pairs {only_cut} (only cut bad) / {only_retry} (only retry bad), "
          f"exact McNemar p = {pr['mcnemar_exact_p']:.3g}")
    rt = out["retries_total"]
    print(f"retries (guard B's degen:retries_total): "
          f"{', '.join(f'{k} {v:.0f}' for k, v in rt.items()) or 'none'}; "
          f"{out['seconds']:.0f} s in all")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
