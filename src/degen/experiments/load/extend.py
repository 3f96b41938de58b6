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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from degen.engines.base import Engine
from degen.experiments.load.dispatch import InFlight, _dispatch
from degen.experiments.load.schedule import derive_seed
from degen.measurement.progress import Progress
from degen.outcomes import (  # noqa: F401 - the data model, importable from here too
    EXTENSIONS,
    HORIZON_FACTOR,
    UNENDED,
    Outcome,
    Part,
    _start,
    attach,
    check_horizon,
    check_share,
    chosen,
    default_horizon,
    load_run,
    outcome_of,
    outcomes,
    parts,
    read_extensions,
    unended,
    with_outcome,
)
from degen.records import Completion, Request
from degen.store import RECORDS, AppendLog, RunDir, iter_records, settled


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
