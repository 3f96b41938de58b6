"""Racing a trial against the leader on common random numbers.

Every trial of a study sends the same requests (prompts, order, seeds), so a running
trial can be compared with the best finished one *request by request*: only the
discordant pairs carry information (this trial failed where the leader did not, or
the other way round), and under "no difference" each goes either way with
probability 1/2. The race looks at a few fixed points (a quarter, half and three
quarters of the requests by default) and drops the trial at the first look where a
one-sided exact binomial test on the discordant pairs says it is worse, at level
``alpha`` split evenly over the looks (Bonferroni over looks: whatever the data,
the chance of dropping a trial that is not worse stays at most ``alpha``). A dropped
trial's requests still in flight are cancelled.

Without the leader's records (another worker's folder in a shared study) the race
falls back to the unpaired rule: the lower end of the trial's Wilson 95% interval
above the leader's rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from degen.measurement.failure import is_failure
from degen.records import Completion
from degen.stats import wilson_interval

LOOKS = (0.25, 0.5, 0.75)


def worse_p(worse: int, better: int) -> float:
    """One-sided exact p-value that an arm failing alone on ``worse`` pairs, against
    ``better`` pairs where only the other failed, is no worse: P(X >= worse) for
    X ~ Binomial(worse + better, 1/2).

    >>> worse_p(0, 0), worse_p(5, 0), round(worse_p(8, 2), 4)
    (1.0, 0.03125, 0.0547)
    """
    n = worse + better
    if n == 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(worse, n + 1)) / 2**n


@dataclass
class Race:
    """The rule that drops a trial: a leader's outcome per request (``True``: it
    failed), or only its failure rate when its records are not at hand."""

    total: int
    leader: Mapping[str, bool] | None = None
    leader_rate: float | None = None
    alpha: float = 0.05
    looks: Sequence[float] = LOOKS
    _next: int = field(default=0, init=False)
    #: what the last look saw: (measured, only this trial failed, only the leader failed)
    seen: tuple[int, int, int] = field(default=(0, 0, 0), init=False)

    def __post_init__(self) -> None:
        self.points = sorted({max(1, round(f * self.total)) for f in self.looks
                              if round(f * self.total) < self.total})

    def drop(self, cs: Sequence[Completion], kinds: Sequence[str]) -> bool:
        """True once the trial is confidently worse than the leader (at a look)."""
        measured = [c for c in cs if c.is_measured]
        if self._next >= len(self.points) or len(measured) < self.points[self._next]:
            return False
        while self._next < len(self.points) and len(measured) >= self.points[self._next]:
            self._next += 1  # one look however many points were passed at once
        per_look = self.alpha / max(1, len(self.points))
        if self.leader is not None:
            mine = [(is_failure(c, kinds), self.leader[c.request_id]) for c in measured
                    if c.request_id in self.leader]
            b = sum(f and not g for f, g in mine)
            c = sum(g and not f for f, g in mine)
            self.seen = (len(mine), b, c)
            return worse_p(b, c) <= per_look
        if self.leader_rate is None:
            return False
        fails = sum(is_failure(c, kinds) for c in measured)
        self.seen = (len(measured), fails, 0)
        return wilson_interval(fails, len(measured))[0] > self.leader_rate


def outcomes(cs: Sequence[Completion], kinds: Sequence[str]) -> dict[str, bool]:
    """``{request id: failed}`` of the measured completions."""
    return {c.request_id: is_failure(c, kinds) for c in cs if c.is_measured}


def as_stop(race: Race, kinds: Sequence[str], halted: Callable[[], bool]
            ) -> Callable[[list[Completion]], bool]:
    """The runner's ``stop`` callback for a race (also stops on an interrupt)."""
    return lambda cs: halted() or race.drop(cs, kinds)
