"""Sentence cycles: a loop that is not periodic (see :class:`SentenceCycle`)."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from degen.detect.period import NUM
from degen.errors import InvalidParams


class SentenceCycle:
    """A loop that is not periodic: the text keeps cycling through a few sentences
    ("Thank you for your patience. Thank you for your understanding. Thank you for your
    patience and understanding. ..."). Sentences end at ``.``, ``!``, ``?`` and line
    breaks and are compared lower-cased, numbers as written (but for a number among the
    first two words: a list or step marker). Confirmed when, of the last
    ``window`` sentences of at least ``min_words`` words, at least ``repeated`` are
    copies of one among the ``memory`` before them and at most ``distinct`` differ.

    Args: window, repeated, distinct, memory, min_words (see above).
    """

    def __init__(self, window: int = 12, repeated: int = 11, distinct: int = 4,
                 memory: int = 32, min_words: int = 3) -> None:
        if not 2 <= repeated <= window or distinct < 1 or memory < window or min_words < 1:
            raise InvalidParams("cycle needs 2 <= repeated <= window, distinct >= 1, "
                                "memory >= window and min_words >= 1")
        self.window, self.repeated, self.distinct = window, repeated, distinct
        self.memory, self.min_words = memory, min_words
        self._words: list[str] = []
        self._start: int | None = None
        self._end_at = 0  # char offset just past the sentence's last unit
        self._past: deque[tuple[tuple[str, ...], int, int]] = deque(maxlen=memory)
        self._counts: Counter[tuple[str, ...]] = Counter()  # sentences in _past
        self._flags: deque[bool] = deque(maxlen=window)

    def push(self, raw: str, offset: int, newline: bool) -> dict[str, Any] | None:
        """One unit; a cycle (its first sentence's offset, the sentences' spans...) the
        moment one is confirmed."""
        found = self._end() if newline and self._words else None
        c = raw[0]
        if c in ".!?…":
            return self._end() if self._words else found
        if c.isalnum():
            if self._start is None:
                self._start = offset
            # a number that opens a sentence is a list or step marker ("Step 12:")
            words = self._words
            words.append(NUM if len(words) < 2 and raw.isdigit() else raw.lower())
            self._end_at = offset + len(raw)
        return found

    def _end(self) -> dict[str, Any] | None:
        words, start = tuple(self._words), self._start
        self._words, self._start = [], None
        if len(words) < self.min_words or start is None:
            return None
        past, counts = self._past, self._counts
        seen = counts[words] > 0
        if len(past) == past.maxlen:
            old = past[0][0]
            counts[old] -= 1
            if not counts[old]:
                del counts[old]
        past.append((words, start, self._end_at))
        counts[words] += 1
        self._flags.append(seen)
        if len(self._flags) < self.window or sum(self._flags) < self.repeated:
            return None
        recent = list(past)[-self.window:]
        kinds = {w for w, _, _ in recent}
        if len(kinds) > self.distinct:
            return None
        spans: list[tuple[int, int]] = []
        firsts: set[tuple[str, ...]] = set()
        for w, a, b in recent:
            if w not in firsts:
                firsts.add(w)
                spans.append((a, b))
        return {"start_char": recent[0][1], "spans": spans, "distinct": len(kinds),
                "window": self.window, "repeated": sum(self._flags)}
