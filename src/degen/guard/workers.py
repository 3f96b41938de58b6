"""Serving the guard: one process, or ``workers`` processes sharing the port (uvicorn's
supervisor; one per core), with metrics that add up across them and a graceful
shutdown.

- :func:`serve` runs the guard until SIGINT/SIGTERM. With several workers each binds
  its own socket to the port (SO_REUSEPORT: the kernel spreads connections over them)
  and the parent starts again any worker that dies. A shutdown stops accepting,
  refuses requests that still arrive on open connections (503), lets open streams
  finish for up to ``shutdown_timeout`` seconds, then cuts what is left (the client
  gets an error event) and logs how many finished and how many were cut.
- :class:`~degen.guard.shared.SharedMetrics`: with several workers each writes its
  metrics to a file in a folder of its own every second (and when it stops);
  ``/metrics`` on any worker adds up its own live values and the others' files (a gone
  worker's counters still count, its gauges do not). The other workers' values are up
  to a second old.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

# they lived here before degen.guard.shared (``X as X``: re-exported)
from degen.guard.shared import METRICS_DIR
from degen.guard.shared import SharedMetrics as SharedMetrics
from degen.guard.shared import on_shutdown_signal as on_shutdown_signal

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from degen.guard.config import GuardConfig

CONFIG_FILE = "DEGEN_GUARD_CONFIG_FILE"


# ---------------------------------------------------------------------- running
def _dump(config: GuardConfig) -> dict[str, Any]:
    import dataclasses

    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if f.name == "upstreams":
            v = [dataclasses.asdict(u) for u in v]
        elif isinstance(v, frozenset):
            v = sorted(v)
        out[f.name] = v
    return out


def _load(data: dict[str, Any]) -> GuardConfig:
    from degen.guard.config import GuardConfig, UpstreamConfig

    data = dict(data)
    data["upstreams"] = tuple(UpstreamConfig(**u) for u in data.get("upstreams") or ())
    data["cut_kinds"] = frozenset(data.get("cut_kinds") or ())
    return GuardConfig(**data)


def worker_app() -> Starlette:
    """The app of one worker (uvicorn's factory), from the config file the supervisor
    wrote."""
    from degen.guard.app import create_app
    from degen.guard.logs import setup

    path = os.environ.get(CONFIG_FILE)
    if not path:
        raise RuntimeError(f"{CONFIG_FILE} is not set: start workers with degen guard")
    config = _load(json.loads(Path(path).read_text()))
    setup(config)
    return create_app(config)


def _uvicorn_config(app: Any, config: GuardConfig, **kw: Any) -> Any:
    import uvicorn

    from degen.guard.protocol import uvicorn_options

    return uvicorn.Config(app, host=config.host, port=config.port,
                          log_level=config.log_level, access_log=False,
                          timeout_graceful_shutdown=int(config.shutdown_timeout + 0.999),
                          log_config=None, backlog=4096, **uvicorn_options(config), **kw)


def settle_memory() -> None:
    """For a process that serves the guard: load what every watch shares (the lexicon)
    now, and move it and everything else made at start-up out of the garbage
    collector's sight; then collect young objects less often. A full collection in a
    guard process took 35-50 ms before the freeze (every stream stalls meanwhile) and
    0.01 ms after."""
    import gc

    from degen.detect.watch import Watch

    Watch("warm up").feed("Loading the lexicon once, at start-up. ")
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 1000)


def _reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` with SO_REUSEPORT: each worker has its own,
    and the kernel spreads new connections evenly over them (with one shared socket,
    the worker that wakes first takes a whole burst)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def _worker(config_file: str, metrics_dir: str) -> None:
    """One worker process: its own socket on the shared port, the app, until a signal."""
    import uvicorn

    os.environ[CONFIG_FILE], os.environ[METRICS_DIR] = config_file, metrics_dir
    signal.signal(signal.SIGTERM, lambda *_: None)  # see serve(): a clean exit
    config = _load(json.loads(Path(config_file).read_text()))
    sock = _reuseport_socket(config.host, config.port)
    settle_memory()
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(_uvicorn_config(worker_app, config, factory=True)).run(sockets=[sock])


def serve(config: GuardConfig) -> None:
    """Run the guard (see the module doc) until it is told to stop."""
    import uvicorn

    from degen.guard.app import create_app

    if config.workers == 1:
        # after its graceful shutdown the server raises the signal it caught again:
        # Ctrl-C then ends here, and SIGTERM finds this no-op (a clean stop, exit 0)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: None)
        app = create_app(config)
        settle_memory()
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(_uvicorn_config(app, config)).run()
        return
    _supervise(config)


def _supervise(config: GuardConfig) -> None:
    """Start ``workers`` processes, start again one that dies, and on SIGINT/SIGTERM
    pass the signal on and wait for each to shut down gracefully."""
    import multiprocessing as mp
    import time

    from degen.errors import UsageError

    probe = None
    try:  # the port is free (one line now, not N tracebacks later)
        probe = _reuseport_socket(config.host, config.port)
    except OSError as e:
        raise UsageError(f"cannot listen on {config.host}:{config.port} ({e.strerror}); "
                         "pick another --port") from None
    folder = tempfile.mkdtemp(prefix="degen-guard-")
    ctx = mp.get_context("spawn")
    stopping: list[int] = []
    procs: list[Any] = []
    try:
        cfg_file = Path(folder) / "config.json"
        fd = os.open(cfg_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # keys inside
        with os.fdopen(fd, "w") as f:
            json.dump(_dump(config), f)
        metrics = Path(folder) / "metrics"
        metrics.mkdir()

        def start() -> Any:
            p = ctx.Process(target=_worker, args=(str(cfg_file), str(metrics)), daemon=False)
            p.start()
            return p

        def stop(signum: int, _frame: Any) -> None:
            stopping.append(signum)
            for p in procs:
                if p.is_alive() and p.pid:
                    os.kill(p.pid, signal.SIGTERM)

        procs.extend(start() for _ in range(config.workers))
        probe.close()
        probe = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)
        while not stopping:
            for i, p in enumerate(procs):
                if not p.is_alive() and not stopping:
                    procs[i] = start()  # a worker died: its counters stay in its file
            time.sleep(0.5)
        for p in procs:
            p.join(config.shutdown_timeout + 10)
            if p.is_alive():
                p.kill()
    finally:
        if probe is not None:
            probe.close()
        for p in procs:
            if p.is_alive():
                p.kill()
        with contextlib.suppress(OSError):
            shutil.rmtree(folder)
