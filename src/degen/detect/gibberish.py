"""``gibberish``: made-up words, word salad, letters of several scripts in one word,
symbol junk, capitalized word chains: text that stops being language.

Judged by the babble track of the watch (:mod:`degen.detect.babble`);
:class:`GibberishDetector` is that watch, looking for this kind only, run over a whole
completion.
"""

from __future__ import annotations

from typing import Any

from degen.detect.base import Detector, Finding
from degen.records import Completion


class GibberishDetector(Detector):
    """The first gibberish in a completion. ``options``: of
    :class:`~degen.detect.babble.BabbleTrack` (window, step, confirm, weights...)."""

    kind = "gibberish"

    def __init__(self, **options: Any) -> None:
        from degen.detect.watch import WatchConfig

        self.config = WatchConfig(kinds=(self.kind,), babble=options)  # validates

    def __call__(self, completion: Completion) -> Finding | None:
        from degen.detect.watch import watch_completion

        return watch_completion(completion, self.config).get(self.kind)
