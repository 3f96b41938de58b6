"""The two-phase estimate of the runaway rate: does its 95% interval cover the truth?

1. **Simulation, known rates**: units end, are capped and run away with known
   probabilities; a predictor (right 85% of the time, not calibrated) scores every
   capped unit; a random share of them is "extended" (the truth revealed). Over many
   draws, how often the interval covers the rate, and the estimate's bias.
2. **A real run whose every capped generation was extended** (``--data``, folders of
   ``benchmarks/runaway_data.py``): the truth is the run's own runaway rate (at
   ``--horizon``); a random share of its capped generations is drawn again and again
   (other seeds), the others left to the watch's prediction (the shipped fit, at the
   cap), and the same coverage is measured.

    .venv/bin/python -m benchmarks.bench_two_phase --data benchmarks/data/runaway-smollm2 \\
        --json benchmarks/results/two-phase.json
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from degen.detect.verdict import default_detectors, judge
from degen.measurement.failure import status
from degen.outcomes import chosen, load_run
from degen.stats import two_phase

SHARES = (0.1, 0.25, 0.5)


def simulate(draws: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for rate, share, n in ((0.05, 0.25, 48), (0.1, 0.25, 100), (0.2, 0.5, 48),
                           (0.3, 0.1, 200), (0.1, 0.5, 200)):
        covered, bias, width = 0, 0.0, 0.0
        for _ in range(draws):
            items = []
            for _ in range(n):
                capped = rng.random() < min(1.0, 2 * rate + 0.1)
                y = capped and rng.random() < rate / min(1.0, 2 * rate + 0.1)
                if not capped:
                    items.append((0.0, 0.0))
                    continue
                p = (0.8 if y else 0.3) if rng.random() < 0.85 else (0.2 if y else 0.7)
                items.append((p, float(y) if rng.random() < share else None))
            est = two_phase(items, share)
            lo, hi = est["ci95"]
            covered += lo <= rate <= hi
            bias += est["rate"] - rate
            width += hi - lo
        out.append({"rate": rate, "share": share, "n": n, "draws": draws,
                    "coverage": covered / draws, "bias": bias / draws,
                    "mean_width": width / draws})
    return out


def real(folders: list[Path], horizon: int, draws: int) -> list[dict[str, Any]]:
    cs = [c for f in folders for c in load_run(f) if c.is_measured]
    dets = default_detectors(horizon=horizon)
    rows = []
    for c in cs:
        st = status(c, horizon)
        blind = replace(c, extra={k: v for k, v in c.extra.items() if k != "outcome"})
        p = 0.0 if st.ended else judge(blind, dets)["metrics"].get("p_runaway")
        rows.append((c, st, p or 0.0))
    truth_k = sum(bool(st.runaway) for _, st, _ in rows)
    truth = truth_k / len(rows)
    out = []
    for share in SHARES:
        covered, bias, width = 0, 0.0, 0.0
        for d in range(draws):
            items = []
            for c, st, p in rows:
                if st.ended:
                    items.append((0.0, 0.0))
                elif chosen(c, share, seed=1000 + d):
                    items.append((p, float(bool(st.runaway))))
                else:
                    items.append((p, None))
            est = two_phase(items, share)
            lo, hi = est["ci95"]
            covered += lo <= truth <= hi
            bias += est["rate"] - truth
            width += hi - lo
        out.append({"share": share, "draws": draws, "n": len(rows), "truth": truth,
                    "runaways": truth_k, "coverage": covered / draws,
                    "bias": bias / draws, "mean_width": width / draws})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, nargs="*", default=[])
    ap.add_argument("--horizon", type=int, default=1280)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    res: dict[str, Any] = {"simulation": simulate(a.draws)}
    for r in res["simulation"]:
        print(f"simulated rate {r['rate']:.2f}, share {r['share']}, n {r['n']}: coverage "
              f"{r['coverage']:.3f}, bias {r['bias']:+.4f}, width {r['mean_width']:.3f}")
    if a.data:
        res["real"] = real(a.data, a.horizon, max(100, a.draws // 5))
        for r in res["real"]:
            print(f"real run ({r['n']} generations, {r['runaways']} runaways by "
                  f"{a.horizon}), share {r['share']}: coverage {r['coverage']:.3f}, "
                  f"bias {r['bias']:+.4f}, width {r['mean_width']:.3f}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
