"""Fixtures for the guard: the proxy served by uvicorn on a thread (127.0.0.1, a port
the OS picks) or run as ``degen guard`` in a subprocess, in front of a scripted
upstream or a real llama.cpp server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from degen.guard import GuardConfig, create_app
from degen.guard.protocol import uvicorn_options
from degen.testing.scripted import ScriptedServer

DEGEN = str(Path(sys.executable).parent / "degen")


class GuardServer:
    """``degen guard`` in this process: ``url`` is its ``/v1`` base, ``guard`` the
    :class:`~degen.guard.app.Guard` (metrics, upstream client)."""

    def __init__(self, config: GuardConfig) -> None:
        self.app = create_app(config)
        self.guard = self.app.state.guard
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1,
            backlog=512, **uvicorn_options(config)))
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the guard did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def __enter__(self) -> GuardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def make_guard() -> Iterator[Any]:
    """``make_guard(upstream_or_server, **config)`` -> a running GuardServer (stopped after
    the test)."""
    started: list[GuardServer] = []

    def make(upstream: str | ScriptedServer, **kw: Any) -> GuardServer:
        url = upstream.base_url if isinstance(upstream, ScriptedServer) else upstream
        g = GuardServer(GuardConfig(upstream=url, **kw))
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()


class GuardProcess:
    """``degen guard`` as a user starts it: a subprocess on a free port, stopped with
    SIGINT (Ctrl-C) on exit; ``pid`` lets a test read its memory."""

    def __init__(self, *args: str, timeout: float = 30.0,
                 env: dict[str, str] | None = None) -> None:
        from degen.testing.llamacpp import free_port

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        # the log goes to a file: a pipe nobody reads would fill up and block the guard
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([DEGEN, "guard", "--port", str(self.port), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, text=True,
                                     env=env)
        self.pid = self.proc.pid
        self._out = ""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"degen guard exited: {self.output()}")
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("degen guard did not answer /health")
            time.sleep(0.05)

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def output(self) -> str:
        if self.log.closed:
            return self._out
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> tuple[int, str]:
        """Ctrl-C; (exit code, everything it printed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out = self.output()
        self.log.close()
        return self.proc.returncode, self._out

    def __enter__(self) -> GuardProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
