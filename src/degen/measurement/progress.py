"""Progress display for long jobs: a rich bar on stderr, or nothing.

The runner only calls :meth:`Progress.update` with each completion; what is shown
(done/total, failures so far, errors, tok/s) is decided here. ``degen scan`` calls
:meth:`VerdictProgress.update` with each verdict instead.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from degen.measurement.failure import is_failure
from degen.records import Completion


class Progress:
    """Silent progress: counts, shows nothing. Subclasses display."""

    def __init__(self, total: int, description: str = "requests") -> None:
        self.total = total
        self.description = description
        self.done = 0
        self.failures = 0
        self.errors = 0
        self.tokens = 0
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()  # several runs may report at once

    def update(self, c: Completion) -> None:
        with self._lock:
            self.done += 1
            if not (c.extra or {}).get("extends"):  # a continuation is no new request
                self.failures += is_failure(c)
            self.errors += c.is_error
            if not c.is_error:
                self.tokens += c.completion_tokens or 0
            self._refresh()

    def skip(self, n: int) -> None:
        """Count ``n`` requests already done (a resumed run)."""
        with self._lock:
            self.done += n
            self._refresh()

    def grow(self, n: int) -> None:
        """``n`` more requests to wait for (an extension found work to do)."""
        with self._lock:
            self.total += n
            self._refresh()

    @property
    def tok_s(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.tokens / dt if dt > 0 else 0.0

    def _refresh(self) -> None:
        pass

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class Forwarding(Progress):
    """One part of a bigger job: counts its own requests and forwards each to the
    job's one bar (``outer``); entering and leaving it does nothing."""

    def __init__(self, outer: Progress, total: int) -> None:
        super().__init__(total, outer.description)
        self.outer = outer

    def update(self, c: Completion) -> None:
        super().update(c)
        self.outer.update(c)

    def skip(self, n: int) -> None:
        super().skip(n)
        self.outer.skip(n)

    def grow(self, n: int) -> None:
        super().grow(n)
        self.outer.grow(n)

    def __enter__(self) -> Forwarding:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class RichProgress(Progress):
    """A rich progress bar on stderr."""

    def __init__(self, total: int, description: str = "requests", console: Any = None) -> None:
        super().__init__(total, description)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as _P

        self._bar: Any = _P(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("failing [red]{task.fields[failures]}[/]"),
            TextColumn("errors {task.fields[errors]}"),
            TextColumn("{task.fields[tok_s]:.0f} tok/s"),
            TimeElapsedColumn(), TimeRemainingColumn(),
            console=console or Console(stderr=True), transient=False,
        )
        self._task = self._bar.add_task(description, total=total, failures=0, errors=0, tok_s=0.0)

    def _refresh(self) -> None:
        self._bar.update(self._task, completed=self.done, total=self.total,
                         failures=self.failures, errors=self.errors, tok_s=self.tok_s)

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


class VerdictProgress:
    """Progress of a scan, fed verdicts (``degen scan``): counts, shows nothing."""

    def __init__(self, total: int | None, description: str = "completions") -> None:
        self.total = total
        self.description = description
        self.done = 0
        self.degenerate = 0

    def update(self, verdict: dict[str, Any]) -> None:
        self.done += 1
        self.degenerate += bool(verdict["degenerate"])
        self._refresh()

    def _refresh(self) -> None:
        pass

    def __enter__(self) -> VerdictProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class RichVerdictProgress(VerdictProgress):
    """A rich bar on stderr. It leaves stdout alone (no redirection), so verdicts
    written there are not routed through the bar's console."""

    def __init__(self, total: int | None, description: str = "completions",
                 console: Any = None) -> None:
        super().__init__(total, description)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as _P

        self._bar: Any = _P(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("degenerate [red]{task.fields[degenerate]}[/]"),
            TimeElapsedColumn(), TimeRemainingColumn(),
            console=console or Console(stderr=True), transient=False,
            redirect_stdout=False, redirect_stderr=False,
        )
        self._task = self._bar.add_task(description, total=total, degenerate=0)

    def _refresh(self) -> None:
        self._bar.update(self._task, completed=self.done, degenerate=self.degenerate)

    def __enter__(self) -> RichVerdictProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()
