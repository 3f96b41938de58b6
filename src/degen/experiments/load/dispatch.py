"""Sending requests on a schedule: :func:`_dispatch` sends each at its offset into a
pool of worker threads and waits for them, withdrawing what is in flight once told to
stop; :class:`InFlight` keeps the cancel event of every request with an engine. The
load runner (:mod:`degen.experiments.load.runner`) and the extension
(:mod:`degen.experiments.load.extend`) both send through it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import replace

from degen.engines.base import Engine
from degen.records import Completion, Request


class InFlight:
    """The requests with an engine right now, each with its cancel event: once
    :attr:`halt` is set, :meth:`cancel` withdraws them, and a request sent after that
    is withdrawn at once."""

    def __init__(self) -> None:
        self.halt = threading.Event()
        self._lock = threading.Lock()
        self._events: set[threading.Event] = set()

    def complete(self, engine: Engine, req: Request) -> Completion:
        cancel = threading.Event()
        with self._lock:
            if self.halt.is_set():
                cancel.set()
            self._events.add(cancel)
        try:
            return engine.complete(req, cancel=cancel)
        finally:
            with self._lock:
                self._events.discard(cancel)

    def cancel(self) -> None:
        with self._lock:
            for ev in self._events:
                ev.set()

    def stop(self) -> None:
        """Send nothing more and withdraw what is in flight."""
        self.halt.set()
        self.cancel()


def _dispatch(todo: list[tuple[Request, float]], workers: int,
              work: Callable[[Request], Completion], halt: threading.Event,
              cancel_inflight: Callable[[], None],
              interrupt: threading.Event | None = None) -> None:
    """Send ``todo`` at their offsets (shifted so the first goes now) and wait. Once
    ``halt`` (or ``interrupt``) is set, nothing more is sent, requests not yet started
    are dropped and those in flight are cancelled."""

    def check() -> None:
        if interrupt is not None and interrupt.is_set():
            halt.set()

    shift = todo[0][1]
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="degen-load")
    futures: list[Future[Completion]] = []
    try:
        t0_perf = time.perf_counter()
        t0_wall = time.time()
        for req, off in todo:
            due = off - shift
            while (delay := t0_perf + due - time.perf_counter()) > 0 and not halt.is_set():
                halt.wait(min(delay, 0.2))
                check()
            check()
            if halt.is_set():
                break
            req = replace(req, scheduled_at=t0_wall + due)
            futures.append(pool.submit(work, req))
        pending = set(futures)
        while pending:  # wake up often: Ctrl-C is only seen when the main thread runs
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            check()
            for fut in done:
                if not fut.cancelled():
                    fut.result()  # raise what a worker raised, at once
            if halt.is_set():
                for fut in pending:
                    fut.cancel()  # only those no worker has started
                cancel_inflight()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
