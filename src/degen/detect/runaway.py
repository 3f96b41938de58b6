"""``runaway``: the generation ran out of ``max_tokens`` (or context) without an end.

This is seed 000's failure: the request never emits the end-of-sequence token and
generates until a cap stops it. It is read off ``finish_reason == "length"``; the
evidence says how many tokens it burnt and against which cap.
"""

from __future__ import annotations

from degen.detect.base import Detector, Finding
from degen.records import Completion


class RunawayDetector(Detector):
    """Flags ``finish_reason == "length"``. Error records are never runaways."""

    kind = "runaway"

    def __call__(self, completion: Completion) -> Finding | None:
        if completion.finish_reason != "length":
            return None
        n = completion.completion_tokens
        cap = completion.params.max_tokens
        return Finding(
            kind=self.kind,
            score=1.0,
            message=f"no end token: stopped by the cap after {n if n is not None else '?'} "
                    f"tokens (max_tokens {cap})",
            start_char=len(completion.text),
            start_unit=n,
            unit="token",
            evidence={"completion_tokens": n, "max_tokens": cap},
        )
