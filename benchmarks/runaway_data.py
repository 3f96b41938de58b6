"""Generations with their ground truth, for fitting and scoring the runaway predictor.

Each request gets its own sampling parameters, drawn from the ``wide`` tuning space
(temperature 0.2-1.3, min_p 0-0.2, repetition_penalty 1.0-1.3, the penalty's scope)
or, for a fifth of them, the engine's defaults (temperature 1, nothing else: where
this model babbles most). Every generation runs to ``--max-tokens`` with its tokens'
log-probabilities and stopping evidence recorded and nothing cut; then every one that
reached the cap is continued (degen's own extension) to ``--horizon`` tokens in all.
The folder is an ordinary run folder (``records.jsonl``, ``extensions.jsonl``,
``run.json``): interrupted, it resumes where it stopped.

    .venv/bin/python -m benchmarks.runaway_data --out benchmarks/data/runaway-smollm2
    .venv/bin/python -m benchmarks.runaway_data --model gemma3-270m --prompts builtin-raw \\
        --out benchmarks/data/runaway-gemma3
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from degen.engines.local import LocalEngine
from degen.experiments.load.extend import extend
from degen.experiments.load.schedule import derive_seed
from degen.experiments.tune.space import SCOPES, sampling_params
from degen.prompts import load_prompts
from degen.records import Completion, Request
from degen.store import RECORDS, RUN_JSON, AppendLog, settled, write_json_atomic


def draw(rng: random.Random, defaults_share: float) -> dict:
    if rng.random() < defaults_share:
        return {}
    return {"temperature": rng.uniform(0.2, 1.3), "min_p": rng.uniform(0.0, 0.2),
            "repetition_penalty": rng.uniform(1.0, 1.3), "penalty_scope": rng.choice(SCOPES)}


def requests(prompts, n: int, max_tokens: int, seed: int, defaults_share: float) -> list:
    rng = random.Random(seed)
    order = list(range(len(prompts)))
    out = []
    for i in range(n):
        if i % len(order) == 0:
            rng.shuffle(order)
        p = prompts[order[i % len(order)]]
        values = draw(rng, defaults_share)
        params = sampling_params(values, max_tokens).replace(
            seed=derive_seed(seed, "request", i))
        out.append(Request(request_id=f"0-{i}", prompt_id=p.id, params=params,
                           messages=p.messages, prompt=p.text, index=i))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", default=None)
    ap.add_argument("--requests", type=int, default=640)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--horizon", type=int, default=1280)
    ap.add_argument("--defaults-share", type=float, default=0.2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    prompts = load_prompts(args.prompts)
    engine = LocalEngine(args.model, batch_size=args.batch_size, logprobs=True)
    engine.load()
    engine._study_stops = True
    reqs = requests(prompts, args.requests, args.max_tokens, args.seed, args.defaults_share)
    folder = args.out
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / RUN_JSON).exists():
        write_json_atomic(folder / RUN_JSON, {
            "kind": "degen.runaway-data", "model": engine.model, "requests": args.requests,
            "max_tokens": args.max_tokens, "seed": args.seed,
            "defaults_share": args.defaults_share, "prompts": args.prompts or "builtin",
            "engine": engine.describe()})
    log = AppendLog(folder / RECORDS)
    have = {c.request_id for c in settled(log.records)}
    todo = [r for r in reqs if r.request_id not in have]
    t0 = time.time()
    done = [0]

    def on_done(c: Completion) -> None:
        log.append(c)
        done[0] += 1
        if done[0] % 32 == 0:
            print(f"{done[0]}/{len(todo)} in {time.time() - t0:.0f} s", file=sys.stderr,
                  flush=True)

    engine.generate(todo, concurrency=args.batch_size, on_done=on_done)
    log.close()
    print(f"generated {len(todo)} in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    t1 = time.time()
    res = extend(engine, folder, args.horizon, concurrency=args.batch_size)
    print(f"extended {res.sent} to {args.horizon} in {time.time() - t1:.0f} s",
          file=sys.stderr)
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
