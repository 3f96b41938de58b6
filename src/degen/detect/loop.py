"""``loop``: the text falls into a repeating unit ("lesson lesson lesson", a line or
a paragraph over and over, "44. Fire 45. Fire 46. Fire"): the batch view.

:class:`LoopDetector` is a :class:`~degen.detect.watch.Watch` that looks only for
loops, run to the end of a completion, so it answers exactly as the guard would. The
judging itself, and the rules a repeating run is legitimate by (requested, data,
counting, markup, code; sentence cycles), are the loop track's
(:class:`~degen.detect.loop_track.LoopTrack`, :mod:`degen.detect.loop_track`).

The loop primitives stay importable from here under their old names: the track
(:class:`~degen.detect.loop_track.LoopTrack`), the period tracker and unit cutting
(:mod:`degen.detect.period`), the prompt's reading (:mod:`degen.detect.asked`) and
sentence cycles (:class:`~degen.detect.cycle.SentenceCycle`).
"""

from __future__ import annotations

from degen.detect.asked import asked_for, prompt_text, requested_count, words_of
from degen.detect.base import Detector, Finding
from degen.detect.cycle import SentenceCycle
from degen.detect.loop_track import LoopTrack, check_loop_options
from degen.detect.period import (
    NUM,
    UNIT,
    Loop,
    PeriodTracker,
    measure,
    norm,
    says_something,
    text_units,
)
from degen.detect.watch import WatchConfig, watch_completion
from degen.records import Completion


class LoopDetector(Detector):
    """The first loop in a completion: a :class:`~degen.detect.watch.Watch` that looks
    only for loops, run over the whole text (so it answers exactly as the guard would).

    Args:
        max_period: longest repeating unit looked for, in units (words/punctuation).
        min_span: fewest units a loop must cover (so "hello hello hello" is not one).
        extra: units needed beyond ``repeats`` whole ones; ``repeats``: whole units.
    """

    kind = "loop"

    def __init__(self, max_period: int = 256, min_span: int = 20, extra: int = 2,
                 repeats: int = 3) -> None:
        PeriodTracker(max_period, min_span, extra, repeats)  # validates
        self.max_period, self.min_span, self.extra = max_period, min_span, extra
        self.repeats = repeats

    def __call__(self, completion: Completion) -> Finding | None:
        cfg = WatchConfig(kinds=("loop",), loop={"max_period": self.max_period,
                                                 "min_span": self.min_span,
                                                 "extra": self.extra,
                                                 "repeats": self.repeats})
        return watch_completion(completion, cfg).get("loop")


__all__ = ["NUM", "UNIT", "Loop", "LoopDetector", "LoopTrack", "PeriodTracker", "SentenceCycle",
           "asked_for", "check_loop_options", "measure", "norm", "prompt_text",
           "requested_count", "says_something", "text_units", "words_of"]
