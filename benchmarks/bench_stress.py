"""Stress plans against a plain run four times their size.

One configuration of the bundled model (temperature 0.7, min_p 0.1: failures are
the minority) is measured three ways, with the watch's early cut on as in tune:

1. **pilot**: a plain run of N requests (the suite's prompts in a seeded shuffle);
2. **stress**: N requests drawn by the weights the pilot gives (risky prompts more
   often), reported as the stress suite's own rate and the original mix's
   re-weighted estimate with its interval (:mod:`degen.measurement.stress`);
3. **plain 4x**: 4N requests on the original mix with another seed.

Goal: the plain run's rate falls inside the re-weighted interval; and the stress
suite finds more failures per request than the plain run.

    .venv/bin/python -m benchmarks.bench_stress [--requests 64] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from degen.detect.verdict import default_detectors
from degen.engines.local import LocalEngine
from degen.experiments.load.runner import run_load
from degen.experiments.load.schedule import Plan
from degen.measurement.failure import Measure
from degen.measurement.progress import Progress, RichProgress
from degen.measurement.stress import reweighted, stress_weights
from degen.prompts import load_prompts
from degen.records import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-stress"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    prompts = tuple(load_prompts())
    params = SamplingParams(temperature=0.7, min_p=0.1, max_tokens=a.max_tokens)
    eng = LocalEngine(batch_size=32, guard=True)
    eng.load()
    out: dict = {"params": params.to_dict(), "requests": a.requests}

    def run(name: str, plan: Plan) -> list:
        t0 = time.time()
        bar = (RichProgress if sys.stderr.isatty() else Progress)(plan.total, name)
        folder = a.out / name
        res = run_load(eng, plan, folder, concurrency=32, progress=bar,
                       resume=(folder / "run.json").exists(), detectors=default_detectors())
        m = Measure.of(res.completions, ("runaway",))
        out[name] = {**m.to_dict(), "wall_s": time.time() - t0}
        print(f"{name}: {m.failures}/{m.n} failed, {m.tokens:,} tokens", flush=True)
        return res.completions

    try:
        pilot = run("pilot", Plan(prompts, params, requests=a.requests, seed=a.seed))
        w = stress_weights(pilot, prompts)
        cs = run("stress", Plan(prompts, params, requests=a.requests, seed=a.seed + 1,
                                weights=w))
        rw = reweighted(cs, prompts, w)
        run("plain4x", Plan(prompts, params, requests=4 * a.requests, seed=a.seed + 2))
    finally:
        eng.close()
    plain = out["plain4x"]
    inside = rw["ci95"][0] <= plain["rate"] <= rw["ci95"][1]
    out.update(reweighted=rw, weights_spread=max(w) / min(w), plain_inside=inside)
    print(f"stress suite {rw['stress_rate']:.1%} ({rw['failures']}/{rw['n']}); re-weighted "
          f"to the original mix {rw['rate']:.1%} ({rw['ci95'][0]:.1%}-{rw['ci95'][1]:.1%}, "
          f"n_eff {rw['n_eff']:.0f}); plain run of {plain['n']}: {plain['rate']:.1%} "
          f"({plain['ci95'][0]:.1%}-{plain['ci95'][1]:.1%}); inside: {inside}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
