"""``loop``: the text falls into a repeating unit ("lesson lesson lesson", a line or
a paragraph over and over, "44. Fire 45. Fire 46. Fire").

Text is cut into units (lower-cased words, runs of one punctuation mark); every
number is the same unit ``<num>``, so a counter that changes while nothing new is
said still repeats. A repeating unit made only of numbers and punctuation (counting
"1, 2, 3, ...") is not a loop: someone may have asked for it.

The core is :class:`PeriodTracker`, a streaming check fed one unit (token id or
word) at a time, whose cost per unit does not grow with the length of the text:

- for every *active* period p it keeps the length of the current run of positions
  where ``s[i] == s[i - p]``, dropping p at the first mismatch;
- a new candidate period is proposed only by the distance from the new unit to its
  previous occurrence (at most ``max_period`` back), so normal text keeps a handful
  of short-lived candidates and a loop of period p keeps one;
- a loop is *confirmed* when a run of period p covers ``max(min_span, 2p + extra)``
  units (two whole units and a bit of the third; 16 units at least): with the
  defaults it is found at most ``2.5 p + 16`` units after its onset.

:class:`LoopDetector` runs the tracker over a whole completion and reports the
first confirmed loop with its onset, period, repeating unit, how many times it
repeats and whether it runs to the end of the text.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from degen.detect.base import Detector, Finding
from degen.errors import InvalidParams
from degen.records import Completion

# words, runs of one punctuation character ("---", "!!!"), other single symbols
_UNIT = re.compile(r"\w+|([^\w\s])\1*", re.UNICODE)


@dataclass(frozen=True, slots=True)
class Loop:
    """A confirmed loop: ``period`` units repeating from unit ``onset``; ``span`` units
    of the sequence (from ``onset``) were periodic when it was confirmed or measured."""

    onset: int
    period: int
    span: int

    @property
    def repeats(self) -> float:
        return self.span / self.period


class PeriodTracker:
    """Streaming exact-repeat detector over hashable units. See the module doc."""

    def __init__(self, max_period: int = 256, min_span: int = 16, extra: int = 8,
                 accept: Callable[[list[Hashable]], bool] | None = None) -> None:
        if max_period < 1:
            raise InvalidParams(f"max_period must be >= 1, got {max_period}")
        if min_span < 2:
            raise InvalidParams(f"min_span must be >= 2 (a unit and its repeat), got {min_span}")
        if extra < 0:
            raise InvalidParams(f"extra must be >= 0, got {extra}")
        self.max_period, self.min_span, self.extra = max_period, min_span, extra
        # enough history to look back one period and to extend an onset backwards
        self._buf: deque[Hashable] = deque(maxlen=4 * max_period + min_span)
        self._last: dict[Hashable, int] = {}
        self._active: dict[int, int] = {}  # period -> run length ending at the last unit
        self.n = 0  # units seen
        self.loop: Loop | None = None  # the first confirmed loop
        self.accept = accept  # veto on a loop's unit (called once per candidate period)
        self._vetoed: set[int] = set()

    def need(self, period: int) -> int:
        """Periodic units needed to confirm a loop of ``period``."""
        return max(self.min_span, 2 * period + self.extra)

    def _at(self, pos: int) -> Hashable:
        return self._buf[pos - (self.n - len(self._buf))]

    def push(self, unit: Hashable) -> Loop | None:
        """Add one unit; return the loop the first time one is confirmed, else None."""
        n = self.n
        buf = self._buf
        active = self._active
        if active:
            for p in list(active):
                if buf[len(buf) - p] == unit:
                    active[p] += 1
                else:
                    del active[p]
                    self._vetoed.discard(p)
        j = self._last.get(unit)
        if j is not None:
            p = n - j
            if p <= self.max_period and p not in active:
                active[p] = 1
        self._last[unit] = n
        buf.append(unit)
        self.n = n + 1
        if self.loop is None and active:
            for p in sorted(active):
                span = active[p] + p
                if span >= self.need(p) and p not in self._vetoed:
                    if self.accept is not None and not self.accept(list(buf)[-p:]):
                        self._vetoed.add(p)
                        continue
                    self.loop = self._extend_back(p, span)
                    return self.loop
        return None

    def _extend_back(self, p: int, span: int) -> Loop:
        """Move the onset back while the unit before it also repeats (the run may have
        started before its period became a candidate)."""
        onset = self.n - span
        lo = self.n - len(self._buf)
        while onset - 1 >= lo and self._at(onset - 1) == self._at(onset - 1 + p):
            onset -= 1
        return Loop(onset=onset, period=p, span=self.n - onset)

    def feed(self, units: Iterable[Hashable]) -> Loop | None:
        """Push every unit; return the first loop confirmed on the way (or None)."""
        for u in units:
            found = self.push(u)
            if found is not None:
                return found
        return None


NUM = "<num>"


def norm(unit: str) -> str:
    """A text unit as the tracker sees it: lower-cased, every number ``<num>``."""
    return NUM if unit.isdigit() else unit.lower()


def says_something(unit: list[Hashable]) -> bool:
    """A loop's unit holds a word, not just numbers and punctuation (counting)."""
    return any(isinstance(u, str) and u != NUM and u[:1].isalnum() for u in unit)


def text_units(text: str) -> tuple[list[str], list[int]]:
    """Loop units of ``text`` (see :func:`norm`) and their char offsets."""
    units, offsets = [], []
    for m in _UNIT.finditer(text):
        units.append(norm(m.group(0)))
        offsets.append(m.start())
    return units, offsets


def measure(seq: Sequence[Hashable], onset: int, period: int) -> int:
    """How many units from ``onset`` stay periodic with ``period`` (the full extent)."""
    i = onset + period
    while i < len(seq) and seq[i] == seq[i - period]:
        i += 1
    return i - onset


def _words(units: Sequence[Hashable]) -> list[Hashable]:
    return [u for u in units if isinstance(u, str) and u != NUM and u[:1].isalnum()]


def _asked_for(unit_words: list[Hashable], prompt_words: list[Hashable]) -> bool:
    """The unit's words (in some rotation) appear, in order, in the prompt's words."""
    n = len(unit_words)
    if n == 0 or len(prompt_words) < n:
        return False
    grams = {tuple(prompt_words[i:i + n]) for i in range(len(prompt_words) - n + 1)}
    return any(tuple(unit_words[k:] + unit_words[:k]) in grams for k in range(n))


def _number_steps(units: Sequence[Hashable], offsets: Sequence[int], text: str, start: int,
                  period: int, span: int) -> list[set[int]]:
    """For each number slot of the unit, the set of steps between its successive values."""
    out = []
    for k in range(period):
        if units[start + k] != NUM:
            continue
        vals = []
        for i in range(start + k, start + span, period):
            m = _UNIT.match(text, offsets[i])
            vals.append(int(m.group(0)) if m and m.group(0).isdigit() else 0)
        out.append({b - a for a, b in itertools.pairwise(vals)})
    return out


def legitimate(units: Sequence[Hashable], offsets: Sequence[int], text: str, start: int,
               period: int, span: int, reaches_end: bool,
               prompt_words: list[Hashable]) -> str | None:
    """Why a repeating run is not degenerate (None: it is a loop).

    - ``"requested"``: the prompt holds the repeated words ("write 'I will not talk in
      class' ten times") and the text moves on afterwards; a requested phrase repeated
      to the very end of the text is still a loop.
    - ``"data"``: a near-repeat whose numbers carry information: some number slot takes
      values that are not a counter (steps that vary). "44. Fire 45. Fire" only counts;
      CSV rows and table lines with measured values say something new.
    - ``"counting"``: a unit of only numbers and punctuation whose numbers change
      ("1, 2, 3, ..."): someone may have asked for it. "1. 1. 1. 1." is still a loop.
    """
    unit = list(units[start:start + period])
    if not reaches_end and _asked_for(_words(unit), prompt_words):
        return "requested"
    if NUM in unit:
        steps = _number_steps(units, offsets, text, start, period, span)
        if any(len(s) > 1 for s in steps):
            return "data"
        if not says_something(unit) and any(s != {0} for s in steps):
            return "counting"
    return None


def prompt_text(messages: Iterable[Mapping[str, Any]] | None = None,
                prompt: str | Iterable[Any] | None = None) -> str:
    """The text a request asked with, as LoopDetector reads it: a raw prompt (or the
    strings of a list of prompts), else every chat message but the assistant's (string
    contents and the text parts of list contents)."""
    if isinstance(prompt, str):
        return prompt
    if prompt is not None:
        return " ".join(p for p in prompt if isinstance(p, str))
    parts: list[str] = []
    for m in messages or ():
        if not isinstance(m, Mapping) or m.get("role") == "assistant":
            continue
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content
                         if isinstance(p, Mapping) and p.get("type") == "text")
    return " ".join(parts)


class LoopDetector(Detector):
    """Finds the first exact loop in a completion's text.

    Args:
        max_period: longest repeating unit looked for, in units (words/punctuation).
        min_span: fewest units a loop must cover (so "hello hello hello" is not one).
        extra: units of the third repetition needed beyond two whole ones.
    """

    kind = "loop"

    def __init__(self, max_period: int = 256, min_span: int = 16, extra: int = 8) -> None:
        PeriodTracker(max_period, min_span, extra)  # validates
        self.max_period, self.min_span, self.extra = max_period, min_span, extra

    def __call__(self, completion: Completion) -> Finding | None:
        text = completion.text
        units, offsets = text_units(text)
        asked = prompt_text(completion.messages, completion.prompt or None)
        prompt_words = _words(text_units(asked)[0])
        pos = 0
        while True:  # the first loop that is not legitimate, scanning past those that are
            tracker = PeriodTracker(self.max_period, self.min_span, self.extra)
            found = tracker.feed(units[pos:])
            if found is None:
                return None
            start, period = pos + found.onset, found.period
            span = measure(units, start, period)
            reaches_end = start + span >= len(units)
            why = legitimate(units, offsets, text, start, period, span, reaches_end,
                             prompt_words)
            if why is None:
                break
            pos = start + span
        unit_start = offsets[start]
        unit_end = offsets[start + period] if start + period < len(offsets) else len(text)
        unit_text = text[unit_start:unit_end]
        repeats = span / period
        loop = found
        score = min(1.0, 0.5 + 0.05 * repeats + (0.25 if reaches_end else 0.0))
        evidence: dict[str, Any] = {
            "period": period, "repeats": round(repeats, 2), "span_units": span,
            "near": NUM in units[start:start + period],
            "unit_text": unit_text[:200], "reaches_end": reaches_end,
            "detected_after_units": loop.span,
        }
        shown = unit_text.strip()[:60]
        return Finding(
            kind=self.kind, score=score, start_char=unit_start, start_unit=start, unit="word",
            message=f"{shown!r} repeats {repeats:.1f} times from char {unit_start}"
                    + (" to the end" if reaches_end else ""),
            evidence=evidence,
        )


class StreamingLoopDetector:
    """Loop detection on a stream, for the guard: feed token ids or text deltas and
    get a :class:`Finding` the moment a loop is confirmed (then on every later call).

    Cost per unit does not grow with the stream's length (see :class:`PeriodTracker`);
    memory is bounded by ``4 * max_period`` units. Feed either tokens or text, not both.

    >>> d = StreamingLoopDetector()
    >>> d.feed_text("Sure! ") is None
    True
    >>> f = None
    >>> for _ in range(20):
    ...     f = f or d.feed_text("lesson ")
    >>> f.evidence["period"], f.start_char
    (1, 6)
    """

    def __init__(self, max_period: int = 256, min_span: int = 16, extra: int = 8) -> None:
        self.tracker = PeriodTracker(max_period, min_span, extra)
        size = self.tracker._buf.maxlen
        self._offsets: deque[int | None] = deque(maxlen=size)
        self._pieces: deque[str] = deque(maxlen=size)
        self._pending = ""
        self._pending_at = 0  # char offset of _pending in the whole text
        self.finding: Finding | None = None
        self._mode: str | None = None

    @property
    def units(self) -> int:
        return self.tracker.n

    def _set_mode(self, mode: str) -> None:
        if self._mode is None:
            self._mode = mode
            if mode == "text":
                self.tracker.accept = says_something
        elif self._mode != mode:
            raise InvalidParams("feed either tokens or text to one StreamingLoopDetector")

    def _push(self, unit: Hashable, offset: int | None, piece: str) -> Finding | None:
        self._offsets.append(offset)
        self._pieces.append(piece)
        loop = self.tracker.push(unit)
        if loop is not None:
            self.finding = self._make(loop)
        return self.finding

    def feed_token(self, token_id: int, piece: str = "", offset: int | None = None
                   ) -> Finding | None:
        """One generated token (``piece``: its text, for the evidence)."""
        self._set_mode("token")
        if self.finding is not None:
            return self.finding
        return self._push(token_id, offset, piece)

    def feed_text(self, delta: str) -> Finding | None:
        """A text delta. A unit touching the end of the text so far is held back until
        the next delta shows whether it goes on."""
        self._set_mode("text")
        if self.finding is not None or not delta:
            return self.finding
        self._pending += delta
        ms = list(_UNIT.finditer(self._pending))
        if ms and ms[-1].end() == len(self._pending):
            ms.pop()  # may continue
        for m in ms:
            if self._push(norm(m.group(0)), self._pending_at + m.start(), m.group(0)):
                break
        if ms:
            cut = ms[-1].end()
            self._pending_at += cut
            self._pending = self._pending[cut:]
        return self.finding

    def finish(self) -> Finding | None:
        """The stream ended: take the held-back unit too."""
        if self._mode == "text" and self.finding is None:
            for m in _UNIT.finditer(self._pending):
                self._push(norm(m.group(0)), self._pending_at + m.start(), m.group(0))
            self._pending = ""
        return self.finding

    def _make(self, loop: Loop) -> Finding:
        first = self.tracker.n - len(self._pieces)
        i = loop.onset - first
        unit = " ".join(self._pieces[j] for j in range(i, i + loop.period))
        return Finding(
            kind="loop", score=min(1.0, 0.5 + 0.05 * loop.repeats),
            message=f"{unit[:60]!r} repeats {loop.repeats:.1f} times (confirmed after "
                    f"{loop.span} {'tokens' if self._mode == 'token' else 'units'})",
            start_char=self._offsets[i], start_unit=loop.onset,
            unit="token" if self._mode == "token" else "word",
            evidence={"period": loop.period, "repeats": round(loop.repeats, 2),
                      "unit_text": unit[:200], "detected_after_units": loop.span,
                      "detected_at_unit": self.tracker.n},
        )
