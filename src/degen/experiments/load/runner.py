"""The load runner: send a :class:`~degen.experiments.load.schedule.Plan` to an engine.

Runs go one after the other (seed 000: five runs of 120, to give the server a
breather); inside a run, requests are dispatched at their planned offsets by one
dispatcher thread, on an absolute clock so no drift builds up, into a pool of
``concurrency`` workers. Arrivals are open-loop: a request whose time has come
waits in the pool's queue if every worker is busy, and its ``queue_s`` shows it.

Each completion is appended to ``records.jsonl`` the moment it finishes. With
``resume=True`` requests already recorded are skipped; the others keep their
planned spacing, shifted to start now.
"""

from __future__ import annotations

import contextlib
import platform
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from degen.detect.base import DetectorList
from degen.detect.verdict import judge
from degen.engines.base import Engine
from degen.experiments.load.dispatch import InFlight, _dispatch
from degen.experiments.load.schedule import Plan
from degen.measurement.progress import Progress
from degen.records import Completion, Request
from degen.store import RunDir


def versions() -> dict[str, str]:
    """Versions of degen and the libraries that shape its numbers."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("degen", "torch", "transformers", "httpx", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class RunResult:
    completions: list[Completion]
    out: Path
    stopped: bool = False
    extended: int = 0  # continuations sent to reach the horizon


def run_load(engine: Engine, plan: Plan, out: Path | str, *, concurrency: int | None = None,
             resume: bool = False, progress: Progress | None = None,
             extra_meta: dict[str, Any] | None = None,
             detectors: DetectorList | None = None,
             stop: Callable[[list[Completion]], bool] | None = None,
             interrupt: threading.Event | None = None, horizon: int | None = None,
             extend_share: float = 1.0,
             extend_progress: Callable[[int], Progress] | None = None) -> RunResult:
    """Run ``plan`` on ``engine``, writing records to ``out``. Returns every completion
    of the plan (those of earlier sessions too when resuming). With ``detectors`` each
    record carries its verdict (see :mod:`degen.detect.verdict`).

    ``stop`` is asked after every completion with all completions so far; once it says
    True no further request is sent, those already with the engine are cancelled (and
    recorded as ``"cancelled"``), ``run.json`` says ``"stopped"`` and
    :attr:`RunResult.stopped` is set. A tuning study uses it to prune a trial that is
    already confidently worse. Ctrl-C cancels the requests in flight the same way, and
    so does setting ``interrupt`` from another thread (a study being interrupted).

    ``horizon``: once the plan is done, every generation that reached its cap (or was
    cut as a runaway) is continued until it ends or reaches ``horizon`` tokens in all
    (:mod:`degen.experiments.load.extend`; ``extend_share`` of them, chosen at random, when < 1),
    shown on ``extend_progress(total)``, and the completions come back with what was found
    (``extra["outcome"]``)."""
    out = Path(out)
    if horizon is not None:
        from degen.outcomes import check_horizon, check_share

        check_horizon(horizon, plan.params.max_tokens)
        check_share(extend_share)
    workers = max(1, concurrency or engine.preferred_concurrency)
    fingerprint = plan.fingerprint()
    if resume:
        store, done = RunDir.resume(out, fingerprint)
        store.update_meta(status="running", resumed_at=_now_iso(),
                          resumes=store.read_meta().get("resumes", 0) + 1)
    else:
        meta = {
            "kind": "degen.run", "status": "running", "created_at": _now_iso(),
            "plan": fingerprint, "concurrency": workers, "engine": engine.describe(),
            "versions": versions(), **(extra_meta or {}),
        }
        store, done = RunDir.create(out, meta), []
    progress = progress or Progress(plan.total)
    done_ids = {c.request_id for c in done}
    progress.skip(len(done_ids))
    results: list[Completion] = list(done)
    lock = threading.Lock()
    flight = InFlight()
    halt, cancel_inflight = flight.halt, flight.cancel
    if stop is not None and done and stop(list(done)):
        halt.set()

    def work(req: Request) -> Completion:
        c = flight.complete(engine, req)
        if detectors is not None:
            c = replace(c, verdict=judge(c, detectors))
        store.append(c)
        with lock:
            results.append(c)
            progress.update(c)
            if stop is not None and not halt.is_set() and stop(list(results)):
                flight.stop()
        return c

    status = "finished"
    try:
        with progress:
            for run in range(plan.runs):
                todo = [(r, off) for r, off in zip(plan.requests_for(run), plan.offsets(run),
                                                   strict=True)
                        if r.request_id not in done_ids]
                if todo and not halt.is_set():
                    _dispatch(todo, workers, work, halt, cancel_inflight, interrupt)
        if halt.is_set():
            status = "stopped"
    except KeyboardInterrupt:
        status = "interrupted"
        cancel_inflight()
        raise
    except BaseException:
        status = "failed"
        cancel_inflight()
        raise
    finally:
        store.update_meta(status=status, finished_at=_now_iso())
        store.close()
    results.sort(key=lambda c: (c.run, c.index))
    sent = 0
    if horizon is not None and not halt.is_set():
        from degen.experiments.load.extend import extend

        ext = extend(engine, out, horizon, share=extend_share, concurrency=concurrency,
                     progress=extend_progress, interrupt=interrupt, records=results)
        results, sent = ext.completions, ext.sent
    return RunResult(results, out, stopped=halt.is_set(), extended=sent)
