"""Loop detection on a stream that leaves legitimate repetition alone: :class:`LoopWatch`.

:class:`~degen.detect.loop.StreamingLoopDetector` reports the first loop the period
tracker confirms. The batch :class:`~degen.detect.loop.LoopDetector` also asks whether
that loop is legitimate (:func:`~degen.detect.loop.legitimate`: a phrase the prompt
asked for, table or CSV rows whose numbers carry data, counting) and, when it is,
scans on past it with a fresh tracker. A guard that cuts streams needs both, on text
that arrives a few characters at a time, so LoopWatch does what LoopDetector does,
one unit at a time:

- the same :class:`~degen.detect.loop.PeriodTracker` confirms a repeating run;
- the run is judged by the same rules; a legitimate run is followed to its end and a
  fresh tracker starts at the unit that breaks it, as LoopDetector rescans;
- a run judged a loop is reported (the guard cuts there).

On a stream, a run's verdict can depend on text not generated yet. LoopWatch waits,
for a bounded number of units, in exactly those cases:

- **requested**: LoopDetector calls a phrase the prompt asked for legitimate when the
  text moves on after it. The watch lets such a run go on while it has at most as many
  repetitions as the prompt asked for ("ten times": 10, plus ``margin``; with no count
  in the prompt, ``requested_repeats``) and calls it a loop past that;
- **data**: whether a number in the unit carries data (its steps vary) or only counts
  ("44. Fire 45. Fire") shows only after a few values; the watch waits until every
  number slot has ``settle_values`` values (three steps) before calling it a counter;
- **markup** (not in LoopDetector): a unit with no word and no number (the rule of a
  wide Markdown table, ``|---|---|...``) may run for ``markup_units`` units.

When a run ends while the watch waits, the verdict is LoopDetector's on the whole run;
when the stream ends, it is LoopDetector's for a run that reaches the end of the text.
Cost per unit does not grow with the stream (memory is bounded by the tracker's
window); the prompt is read once, when the first repeating run needs it.

>>> w = LoopWatch(prompt="Tell me about the sea.")
>>> f = None
>>> for _ in range(30):
...     f = f or w.feed("The sea is deep. ")
>>> f.evidence["period"], f.evidence["unit_text"]
(5, 'The sea is deep. ')
>>> w = LoopWatch(prompt="Write 'I will not talk in class' ten times.")
>>> for _ in range(10):
...     w.feed("I will not talk in class.\\n")
>>> w.feed("There you go."), w.finish(), w.vetoed[0]["reason"]
(None, None, 'requested')
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from degen.detect.base import Finding
from degen.detect.loop import (
    _UNIT,
    NUM,
    PeriodTracker,
    _asked_for,
    _words,
    norm,
    says_something,
    text_units,
)
from degen.errors import InvalidParams

_WAIT = "wait"  # a verdict that needs more of the run
_MAX_VETOED = 64  # legitimate runs kept in ``vetoed`` (all are counted in ``vetoes``)

_SMALL = {w: i for i, w in enumerate((
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty"))}
_TENS = {w: 10 * i for i, w in enumerate((
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")) if w}
_WORDS = {**_SMALL, **_TENS, "hundred": 100, "dozen": 12}
_COUNT = re.compile(
    r"\b(?:(" + "|".join(_TENS) + r")[\s-]+)?(\d{1,4}|" + "|".join(_WORDS) + r")\s*(?:times|x)\b"
    r"|\b(twice|thrice)\b", re.IGNORECASE)


def requested_count(prompt: str) -> int | None:
    """How many times the prompt asks for something ("ten times", "12x", "twice"), the
    largest such count, or None.

    >>> requested_count("Say hello three times, then twenty-five times more.")
    25
    >>> requested_count("Say hello.") is None
    True
    """
    best: int | None = None
    for m in _COUNT.finditer(prompt):
        tens, word, once = m.groups()
        if once:
            n = 2 if once.lower() == "twice" else 3
        else:
            n = int(word) if word.isdigit() else _WORDS[word.lower()]
            if tens and n < 10:
                n += _TENS[tens.lower()]
        best = n if best is None else max(best, n)
    return best


@dataclass(slots=True)
class _Slot:
    """The values one number position of a repeating unit takes, run by run."""

    last: int
    count: int = 1
    steps: set[int] = field(default_factory=set)

    def add(self, value: int) -> None:
        if len(self.steps) < 2:  # two distinct steps already decide "data"
            self.steps.add(value - self.last)
        self.last = value
        self.count += 1


@dataclass(slots=True)
class _Run:
    """A repeating run the tracker confirmed, being judged."""

    start: int  # unit index of its onset
    period: int
    span: int  # units from the onset that repeat so far
    unit: list[Hashable]
    unit_text: str
    start_char: int
    confirmed_span: int
    slots: dict[int, _Slot]  # number positions in the unit -> their values
    asked: bool
    says: bool
    waited: bool = False


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:  # a digit Python will not read as a number ("²")
        return 0


class LoopWatch:
    """Streaming loop detection with LoopDetector's vetoes. See the module doc.

    Args:
        prompt: what the request asked (see :func:`~degen.detect.loop.prompt_text`);
            requested repetition is judged against it.
        max_period, min_span, extra: the :class:`~degen.detect.loop.PeriodTracker`'s.
        requested_repeats: repetitions allowed to a phrase the prompt asked for when the
            prompt gives no count; ``margin`` is added to a count it gives.
        settle_values: values of each number in a unit seen before a counter is
            called a loop (not data).
        markup_units: units a run with no word and no number may cover.

    Feed text deltas with :meth:`feed` and call :meth:`finish` at the end; both return
    the :class:`Finding` once a loop is confirmed (then on every later call).
    ``vetoed`` lists the legitimate runs passed over (the first 64), ``vetoes`` counts
    them by reason. Not thread-safe: one watch per stream.
    """

    def __init__(self, prompt: str = "", *, max_period: int = 256, min_span: int = 16,
                 extra: int = 8, requested_repeats: int = 10, margin: int = 2,
                 settle_values: int = 4, markup_units: int = 128) -> None:
        self._tracker_args = (max_period, min_span, extra)
        self._tracker = PeriodTracker(*self._tracker_args)  # validates them
        for name, v, lo in (("requested_repeats", requested_repeats, 1), ("margin", margin, 0),
                            ("settle_values", settle_values, 2),
                            ("markup_units", markup_units, 1)):
            if v < lo:
                raise InvalidParams(f"{name} must be >= {lo}, got {v}")
        self.requested_repeats, self.margin = requested_repeats, margin
        self.settle_values, self.markup_units = settle_values, markup_units
        self._prompt = prompt or ""
        self._prompt_words: list[Hashable] | None = None
        self._limit: int | None = None
        size = (self._tracker._buf.maxlen or 0) + 1
        self._units: deque[Hashable] = deque(maxlen=size)
        self._raw: deque[str] = deque(maxlen=size)
        self._offs: deque[int] = deque(maxlen=size)
        self._text = ""  # the stream's text from char ``_text_at`` on
        self._text_at = 0
        self._pending = ""  # text whose last unit may still grow
        self._pending_at = 0
        self._pos = 0  # unit where the current tracker started
        self._run: _Run | None = None  # a run being judged
        self._follow: int | None = None  # period of a legitimate run followed to its end
        self.n = 0  # units seen
        self.finding: Finding | None = None
        self.vetoed: list[dict[str, Any]] = []
        self.vetoes: Counter[str] = Counter()

    # ------------------------------------------------------------------ feeding
    @property
    def waiting(self) -> bool:
        """A repeating run is being watched whose verdict needs more text."""
        return self._run is not None

    def feed(self, delta: str) -> Finding | None:
        """A text delta. The unit touching its end is held back until the next delta
        shows whether it goes on."""
        if self.finding is not None or not delta:
            return self.finding
        self._text += delta
        self._pending += delta
        ms = list(_UNIT.finditer(self._pending))
        if ms and ms[-1].end() == len(self._pending):
            ms.pop()  # may continue
        for m in ms:
            if self._push(m.group(0), self._pending_at + m.start()) is not None:
                break
        if ms:
            cut = ms[-1].end()
            self._pending_at += cut
            self._pending = self._pending[cut:]
        self._trim()
        return self.finding

    def finish(self) -> Finding | None:
        """The stream ended: take the held-back unit, and judge a run still open as one
        that reaches the end of the text."""
        if self.finding is None:
            for m in _UNIT.finditer(self._pending):
                if self._push(m.group(0), self._pending_at + m.start()) is not None:
                    break
            self._pending = ""
        run = self._run
        if self.finding is None and run is not None:
            why = self._judge(run, ended=True, at_end=True)
            if why is None:
                self.finding = self._make(run)
            else:
                self._veto(run, why)
            self._run = None
        return self.finding

    # ------------------------------------------------------------------ internals
    def _unit_at(self, i: int) -> Hashable:
        return self._units[i - (self.n - len(self._units))]

    def _trim(self) -> None:
        """Keep the text from the oldest unit still in the window (bounded memory)."""
        keep = self._offs[0] if self._offs else self._pending_at
        if keep - self._text_at > 4096 and keep - self._text_at > len(self._text) // 2:
            self._text = self._text[keep - self._text_at:]
            self._text_at = keep

    def _push(self, raw: str, offset: int) -> Finding | None:
        unit = norm(raw)
        i = self.n
        self._units.append(unit)
        self._raw.append(raw)
        self._offs.append(offset)
        self.n = i + 1
        if self._follow is not None:  # a legitimate run: wait for its end
            if unit == self._unit_at(i - self._follow):
                return None
            self._follow = None
            self._restart(i, unit)
            return None
        run = self._run
        if run is not None:
            if unit != self._unit_at(i - run.period):  # the run ended before a verdict
                self._run = None
                why = self._judge(run, ended=True, at_end=False)
                if why is None:
                    self.finding = self._make(run)
                    return self.finding
                self._veto(run, why)
                self._restart(i, unit)
                return None
            run.span += 1
            slot = run.slots.get((i - run.start) % run.period)
            if slot is not None:
                slot.add(_int(raw))
        else:
            loop = self._tracker.push(unit)
            if loop is None:
                return None
            run = self._open(self._pos + loop.onset, loop.period)
        why = self._judge(run, ended=False, at_end=False)
        if why == _WAIT:
            run.waited = True
            self._run = run
            return None
        self._run = None
        if why is None:
            self.finding = self._make(run)
            return self.finding
        self._veto(run, why)
        self._follow = run.period
        return None

    def _restart(self, i: int, unit: Hashable) -> None:
        """A fresh tracker from unit ``i`` on, as LoopDetector rescans past a legitimate
        run."""
        self._tracker = PeriodTracker(*self._tracker_args)
        self._pos = i
        self._tracker.push(unit)

    def _open(self, start: int, period: int) -> _Run:
        first = self.n - len(self._units)
        k0 = start - first
        unit = [self._units[k0 + k] for k in range(period)]
        slots: dict[int, _Slot] = {}
        for k in range(period):
            if unit[k] != NUM:
                continue
            j = k0 + k
            slot = _Slot(_int(self._raw[j]))
            for j2 in range(j + period, len(self._units), period):
                slot.add(_int(self._raw[j2]))
            slots[k] = slot
        a, b = self._offs[k0], self._offs[k0 + period]
        if self._prompt_words is None:
            self._prompt_words = _words(text_units(self._prompt)[0])
        return _Run(start=start, period=period, span=self.n - start, unit=unit,
                    unit_text=self._text[a - self._text_at:b - self._text_at], start_char=a,
                    confirmed_span=self.n - start, slots=slots,
                    asked=_asked_for(_words(unit), self._prompt_words),
                    says=says_something(unit))

    def _requested_limit(self) -> int:
        if self._limit is None:
            count = requested_count(self._prompt)
            self._limit = count + self.margin if count else self.requested_repeats
        return self._limit

    def _judge(self, run: _Run, ended: bool, at_end: bool) -> str | None:
        """LoopDetector's :func:`~degen.detect.loop.legitimate` on the run so far: a
        reason (legitimate), None (a loop) or ``_WAIT``. ``ended``: the run is over
        (``at_end``: by the end of the text)."""
        if run.asked and not at_end:
            if ended:
                return "requested"
            if run.span <= self._requested_limit() * run.period:
                return _WAIT
            # longer than asked: judged as a run that reaches the end
        if run.slots:
            steps = [s.steps for s in run.slots.values()]
            if any(len(s) > 1 for s in steps):
                return "data"
            if not run.says and any(s != {0} for s in steps):
                return "counting"
            if not ended and min(s.count for s in run.slots.values()) < self.settle_values:
                return _WAIT
        elif not run.says:  # neither word nor number: markup such as a table's rule
            if ended and not at_end:
                return "markup"
            if not ended and run.span <= self.markup_units:
                return _WAIT
        return None

    def _veto(self, run: _Run, why: str) -> None:
        self.vetoes[why] += 1
        if len(self.vetoed) < _MAX_VETOED:
            self.vetoed.append({"reason": why, "start_char": run.start_char,
                                "period": run.period, "repeats": round(run.span / run.period, 2),
                                "unit_text": run.unit_text[:80]})

    def _make(self, run: _Run) -> Finding:
        repeats = run.span / run.period
        shown = run.unit_text.strip()[:60]
        after = self.n - run.start
        return Finding(
            kind="loop", score=min(1.0, 0.5 + 0.05 * repeats), start_char=run.start_char,
            start_unit=run.start, unit="word",
            message=f"{shown!r} repeats {repeats:.1f} times from char {run.start_char} "
                    f"(confirmed {after} units after its onset)",
            evidence={"period": run.period, "repeats": round(repeats, 2),
                      "span_units": run.span, "near": NUM in run.unit,
                      "unit_text": run.unit_text[:200],
                      "detected_after_units": after, "detected_at_unit": self.n,
                      "waited": run.waited, "vetoed_before": sum(self.vetoes.values())},
        )
