"""Fit the runaway predictor on extended runs and score it on a half kept out of the fit.

The generations of ``--data`` (folders written by ``benchmarks/runaway_data.py``:
every capped generation continued to the horizon) are split by prompt: the prompts
of one half are never seen by the fit. On the other half, for every kind of evidence:

- at the cap (``--cap``), "will not end by ``--horizon``" (p >= 1/2) among the capped
  generations: precision, recall, Brier score, reliability;
- from the first 128 tokens only: the same prediction made at token 128;
- the mid-stream cut as the watch makes it (p >= the track's cut at a look): its
  precision, recall, the share of generations that ended by themselves that it cut,
  the median token of a cut.

    .venv/bin/python -m benchmarks.fit_runaway --data benchmarks/data/runaway-smollm2 \\
        --json benchmarks/results/runaway-smollm2.json

Prints the weights to paste into degen/detect/runaway_weights.py (fitted on all of
the data once scored).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from degen.detect.runaway import EVIDENCE
from degen.detect.runaway_fit import Generation, fit, read_runs, score, score_cuts


def half(g: Generation, seed: int) -> int:
    return hashlib.blake2b(f"{seed}:{g.prompt_id}".encode(), digest_size=2).digest()[0] % 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, nargs="+", required=True)
    ap.add_argument("--cap", type=int, default=256)
    ap.add_argument("--horizon", type=int, default=1280)
    ap.add_argument("--cut", type=float, default=None, help="the track's cut (default its own)")
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    t0 = time.time()
    gens = read_runs(args.data)
    train = [g for g in gens if half(g, args.seed) == 0]
    test = [g for g in gens if half(g, args.seed) == 1]
    capped = [g for g in test if not (g.outcome.ended and g.outcome.tokens <= args.cap)]
    print(f"{len(gens)} generations read in {time.time() - t0:.0f} s; fit on {len(train)} "
          f"({len({g.prompt_id for g in train})} prompts), scored on {len(test)} "
          f"({len(capped)} capped)")
    weights = fit(train, args.l2, longest=args.horizon)
    cut_opts: dict[str, Any] = {"weights": {**weights}, "horizon": args.horizon}
    for ev in EVIDENCE:
        cut_opts["weights"].setdefault(ev, weights.get("logprobs", {}))
    if args.cut is not None:
        cut_opts["cut"] = args.cut
    ids = {g.request_id for g in test}
    test_cut = [g for g in read_runs(args.data, positions=(), cut=cut_opts)
                if g.request_id in ids]
    out: dict[str, Any] = {"data": [str(d) for d in args.data], "cap": args.cap,
                           "horizon": args.horizon, "generations": len(gens),
                           "train": len(train), "test": len(test), "test_capped": len(capped),
                           "weights_train": weights, "scores": {}}
    for ev in weights:
        at_cap = score(test, weights, ev, args.cap, args.horizon)
        at_128 = score(test, weights, ev, 128, args.horizon)
        cuts = score_cuts(test_cut, ev, args.horizon)
        out["scores"][ev] = {"at_cap": at_cap, "at_128": at_128, "cuts": cuts}
        print(f"{ev:>9}: at the cap n={at_cap['n']} ({at_cap['runaways']} runaways) "
              f"precision {_fmt(at_cap['precision'])} recall {_fmt(at_cap['recall'])} "
              f"brier {at_cap['brier']:.3f}; at 128 precision {_fmt(at_128['precision'])} "
              f"recall {_fmt(at_128['recall'])}; cut precision {_fmt(cuts['precision'])} "
              f"recall {_fmt(cuts['recall'])} ended-cut {_fmt(cuts['ended_cut'])} "
              f"median at {cuts['cut_at_median']} ({cuts['after_onset_median']} after the "
              "onset)")
    full = fit(gens, args.l2, longest=args.horizon)
    out["weights"] = full
    print("weights (all the data):")
    print(json.dumps(full, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def _fmt(r: dict[str, Any]) -> str:
    if r["value"] is None:
        return "-"
    return f"{r['value']:.3f} ({r['k']}/{r['n']})"


if __name__ == "__main__":
    raise SystemExit(main())
