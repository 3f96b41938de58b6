"""The period tracker: the exact repeats behind the loop track, and the units it reads.

Text is cut into units (:data:`UNIT`: words, runs of one punctuation character);
every number is the same unit :data:`NUM`, so a counter that changes while nothing
new is said still repeats. :class:`PeriodTracker` is fed one unit at a time and its
cost per unit does not grow with the length of the text:

- for every *active* period p it keeps the length of the current run of positions
  where ``s[i] == s[i - p]``, dropping p at the first mismatch;
- a new candidate period is proposed only by the distance from the new unit to its
  previous occurrence (at most ``max_period`` back), so normal text keeps a handful
  of short-lived candidates and a loop of period p keeps one;
- a run is long enough when it covers ``max(min_span, repeats * p + extra)`` units.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from degen.errors import InvalidParams

# words, runs of one punctuation character ("---", "!!!"), other single symbols
UNIT = re.compile(r"\w+|([^\w\s])\1*", re.UNICODE)
NUM = "<num>"


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

    def __init__(self, max_period: int = 256, min_span: int = 20, extra: int = 2,
                 repeats: int = 3) -> None:
        if max_period < 1:
            raise InvalidParams(f"max_period must be >= 1, got {max_period}")
        if min_span < 2:
            raise InvalidParams(f"min_span must be >= 2 (a unit and its repeat), got {min_span}")
        if extra < 0:
            raise InvalidParams(f"extra must be >= 0, got {extra}")
        if repeats < 2:
            raise InvalidParams(f"repeats must be >= 2 (a unit and its repeat), got {repeats}")
        self.max_period, self.min_span, self.extra = max_period, min_span, extra
        self.repeats = repeats
        # enough history to look back one period and to extend an onset backwards
        self._buf: deque[Hashable] = deque(maxlen=4 * max_period + min_span)
        self._last: dict[Hashable, int] = {}
        self._active: dict[int, int] = {}  # period -> run length ending at the last unit
        self.n = 0  # units seen

    def need(self, period: int) -> int:
        """Periodic units needed to confirm a loop of ``period``."""
        return max(self.min_span, self.repeats * period + self.extra)

    def tail(self, repeats: float) -> Loop | None:
        """The shortest run still going on at the last unit that covers ``repeats``
        periods (and ``min_span`` units), or None: what a text that ends here ends in."""
        best = None
        for p, run in self._active.items():
            if run + p >= max(self.min_span, repeats * p) and (best is None or p < best):
                best = p
        return None if best is None else self._extend_back(best, self._active[best] + best)

    def push(self, unit: Hashable) -> Loop | None:
        """Add one unit; return a run of repeats the moment it is long enough."""
        n = self.n
        buf = self._buf
        active = self._active
        found = None
        if active:
            size = len(buf)
            dead = None
            for p in active:  # values change, keys do not: no copy needed
                if buf[size - p] == unit:
                    run = active[p] = active[p] + 1
                    if found is None and run + p >= self.need(p):
                        found = p
                elif dead is None:
                    dead = [p]
                else:
                    dead.append(p)
            if dead is not None:
                for p in dead:
                    del active[p]
        last = self._last
        j = last.get(unit)
        if j is not None:
            p = n - j
            if p <= self.max_period and p not in active:
                active[p] = 1
        last[unit] = n
        if len(last) > 8 * self.max_period + 1024:  # forget units out of reach
            lo = n - self.max_period
            self._last = {u: k for u, k in last.items() if k >= lo}
        buf.append(unit)
        self.n = n + 1
        if found is None:
            return None
        # the shortest period among those long enough
        p = min(q for q, r in active.items() if r + q >= self.need(q))
        return self._extend_back(p, active[p] + p)

    def _extend_back(self, p: int, span: int) -> Loop:
        """Move the onset back while the unit before it also repeats (the run may have
        started before its period became a candidate)."""
        buf, n = self._buf, self.n
        lo = n - len(buf)
        onset = n - span
        while onset - 1 >= lo and buf[onset - 1 - lo] == buf[onset - 1 + p - lo]:
            onset -= 1
        return Loop(onset=onset, period=p, span=n - onset)

    def feed(self, units: Iterable[Hashable]) -> Loop | None:
        """Push every unit; return the first run confirmed on the way (or None)."""
        for u in units:
            found = self.push(u)
            if found is not None:
                return found
        return None


def norm(unit: str) -> str:
    """A text unit as the tracker sees it: lower-cased, every number ``<num>``."""
    return NUM if unit.isdigit() else unit.lower()


def says_something(unit: Sequence[Hashable]) -> bool:
    """A loop's unit holds a word, not just numbers and punctuation (counting)."""
    return any(isinstance(u, str) and u != NUM and u[:1].isalnum() for u in unit)


def text_units(text: str) -> tuple[list[str], list[int]]:
    """Loop units of ``text`` (see :func:`norm`) and their char offsets."""
    units, offsets = [], []
    for m in UNIT.finditer(text):
        units.append(norm(m.group(0)))
        offsets.append(m.start())
    return units, offsets


def measure(seq: Sequence[Hashable], onset: int, period: int) -> int:
    """How many units from ``onset`` stay periodic with ``period`` (the full extent)."""
    i = onset + period
    while i < len(seq) and seq[i] == seq[i - period]:
        i += 1
    return i - onset
