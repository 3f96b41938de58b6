"""Measure the bundled model's runaway rate at two settings, from Python.

    .venv/bin/python examples/quickstart.py [--requests 8] [--out runs/quickstart]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from degen import Plan, SamplingParams, create_engine, load_prompts, run_load, summarize


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)

    settings = {
        "repetition_penalty 1.3": SamplingParams(repetition_penalty=1.3, max_tokens=a.max_tokens),
        "T 0.7, min_p 0.1": SamplingParams(temperature=0.7, min_p=0.1, max_tokens=a.max_tokens),
    }
    with create_engine("local", batch_size=16) as engine:  # the bundled SmolLM2-135M
        for i, (name, params) in enumerate(settings.items()):
            plan = Plan(prompts=tuple(load_prompts()), params=params, requests=a.requests)
            result = run_load(engine, plan, a.out / f"setting-{i}")
            s = summarize(result.completions)
            lo, hi = s["ci95"]
            print(f"{name:<24} runaways {s['failures']}/{s['valid']}"
                  f"  rate {s['failure_rate']:.0%} (95% CI {lo:.0%}-{hi:.0%})")


if __name__ == "__main__":
    main()
