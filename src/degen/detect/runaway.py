"""``capped`` and ``runaway``: a generation that reached its cap, and one that would
not end by the horizon.

Seed 000's failure is a model that never emits its end token; a cap (``max_tokens``)
is only where the measurement stopped looking. So degen tells three things apart:

- **capped**: the generation reached its cap (finish_reason ``"length"``); read off
  the record (:class:`CappedDetector`). Most capped answers of a tuned model are long
  answers that end a few hundred tokens later.
- **long**: capped, but it ended by itself before the horizon ``H`` when continued
  (:mod:`degen.experiments.load.extend`).
- **runaway**: it would not end by ``H`` (8 times the cap unless told): known by
  extension, or predicted. :class:`RunawayTrack` is the prediction, part of the watch
  (:mod:`degen.detect.watch`): at every token, the probability that the generation
  will not end by ``H``, from what the model itself says about ending (the *stopping
  evidence*: the probability it gave to its stop tokens, :mod:`degen.engines.evidence`),
  how surprised it is by its own tokens, what the watch found (a loop, babble), and
  how far it is from ``H``. The probability is a logistic function of those
  measures (:data:`FEATURES`), fitted on generations whose end is known by extension
  (``benchmarks/fit_runaway.py``; the weights per model in
  :mod:`degen.detect.runaway_weights`), one fit for each kind of evidence a record
  may carry: stopping evidence and log-probabilities, log-probabilities alone, text
  alone.

Mid-stream the watch reports a runaway once the probability reaches ``cut`` (a cut:
the generation ends with finish_reason ``"runaway"``); at the end, a generation that
was capped without being cut is a runaway when the probability there is at least
one half. A generation that ended is never a runaway, whatever was predicted.

The prediction (:class:`RunawayTrack`, its measures and weights' check) is
:mod:`degen.detect.runaway_track`'s, below the watch; its names stay importable from
here. This module holds the detectors, which run a watch.
"""

from __future__ import annotations

from typing import Any

from degen.detect.base import Detector, Finding
from degen.detect.runaway_track import (
    CONSIDERED,
    CUT,
    EVIDENCE,
    FEATURES,
    FLOOR,
    SHORT,
    UNITS,
    WINDOW,
    RunawayTrack,
    Weights,
    check_weights,
)
from degen.records import Completion


class CappedDetector(Detector):
    """``capped``: ``finish_reason == "length"``: the generation reached ``max_tokens``
    (or the context) without an end token. Error records are never capped."""

    kind = "capped"

    def __call__(self, completion: Completion) -> Finding | None:
        if completion.finish_reason != "length":
            return None
        n = completion.completion_tokens
        cap = completion.params.max_tokens
        return Finding(
            kind=self.kind,
            score=1.0,
            message=f"no end token by the cap: stopped after {n if n is not None else '?'} "
                    f"tokens (max_tokens {cap})",
            start_char=len(completion.text),
            start_unit=n,
            unit="token",
            evidence={"completion_tokens": n, "max_tokens": cap},
        )


class RunawayDetector(Detector):
    """``runaway``: the generation would not end by the horizon (the watch's
    prediction, or its known outcome). ``horizon``: tokens (default 8 times each
    record's cap)."""

    kind = "runaway"

    def __init__(self, horizon: int | None = None, **options: Any) -> None:
        from degen.detect.watch import WatchConfig

        self.config = WatchConfig(kinds=(self.kind,), horizon=horizon, runaway=options)

    def __call__(self, completion: Completion) -> Finding | None:
        from degen.detect.watch import watch_completion

        return watch_completion(completion, self.config).get(self.kind)


__all__ = ["CONSIDERED", "CUT", "EVIDENCE", "FEATURES", "FLOOR", "SHORT", "UNITS", "WINDOW",
           "CappedDetector", "RunawayDetector", "RunawayTrack", "Weights", "check_weights"]
