"""A cancelled request never waits on the upstream (issue 19): whatever the server does
(no answer at all, a stalled stream, half an event and then nothing), the cancel
returns at once and the connection is closed from this side, so the server sees the
client gone. A scripted upstream plays each stall; without the fix each of these
would wait for the engine's 60-second timeout, so the bounds here are loose enough
for a busy machine and still far from what breaks them."""

from __future__ import annotations

import threading
import time

import pytest

from degen.engines.openai import OpenAIEngine
from degen.records import Completion, Request, SamplingParams
from degen.testing.scripted import ScriptedServer

MSGS = ({"role": "user", "content": "Tell me a story."},)
BOUND_S = 3.0  # the cancel returns within this (a stall lasts 60 s)


def req(rid: str = "r") -> Request:
    return Request(rid, "p", SamplingParams(max_tokens=64), messages=MSGS)


def cancel_after_start(eng: OpenAIEngine, srv: ScriptedServer, calls: int,
                       settle: float = 0.3) -> tuple[Completion, float]:
    """Start a request, cancel it once the server has it (and ``settle`` seconds
    more), and return what complete() gave and how long the cancel took."""
    cancel = threading.Event()
    got: list[Completion] = []
    t = threading.Thread(target=lambda: got.append(eng.complete(req(), cancel=cancel)))
    t.start()
    deadline = time.monotonic() + 10
    while srv.calls < calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.calls >= calls, "the request never reached the server"
    time.sleep(settle)
    t0 = time.monotonic()
    cancel.set()
    t.join(30)
    took = time.monotonic() - t0
    assert got, "complete() never returned"
    return got[0], took


@pytest.mark.parametrize(("step", "stream"), [("stall", True), ("stall", False),
                                              ("stall_stream", True), ("stall_half", True)])
@pytest.mark.parametrize("pooled", [False, True], ids=["fresh", "pooled"])
def test_a_cancel_never_waits_on_a_stalled_server(step: str, stream: bool,
                                                   pooled: bool) -> None:
    script = ["ok", step] if pooled else [step]
    with ScriptedServer(script, hang_s=60) as srv:
        eng = OpenAIEngine(srv.base_url, stream=stream, timeout=60, max_retries=0)
        try:
            if pooled:  # a kept-alive connection the stalled request reuses
                assert eng.complete(req("first")).finish_reason == "stop"
            c, took = cancel_after_start(eng, srv, calls=len(script))
            assert took < BOUND_S, f"the cancel took {took:.1f} s"
            assert c.finish_reason == "cancelled" and c.is_cancelled, c.error
            if step != "stall":
                assert c.text.startswith("Hello")  # what had arrived is kept
            deadline = time.monotonic() + BOUND_S
            while not srv.closed_at and time.monotonic() < deadline:
                time.sleep(0.01)
            assert srv.closed_at, "the server never saw the connection closed"
            # the engine goes on: the next request gets a connection of its own
            srv.script.append("ok")
            assert eng.complete(req("after")).finish_reason == "stop"
        finally:
            eng.close()


def test_a_request_that_finishes_leaves_nothing_to_cancel() -> None:
    """A cancel set after its request ended closes nothing: the kept-alive connection
    serves the next request."""
    with ScriptedServer(["ok"]) as srv:
        eng = OpenAIEngine(srv.base_url, stream=True, max_retries=0)
        try:
            cancel = threading.Event()
            assert eng.complete(req("a"), cancel=cancel).finish_reason == "stop"
            cancel.set()
            time.sleep(0.1)  # the aborter would have acted by now
            c = eng.complete(req("b"))
            assert c.finish_reason == "stop" and c.attempts == 1
        finally:
            eng.close()


@pytest.mark.parametrize(("command", "stream"), [  # streamed or not: the engine's tests
    ("run", False), ("tune", True), ("compare", True)])
def test_ctrl_c_never_waits_on_a_stalled_server(tmp_path, command: str, stream: bool) -> None:
    """``degen run`` / ``tune`` / ``compare`` against a server that never answers:
    Ctrl-C ends it at once (exit 130) and every connection is closed from this side."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    degen = str(Path(sys.executable).with_name("degen"))
    with ScriptedServer(["stall"], hang_s=60) as srv:
        engine = ["--engine", "openai", "--base-url", srv.base_url,
                  "--stream" if stream else "--no-stream"]
        if command == "compare":
            engine = ["--arm", f"a:engine=openai,base_url={srv.base_url},stream=true",
                      "--arm", f"b:engine=openai,base_url={srv.base_url},temperature=0.5"]
        extra = {"run": [], "tune": ["--trials", "2"], "compare": []}[command]
        p = subprocess.Popen([degen, command, *engine, *extra, "--requests", "4",
                              "--concurrency", "4", "--max-tokens", "64", "--out",
                              str(tmp_path / "o"), "-q"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while srv.calls < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert srv.calls == 4, "the requests never reached the server"
            t0 = time.monotonic()
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=30)
            took = time.monotonic() - t0
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == 130, err
        assert took < 2 * BOUND_S, f"Ctrl-C took {took:.1f} s"
        deadline = time.monotonic() + BOUND_S
        while len(srv.closed_at) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(srv.closed_at) == 4
