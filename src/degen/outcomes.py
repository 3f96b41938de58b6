"""Outcomes: what became of a generation that did not end by itself, as far as it was
followed. A run's extensions (``extensions.jsonl`` beside its records, written by
:mod:`degen.experiments.load.extend`) continue such generations toward a horizon; an
:class:`Outcome` says whether one ended there (a *long* answer) or not (a *runaway*).
The data model every layer reads: the watch asks for the default horizon, the
measurements count runaways from outcomes, the reports and ``scan`` show them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from degen.errors import InvalidParams, OutputDirError
from degen.records import Completion, derive_seed
from degen.store import RECORDS, iter_records, settled

EXTENSIONS = "extensions.jsonl"
#: the horizon when none is given: 8 times the cap (seed 000's 8,192 over a 1,024 cap)
HORIZON_FACTOR = 8
#: the finish reasons of a generation that did not end by itself and is continued
UNENDED = ("length", "runaway")


def default_horizon(max_tokens: int) -> int:
    return HORIZON_FACTOR * max_tokens


def check_horizon(horizon: int, cap: int) -> int:
    """``horizon`` checked against the cap (it must reach past it)."""
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon <= cap:
        raise InvalidParams(f"--horizon must be above the cap (--max-tokens {cap}), got "
                            f"{horizon}: a runaway is a generation that would not end by "
                            f"then (default {default_horizon(cap)})")
    return horizon


def check_share(share: float) -> float:
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        raise InvalidParams(f"--extend-share must be in (0, 1] (the share of the capped "
                            f"generations to continue), got {share}")
    return float(share)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a generation ended, as far as it was followed: ``ended`` at ``tokens``, or
    still going at ``tokens`` (the furthest horizon it was continued to, or the cap);
    ``horizon``: the one it was continued toward (what "runaway" was asked against);
    ``full``: it filled the model's context there without ending, so it never ends
    (seed 000's failure itself), whatever the horizon."""

    tokens: int
    ended: bool
    horizon: int | None = None
    full: bool = False

    def ended_by(self, horizon: int) -> bool | None:
        """Did it end by ``horizon`` tokens? None when it was not followed that far."""
        if self.ended:
            return self.tokens <= horizon
        return False if self.full or self.tokens >= horizon else None

    def to_dict(self) -> dict[str, Any]:
        d = {"tokens": self.tokens, "ended": self.ended, "horizon": self.horizon}
        return d | {"full": True} if self.full else d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Outcome:
        h = d.get("horizon")
        return cls(int(d["tokens"]), bool(d["ended"]), int(h) if h is not None else None,
                   bool(d.get("full")))


def unended(c: Completion) -> bool:
    """A measured generation that stopped without ending: capped, or cut as a runaway."""
    return c.is_measured and c.finish_reason in UNENDED


#: what an outcome needs of a continuation: (from, tokens, finish_reason, horizon)
Part = tuple[int, int, str, int]


def parts(extensions: Iterable[Completion]) -> dict[str, list[Part]]:
    """The continuations that count (not cancelled, not failed), by request id, in
    the order they continue each other."""
    by_id: dict[str, list[Part]] = {}
    for e in extensions:
        if not e.is_cancelled and not e.is_error:
            x = (e.extra or {}).get("extends") or {}
            by_id.setdefault(e.request_id, []).append(
                (int(x.get("from", 0)), e.completion_tokens or 0, e.finish_reason,
                 int(x.get("horizon") or 0)))
    for v in by_id.values():
        v.sort()
    return by_id


def outcome_of(c: Completion, continued: Sequence[Part]) -> Outcome | None:
    """What is known of how ``c`` ended, from its own finish and its continuations
    (None for one cut as degenerate: how it would have ended is not asked)."""
    if not c.is_measured:
        return None
    n = c.completion_tokens or 0
    if c.finish_reason == "stop":
        return Outcome(n, True)
    if not unended(c):
        return None
    best = Outcome(n, False)
    for start, tokens, finish, horizon in continued:
        h = max(best.horizon or 0, horizon) or None
        if finish == "stop":
            return Outcome(start + tokens, True, h)
        if finish == "length" and start + tokens < horizon:  # the context was full
            return Outcome(start + tokens, False, h, full=True)
        best = Outcome(max(best.tokens, start + tokens), False, h)
    return best


def outcomes(cs: Iterable[Completion], extensions: Iterable[Completion]
             ) -> dict[str, Outcome]:
    """:func:`outcome_of` every generation of ``cs`` that has one."""
    by_id = parts(extensions)
    out: dict[str, Outcome] = {}
    for c in cs:
        o = outcome_of(c, by_id.get(c.request_id, ()))
        if o is not None:
            out[c.request_id] = o
    return out


def with_outcome(c: Completion, continued: Sequence[Part]) -> Completion:
    """``c`` with ``extra["outcome"]`` when its continuations followed it further."""
    o = outcome_of(c, continued)
    if o is not None and unended(c) and (o.ended or o.tokens > (c.completion_tokens or 0)):
        return replace(c, extra={**c.extra, "outcome": o.to_dict()})
    return c


def _start(e: Completion) -> int:
    return int(((e.extra or {}).get("extends") or {}).get("from", 0))


def attach(cs: Sequence[Completion], extensions: Iterable[Completion]) -> list[Completion]:
    """``cs`` with ``extra["outcome"]`` set on each continued generation."""
    by_id = parts(extensions)
    return [with_outcome(c, by_id.get(c.request_id, ())) for c in cs]


def read_extensions(folder: Path) -> list[Completion]:
    path = Path(folder) / EXTENSIONS
    return list(iter_records(path, allow_torn_tail=True)) if path.exists() else []


def load_run(folder: Path) -> list[Completion]:
    """A run folder's settled records, with what their extensions found attached."""
    folder = Path(folder)
    path = folder / RECORDS
    if not path.is_file():
        raise OutputDirError(f"{folder} holds no run (no {RECORDS}); pass the --out folder "
                             "of degen run, or a compare arm's folder")
    cs = settled(iter_records(path, allow_torn_tail=True))
    return attach(cs, read_extensions(folder))


def chosen(c: Completion, share: float, seed: int | None = None) -> bool:
    """Whether ``c`` is among the ``share`` continued: a hash of its id and its own
    sampling seed (or ``seed``), so the summaries can tell which outcomes were drawn,
    and a smaller share picks a subset of a larger one's."""
    base = c.params.seed if seed is None else seed
    return share >= 1 or derive_seed(base or 0, "extend-share", c.request_id) < share * 2**63
