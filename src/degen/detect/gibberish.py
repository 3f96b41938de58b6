"""``gibberish``: made-up words, word salad, letters of several scripts in one word.

The text is read in windows of ``window`` words (every ``step`` words). A window is
bad when any of these holds:

- *non-words*: at least ``max_unknown`` of its words are no word of the text's
  language (nor glued real words, which are the ``spacing`` kind);
- *word salad* (English): fewer than ``min_bigrams`` of its adjacent word pairs are
  ever seen together on the web, few function words, and few separators (so lists
  of items, which also lack grammar, are left alone);
- *mixed scripts*: at least ``max_mixed`` of its words mix scripts ("whichра").

The finding needs ``min_windows`` bad windows (a single window for short texts) and
starts at the first bad one. Code (fenced or inline) is ignored.
"""

from __future__ import annotations

import itertools
import re

from degen.detect import lexicon
from degen.detect.base import Detector, Finding
from degen.errors import InvalidParams
from degen.records import Completion

_SEP = re.compile(r"[,;\n|•\-*:]")


class GibberishDetector(Detector):
    kind = "gibberish"

    def __init__(self, window: int = 24, step: int = 8, max_unknown: float = 0.25,
                 min_bigrams: float = 0.2, min_function: float = 0.25,
                 max_mixed: float = 0.1, min_windows: int = 2) -> None:
        if window < 8 or step < 1 or min_windows < 1:
            raise InvalidParams("window must be >= 8, step >= 1 and min_windows >= 1")
        for name, v in (("max_unknown", max_unknown), ("min_bigrams", min_bigrams),
                        ("min_function", min_function), ("max_mixed", max_mixed)):
            if not 0 <= v <= 1:
                raise InvalidParams(f"{name} must be in [0, 1], got {v}")
        self.window, self.step = window, step
        self.max_unknown, self.min_bigrams = max_unknown, min_bigrams
        self.min_function, self.max_mixed, self.min_windows = min_function, max_mixed, min_windows

    def __call__(self, completion: Completion) -> Finding | None:
        text = lexicon.strip_code(completion.text)
        matches = list(lexicon.LETTERS.finditer(text))
        if len(matches) < 12:
            return None
        words = [m.group(0).lower() for m in matches]
        lang, _ = lexicon.best_language(words)
        func = lexicon.function_words(lang)
        n = len(words)
        starts = list(range(0, max(1, n - self.window + 1), self.step))
        bad: list[tuple[int, str, dict[str, float]]] = []
        for s in starts:
            why, stats = self._judge(text, matches, words[s:s + self.window], s, lang, func)
            if why:
                bad.append((s, why, stats))
        need = 1 if len(starts) == 1 else self.min_windows
        if len(bad) < need:
            return None
        s, why, stats = bad[0]
        share = len(bad) / len(starts)
        sample = text[matches[s].start():matches[min(s + 12, n - 1)].end()]
        return Finding(
            kind=self.kind, score=min(1.0, 0.4 + 0.6 * share),
            message=f"{why} from char {matches[s].start()} ({len(bad)} of {len(starts)} "
                    f"windows): {sample[:80]!r}",
            start_char=matches[s].start(), start_unit=s, unit="word",
            evidence={"reason": why, "language": lang, "bad_windows": len(bad),
                      "windows": len(starts), "first_window": stats, "sample": sample[:200]},
        )

    def _judge(self, text: str, matches: list[re.Match[str]], w: list[str], s: int, lang: str,
               func: frozenset[str]) -> tuple[str, dict[str, float]]:
        k = len(w)
        unknown = sum(not lexicon.is_known(x, lang) and lexicon.glued_parts(x) is None
                      and len(x) > 1 for x in w) / k
        mixed = sum(lexicon.mixed_script(x) for x in w) / k
        function = sum(x in func for x in w) / k
        span = text[matches[s].start():matches[s + k - 1].end()]
        seps = len(_SEP.findall(span)) / k
        stats = {"unknown": round(unknown, 3), "mixed_script": round(mixed, 3),
                 "function_words": round(function, 3), "separators": round(seps, 3)}
        if mixed >= self.max_mixed:
            return "words mixing scripts", stats
        if unknown >= self.max_unknown:
            return "made-up words", stats
        if lang == "en":
            bigrams = _attested_bigrams(w)
            stats["attested_bigrams"] = round(bigrams, 3)
            if bigrams < self.min_bigrams and function < self.min_function and seps < 0.25:
                return "word salad", stats
        return "", stats


def _attested_bigrams(words: list[str]) -> float:
    lexicon._load_segmenter()
    import wordsegment

    pairs = list(itertools.pairwise(words))
    if not pairs:
        return 1.0
    return sum(f"{a} {b}" in wordsegment.BIGRAMS for a, b in pairs) / len(pairs)
