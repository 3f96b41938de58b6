"""Start and stop real OpenAI-compatible servers on 127.0.0.1 for tests and benchmarks.

:class:`ServerProcess` runs a server command on a free loopback port, waits until its
``/v1/models`` answers and stops it; :class:`LlamaCppServer` is llama.cpp
(``llama-cpp-python[server]``, which ``scripts/setup.sh --test`` installs) and
:class:`degen.testing.vllm.VLLMServer` is vLLM."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_python(root: Path | str, venv: str, env_var: str, what: str) -> Path:
    """The Python of a server that lives in a venv of its own: ``$env_var``, else
    ``<root>/<venv>/bin/python``; RuntimeError saying how to get it (``what``: the
    package the test setup installs there)."""
    env = os.environ.get(env_var)
    p = Path(env) if env else Path(root) / venv / "bin" / "python"
    if not p.is_file():
        raise RuntimeError(f"no {what} at {p}: run `bash scripts/setup.sh --test` (it "
                           f"installs {what} into {venv}) or set {env_var}")
    return p


class ServerProcess:
    """``argv`` (with ``{port}`` filled in) serving on 127.0.0.1:<free port>, its output
    in ``log``; ready once ``ready_path`` (default ``/v1/models``) answers 200 within
    ``start_timeout`` seconds."""

    what = "server"

    def __init__(self, argv: Sequence[str], log: Path | None = None,
                 env: dict[str, str] | None = None, start_timeout: float = 120.0,
                 ready_path: str = "/v1/models") -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.ready_url = f"http://127.0.0.1:{self.port}{ready_path}"
        self.log_path = log
        self._log = open(log or os.devnull, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([a.format(port=self.port) for a in argv],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self._wait(start_timeout)

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"{self.what} exited with {self.proc.returncode}"
                                   f"{self._tail()}")
            try:
                if httpx.get(self.ready_url, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.what} did not answer within {timeout:.0f} s{self._tail()}")

    def _tail(self) -> str:
        if self.log_path is None:
            return ""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return ":\n" + "\n".join(lines[-15:]) if lines else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LlamaCppServer(ServerProcess):
    """``python -m llama_cpp.server`` serving ``model`` (a GGUF file)."""

    what = "llama.cpp server"

    def __init__(self, model: Path, n_ctx: int = 2048, log: Path | None = None) -> None:
        super().__init__(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
             "--host", "127.0.0.1", "--port", "{port}", "--n_ctx", str(n_ctx),
             "--n_threads", "2",
             # by default llama-cpp-python cuts a running stream when another request
             # arrives; a load test needs them queued instead
             "--interrupt_requests", "False"], log=log)
