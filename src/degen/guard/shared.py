"""What one guard worker shares with the serving around it: its metrics, written to a
file for the other workers to add up (:class:`SharedMetrics`), and the shutdown
signal it hears before the server does (:func:`on_shutdown_signal`). Started by
:mod:`degen.guard.workers`; used by the guard's state and app.

With several workers each writes its metrics to a file in a folder of its own every
second (and when it stops); ``/metrics`` on any worker adds up its own live values
and the others' files (a gone worker's counters still count, its gauges do not). The
other workers' values are up to a second old.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from degen.guard.metrics import GuardMetrics

METRICS_DIR = "DEGEN_GUARD_METRICS_DIR"


class SharedMetrics:
    """See the module doc."""

    def __init__(self, folder: Path | str, interval: float = 1.0) -> None:
        self.folder = Path(folder)
        self.pid = os.getpid()
        self.path = self.folder / f"worker-{self.pid}.json"
        self.interval = interval

    @classmethod
    def from_env(cls) -> SharedMetrics | None:
        folder = os.environ.get(METRICS_DIR)
        return cls(folder) if folder else None

    def write(self, metrics: GuardMetrics) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": self.pid, "metrics": metrics.snapshot()}))
        os.replace(tmp, self.path)

    async def run(self, metrics: GuardMetrics) -> None:
        while True:
            self.write(metrics)
            await asyncio.sleep(self.interval)

    def render(self, metrics: GuardMetrics) -> str:
        from degen.experiments.tune.storage import alive
        from degen.guard.metrics import GuardMetrics

        total = GuardMetrics()
        total.add(metrics.snapshot())
        for f in sorted(self.folder.glob("worker-*.json")):
            if f == self.path:
                continue
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError):
                continue  # being replaced right now; its next write counts
            pid = int(data.get("pid", 0))
            total.add(data.get("metrics") or {}, gauges=pid > 0 and alive(pid))
        return total.render()


def on_shutdown_signal(callback: Any) -> None:
    """Call ``callback`` (in the event loop) when SIGINT or SIGTERM arrives, before the
    server's own handler runs. Only from the main thread (where the server runs)."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        prev = signal.getsignal(sig)

        def handler(signum: int, frame: Any, prev: Any = prev) -> None:
            loop.call_soon_threadsafe(callback)
            if callable(prev):
                prev(signum, frame)

        signal.signal(sig, handler)
