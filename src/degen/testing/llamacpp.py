"""Start and stop a real llama.cpp server (``llama-cpp-python[server]``) on 127.0.0.1.

Needs ``pip install 'llama-cpp-python[server]'`` (``scripts/setup.sh --test`` does it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """``python -m llama_cpp.server`` serving ``model`` on 127.0.0.1:<free port>."""

    def __init__(self, model: Path, n_ctx: int = 2048, log: Path | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._log = open(log or os.devnull, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx),
             "--n_threads", "2",
             # by default llama-cpp-python cuts a running stream when another request
             # arrives; a load test needs them queued instead
             "--interrupt_requests", "False"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._wait()

    def _wait(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.base_url + "/models", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("llama.cpp server did not answer within 120 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
