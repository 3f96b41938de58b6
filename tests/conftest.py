"""Shared fixtures: the bundled model in-process and a real llama.cpp server."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from degen.engines.hf import bundled_model_path
from degen.engines.local import LocalEngine

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _ctrl_c_not_ignored() -> None:
    """A suite started in the background by a script inherits SIGINT ignored (POSIX:
    a shell without job control starts asynchronous commands so), and so would every
    degen process a test starts: the Ctrl-C tests would then test nothing and fail.
    Ctrl-C is given back its default, for this process and (through exec) its children."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    return bundled_model_path()


@pytest.fixture(scope="session")
def local_engine() -> Iterator[LocalEngine]:
    """One bundled-model engine for the whole session (loading costs ~1 s from cache)."""
    eng = LocalEngine(batch_size=8)
    eng.load()
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def llamacpp_server(bundled_gguf: Path, tmp_path_factory: pytest.TempPathFactory):
    from degen.testing.llamacpp import LlamaCppServer

    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    srv = LlamaCppServer(bundled_gguf, log=log)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory):
    """One vLLM server (CPU build, its own venv) serving the bundled model's cached
    checkpoint folder for the whole session: ~50 s to start, ~5 GiB. It loads degen's
    logits processor (tests/vllm/test_plugin.py), idle unless a request asks for it
    (no ``DEGEN_VLLM_CUT``); its cuts are appended to ``srv.events``."""
    from degen.engines import hf
    from degen.testing.vllm import VLLMServer, vllm_python

    folder = hf.materialize(hf.resolve_model(None))
    tmp = tmp_path_factory.mktemp("vllm")
    events = tmp / "degen-events.jsonl"
    srv = VLLMServer(folder, python=vllm_python(ROOT), name="SmolLM2-135M-Instruct",
                     log=tmp / "server.log",
                     logits_processors=["degen.integrations.vllm:DegenLogitsProcessor"],
                     env={"DEGEN_VLLM_EVENTS": str(events), "DEGEN_VLLM_CUT": ""})
    srv.events = events
    yield srv
    srv.stop()


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for CLI subprocesses: the shared model cache, a clean cwd."""
    env = dict(os.environ)
    env.setdefault("DEGEN_CACHE_DIR", str(Path.home() / ".cache" / "degen"))
    return env
