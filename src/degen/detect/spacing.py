"""``spacing``: words run together ("wasreleasedinSeptember") while the words
themselves are real.

Seed 001's symptom, from a missing chat template, a too-high repetition_penalty or a
batched-generation slicing bug: the model picks continuation tokens where a word
should start. Judged by the babble track of the watch (:mod:`degen.detect.babble`):
a window is spacing when glued words weigh most in what makes it bad.
:class:`SpacingDetector` is that watch, looking for this kind only, run over a whole
completion.
"""

from __future__ import annotations

from typing import Any

from degen.detect.base import Detector, Finding
from degen.records import Completion


class SpacingDetector(Detector):
    """The first glued-words stretch in a completion. ``options``: of
    :class:`~degen.detect.babble.BabbleTrack`."""

    kind = "spacing"

    def __init__(self, **options: Any) -> None:
        from degen.detect.watch import WatchConfig

        self.config = WatchConfig(kinds=(self.kind,), babble=options)  # validates

    def __call__(self, completion: Completion) -> Finding | None:
        from degen.detect.watch import watch_completion

        return watch_completion(completion, self.config).get(self.kind)
