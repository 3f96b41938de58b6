"""Judging every completion of a file, in input order, in this process or in several.

:func:`scan_file` is what ``degen scan`` runs::

    from contextlib import closing
    from degen.detect.scan import KindTally, scan_file

    tally = KindTally()
    with closing(scan_file("records.jsonl", jobs=0)) as verdicts:  # one worker per core
        for v in verdicts:                                          # in input order
            tally.add(v)
    tally.rates()   # what kind_rates(verdicts) would give, without keeping them

How it stays in order and in bounded memory, however big the file:

- The parent only reads lines (lazily) and groups them into chunks of at most
  ``chunk_lines`` lines and ``chunk_bytes`` characters. Parsing and judging happen in
  the workers, a chunk per round trip.
- At most ``window`` (default ``2 * jobs``) chunks are in flight. Their futures wait
  in a FIFO; the parent takes the oldest one's verdicts before it reads and submits
  another chunk, so verdicts come out in input order and nothing is read far ahead.
  (``multiprocessing.Pool.imap`` would drain the whole input iterator first.)
- Each worker builds its detectors once (the pool's initializer) and ignores SIGINT:
  Ctrl-C reaches the parent, which cancels the chunks not started and joins the
  workers. An error (a bad line, raised in the worker with its file:line) does the
  same, so no process is left behind.
- ``jobs=1`` judges in this process, chunk by chunk, with the same code.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from degen.detect.verdict import DEFAULT_KINDS, default_detectors, judge
from degen.errors import DegenError, UsageError
from degen.stats import wilson_interval

if TYPE_CHECKING:
    from degen.detect.base import DetectorList
    from degen.detect.inputs import Decoder, Item, Source

CHUNK_LINES = 64
CHUNK_BYTES = 1 << 20

Chunk = list[tuple[int, Any]]


def resolve_jobs(jobs: int) -> int:
    """``jobs`` worker processes; 0 means one per CPU core this process may use."""
    if jobs < 0:
        raise UsageError(f"--jobs must be 0 (one per CPU core) or more, got {jobs}")
    if jobs > 0:
        return jobs
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def scan_file(source: Source | Path | str, kinds: Sequence[str] = DEFAULT_KINDS,
              jobs: int = 1, *, chunk_lines: int = CHUNK_LINES,
              chunk_bytes: int = CHUNK_BYTES, horizon: int | None = None
              ) -> Iterator[dict[str, Any]]:
    """The verdict on every completion of ``source`` (a path or an opened source, see
    :func:`degen.detect.inputs.open_completions`), in input order.

    ``jobs``: 1 judges here, 0 one worker per core, N > 1 that many workers. A bad line
    raises :class:`~degen.errors.InputFileError` naming file:line when its chunk comes
    up. Close the generator (``contextlib.closing``) if you stop early: that is what
    stops the workers. ``horizon``: a runaway would not end by this many tokens
    (default 8 times each record's cap).
    """
    from degen.detect.inputs import open_completions

    src = open_completions(source) if isinstance(source, (str, Path)) else source
    kinds, jobs = tuple(kinds), resolve_jobs(jobs)
    detectors = default_detectors(kinds, horizon)  # bad names fail here, not in a worker
    chunks = iter_chunks(src.items(), chunk_lines, chunk_bytes)
    path = str(src.path)
    if jobs == 1:
        for chunk in chunks:
            yield from judge_chunk(src.decoder, path, chunk, detectors)
        return
    tasks = ((src.decoder, path, chunk) for chunk in chunks)
    for verdicts in ordered_map(_judge_in_worker, tasks, jobs, initializer=_init_worker,
                                initargs=(kinds, horizon)):
        yield from verdicts


def iter_chunks(items: Iterable[Item], max_items: int = CHUNK_LINES,
                max_chars: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """``items`` in lists of at most ``max_items`` and about ``max_chars`` characters
    (a single bigger item makes a chunk of its own), read lazily."""
    if max_items < 1 or max_chars < 1:
        raise ValueError(f"chunk limits must be >= 1, got {max_items}, {max_chars}")
    chunk: Chunk = []
    size = 0
    for item in items:
        chunk.append(item)
        size += _size(item[1])
        if len(chunk) >= max_items or size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _size(payload: Any) -> int:
    if isinstance(payload, str):
        return len(payload)
    return len(getattr(payload, "text", "") or "") + len(getattr(payload, "prompt", "") or "")


def judge_chunk(decoder: Decoder, path: str, chunk: Chunk,
                detectors: DetectorList) -> list[dict[str, Any]]:
    """Verdicts on one chunk, in order; the first bad item raises naming file:line."""
    return [judge(decoder(path, n, payload), detectors) for n, payload in chunk]


def ordered_map(fn: Callable[..., Any], tasks: Iterable[tuple[Any, ...]], jobs: int, *,
                initializer: Callable[..., None] | None = None,
                initargs: tuple[Any, ...] = (), window: int | None = None) -> Iterator[Any]:
    """``fn(*task)`` for each task in ``jobs`` worker processes, yielded in task order.

    ``tasks`` is read lazily: at most ``window`` (default ``2 * jobs``) tasks are
    submitted and not yet yielded. On any exit (exhausted, an error, the generator
    closed, Ctrl-C) the tasks not started are cancelled and the workers joined.
    """
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    window = window or 2 * jobs
    pool = ProcessPoolExecutor(jobs, mp_context=_context(), initializer=initializer,
                               initargs=initargs)
    pending: deque[Any] = deque()
    try:
        for task in tasks:
            with _ctrl_c_deferred():
                pending.append(pool.submit(fn, *task))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool as e:
        raise DegenError(f"a worker process died ({e}); run again with --jobs 1 "
                         "to see why") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block until the block is done.

    ``ProcessPoolExecutor.submit`` starts worker processes and the thread that manages
    them; a KeyboardInterrupt landing half-way leaves a thread that ``shutdown`` cannot
    join (``RuntimeError: cannot join thread before it is started``) and workers no one
    stops. Only the main thread can swap signal handlers; elsewhere the block runs as is.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(*caught[0])  # the default handler raises KeyboardInterrupt here


def _context() -> Any:
    """The multiprocessing context for workers.

    Not ``fork``, though it is Linux's default before Python 3.14: the parent may run
    threads (the progress bar's refresher, the pool's own manager thread), and a
    process forked from a threaded one can inherit a lock held by another thread and
    hang. ``forkserver`` (POSIX) forks each worker from a clean single-threaded server
    that has loaded the detectors and their data once (:mod:`degen.detect.scan_warmup`),
    so workers start at once and share that memory; ``spawn`` elsewhere (Windows).
    """
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["degen.detect.scan_warmup"])
        return ctx
    return mp.get_context("spawn")


# --- worker side ---------------------------------------------------------------------

_DETECTORS: DetectorList | None = None


def _init_worker(kinds: tuple[str, ...], horizon: int | None = None) -> None:
    """Once per worker: leave Ctrl-C to the parent, build the detectors."""
    import signal

    global _DETECTORS
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _DETECTORS = default_detectors(kinds, horizon)


def _judge_in_worker(decoder: Decoder, path: str, chunk: Chunk) -> list[dict[str, Any]]:
    assert _DETECTORS is not None, "the pool's initializer builds the detectors"
    return judge_chunk(decoder, path, chunk, _DETECTORS)


# --- rates from streamed verdicts ----------------------------------------------------

class KindTally:
    """Counts of each kind (and ``any``) over verdicts added one at a time: the rates
    of :func:`degen.detect.verdict.kind_rates` without keeping the verdicts."""

    def __init__(self, kinds: Sequence[str] = DEFAULT_KINDS) -> None:
        self.kinds = tuple(kinds)
        self.n = 0
        self.counts = dict.fromkeys((*self.kinds, "any"), 0)

    def add(self, verdict: dict[str, Any]) -> None:
        self.n += 1
        self.counts["any"] += bool(verdict["degenerate"])
        for kind in self.kinds:
            self.counts[kind] += kind in verdict["kinds"]

    def rates(self) -> dict[str, dict[str, Any]]:
        """Per kind (and ``any``): count, n, rate and Wilson 95% interval."""
        out: dict[str, dict[str, Any]] = {}
        for kind, k in self.counts.items():
            lo, hi = wilson_interval(k, self.n)
            out[kind] = {"count": k, "n": self.n, "rate": k / self.n if self.n else None,
                         "ci95": [lo, hi]}
        return out
