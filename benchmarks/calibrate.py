"""Fit the babble track's weights on the labelled texts (benchmarks/corpus.py).

The labels are per text, the degeneration is somewhere in it: multiple-instance
learning. Every text is read by the real watch, which records the measures of each
window it scores; a text's score is what the watch would act on (the best of two
windows in a row, or the one window of a short text), and a logistic loss on that
score is minimized over the weights (Adam, subgradients through the max; signs fixed:
a measure of babble cannot count for good text). Loop texts are left out (the loop
track judges them); good texts of every kind are in.

    .venv/bin/python -m benchmarks.calibrate [--folds 5] [--logprobs FILE] [--json F]

Prints the weights (to paste into degen/detect/babble.py), in-sample and
cross-validated precision and recall at the decision threshold, and the texts that
fall on the wrong side.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.corpus import load
from degen.detect.babble import FEATURES, WEIGHTS, WEIGHTS_LP, Weights
from degen.detect.watch import Watch, WatchConfig

# Where the fit starts: a channel per kind of evidence that could stand alone, and one
# over every measure (see degen.detect.babble); what the fit leaves at zero is dropped.
# The glued-words rule is not fitted (FIXED): it is scored as it is.
FIXED: Weights = {"glued": WEIGHTS["glued"]}
START: Weights = {
    "unknown": {"bias": -3.0, "unknown": 10.0, "mixed": 10.0},
    "junk": {"bias": -3.0, "junk": 50.0, "odd": 10.0, "caps": 3.0},
    "babble": {"bias": -0.6, "unknown": 5.0, "glued": 4.6, "mixed": 0.4, "junk": 1.0,
               "caps": 2.7, "odd": 0.6, "title": 2.5, "function": -2.3, "separators": -2.7,
               "pairs": -3.7, "rare": 0.0, "runon": 3.0},
}
BAD_UP = {"unknown", "glued", "mixed", "junk", "caps", "odd", "title", "rare", "runon",
          "surprise"}  # weights >= 0; the others (function, separators, pairs) <= 0


def windows(text: str, prompt: str, logprobs: list[float] | None = None
            ) -> tuple[list[dict[str, float]], list[bool]]:
    """The measures of every window the watch scores on ``text``, and whether each is
    the one final window of a short text."""
    w = Watch(prompt, WatchConfig(kinds=("gibberish", "spacing"),
                                  babble={"weights": _never(WEIGHTS),
                                          "weights_lp": _never(WEIGHTS_LP)}))
    assert w.babble is not None
    w.babble.trace = []
    if logprobs:
        _feed_aligned(w, text, logprobs)
    else:
        w.feed(text)
    w.finish()
    return [f for f, _ in w.babble.trace], [short for _, short in w.babble.trace]


def _never(table: Weights) -> Weights:
    """Weights that never call a window bad (the watch then scores every window)."""
    return {ch: {**wt, "bias": -1e9} for ch, wt in table.items()}


def _feed_aligned(w: Watch, text: str, logprobs: list[Any]) -> None:
    """Feed token by token: ``logprobs`` is [[piece, logprob], ...] covering ``text``."""
    for piece, lp in logprobs:
        w.feed(piece, [lp])


class Problem:
    """Every text's windows, stacked: one matrix of measures, and for each text the
    pairs of windows in a row (a short text's one window pairs with itself)."""

    def __init__(self, rows: list[dict[str, Any]], feats: tuple[str, ...],
                 lp: dict[str, Any] | None = None) -> None:
        self.feats = feats
        blocks: list[np.ndarray] = []
        self.pairs: list[np.ndarray] = []  # per text: (k, 2) window indices
        self.y: list[int] = []
        self.ids: list[str] = []
        at = 0
        for r in rows:
            if r["label"] == "loop":
                continue
            tokens = lp.get(r["id"]) if lp else None
            if lp is not None and tokens is None:
                continue
            ms, shorts = windows(r["text"], r["prompt"], tokens)
            X = np.array([[m.get(k, 0.0) for k in feats] for m in ms]).reshape(-1, len(feats))
            n = len(X)
            if n == 1 and shorts[0]:
                pr = np.array([[at, at]])
            else:
                pr = np.array([[at + i, at + i + 1] for i in range(n - 1)]).reshape(-1, 2)
            blocks.append(X)
            self.pairs.append(pr)
            self.y.append(int(r["degenerate"]))
            self.ids.append(r["id"])
            at += n
        self.A = np.vstack(blocks)
        self.col = {k: i for i, k in enumerate(feats)}

    def window_scores(self, theta: Weights) -> tuple[np.ndarray, np.ndarray]:
        """Every window's score (the best channel's) and which channel gave it."""
        per = []
        for _ch, wt in theta.items():
            v = np.full(len(self.A), wt["bias"])
            for k, x in wt.items():
                if k != "bias":
                    v = v + x * self.A[:, self.col[k]]
            per.append(v)
        stack = np.vstack(per)
        best = np.argmax(stack, axis=0)
        return stack[best, np.arange(len(self.A))], best

    def pooled(self, theta: Weights, idx: list[int]) -> tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]:
        """Each text's score, the window it comes from (-1: none) and that window's
        channel."""
        s, best = self.window_scores(theta)
        z = np.full(len(idx), -1e9)
        arg = np.full(len(idx), -1)
        for n, j in enumerate(idx):
            pr = self.pairs[j]
            if len(pr) == 0:
                continue
            a, c = s[pr[:, 0]], s[pr[:, 1]]
            low = np.minimum(a, c)
            t = int(np.argmax(low))
            z[n] = low[t]
            arg[n] = pr[t, 0] if a[t] <= c[t] else pr[t, 1]
        return z, arg, best[np.maximum(arg, 0)]

    def fit(self, idx: list[int], init: Weights, steps: int = 1500, lr: float = 0.05,
            l2: float = 1e-3, neg_weight: float = 3.0) -> Weights:
        names = [ch for ch in init if ch not in FIXED]
        keys = [[k for k in init[ch] if k != "bias"] for ch in names]
        sd = self.A.std(axis=0) + 1e-6
        # parameters: per channel [bias, weights...], weights scaled by the measure's spread
        theta = [np.array([init[ch]["bias"]] + [init[ch][k] * sd[self.col[k]] for k in ks])
                 for ch, ks in zip(names, keys, strict=True)]
        sign = [np.array([0.0] + [1.0 if k in BAD_UP else -1.0 for k in ks]) for ks in keys]
        m = [np.zeros_like(t) for t in theta]
        v = [np.zeros_like(t) for t in theta]
        y = np.array([self.y[j] for j in idx], dtype=float)
        cw = np.where(y == 1, 1.0, neg_weight)

        def table() -> Weights:
            return {**FIXED, **{ch: {"bias": float(t[0]), **{
                k: float(t[1 + i] / sd[self.col[k]]) for i, k in enumerate(ks)}}
                for ch, t, ks in zip(names, theta, keys, strict=True)}}

        offset = len(FIXED)  # the fixed channels come first in table()
        for step in range(1, steps + 1):
            z, arg, chan = self.pooled(table(), idx)
            chan = chan - offset
            p = 1 / (1 + np.exp(-np.clip(z, -30, 30)))
            d = np.where(arg >= 0, cw * (p - y), 0.0) / len(idx)
            for c, (t, ks) in enumerate(zip(theta, keys, strict=True)):
                sel = (chan == c) & (arg >= 0)
                rows = self.A[arg[sel]][:, [self.col[k] for k in ks]] / sd[[self.col[k]
                                                                           for k in ks]]
                g = np.append(d[sel].sum(), d[sel] @ rows)
                g[1:] += l2 * t[1:]
                m[c] = 0.9 * m[c] + 0.1 * g
                v[c] = 0.999 * v[c] + 0.001 * g * g
                t -= lr * (m[c] / (1 - 0.9 ** step)) / (np.sqrt(v[c] / (1 - 0.999 ** step))
                                                        + 1e-8)
                t[:] = np.where(t * sign[c] < 0, 0.0, t)
        return table()

    def scores(self, theta: Weights, idx: list[int]) -> dict[str, float]:
        z, _, _ = self.pooled(theta, idx)
        y = np.array([self.y[j] for j in idx])
        pred = z >= 0
        tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
        fn = int((~pred & (y == 1)).sum())
        return {"tp": tp, "fp": fp, "fn": fn, "precision": tp / max(1, tp + fp),
                "recall": tp / max(1, tp + fn)}


def cross_validate(prob: Problem, init: Weights, folds: int, seed: int = 0
                   ) -> tuple[dict[str, float], list[str], list[str]]:
    """Stratified k-fold: fit on k-1 folds, judge the held-out one."""
    rng = random.Random(seed)
    pos = [j for j, y in enumerate(prob.y) if y]
    neg = [j for j, y in enumerate(prob.y) if not y]
    rng.shuffle(pos)
    rng.shuffle(neg)
    tot = {"tp": 0, "fp": 0, "fn": 0}
    fps, fns = [], []
    for k in range(folds):
        test = pos[k::folds] + neg[k::folds]
        train = [j for j in range(len(prob.y)) if j not in set(test)]
        theta = prob.fit(train, init)
        z, _, _ = prob.pooled(theta, test)
        for n, j in enumerate(test):
            if z[n] >= 0 and prob.y[j]:
                tot["tp"] += 1
            elif z[n] >= 0:
                tot["fp"] += 1
                fps.append(prob.ids[j])
            elif prob.y[j]:
                tot["fn"] += 1
                fns.append(prob.ids[j])
    tot["precision"] = tot["tp"] / max(1, tot["tp"] + tot["fp"])
    tot["recall"] = tot["tp"] / max(1, tot["tp"] + tot["fn"])
    return tot, fps, fns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--logprobs", type=Path, help="per-token log-probabilities of the texts "
                    "(benchmarks.rescore's output): fit the weights used with them, on the "
                    "texts the bundled model wrote (a server streams the generating "
                    "model's own log-probabilities, never another's)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = load()
    lp = None
    if a.logprobs:  # log-probabilities are the generating model's own only on its texts
        rows = [r for r in rows if r["source"] == "model"]
    feats: tuple[str, ...] = FEATURES
    init: Weights = START
    if a.logprobs:
        with a.logprobs.open() as f:
            lp = {r["id"]: r["tokens"] for r in map(json.loads, f)}
        feats = (*FEATURES, "surprise")
        init = {**START, "babble": {**START["babble"], "bias": -3.0, "surprise": 0.5},
                "surprise": {"bias": -6.0, "surprise": 1.0}}
    prob = Problem(rows, feats, lp)
    every = list(range(len(prob.y)))
    print(f"{len(prob.y)} texts ({sum(prob.y)} babble or glued, {len(prob.y) - sum(prob.y)} "
          f"good), {len(prob.A)} windows")
    theta = prob.fit(every, init)
    weights = {ch: {k: round(v, 2) for k, v in wt.items() if k == "bias" or round(v, 2)}
               for ch, wt in theta.items() if any(round(v, 2) for k, v in wt.items()
                                                  if k != "bias")}
    ins = prob.scores(theta, every)
    cv, fps, fns = cross_validate(prob, init, a.folds)
    print("weights:", json.dumps(weights))
    print(f"in sample: precision {ins['precision']:.3f} recall {ins['recall']:.3f} "
          f"(fp {ins['fp']}, fn {ins['fn']})")
    print(f"{a.folds}-fold: precision {cv['precision']:.3f} recall {cv['recall']:.3f} "
          f"(fp {cv['fp']}, fn {cv['fn']})")
    print("cross-validated false positives:", ", ".join(fps) or "none")
    print("cross-validated misses:", ", ".join(fns) or "none")
    if a.json:
        a.json.write_text(json.dumps({"weights": weights, "in_sample": ins, "cv": cv,
                                      "cv_false_positives": fps, "cv_misses": fns}, indent=1))


if __name__ == "__main__":
    main()
