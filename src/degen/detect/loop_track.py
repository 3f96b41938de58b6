"""The loop track: the incremental judge of ``loop`` (the text falls into a repeating
unit: "lesson lesson lesson", a line or a paragraph over and over, "44. Fire 45. Fire
46. Fire"), fed one unit at a time by the :class:`~degen.detect.watch.Watch`.

This module holds :class:`LoopTrack` and its options' check
(:func:`check_loop_options`); the batch view (:class:`~degen.detect.loop.LoopDetector`,
a watch run to the end of a completion) is :mod:`degen.detect.loop`. It imports only
the primitives below it (:mod:`~degen.detect.period`, :mod:`~degen.detect.asked`,
:mod:`~degen.detect.cycle`), never the watch.

Text is cut into units (words, runs of one punctuation mark,
:data:`~degen.detect.period.UNIT`); every number is the same unit ``<num>``, so a
counter that changes while nothing new is said still repeats.

Runs of exact repeats are found by :class:`~degen.detect.period.PeriodTracker`, in
a bounded amount of work per unit; a run is *confirmed* when it covers ``max(min_span,
repeats * p + extra)`` units (three whole units and 2 more, 20 at least, by default).

:class:`LoopTrack` is the one place a confirmed run is judged; the
:class:`~degen.detect.watch.Watch` feeds it every unit of the text as it arrives, and
:class:`~degen.detect.loop.LoopDetector` is that watch run to the end of a completion.
A run is legitimate, and watched to its end without a finding, when:

- **requested**: the prompt holds the repeated words ("write 'I will not talk in
  class' ten times"); it may repeat as often as the prompt asks ("ten times": 10, with
  no count ``requested_repeats``; plus ``margin``), and is a loop past that;
- **data**: numbers that carry information: a number slot whose steps vary (CSV rows,
  measurements), or two slots moving by different steps (a times table);
- **counting**: a counter (every moving number steps the same way: "Row 1, Row 2",
  "1, 2, 3") may take as many values as the prompt's largest number or
  ``settle_values``, plus ``margin``; past that it is a loop ("Chapter 3 ... Chapter
  56", "44. Fire 45. Fire ..."). A numbered list recycling its items (k numbers, each
  stepping by k) is a loop at once; "1. 1. 1." (no number moves) too;
- **markup**: a unit with no word and no number (the rule of a wide Markdown table,
  ``|---|---|...``) may run for ``markup_units`` units;
- **code**: a run confirmed inside code needs ``code_repeats`` whole units.

Once a legitimate run ends, a fresh tracker starts at the unit that breaks it. When
the text ends, a run still being waited on is judged as one that reaches the end (a
requested phrase within its count is still legitimate there), and one the tracker has
not confirmed yet counts from ``end_repeats`` repeats (the cap may have cut it
mid-repeat). :class:`~degen.detect.cycle.SentenceCycle` finds what no period does: a
text cycling through a few sentences in any order.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from degen.detect.asked import asked_for, requested_count, words_of
from degen.detect.base import Finding
from degen.detect.cycle import SentenceCycle
from degen.detect.period import NUM, PeriodTracker, says_something, text_units
from degen.errors import InvalidParams

# words, runs of one punctuation character ("---", "!!!"), other single symbols
_WAIT = "wait"  # a verdict that needs more of the run
_MAX_VETOED = 64  # legitimate runs kept in ``vetoed`` (all are counted in ``vetoes``)


@dataclass(slots=True)
class _Slot:
    """The values one number position of a repeating unit takes, run by run. The step
    into the run's first repeat is kept apart: a run's onset may reach back into what
    came before it (the row before a repeated row), with another number there."""

    last: int
    count: int = 1
    first: int | None = None
    steps: set[int] = field(default_factory=set)

    def add(self, value: int) -> None:
        if self.first is None:
            self.first = value - self.last
        elif len(self.steps) < 2:  # two distinct steps already decide "data"
            self.steps.add(value - self.last)
        self.last = value
        self.count += 1

    @property
    def moves(self) -> set[int]:
        """The steps seen (the first one only while it is the only one)."""
        if self.steps:
            return self.steps
        return {self.first} if self.first is not None else set()


@dataclass(slots=True)
class _Run:
    """A repeating run the tracker confirmed, being judged."""

    start: int  # unit index of its onset
    period: int
    span: int  # units from the onset that repeat so far
    unit: list[Hashable]
    unit_text: str
    start_char: int
    slots: dict[int, _Slot]  # number positions in the unit -> their values
    asked: bool
    says: bool
    waited: bool = False
    code: bool = False  # confirmed inside code: parallel lines are its nature


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:  # a digit Python will not read as a number ("²")
        return 0


class LoopTrack:
    """The loop part of a :class:`~degen.detect.watch.Watch`: fed one text unit at a
    time (:meth:`push`), it confirms repeating runs with a :class:`PeriodTracker` and
    judges them (see the module doc), and watches sentences for a cycle of a few
    variants (:class:`SentenceCycle`). Not thread-safe: one per stream.

    Args:
        prompt: what the request asked (see :func:`~degen.detect.asked.prompt_text`).
        text: ``text(a, b)`` gives the stream's characters ``a`` to ``b`` (for the
            evidence); the watch keeps them while a unit in this track's window needs
            them (:attr:`oldest_offset`).
        max_period, min_span, extra, repeats: the :class:`PeriodTracker`'s.
        end_repeats: repeats that make a loop of a run still going when the text ends.
        code_repeats: repeats a run confirmed inside code needs (parallel lines are the
            nature of code).
        requested_repeats, margin, settle_values, markup_units: see the module doc.
        cycle: options of :class:`SentenceCycle` (``False``: no sentence cycles).
    """

    def __init__(self, prompt: str, text: Callable[[int, int], str], *,
                 max_period: int = 256, min_span: int = 20, extra: int = 2, repeats: int = 3,
                 end_repeats: float = 2.5, requested_repeats: int = 20, margin: int = 2,
                 settle_values: int = 12, markup_units: int = 128, code_repeats: int = 4,
                 cycle: Mapping[str, int] | bool = True) -> None:
        self._tracker_args = (max_period, min_span, extra, repeats)
        self._tracker = PeriodTracker(*self._tracker_args)  # validates them
        check_loop_options(requested_repeats, margin, settle_values, markup_units, end_repeats)
        self.requested_repeats, self.margin = requested_repeats, margin
        self.settle_values, self.markup_units = settle_values, markup_units
        self.end_repeats = end_repeats
        self.code_repeats = code_repeats
        self.cycle: SentenceCycle | None = None
        if cycle is not False:
            self.cycle = SentenceCycle(**(cycle if isinstance(cycle, Mapping) else {}))
        self._prompt = prompt
        self._text = text
        self._prompt_words: list[Hashable] | None = None
        self._count: int | bool | None = False  # the prompt's count, once read
        self._numbers: int | None = None  # the largest number in the prompt, once read
        size = (self._tracker._buf.maxlen or 0) + 1
        self._units: deque[Hashable] = deque(maxlen=size)
        self._raw: deque[str] = deque(maxlen=size)
        self._offs: deque[int] = deque(maxlen=size)
        self._pos = 0  # unit where the current tracker started
        self._run: _Run | None = None  # a run being judged
        self._follow: int | None = None  # period of a legitimate run followed to its end
        self.n = 0  # units seen
        self.finding: Finding | None = None
        self.vetoed: list[dict[str, Any]] = []
        self.vetoes: Counter[str] = Counter()

    @property
    def oldest_offset(self) -> int | None:
        """Char offset of the oldest unit still held (the watch keeps text from there)."""
        return self._offs[0] if self._offs else None

    @property
    def waiting(self) -> bool:
        """A repeating run is being watched whose verdict needs more text."""
        return self._run is not None

    def push(self, raw: str, offset: int, newline: bool = False, code: bool = False
             ) -> Finding | None:
        """One unit of the text (as :data:`UNIT` cuts it) at char ``offset``;
        ``newline``: a line break came before it; ``code``: it is inside code."""
        if self.finding is not None:
            return self.finding
        unit = NUM if raw.isdigit() else raw.lower()
        if self.cycle is not None:
            cyc = self.cycle.push(raw, offset, newline)
            if cyc is not None:
                cyc["sentences"] = [self._text(a, b) for a, b in cyc.pop("spans")]
                if self._cycle_is_loop(cyc):
                    return self._found_cycle(cyc)
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
                    return self._found(run)
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
            run.code = code
        return self._decide(run, ended=False, at_end=False)

    def finish(self) -> Finding | None:
        """The text ended: judge a run still open as one that reaches the end, and a run
        the tracker has not confirmed yet by ``end_repeats``."""
        if self.finding is not None:
            return self.finding
        run = self._run
        if run is None and self._follow is None:
            tail = self._tracker.tail(self.end_repeats)
            if tail is not None:
                run = self._open(self._pos + tail.onset, tail.period)
        if run is not None:
            self._run = None
            return self._decide(run, ended=True, at_end=True)
        return None

    # ------------------------------------------------------------------ internals
    def _decide(self, run: _Run, ended: bool, at_end: bool) -> Finding | None:
        why = self._judge(run, ended=ended, at_end=at_end)
        if why == _WAIT:
            run.waited = True
            self._run = run
            return None
        self._run = None
        if why is None:
            return self._found(run)
        self._veto(run, why)
        if not ended:
            self._follow = run.period
        return None

    def _unit_at(self, i: int) -> Hashable:
        return self._units[i - (self.n - len(self._units))]

    def _restart(self, i: int, unit: Hashable) -> None:
        """A fresh tracker from unit ``i`` on (past a legitimate run)."""
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
        a = self._offs[k0]
        b = self._offs[k0 + period] if k0 + period < len(self._offs) else a + 200
        return _Run(start=start, period=period, span=self.n - start, unit=unit,
                    unit_text=self._text(a, b), start_char=a, slots=slots,
                    asked=asked_for(words_of(unit), self._prompt_words_()),
                    says=says_something(unit))

    def _prompt_words_(self) -> list[Hashable]:
        if self._prompt_words is None:
            self._prompt_words = words_of(text_units(self._prompt)[0])
        return self._prompt_words

    def _requested_count(self) -> int | None:
        if self._count is False:
            self._count = requested_count(self._prompt)
        return self._count  # type: ignore[return-value]

    def _count_limit(self) -> int:
        """Values a counter may take before it is a loop: ``settle_values``, or the
        largest number in the prompt ("list 40 primes", "count to 100"), plus margin."""
        if self._numbers is None:
            nums = [int(m) for m in re.findall(r"\b\d{1,5}\b", self._prompt)]
            self._numbers = max(nums, default=0)
        return max(self.settle_values, self._numbers) + self.margin

    def _judge(self, run: _Run, ended: bool, at_end: bool) -> str | None:
        """The run so far: a reason it is legitimate, None (a loop) or ``_WAIT``.
        ``ended``: the run is over (``at_end``: by the end of the text)."""
        if run.code and run.span < self.code_repeats * run.period:
            if ended:
                return "code"
            return _WAIT
        if run.asked:
            count = self._requested_count()
            limit = (count if count else self.requested_repeats) + self.margin
            within = run.span <= limit * run.period
            if ended and (within or not at_end):
                return "requested"
            if within:
                return _WAIT
            # longer than asked: judged as any other run
        if run.slots:
            slots = list(run.slots.values())
            steps = [sl.moves for sl in slots]
            moving = [next(iter(st)) for st in steps if len(st) == 1 and st != {0}]
            if any(len(st) > 1 for st in steps) or len(set(moving)) > 1:
                return "data"  # numbers that say something (a table, measurements)
            values = min(sl.count for sl in slots)
            if moving and not (len(moving) >= 2 and moving[0] == len(moving)):
                # a counter (not a numbered list recycling its items: k numbers that
                # each step by k): legitimate while it counts no further than asked
                if values <= self._count_limit():
                    return "counting" if ended else _WAIT
                return None
            if values < 3 and not ended and not moving:  # a number that has not moved
                return _WAIT
            if moving:
                return None
        elif not run.says:  # neither word nor number: markup such as a table's rule
            if ended and not at_end:
                return "markup"
            if not ended and run.span <= self.markup_units:
                return _WAIT
        return None

    def _cycle_is_loop(self, cyc: dict[str, Any]) -> bool:
        """A sentence cycle is a loop unless its sentences are what the prompt asked."""
        asked = all(asked_for(words_of(text_units(t)[0]), self._prompt_words_())
                    for t in cyc["sentences"])
        if asked:
            self.vetoes["requested"] += 1
            self.cycle = None  # asked for: sentences are not watched any more
            return False
        return True

    def _found_cycle(self, cyc: dict[str, Any]) -> Finding:
        shown = " / ".join(t.strip()[:40] for t in cyc["sentences"][:4])
        self.finding = Finding(
            kind="loop", score=min(1.0, 0.5 + 0.03 * cyc["repeated"]),
            start_char=cyc["start_char"], start_unit=None, unit="word",
            message=f"{cyc['distinct']} sentences cycle over the last {cyc['window']} "
                    f"from char {cyc['start_char']}: {shown!r}",
            evidence={"period": None, "cycle": True, "repeats": cyc["repeated"],
                      "unit_text": shown[:200], "sentences": cyc["sentences"][:8],
                      "distinct": cyc["distinct"], "window": cyc["window"],
                      "detected_at_unit": self.n, "near": True, "waited": False,
                      "vetoed_before": sum(self.vetoes.values())},
        )
        return self.finding

    def _veto(self, run: _Run, why: str) -> None:
        self.vetoes[why] += 1
        if len(self.vetoed) < _MAX_VETOED:
            self.vetoed.append({"reason": why, "start_char": run.start_char,
                                "period": run.period, "repeats": round(run.span / run.period, 2),
                                "unit_text": run.unit_text[:80]})

    def _found(self, run: _Run) -> Finding:
        repeats = run.span / run.period
        shown = run.unit_text.strip()[:60]
        after = self.n - run.start
        self.finding = Finding(
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
        return self.finding


def check_loop_options(requested_repeats: int, margin: int, settle_values: int,
                       markup_units: int, end_repeats: float = 2.5) -> None:
    """Raise :class:`~degen.errors.InvalidParams` for a loop option below its least."""
    for name, v, lo in (("requested_repeats", requested_repeats, 1), ("margin", margin, 0),
                        ("settle_values", settle_values, 3), ("markup_units", markup_units, 1),
                        ("end_repeats", end_repeats, 2)):
        if v < lo:
            raise InvalidParams(f"{name} must be >= {lo}, got {v}")


__all__ = ["LoopTrack", "check_loop_options"]
