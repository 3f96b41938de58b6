"""Tokens spent per decision: a full grid in seed 000's style vs ``degen tune``.

Both search the same space on the bundled model (temperature 0.2-1.3, min_p 0-0.2,
repetition_penalty 1.0-1.3) with the same prompts, the same per-request seeds and
the same number of requests per configuration:

1. **grid**: every combination of 3 values per knob (27 cells), a fixed number of
   requests each, no early cut (a runaway costs ``max_tokens``), no pruning;
   the best cell is the lowest rate of hitting ``max_tokens`` (ties: the smaller
   repetition-penalty deviation, then the lower temperature). This is seed 000's
   experiment, done exhaustively.
2. **tune**: ``degen tune`` with its statistics on (early cut of loops, babble and
   predicted runaways, racing, TPE, then confirmation of the baseline and the best
   front configurations on new requests, their capped generations continued to 8x the
   cap so runaways are known).

The decision each makes is "which configuration to run". To check the two decisions
agree, the grid's best cell is measured on the same confirmation requests as tune's
arms, by the same rule (runaways known by extension, and degenerate kinds; those
tokens are reported apart and not charged to either side). Tune's tokens are reported
with and without the confirmation's extension. Goal: tune's
best has a confirmed rate inside the grid best's confirmed interval, with at most a
fifth of the grid's generated tokens.

    .venv/bin/python -m benchmarks.bench_tune [--requests 32] [--trials 10] [--json F]

The output folder keeps every record; running the same command again resumes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

from degen.detect.verdict import default_detectors
from degen.engines.local import LocalEngine
from degen.experiments.load.runner import run_load
from degen.experiments.load.schedule import Plan
from degen.experiments.tune.space import Dim, SearchSpace, deviation, sampling_params
from degen.experiments.tune.study import TuneConfig, Tuner, tune
from degen.measurement.failure import Measure, paired, params_key
from degen.measurement.progress import Forwarding, Progress, RichProgress
from degen.prompts import load_prompts

RANGES = {"temperature": (0.2, 1.3), "min_p": (0.0, 0.2), "repetition_penalty": (1.0, 1.3)}


def grid_values(points: int) -> list[dict[str, float]]:
    axes = {k: [round(lo + (hi - lo) * i / (points - 1), 4) for i in range(points)]
            for k, (lo, hi) in RANGES.items()}
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def reuse_grid(a: argparse.Namespace) -> dict[str, Any]:
    old = json.loads(a.grid_from.read_text())
    same = {"points": a.points, "requests": a.requests, "max_tokens": a.max_tokens,
            "seed": a.seed}
    theirs = {k: old["settings"].get(k) for k in same}
    if theirs != same:
        sys.exit(f"--grid-from {a.grid_from} was measured with {theirs}, not {same}")
    return old["grid"] | {"reused_from": str(a.grid_from)}


def _bar(total: int, label: str) -> Progress:
    return (RichProgress if sys.stderr.isatty() else Progress)(total, label)


def run_grid(eng: LocalEngine, prompts: list, out: Path, points: int, requests: int,
             max_tokens: int, seed: int, concurrency: int) -> dict[str, Any]:
    eng.guard = False  # seed 000: every failure runs to max_tokens
    cells = []
    t0 = time.time()
    values = grid_values(points)
    with _bar(len(values) * requests, "grid") as bar:
        for v in values:
            folder = out / "grid" / params_key(v)
            plan = Plan(prompts=tuple(prompts), params=sampling_params(v, max_tokens),
                        requests=requests, seed=seed)
            res = run_load(eng, plan, folder, concurrency=concurrency,
                           resume=(folder / "run.json").exists(),
                           progress=Forwarding(bar, plan.total))
            # seed 000's measure: no cut, no verdict, a failure is reaching the cap
            m = Measure.of(res.completions, ("runaway",))
            cells.append({"values": v, "n": m.n, "failures": m.failures, "rate": m.rate,
                          "ci95": list(m.ci95), "tokens": m.tokens})
    best = min(cells, key=lambda c: (c["rate"], deviation(c["values"]),
                                     c["values"]["temperature"]))
    return {"cells": cells, "best": best, "tokens": sum(c["tokens"] for c in cells),
            "requests": sum(c["n"] for c in cells), "wall_s": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=3, help="grid values per knob")
    ap.add_argument("--requests", type=int, default=32, help="per configuration")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--confirm", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=16, help="tune: per trial")
    ap.add_argument("--jobs", type=int, default=2, help="tune: trials at once")
    ap.add_argument("--grid-concurrency", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-tune"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--grid-from", type=Path, help="take the grid from an earlier results "
                    "file with the same settings (the grid runs no early cut and no pruning, "
                    "so degen's tuner does not change what it costs)")
    a = ap.parse_args()
    prompts = load_prompts()
    eng = LocalEngine(batch_size=32)
    eng.load()
    try:
        grid = reuse_grid(a) if a.grid_from else run_grid(
            eng, prompts, a.out, a.points, a.requests, a.max_tokens, a.seed,
            a.grid_concurrency)
        print(f"grid: {len(grid['cells'])} cells x {a.requests} requests, "
              f"{grid['tokens']:,} tokens in {grid['wall_s']:.0f} s; best {grid['best']['values']}"
              f" {grid['best']['failures']}/{grid['best']['n']}", flush=True)

        eng.guard = True
        space = SearchSpace(tuple(Dim(k, lo, hi) for k, (lo, hi) in RANGES.items()))
        cfg = TuneConfig(space=space, out=a.out / "tune", trials=a.trials, requests=a.requests,
                         max_tokens=a.max_tokens, concurrency=a.concurrency,
                         confirm=a.confirm, seed=a.seed, jobs=a.jobs)
        total = cfg.trials * cfg.requests + cfg.confirm * (cfg.confirm_top + 1)
        t0 = time.time()
        res = tune(eng, prompts, cfg, progress=_bar(total, "tune"),
                   detectors=default_detectors())
        tune_wall = time.time() - t0
        s = res.summary
        conf = s["confirmation"]
        tune_best = conf["arms"][conf["best"]]
        print(f"tune: {len(s['trials'])} trials ({s['n_pruned']} pruned), "
              f"{s['generated_tokens']:,} tokens in {tune_wall:.0f} s; best "
              f"{tune_best['values']}", flush=True)

        # the grid's decision, measured on tune's confirmation requests
        tuner = Tuner(eng, prompts, cfg, progress=_bar(cfg.confirm, "check"),
                      detectors=default_detectors())
        gv = grid["best"]["values"]
        with tuner.progress:
            gm, gcs, _ = tuner.measure(gv, cfg.out / "confirm" / params_key(gv), cfg.seed + 1,
                                       cfg.confirm, extend=True)
            tm, tcs, _ = tuner.measure(tune_best["values"], cfg.out / "confirm" /
                                       params_key(tune_best["values"]), cfg.seed + 1,
                                       cfg.confirm, extend=True)
    finally:
        eng.close()
    lo, hi = gm.ci95
    agree = (tm.rate or 0.0) <= hi  # inside the grid best's interval, or better
    ratio = s["generated_tokens"] / grid["tokens"]
    ext = s["tokens"].get("extension", 0)
    row = {
        "space": RANGES, "requests_per_config": a.requests, "max_tokens": a.max_tokens,
        "settings": vars(a) | {"out": str(a.out), "json": str(a.json)},
        "grid": grid, "tune": {"tokens": s["generated_tokens"], "wall_s": tune_wall,
                               "trials": len(s["trials"]), "pruned": s["n_pruned"],
                               "best": tune_best, "baseline": conf["arms"]["baseline"],
                               "comparison": conf["comparison"]},
        "check": {"grid_best": {"values": gv, **gm.to_dict()},
                  "tune_best": {"values": tune_best["values"], **tm.to_dict()},
                  "paired": paired(tcs, gcs, cfg.kinds),
                  "tune_best_not_worse_than_grid_best": agree,
                  "tokens": gm.tokens if params_key(gv) != params_key(tune_best["values"])
                  else 0},
        "tokens_ratio": ratio,
        "tokens_ratio_without_extension": (s["generated_tokens"] - ext) / grid["tokens"],
        "goal": "<= 0.2 and tune's best inside the grid best's interval or better",
    }
    print(f"grid best {gv}: confirmed {gm.failures}/{gm.n} ({lo:.1%}-{hi:.1%}); tune best "
          f"{tune_best['values']}: {tm.failures}/{tm.n}; as good or better: {agree}")
    print(f"tokens: tune {s['generated_tokens']:,} / grid {grid['tokens']:,} = {ratio:.3f} "
          f"({'met' if ratio <= 0.2 and agree else 'missed'}); without the confirmation's "
          f"extension ({ext:,}): {(s['generated_tokens'] - ext) / grid['tokens']:.3f}")
    if a.json:
        a.json.write_text(json.dumps(row, indent=1, default=str))


if __name__ == "__main__":
    main()
