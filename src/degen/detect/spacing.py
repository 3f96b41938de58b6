"""``spacing``: words run together ("wasreleasedinSeptember") while the words
themselves are real.

Seed 001's symptom, from a missing chat template, a too-high repetition_penalty or a
batched-generation slicing bug: the model picks continuation tokens where a word
should start. A token is *glued* when it is not a word itself but splits into
common English words; the finding needs several glued tokens, and the rest of the
text must be real words (otherwise it is gibberish, a different kind).

Code (fenced or inline) is ignored, and so are two-part CamelCase names (YouTube,
PlayStation), which are glued by design.
"""

from __future__ import annotations

from typing import Any

from degen.detect import lexicon
from degen.detect.base import Detector, Finding
from degen.errors import InvalidParams
from degen.records import Completion


def _camel_parts(token: str) -> int:
    return sum(c.isupper() for c in token[1:])


class SpacingDetector(Detector):
    """Args:
        min_glued: glued tokens needed.
        min_ratio: glued tokens as a share of all words.
        min_known: share of the other words that must be real words (in the text's
            best language) for this to be spacing rather than gibberish.
        dense_ratio, min_known_dense: when glued tokens are at least ``dense_ratio`` of
            the words (a collapse like seed 001's), ``min_known_dense`` is enough. A few
            chance compounds ("matricesand") in otherwise noisy high-temperature text
            are word salad, not spacing: that is why sparse gluing needs clean text.
    """

    kind = "spacing"

    def __init__(self, min_glued: int = 3, min_ratio: float = 0.03,
                 min_known: float = 0.95, dense_ratio: float = 0.2,
                 min_known_dense: float = 0.85) -> None:
        if min_glued < 1:
            raise InvalidParams(f"min_glued must be >= 1, got {min_glued}")
        if not 0 < min_ratio <= 1 or not 0 < dense_ratio <= 1:
            raise InvalidParams("min_ratio and dense_ratio must be in (0, 1]")
        if not 0 <= min_known <= 1 or not 0 <= min_known_dense <= 1:
            raise InvalidParams("min_known and min_known_dense must be in [0, 1]")
        self.min_glued, self.min_ratio, self.min_known = min_glued, min_ratio, min_known
        self.dense_ratio, self.min_known_dense = dense_ratio, min_known_dense

    def __call__(self, completion: Completion) -> Finding | None:
        text = lexicon.strip_code(completion.text)
        tokens = [(m.group(0), m.start()) for m in lexicon.LETTERS.finditer(text)]
        if len(tokens) < 5:
            return None
        glued: list[dict[str, Any]] = []
        others: list[str] = []
        first_unit = None
        for i, (tok, start) in enumerate(tokens):
            parts = lexicon.glued_parts(tok)
            if parts is not None and not (_camel_parts(tok) >= 1 and len(parts) <= 2):
                if first_unit is None:
                    first_unit = i
                glued.append({"text": tok, "words": list(parts), "char": start})
            elif len(tok) >= 2 or tok.lower() in ("a", "i"):
                others.append(tok.lower())
        ratio = len(glued) / len(tokens)
        if len(glued) < self.min_glued or ratio < self.min_ratio:
            return None
        # the glued tokens are real words too; they count when few others are left
        judged = others if len(others) >= 10 else others + [w for g in glued for w in g["words"]]
        lang, known = lexicon.best_language(judged)
        if known < (self.min_known_dense if ratio >= self.dense_ratio else self.min_known):
            return None
        ex = glued[0]
        return Finding(
            kind=self.kind, score=min(1.0, 0.4 + 3 * ratio),
            message=f"{len(glued)} words run together ({ratio:.0%} of words), e.g. "
                    f"{ex['text']!r} = {' '.join(ex['words'])!r}",
            start_char=ex["char"], start_unit=first_unit, unit="word",
            evidence={"glued": glued[:10], "count": len(glued), "ratio": round(ratio, 3),
                      "language": lang, "known_share": round(known, 3)},
        )
