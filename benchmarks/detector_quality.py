"""Precision and recall of the watch on the labelled texts (benchmarks/corpus.py).

For each set (the dev set beside the checkout, tests/corpus, both) and each label:
precision and recall of "degenerate" (any kind found) and of each kind, with Wilson 95%
intervals; the texts on the wrong side; and whether a streamed verdict (the text fed in
random pieces of 1-8 characters, as a server streams it) agrees with the batch verdict.
With ``--logprobs FILE`` (benchmarks.rescore's output) the texts the bundled model wrote
are also judged with their tokens' log-probabilities, fed token by token, next to the
same texts judged on their text alone.

    .venv/bin/python -m benchmarks.detector_quality [--logprobs F] [--json F]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from benchmarks.corpus import load
from degen.detect.watch import KINDS, Watch, watch_text
from degen.stats import wilson_interval


def streamed(text: str, prompt: str, seed: int) -> dict[str, Any]:
    """The watch fed ``text`` in random pieces, then finished (as the guard reads it)."""
    rng = random.Random(seed)
    w = Watch(prompt)
    i = 0
    while i < len(text):
        k = rng.randint(1, 8)
        w.feed(text[i:i + k])
        i += k
    return w.finish()


def with_logprobs(tokens: list[list[Any]], prompt: str) -> dict[str, Any]:
    w = Watch(prompt)
    for piece, lp in tokens:
        w.feed(piece, [lp])
    return w.finish()


def rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(k, n)
    return {"value": k / n if n else None, "k": k, "n": n, "ci95": [round(lo, 3), round(hi, 3)]}


def score(rows: list[dict[str, Any]], found: list[dict[str, Any]]) -> dict[str, Any]:
    """Degenerate and per-kind precision/recall, and the texts on the wrong side."""
    flagged = [bool(f) for f in found]
    truth = [r["degenerate"] for r in rows]
    tp = sum(f and t for f, t in zip(flagged, truth, strict=True))
    out: dict[str, Any] = {
        "texts": len(rows),
        "degenerate": {"precision": rate(tp, sum(flagged)), "recall": rate(tp, sum(truth))},
        "false_positives": [r["id"] for r, f in zip(rows, flagged, strict=True)
                            if f and not r["degenerate"]],
        "missed": {}, "kinds": {},
    }
    for r, f in zip(rows, flagged, strict=True):
        if r["degenerate"] and not f:
            out["missed"].setdefault(r["label"], []).append(r["id"])
    for kind in KINDS:
        said = [kind in f for f in found]
        real = [r["kind"] == kind for r in rows]
        # a kind's precision: of the texts it was said of, how many are degenerate at all
        # (a babble text whose worst stretch also glues words is not a false alarm)
        ok = sum(s and r["degenerate"] for s, r in zip(said, rows, strict=True))
        hit = sum(s and t for s, t in zip(said, real, strict=True))
        out["kinds"][kind] = {"precision": rate(ok, sum(said)),
                              "recall": rate(hit, sum(real))}
    return out


def _fmt(r: dict[str, Any]) -> str:
    if r["value"] is None:
        return "-"
    return f"{r['value']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}, {r['k']}/{r['n']})"


def report(name: str, res: dict[str, Any]) -> None:
    d = res["degenerate"]
    print(f"{name}: {res['texts']} texts; degenerate precision {_fmt(d['precision'])}, "
          f"recall {_fmt(d['recall'])}")
    for kind, r in res["kinds"].items():
        print(f"    {kind:<10} precision {_fmt(r['precision']):<28} recall {_fmt(r['recall'])}")
    if res["false_positives"]:
        print(f"    false positives: {', '.join(res['false_positives'])}")
    for label, ids in res["missed"].items():
        print(f"    missed {label} ({len(ids)}): {', '.join(ids)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logprobs", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = load()
    batch = [watch_text(r["text"], r["prompt"]) for r in rows]
    out: dict[str, Any] = {}
    groups = {"dev": ("dev",), "tests/corpus": ("bundled", "legit", "hard"),
              "all": ("dev", "bundled", "legit", "hard")}
    for name, sets in groups.items():
        idx = [i for i, r in enumerate(rows) if r["set"] in sets]
        if not idx:
            continue
        out[name] = score([rows[i] for i in idx], [batch[i] for i in idx])
        report(name, out[name])
    stream = [streamed(r["text"], r["prompt"], i) for i, r in enumerate(rows)]
    agree = sum(bool(s) == bool(b) for s, b in zip(stream, batch, strict=True))
    out["stream_batch_agreement"] = rate(agree, len(rows))
    print(f"streamed in random pieces vs batch, same verdict: "
          f"{_fmt(out['stream_batch_agreement'])}")
    if a.logprobs:
        with a.logprobs.open() as f:
            lp = {r["id"]: r["tokens"] for r in map(json.loads, f)}
        # a server streams the generating model's own log-probabilities: compare on the
        # texts the bundled model wrote (the written ones' would be another's)
        idx = [i for i, r in enumerate(rows) if r["id"] in lp and r["source"] == "model"]
        sub = [rows[i] for i in idx]
        found = [with_logprobs(lp[r["id"]], r["prompt"]) for r in sub]
        out["with_logprobs"] = score(sub, found)
        report("model-written texts, with log-probabilities", out["with_logprobs"])
        out["text_only_same_texts"] = score(sub, [batch[i] for i in idx])
        report("the same texts, text only", out["text_only_same_texts"])
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
