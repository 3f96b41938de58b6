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

Prints the weights to paste into degen/detect/runaway_weights.py: the fit on the
training half, the one scored (``weights_train``; ``weights`` is the fit on all the
data, for comparison). ``--fixture FILE`` writes held-out capped generations (half
runaways, half long answers, with what their extension found under
``known_outcome``) for the tests (tests/corpus/runaways-*.jsonl).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from degen.detect.runaway import EVIDENCE
from degen.measurement.runaway_fit import L2, Generation, fit, read_runs, score, score_cuts


def half(g: Generation, seed: int) -> int:
    return hashlib.blake2b(f"{seed}:{g.prompt_id}".encode(), digest_size=2).digest()[0] % 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, nargs="+", required=True)
    ap.add_argument("--cap", type=int, default=256)
    ap.add_argument("--horizon", type=int, default=1280)
    ap.add_argument("--cut", type=float, default=None, help="the track's cut (default its own)")
    ap.add_argument("--l2", type=float, default=L2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--fixture", type=Path, default=None)
    ap.add_argument("--fixture-n", type=int, default=40)
    args = ap.parse_args(argv)

    t0 = time.time()
    gens = read_runs(args.data)
    train = [g for g in gens if half(g, args.seed) == 0]
    test = [g for g in gens if half(g, args.seed) == 1]
    capped = [g for g in test if not (g.outcome.ended and g.outcome.tokens <= args.cap)]
    print(f"{len(gens)} generations read in {time.time() - t0:.0f} s; fit on {len(train)} "
          f"({len({g.prompt_id for g in train})} prompts), scored on {len(test)} "
          f"({len(capped)} capped)")
    weights = fit(train, args.l2, longest=args.horizon, upto=args.cap)
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
    from degen.measurement.runaway_fit import predict

    def ended_judged(ev: str) -> dict[str, Any]:
        """Of the held-out generations that ended by the horizon, the share judged a
        runaway: cut mid-stream, or capped with p >= 1/2 at the cap."""
        cut_at = {g.request_id: g.cut_at.get(ev) for g in test_cut}
        k = n = 0
        for g in test:
            if not g.outcome.ended_by(args.horizon):
                continue
            n += 1
            c = cut_at.get(g.request_id)
            judged = c is not None and c < g.outcome.tokens
            f = g.at.get(args.cap, {}).get(ev)
            if not judged and f is not None and g.outcome.tokens > args.cap:
                f = dict(f, log_left=math.log(args.horizon - args.cap))
                judged = predict(weights, ev, f) >= 0.5
            k += judged
        return {"value": k / n if n else None, "k": k, "n": n}

    for ev in weights:
        at_cap = score(test, weights, ev, args.cap, args.horizon)
        at_128 = score(test, weights, ev, 128, args.horizon)
        cuts = score_cuts(test_cut, ev, args.horizon)
        judged = ended_judged(ev)
        out["scores"][ev] = {"at_cap": at_cap, "at_128": at_128, "cuts": cuts,
                             "ended_judged_runaway": judged}
        print(f"{ev:>9}: at the cap n={at_cap['n']} ({at_cap['runaways']} runaways) "
              f"precision {_fmt(at_cap['precision'])} recall {_fmt(at_cap['recall'])} "
              f"brier {at_cap['brier']:.3f}; at 128 precision {_fmt(at_128['precision'])} "
              f"recall {_fmt(at_128['recall'])}; cut precision {_fmt(cuts['precision'])} "
              f"recall {_fmt(cuts['recall'])} ended-cut {_fmt(cuts['ended_cut'])} "
              f"median at {cuts['cut_at_median']} ({cuts['after_onset_median']} after the "
              f"onset); ended judged runaway {_fmt(judged)}")
    out["weights"] = fit(gens, args.l2, longest=args.horizon, upto=args.cap)
    print("weights (the training half: these are shipped):")
    print(json.dumps(weights, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    if args.fixture:
        write_fixture(args.fixture, args.data, test, args.cap, args.horizon, args.fixture_n)
    return 0


def write_fixture(path: Path, folders: list[Path], test: list[Generation], cap: int,
                  horizon: int, n: int) -> None:
    """``n`` held-out generations that reached ``cap``, half of them runaways (not ended
    by ``horizon``) and half long answers, picked by a hash of their ids: each its
    record (log-probabilities, stopping evidence; token ids dropped) and
    ``known_outcome``."""
    from degen.store import RECORDS, iter_records, settled

    def key(g: Generation) -> bytes:
        return hashlib.blake2b(g.request_id.encode(), digest_size=8).digest()

    capped = sorted((g for g in test if g.outcome.ended_by(horizon) is not None
                     and not (g.outcome.ended and g.outcome.tokens <= cap)), key=key)
    runs = [g for g in capped if not g.outcome.ended_by(horizon)][:n // 2]
    longs = [g for g in capped if g.outcome.ended_by(horizon)][:n - len(runs)]
    want = {g.request_id: g.outcome for g in runs + longs}
    rows = []
    for folder in folders:
        for c in settled(iter_records(Path(folder) / RECORDS, allow_torn_tail=True)):
            if c.request_id in want:
                d = c.to_dict()
                for k in ("token_ids", "study", "timings", "verdict"):
                    d.pop(k, None)
                d["known_outcome"] = want[c.request_id].to_dict()
                rows.append(d)
    rows.sort(key=lambda d: d["request_id"])
    path.write_text("".join(json.dumps(d, separators=(",", ":")) + "\n" for d in rows))
    print(f"{path}: {len(rows)} held-out capped generations ({len(runs)} runaways)")


def _fmt(r: dict[str, Any]) -> str:
    if r["value"] is None:
        return "-"
    return f"{r['value']:.3f} ({r['k']}/{r['n']})"


if __name__ == "__main__":
    raise SystemExit(main())
