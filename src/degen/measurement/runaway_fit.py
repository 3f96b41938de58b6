"""Fitting the runaway predictor on runs whose ends are known by extension.

A run folder whose capped generations were continued (``degen run --horizon``,
``degen extend``) says, for every generation, where it ended or how far it was
followed without ending. Each generation is read again, token by token, by the same
watch the engines and the guard run (:func:`samples`), and at a few positions ``t``
the runaway track's measures are taken; each position is paired with horizons
``H`` past it for which the outcome is known, and labelled 1 when the generation had
not ended by ``H``. A logistic regression per kind of evidence
(:data:`~degen.detect.runaway.EVIDENCE`: the stopping evidence is taken away to fit
"logprobs", the log-probabilities too to fit "text") gives the weights
:mod:`degen.detect.runaway` reads. ``degen fit-runaway`` is this, on a user's own runs.

Scoring (:func:`score`) uses the rules the watch acts on: at the cap, "runaway" when
the probability is at least one half; mid-stream, a cut once it reaches the track's
``cut`` at one of its looks.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from degen.detect.runaway import EVIDENCE, FEATURES
from degen.errors import UsageError
from degen.outcomes import Outcome, outcomes, read_extensions
from degen.records import Completion
from degen.store import RECORDS, iter_records, settled

#: positions (tokens) where a generation's measures are taken for the fit
POSITIONS = (48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 512, 640, 768)
#: the fit learns from positions past this share of the cap (earlier, too little is
#: known to tell a runaway: predictions there come out low, and nothing is cut)
FROM = 0.5
#: horizons, as multiples of the position, a position is paired with
RATIOS = (5, 8, 10)
#: the L2 penalty on the standardized weights (chosen by cross-validation on the
#: bundled model's runs: benchmarks/fit_runaway.py)
L2 = 1e-2
#: probabilities at which precision and recall are also reported
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)
#: the measures each kind of evidence may use
USES: dict[str, tuple[str, ...]] = {
    "stop": FEATURES,
    "logprobs": tuple(f for f in FEATURES if not f.startswith("stop_")),
    "text": tuple(f for f in FEATURES if not f.startswith(("stop_", "surprise"))),
}


@dataclass
class Generation:
    """One generation read to where it was followed: its measures by position (per
    kind of evidence) and how it ended."""

    request_id: str
    prompt_id: str
    outcome: Outcome
    cap: int
    at: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    cut_at: dict[str, int | None] = field(default_factory=dict)
    #: tokens from a cut's onset (where the runaway started: the degeneration the watch
    #: found, else just after the last token where the model thought of ending) to it
    cut_after_onset: dict[str, int | None] = field(default_factory=dict)


def _stream(c: Completion, continuations: Sequence[Completion]) -> tuple[
        str, list[float], list[int], list[tuple[float, bool]] | None]:
    """A generation and its continuations as one token stream: text, log-probabilities,
    characters per token and stopping evidence (None when a part lacks it)."""
    from degen.detect.watch import stop_evidence_of

    text, lps, chars = "", [], []
    stops: list[tuple[float, bool]] | None = []
    for part in (c, *continuations):
        x = part.extra or {}
        lp, ch = x.get("logprobs"), x.get("logprob_chars")
        if not (isinstance(lp, list) and isinstance(ch, list) and len(lp) == len(ch)
                and sum(ch) == len(part.text)):
            return "", [], [], None
        text += part.text
        lps += lp
        chars += ch
        ev = stop_evidence_of(x, len(lp))
        stops = stops + ev if stops is not None and ev is not None else None
    return text, lps, chars, stops


def read_generation(c: Completion, continuations: Sequence[Completion], outcome: Outcome,
                    positions: Iterable[int] = POSITIONS,
                    cut: Mapping[str, Any] | None = None) -> Generation | None:
    """``c`` (with its ``continuations``) read by the watch, once per kind of evidence,
    its measures taken at ``positions``; ``cut``: options of the runaway track whose
    mid-stream cut is recorded too (``cut_at``: the token of the first cut, per
    evidence), the generation then read as it was generated, to its cap (where a run
    stops it), not further. None when the record has no log-probabilities aligned with
    its text."""
    from degen.detect.asked import prompt_text
    from degen.detect.watch import Watch, WatchConfig

    text, lps, chars, stops = _stream(c, () if cut else continuations)
    if not lps:
        return None
    g = Generation(c.request_id, c.prompt_id, outcome, c.params.max_tokens)
    want = sorted(p for p in positions if p <= len(lps))
    prompt = prompt_text(c.messages, c.prompt or None)
    for ev in EVIDENCE:
        if ev == "stop" and stops is None:
            continue
        opts = dict(cut or {})
        horizon = opts.pop("horizon", None)
        w = Watch(prompt, WatchConfig(runaway=opts), horizon=horizon, model=c.model)
        track = w.runaway
        assert track is not None
        k = pos = 0
        cut_at = after = None
        ends: list[int] = []  # the text offset after each token
        for i, (lp, n) in enumerate(zip(lps, chars, strict=True)):
            if ev == "text":
                f = w.feed(text[pos:pos + n])
            else:
                f = w.feed(text[pos:pos + n], (lp,),
                           stops[i:i + 1] if ev == "stop" and stops is not None else None)
            pos += n
            ends.append(pos)
            if f is not None and f.kind == "runaway" and cut_at is None:
                cut_at = i + 1
                onset = bisect.bisect_left(ends, f.start_char or 0)
                after = cut_at - onset
            if k < len(want) and i + 1 == want[k]:
                g.at.setdefault(want[k], {})[ev] = w._runaway_features(i + 1)
                k += 1
        g.cut_at[ev] = cut_at
        g.cut_after_onset[ev] = after
    return g


def read_runs(folders: Iterable[Path], positions: Iterable[int] = POSITIONS,
              cut: Mapping[str, Any] | None = None) -> list[Generation]:
    """Every generation of the run ``folders`` with a known outcome, read."""
    out: list[Generation] = []
    for folder in folders:
        folder = Path(folder)
        if not (folder / RECORDS).is_file():
            raise UsageError(f"{folder} holds no run (no {RECORDS}); pass run folders "
                             "whose capped generations were extended (degen extend)")
        cs = settled(iter_records(folder / RECORDS, allow_torn_tail=True))
        exts = read_extensions(folder)
        known = outcomes(cs, exts)
        by_id: dict[str, list[Completion]] = {}
        for e in exts:
            if not e.is_cancelled and not e.is_error:
                by_id.setdefault(e.request_id, []).append(e)
        for c in cs:
            o = known.get(c.request_id)
            if o is None:
                continue
            conts = sorted(by_id.get(c.request_id, ()),
                           key=lambda e: int(e.extra.get("extends", {}).get("from", 0)))
            g = read_generation(c, conts, o, positions, cut)
            if g is not None:
                out.append(g)
    return out


def examples(gens: Sequence[Generation], evidence: str, ratios: Iterable[int] = RATIOS,
             longest: int | None = None, upto: int | None = None
             ) -> tuple[list[list[float]], list[int], list[float]]:
    """(measures, label, weight) for every known (position, horizon) pair, positions up
    to ``upto`` (the cap: where a run's watch reads) and horizons up to ``longest``:
    label 1 when the generation had not ended by the horizon. Each generation weighs 1
    in all."""
    from degen.detect.runaway import FEATURES as names

    xs: list[list[float]] = []
    ys: list[int] = []
    ws: list[float] = []
    for g in gens:
        rows = []
        for t, by_ev in g.at.items():
            if evidence not in by_ev or (upto is not None and not FROM * upto <= t <= upto):
                continue
            if g.outcome.ended and g.outcome.tokens <= t:
                continue  # it had ended: nothing was generating there
            for r in ratios:
                h = r * t
                if longest is not None and h > longest:
                    continue
                ended = g.outcome.ended_by(h)
                if ended is None:
                    continue
                f = dict(by_ev[evidence])
                f["log_left"] = math.log(max(1, h - t))
                rows.append(([f.get(k, 0.0) for k in names], int(not ended)))
        for x, y in rows:
            xs.append(x)
            ys.append(y)
            ws.append(1.0 / len(rows))
    return xs, ys, ws


def logistic(xs: Sequence[Sequence[float]], ys: Sequence[int], ws: Sequence[float],
             l2: float = 1e-3, iterations: int = 50) -> tuple[float, list[float]]:
    """Weighted logistic regression by Newton's method (an L2 penalty ``l2`` on the
    standardized weights, none on the bias). Returns (bias, weights) on the raw
    measures."""
    import numpy as np

    X = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    w = np.asarray(ws, dtype=float)
    if len(X) == 0 or y.min() == y.max():
        raise UsageError("a runaway fit needs generations that ended and generations "
                         "that did not; extend more runs (or at a larger horizon)")
    mu, sd = X.mean(0), X.std(0)
    sd[sd == 0] = 1.0
    Z = np.hstack([np.ones((len(X), 1)), (X - mu) / sd])
    beta = np.zeros(Z.shape[1])
    pen = np.full(Z.shape[1], l2 * w.sum())
    pen[0] = 0.0
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(Z @ beta, -60, 60)))
        grad = Z.T @ (w * (p - y)) + pen * beta
        hess = (Z * (w * p * (1 - p))[:, None]).T @ Z + np.diag(pen) + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    coef = beta[1:] / sd
    bias = beta[0] - float((coef * mu).sum())
    return float(bias), [float(c) for c in coef]


def fit(gens: Sequence[Generation], l2: float = L2, longest: int | None = None,
        upto: int | None = None) -> dict[str, dict[str, float]]:
    """Weights for every kind of evidence the generations carry (the generic fit for
    a kind they lack, stopping evidence, is left out), from positions up to ``upto``
    and horizons up to ``longest``."""
    from degen.detect.runaway import FEATURES as names

    out: dict[str, dict[str, float]] = {}
    for ev in EVIDENCE:
        xs, ys, ws = examples(gens, ev, longest=longest, upto=upto)
        if not xs:
            continue
        keep = [i for i, n in enumerate(names) if n in USES[ev]]
        bias, coef = logistic([[x[i] for i in keep] for x in xs], ys, ws, l2)
        out[ev] = {"bias": round(bias, 4), **{names[i]: round(c, 4)
                                              for i, c in zip(keep, coef, strict=True)
                                              if abs(c) > 1e-6}}
    return out


def predict(weights: Mapping[str, Mapping[str, float]], evidence: str,
            f: Mapping[str, float]) -> float:
    w = weights[evidence]
    z = w.get("bias", 0.0) + sum(x * f.get(k, 0.0) for k, x in w.items() if k != "bias")
    return 1 / (1 + math.exp(-max(-60.0, min(60.0, z))))


def _rate(k: int, n: int) -> dict[str, Any]:
    from degen.stats import wilson_interval

    lo, hi = wilson_interval(k, n)
    return {"value": k / n if n else None, "k": k, "n": n, "ci95": [lo, hi]}


def score(gens: Sequence[Generation], weights: Mapping[str, Mapping[str, float]],
          evidence: str, at: int, horizon: int) -> dict[str, Any]:
    """Precision and recall of "will not end by ``horizon``" predicted at token ``at``
    (p >= 1/2), over the generations still going at ``at`` whose outcome at
    ``horizon`` is known; with the Brier score and a reliability table."""
    tp = fp = fn = tn = 0
    brier = 0.0
    bins = [[0, 0.0, 0] for _ in range(10)]  # n, sum p, runaways
    seen: list[tuple[float, bool]] = []
    for g in gens:
        f0 = g.at.get(at, {}).get(evidence)
        if f0 is None or (g.outcome.ended and g.outcome.tokens <= at):
            continue
        ended = g.outcome.ended_by(horizon)
        if ended is None:
            continue
        f = dict(f0)
        f["log_left"] = math.log(max(1, horizon - at))
        p = predict(weights, evidence, f)
        y = not ended
        seen.append((p, y))
        brier += (p - y) ** 2
        b = bins[min(9, int(p * 10))]
        b[0] += 1
        b[1] += p
        b[2] += y
        if p >= 0.5:
            tp, fp = tp + y, fp + (not y)
        else:
            fn, tn = fn + y, tn + (not y)
    n = tp + fp + fn + tn
    curve = []
    for cut in THRESHOLDS:
        hit = [y for p, y in seen if p >= cut]
        curve.append({"threshold": cut, "precision": _rate(sum(hit), len(hit)),
                      "recall": _rate(sum(hit), tp + fn)})
    return {"at": at, "horizon": horizon, "evidence": evidence, "n": n,
            "runaways": tp + fn, "precision": _rate(tp, tp + fp),
            "recall": _rate(tp, tp + fn), "brier": brier / n if n else None,
            "thresholds": curve,
            "reliability": [{"p": round(i / 10, 1), "n": b[0],
                             "mean_p": b[1] / b[0] if b[0] else None,
                             "share": b[2] / b[0] if b[0] else None}
                            for i, b in enumerate(bins) if b[0]]}


def score_cuts(gens: Sequence[Generation], evidence: str, horizon: int) -> dict[str, Any]:
    """The mid-stream cut as the watch makes it (read with ``cut`` options): its
    precision (cut generations that did not end by ``horizon``), recall, the share of
    generations that ended by themselves that it cut, and where it cut."""
    cut_run = cut_end = runs = ended = 0
    at: list[int] = []
    after: list[int] = []
    for g in gens:
        e = g.outcome.ended_by(horizon)
        if e is None or evidence not in g.cut_at:
            continue
        c = g.cut_at[evidence]
        cut = c is not None and (not g.outcome.ended or c < g.outcome.tokens)
        runs += not e
        ended += e
        if cut:
            cut_run += not e
            cut_end += e
            if not e:
                at.append(c or 0)
                a = g.cut_after_onset.get(evidence)
                if a is not None:
                    after.append(a)
    at.sort()
    after.sort()
    return {"evidence": evidence, "horizon": horizon,
            "precision": _rate(cut_run, cut_run + cut_end), "recall": _rate(cut_run, runs),
            "ended_cut": _rate(cut_end, ended),
            "cut_at_median": at[len(at) // 2] if at else None,
            "after_onset_median": after[len(after) // 2] if after else None}


def fit_report(folders: Sequence[Path], horizon: int | None = None,
               l2: float = L2) -> dict[str, Any]:
    """``degen fit-runaway``: the fit on every generation of ``folders`` and how it does
    on them (in sample: at the cap and as a mid-stream cut), at ``horizon`` (default
    the longest the extensions followed)."""
    gens = read_runs(folders)
    if not gens:
        raise UsageError("no generation of these runs has its log-probabilities and a "
                         "known end; run with --logprobs and extend them (degen extend)")
    followed = max(g.outcome.horizon or g.outcome.tokens for g in gens)
    cap = max(g.cap for g in gens)
    if horizon is not None and horizon <= cap:
        raise UsageError(f"--horizon must be above the runs' cap ({cap} tokens), got "
                         f"{horizon}; omit it to score at the longest the extensions "
                         f"followed ({followed})")
    h = horizon or followed
    if h <= cap:
        raise UsageError(f"the runs were not extended past their cap ({cap} tokens); run "
                         "degen extend on them first")
    weights = fit(gens, l2, longest=h, upto=cap)
    if not weights:
        raise UsageError("too few generations to fit: extend more runs")
    for ev in EVIDENCE:  # a kind of evidence the runs lack reads as the next one's fit
        weights.setdefault(ev, weights.get("logprobs") or weights["text"])
    cut = read_runs(folders, positions=(), cut={"weights": weights, "horizon": h})
    scores = {ev: {"at_cap": score(gens, weights, ev, cap, h),
                   "cuts": score_cuts(cut, ev, h)} for ev in EVIDENCE
              if any(ev in by for g in gens for by in g.at.values())}
    return {"kind": "degen.runaway-fit", "weights": weights, "horizon": h, "cap": cap,
            "generations": len(gens), "runs": [str(f) for f in folders],
            "scores": scores, "in_sample": True}
