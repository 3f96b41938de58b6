"""Extension: the ground truth behind "runaway". A generation that reached its cap is
continued from its own tokens, with the same sampling parameters and a derived seed,
until it ends or reaches the *horizon* ``H`` tokens in all; what it did then is its
:class:`Outcome`: it ended at ``tokens`` (a *long* answer), or it had not ended by
``H`` (a *runaway*, seed 000's "would never end").

Only generations that did not end are continued: those that reached the cap
(finish_reason ``"length"``) and those the watch cut as runaways (``"runaway"``);
generations cut for a loop or babble are degenerate whatever they would have done.
``share`` < 1 continues a random share of them (each chosen by a hash of its request
id and the seed, so a resumed or repeated extension chooses the same ones): the
rate is then a two-phase estimate (:func:`degen.outcomes.two_phase`).

The continuations go to ``extensions.jsonl`` in the run's folder, one
:class:`~degen.records.Completion` a line (the new tokens only, with
``extra["extends"] = {"from": tokens already there, "horizon": H}``), appended as each
finishes, so an extension is cancellable and resumable like a run: Ctrl-C cancels the
continuations in flight, and extending again sends only what is not yet known. A
larger horizon later continues what had not ended from where it stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from degen.engines.base import Engine
from degen.errors import InvalidParams, OutputDirError
from degen.load.schedule import derive_seed
from degen.load.store import RECORDS, AppendLog, RunDir, iter_records, settled
from degen.progress import Progress
from degen.records import Completion, Request

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


def chosen(c: Completion, share: float, seed: int | None = None) -> bool:
    """Whether ``c`` is among the ``share`` continued: a hash of its id and its own
    sampling seed (or ``seed``), so the summaries can tell which outcomes were drawn,
    and a smaller share picks a subset of a larger one's."""
    base = c.params.seed if seed is None else seed
    return share >= 1 or derive_seed(base or 0, "extend-share", c.request_id) < share * 2**63


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


def continuation(c: Completion, done: Sequence[Completion], horizon: int) -> Request:
    """The request continuing ``c`` (and its continuations so far, ``done``, in order)
    to ``horizon`` tokens in all: same prompt and parameters, a seed derived from the
    original's and the point it continues from."""
    ids: list[int] | None = list(c.token_ids) if c.token_ids is not None else None
    text = c.text
    for e in done:
        text += e.text
        if ids is not None:
            ids = ids + list(e.token_ids) if e.token_ids is not None else None
    start = (c.completion_tokens or 0) + sum(e.completion_tokens or 0 for e in done)
    seed = derive_seed(c.params.seed or 0, "extend", start)
    return Request(request_id=c.request_id, prompt_id=c.prompt_id,
                   params=c.params.replace(max_tokens=horizon, seed=seed),
                   messages=c.messages, prompt=c.prompt, run=c.run, index=c.index,
                   continuation_ids=tuple(ids) if ids is not None else None,
                   continuation_text=text, continued=start)


def plan_extension(cs: Sequence[Completion], extensions: Sequence[Completion], horizon: int,
                   share: float = 1.0, seed: int | None = None) -> list[tuple[Request, int]]:
    """The continuations still to send for ``cs`` to be known up to ``horizon``, each
    with the number of tokens it continues from."""
    known = outcomes(cs, extensions)
    by_id: dict[str, list[Completion]] = {}
    for e in extensions:
        if not e.is_cancelled and not e.is_error:
            by_id.setdefault(e.request_id, []).append(e)
    todo = []
    for c in cs:
        if not unended(c) or not chosen(c, share, seed):
            continue
        o = known.get(c.request_id)
        if o is not None and o.ended_by(horizon) is not None:
            continue
        done = sorted(by_id.get(c.request_id, ()), key=_start)
        start = (c.completion_tokens or 0) + sum(e.completion_tokens or 0 for e in done)
        todo.append((continuation(c, done, horizon), start))
    return todo


@dataclass
class ExtendResult:
    completions: list[Completion]  # the run's records, outcomes attached
    extensions: list[Completion]  # every continuation in the folder
    sent: int  # continuations sent this time
    horizon: int
    share: float


def extend(engine: Engine, folder: Path, horizon: int, *, share: float = 1.0,
           seed: int | None = None,
           concurrency: int | None = None,
           progress: Callable[[int], Progress] | None = None,
           interrupt: threading.Event | None = None,
           records: Sequence[Completion] | None = None) -> ExtendResult:
    """Continue the run in ``folder`` (its records, or ``records`` when given) to
    ``horizon``; see the module doc. ``progress(total)`` makes the display of the
    continuations to send. Returns the records with their outcomes."""
    from degen.load.runner import InFlight, _dispatch

    folder = Path(folder)
    cs = list(records) if records is not None else settled(
        iter_records(folder / RECORDS, allow_torn_tail=True))
    caps = {c.params.max_tokens for c in cs if c.is_measured}
    check_horizon(horizon, max(caps) if caps else 0)
    share = check_share(share)
    log = AppendLog(folder / EXTENSIONS)
    existing = log.records
    todo = plan_extension(cs, existing, horizon, share, seed)
    starts = {r.request_id: n for r, n in todo}
    bar = progress(len(todo)) if progress is not None else Progress(len(todo), "extend")
    new: list[Completion] = []
    lock = threading.Lock()
    flight = InFlight()
    halt, cancel_inflight = flight.halt, flight.cancel

    def work(req: Request) -> Completion:
        got = flight.complete(engine, req)
        got = replace(got, extra={**got.extra, "extends": {
            "from": starts[req.request_id], "horizon": horizon}})
        log.append(got)
        with lock:
            new.append(got)
            bar.update(got)
        return got

    meta_path = folder / "run.json"
    store = RunDir(folder) if meta_path.exists() else None
    if store is not None:
        store.update_meta(extension={"horizon": horizon, "share": share, "seed": seed,
                                     "status": "running"})
    status = "finished"
    try:
        with bar:
            if todo:
                _dispatch([(r, 0.0) for r, _ in todo],
                          max(1, concurrency or engine.preferred_concurrency), work, halt,
                          cancel_inflight, interrupt)
        if halt.is_set():
            status = "stopped"
    except BaseException:
        status = "interrupted"
        cancel_inflight()
        raise
    finally:
        log.close()
        if store is not None:
            store.update_meta(extension={"horizon": horizon, "share": share, "seed": seed,
                                         "status": status})
    every = [*existing, *new]
    return ExtendResult(attach(cs, every), every, len(todo), horizon, share)
