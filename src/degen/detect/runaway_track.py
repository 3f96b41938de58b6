"""The runaway track: the prediction that a generation will not end by the horizon,
kept as it streams (:class:`RunawayTrack`), part of the watch
(:mod:`degen.detect.watch`), with the measures it is a logistic function of
(:data:`FEATURES`), the kinds of evidence a generation may carry (:data:`EVIDENCE`)
and the check of a weights table (:func:`check_weights`).

What a runaway is, and how it is told from a capped or a long generation, is
:mod:`degen.detect.runaway`'s module doc; the detectors (``capped``, ``runaway``) are
there too, and every name here is importable from it. This module imports only what is
below the watch (the weights, :mod:`degen.detect.runaway_weights`, when the generic fit
is wanted), never the watch.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from degen.detect.base import Finding
from degen.errors import InvalidParams

#: stopping evidence below this (log-probability) reads as "no thought of ending";
#: it is also what a stop token absent from a server's top alternatives counts as
FLOOR = math.log(1e-3)
#: a token where the model gave ending at least this much is a place it could have ended
CONSIDERED = math.log(0.05)
WINDOW = 64  # tokens the recent stopping evidence is taken over
#: the probability at which a runaway is reported (and cut) mid-stream: on the bundled
#: model's runs, 0.88 of those it cuts do not end by 5 times the cap, and 0.8% of the
#: generations that end by themselves are cut (benchmarks/README.md)
CUT = 0.8
SHORT = 16
#: the measures the probability is a logistic function of
FEATURES = ("log_t", "log_left", "stop_max", "stop_max_short", "stop_mean", "stop_max_all",
            "stop_since", "surprise", "surprise_all", "loop", "babble", "bad_share", "rep",
            "rep_words")
UNITS = 64  # words (and punctuation runs) the repetition measures are taken over
EVIDENCE = ("stop", "logprobs", "text")  # what a generation's tokens came with
Weights = dict[str, dict[str, float]]  # evidence -> {"bias": b, feature: weight}


def check_weights(table: Mapping[str, Mapping[str, float]]) -> Weights:
    """A validated copy of an evidence -> weights table (every kind of evidence)."""
    out: Weights = {}
    for ev in EVIDENCE:
        if ev not in table:
            raise InvalidParams(f"runaway weights lack the {ev!r} fit; give all of "
                                f"{', '.join(EVIDENCE)}")
        bad = set(table[ev]) - {"bias", *FEATURES}
        if bad:
            raise InvalidParams(f"runaway weights[{ev!r}] have unknown measures: "
                                f"{', '.join(sorted(bad))}")
        out[ev] = {k: float(v) for k, v in table[ev].items()}
    return out


class RunawayTrack:
    """The probability that a generation will not end by ``horizon`` tokens, kept as
    it streams. See the module doc.

    Args:
        horizon: tokens in all by which a generation that is no runaway ends (None:
            unknown, no prediction).
        weights: evidence -> weights (:func:`check_weights`); default the generic fit.
        cut: probability at which a runaway is reported mid-stream.
        min_tokens: fewest tokens before one is.
        every: tokens between two looks (the probability is computed at each).
    """

    def __init__(self, horizon: int | None = None, weights: Mapping[str, Any] | None = None,
                 *, cut: float = CUT, min_tokens: int = 48, every: int = 8) -> None:
        from degen.detect.runaway_weights import GENERIC

        if horizon is not None and horizon < 1:
            raise InvalidParams(f"the horizon must be >= 1 token, got {horizon}")
        if not 0.5 <= cut <= 1:
            raise InvalidParams(f"the runaway cut must be in [0.5, 1], got {cut}")
        if min_tokens < 1 or every < 1:
            raise InvalidParams("min_tokens and every must be >= 1")
        self.horizon = horizon
        self.weights = check_weights(GENERIC if weights is None else weights)
        self.cut, self.min_tokens, self.every = cut, min_tokens, every
        self.tokens = 0
        self.stops = 0  # tokens that came with stopping evidence
        self._max: deque[tuple[int, float]] = deque()  # (token, value), decreasing values
        self._short: deque[tuple[int, float]] = deque()
        self._recent: deque[float] = deque()  # exp(value) of the last WINDOW tokens
        self._sum = 0.0
        self.max_all = FLOOR
        self._last_considered = 0  # the last token where ending was considered
        self.considered_char = 0  # text offset just after it
        self.p: float | None = None  # the probability at the last look
        self.peak = 0.0  # the highest probability at a look
        self.finding: Finding | None = None
        self._nll = 0.0  # summed over the tokens with a log-probability
        self._scored = 0
        # the last UNITS units of the text, their counts and their pairs' counts
        self._units: deque[str] = deque()
        self._unit_n: dict[str, int] = {}
        self._pair_n: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------------ feeding
    def token(self, logprob: float | None, stop: tuple[float, bool] | None,
              chars: int) -> None:
        """One generated token; ``logprob``: its log-probability, ``stop``: its stopping
        evidence (log-probability of ending, upper bound?) when known; ``chars``: the
        text offset after it."""
        self.tokens += 1
        if logprob is not None and math.isfinite(logprob):
            self._nll -= min(logprob, 0.0)
            self._scored += 1
        if stop is None:
            return
        value, upper = stop
        v = FLOOR if upper or value < FLOOR else min(value, 0.0)
        t = self.tokens
        self.stops += 1
        for q, width in ((self._max, WINDOW), (self._short, SHORT)):
            while q and q[-1][1] <= v:
                q.pop()
            q.append((t, v))
            while q[0][0] <= t - width:
                q.popleft()
        e = math.exp(v)
        self._recent.append(e)
        self._sum += e
        if len(self._recent) > WINDOW:
            self._sum -= self._recent.popleft()
        if v > self.max_all:
            self.max_all = v
        if v >= CONSIDERED:
            self._last_considered = t
            self.considered_char = chars

    def unit(self, raw: str) -> None:
        """One unit of the text (a word or a run of punctuation, as the watch cuts it):
        the repetition measures are taken over the last :data:`UNITS` of them."""
        q, counts, pairs = self._units, self._unit_n, self._pair_n
        u = raw.lower()
        if q:
            pair = (q[-1], u)
            pairs[pair] = pairs.get(pair, 0) + 1
        q.append(u)
        counts[u] = counts.get(u, 0) + 1
        if len(q) > UNITS:
            old = q.popleft()
            counts[old] -= 1
            if not counts[old]:
                del counts[old]
            first = (old, q[0])
            pairs[first] -= 1
            if not pairs[first]:
                del pairs[first]

    def chunk(self, n: int = 1) -> None:
        """``n`` tokens whose stopping evidence and log-probabilities are unknown (text
        alone: a chunk of a stream counts as one)."""
        self.tokens += n

    # ------------------------------------------------------------------ judging
    def evidence(self, surprise: float | None) -> str:
        if self.stops:
            return "stop"
        return "logprobs" if surprise is not None else "text"

    def features(self, surprise: float | None, loop: bool, babble: bool,
                 bad_share: float, tokens: int | None = None) -> dict[str, float]:
        t = max(1, tokens if tokens is not None else self.tokens)
        h = self.horizon or t + 1
        n = len(self._units)
        f = {"log_t": math.log(t), "log_left": math.log(max(1, h - t)),
             "loop": float(loop), "babble": float(babble), "bad_share": bad_share,
             "surprise": surprise or 0.0,
             "surprise_all": self._nll / self._scored if self._scored else 0.0,
             # the share of the recent word pairs (words) that repeat one seen before
             "rep": 1 - len(self._pair_n) / (n - 1) if n > 8 else 0.0,
             "rep_words": 1 - len(self._unit_n) / n if n > 8 else 0.0}
        if self.stops:
            f.update(stop_max=self._max[0][1] if self._max else FLOOR,
                     stop_max_short=self._short[0][1] if self._short else FLOOR,
                     stop_mean=math.log(self._sum / len(self._recent)) if self._recent
                     else FLOOR,
                     stop_max_all=self.max_all,
                     stop_since=math.log1p(self.tokens - self._last_considered))
        return f

    def probability(self, f: Mapping[str, float], evidence: str) -> float:
        w = self.weights[evidence]
        z = w.get("bias", 0.0) + sum(x * f.get(k, 0.0) for k, x in w.items() if k != "bias")
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def due(self) -> bool:
        """Whether this token is a look (a multiple of ``every``, past ``min_tokens``)."""
        return (self.horizon is not None and self.finding is None
                and self.tokens >= self.min_tokens and self.tokens % self.every == 0)

    def look(self, f: Mapping[str, float], evidence: str, onset: int) -> Finding | None:
        """The probability now; a finding once it reaches ``cut``."""
        p = self.p = self.probability(f, evidence)
        self.peak = max(self.peak, p)
        if p >= self.cut and self.finding is None:
            self.finding = self._make(p, f, evidence, onset, "mid-stream")
            return self.finding
        return None

    def finish(self, f: Mapping[str, float], evidence: str, onset: int, ended: bool,
               tokens: int) -> Finding | None:
        """At the end: none if it ended, else the probability at ``tokens``; a finding
        (kept or new) when it is at least one half."""
        if self.horizon is None:
            return None
        if ended:
            self.p, self.finding = 0.0, None
            return None
        p = self.p = self.probability(f, evidence)
        self.peak = max(self.peak, p)
        if self.finding is None and p >= 0.5:
            self.finding = self._make(p, f, evidence, onset, "at the end")
        return self.finding

    def _make(self, p: float, f: Mapping[str, float], evidence: str, onset: int,
              when: str) -> Finding:
        t = self.tokens
        if evidence == "stop":
            why = (f"the model gave ending at most {math.exp(f['stop_max']):.1e} over its "
                   f"last {WINDOW} tokens")
        elif evidence == "logprobs":
            why = f"its tokens' surprise is {f['surprise']:.1f} nats"
        else:
            why = "from its text alone"
        return Finding(
            kind="runaway", score=round(min(1.0, max(0.0, p)), 4),
            message=f"predicted not to end by {self.horizon} tokens (p = {p:.2f} at token "
                    f"{t}, {when}): {why}",
            start_char=onset, start_unit=t, unit="token",
            evidence={"p_runaway": round(p, 4), "at_token": t, "horizon": self.horizon,
                      "evidence": evidence,
                      "measures": {k: round(v, 3) for k, v in f.items()}})


__all__ = ["CONSIDERED", "CUT", "EVIDENCE", "FEATURES", "FLOOR", "SHORT", "UNITS", "WINDOW",
           "RunawayTrack", "Weights", "check_weights"]
