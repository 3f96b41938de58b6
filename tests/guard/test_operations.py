"""Running ``degen guard`` as a service, as an operator would: a TOML config file
(flags win), several workers with metrics that add up, a graceful shutdown that lets
open streams finish and says what it cut, and JSON logs. Real subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from degen.guard.metrics import sample
from degen.testing.scripted import OK_TEXT, ScriptedServer
from tests.guard.conftest import DEGEN, GuardProcess
from tests.guard.test_proxy import MSGS

BODY = {"model": "m", "messages": MSGS}


def json_lines(output: str) -> list[dict]:
    """The JSON log lines (everything the guard logs is one; the startup banner is not)."""
    out = []
    for line in output.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_a_config_file_holds_the_settings_and_flags_win(tmp_path: Path) -> None:
    with ScriptedServer(["echo", "loop"], interval_s=0.002, model="alpha") as a, \
            ScriptedServer(["echo"], model="beta") as b:
        cfg = tmp_path / "guard.toml"
        cfg.write_text(f"""
upstream = "{a.base_url}"
max_tokens_cap = 300
log_format = "json"
no_cut = "spacing"

[defaults]
temperature = 0.5
min_p = 0.05

[upstreams.beta]
url = "{b.base_url}"
defaults = {{ top_p = 0.9 }}
""")
        g = GuardProcess("--config", str(cfg), "--default", "temperature=0.9")
        try:
            r = httpx.post(g.url + "/chat/completions", json=BODY, timeout=10)
            assert r.json()["choices"][0]["message"]["content"] == OK_TEXT
            r = httpx.post(g.url + "/chat/completions", json=BODY, timeout=10)
            assert r.json()["choices"][0]["finish_reason"] == "repetition"
            httpx.post(g.url + "/chat/completions", json={**BODY, "model": "beta"}, timeout=10)
        finally:
            code, output = g.stop()
    assert code == 0, output
    assert a.bodies[0]["temperature"] == 0.9  # the flag over the file
    assert a.bodies[0]["min_p"] == 0.05 and a.bodies[0]["max_tokens"] == 300
    assert b.bodies[0]["top_p"] == 0.9 and b.bodies[0]["temperature"] == 0.9
    assert "cutting loop, gibberish; watching spacing" in output
    logs = json_lines(output)
    requests = [x["request"] for x in logs if "request" in x]
    assert [q["finish"] for q in requests] == ["stop", "repetition", "stop"]
    assert requests[1]["cut"] == "loop" and requests[1]["cut_at"] > 0
    assert requests[2]["upstream"] == "beta" and requests[2]["model"] == "beta"
    assert all(x["level"] in ("info", "warning") and "time" in x for x in logs)
    assert "Tell me a story" not in output and OK_TEXT not in output  # no content


@pytest.mark.parametrize(("text", "needle"), [
    ("nope = 1", "unknown setting 'nope'"),
    ("port = 'x'", "port = 'x' has the wrong type"),
    ("[upstreams.a]\nurl = 'http://h:1'\ncolour = 2", "unknown setting 'colour' in"),
    ("holdback = ", "is not valid TOML"),
    ("upstream = 'http://127.0.0.1:9'\non_degenerate = 'retry'", "needs the safer parameters"),
])
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, text, needle) -> None:
    cfg = tmp_path / "guard.toml"
    cfg.write_text(text)
    r = subprocess.run([DEGEN, "guard", "--config", str(cfg), "--upstream",
                        "http://127.0.0.1:9"] if "upstream" not in text else
                       [DEGEN, "guard", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    r = subprocess.run([DEGEN, "guard", "--config", str(tmp_path / "missing.toml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no config file at" in r.stderr


def test_two_workers_share_the_port_and_their_metrics_add_up() -> None:
    n = 24
    with ScriptedServer(["drip"], interval_s=0.01) as up:
        g = GuardProcess("--upstream", up.base_url, "--workers", "2", "--log-format", "json",
                         timeout=60)
        try:
            seen: set[int] = set()
            deadline = time.monotonic() + 30
            while len(seen) < 2 and time.monotonic() < deadline:  # both workers listen
                seen.add(httpx.get(g.base + "/health").json()["worker"])
            assert len(seen) == 2

            def one(_: int) -> None:
                with httpx.stream("POST", g.url + "/chat/completions", timeout=20,
                                  json={**BODY, "stream": True}) as r:
                    for i, _line in enumerate(r.iter_lines()):
                        if i > 20:
                            break  # leave: the guard closes the upstream request

            threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            deadline = time.monotonic() + 5
            total = 0.0
            while time.monotonic() < deadline:  # the other worker writes every second
                page = httpx.get(g.base + "/metrics").text
                total = sample(page, "degen:requests_total", endpoint="/v1/chat/completions")
                if total == n and sample(page, "degen:client_disconnects_total") == n:
                    break
                time.sleep(0.2)
        finally:
            code, output = g.stop()
    assert total == n, output
    assert code == 0, output
    pids = {x["pid"] for x in json_lines(output) if "request" in x}
    assert len(pids) == 2, pids  # both workers answered
    assert up.open_connections == 0


def test_shutdown_lets_open_streams_finish_then_cuts_what_is_left() -> None:
    with ScriptedServer(["drip"], interval_s=0.02) as up:
        g = GuardProcess("--upstream", up.base_url, "--shutdown-timeout", "2",
                         "--no-cut", "all", "--log-format", "json")
        got: dict[str, list] = {"finite": [], "endless": []}

        def read(name: str) -> None:
            chunks = 60 if name == "finite" else 100_000
            with httpx.stream("POST", g.url + "/chat/completions", timeout=30, json={
                    **BODY, "stream": True, "scripted_max_chunks": chunks}) as r:
                got[name] = [line for line in r.iter_lines() if line.startswith("data: ")]

        finite = threading.Thread(target=read, args=("finite",))
        finite.start()
        time.sleep(0.3)
        endless = threading.Thread(target=read, args=("endless",))
        endless.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        g.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):  # no new connection is accepted
            httpx.post(g.url + "/chat/completions", json=BODY, timeout=2)
        finite.join(10)
        endless.join(10)
        code = g.proc.wait(15)
        took = time.monotonic() - t0
        output = g.stop()[1]
    assert code == 0, output
    assert 1.5 < took < 6, took
    # the finite one (60 chunks, 1.2 s) ran to its end
    assert got["finite"][-1] == "data: [DONE]"
    assert json.loads(got["finite"][-2][6:])["choices"][0]["finish_reason"] == "length"
    # the endless one was cut at the timeout, with an error event that says why
    last = json.loads(got["endless"][-1][6:])
    assert last["error"]["code"] == "shutdown"
    assert up.open_connections == 0
    logs = json_lines(output)
    summary = [x["shutdown"] for x in logs if "shutdown" in x]
    assert summary[0] == {"open": 2} and summary[-1]["open"] == 2
    assert summary[-1]["cut"] == 1
    finishes = [x["request"]["finish"] for x in logs if "request" in x]
    assert sorted(finishes) == ["length", "shutdown"]


def test_shutdown_ends_requests_whose_upstream_stalled_within_its_timeout() -> None:
    """An upstream that stops sending (a stalled stream; no answer at all) does not
    hold the guard's shutdown: at the timeout each request is cut, its client told, and
    its upstream connection closed."""
    with ScriptedServer(["stall"], hang_s=60) as up:
        g = GuardProcess("--upstream", up.base_url, "--shutdown-timeout", "1")
        got: dict[str, httpx.Response | list[str]] = {}

        def stream() -> None:
            with httpx.stream("POST", g.url + "/chat/completions", timeout=60, json={
                    **BODY, "stream": True, "scripted": "stall_stream"}) as r:
                got["stream"] = [line for line in r.iter_lines() if line.startswith("data: ")]

        def whole() -> None:
            got["whole"] = httpx.post(g.url + "/chat/completions", timeout=60,
                                      json={**BODY, "scripted": "stall"})

        clients = [threading.Thread(target=f) for f in (stream, whole)]
        for c in clients:
            c.start()
        deadline = time.monotonic() + 10
        while len(up.bodies) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        t0 = time.monotonic()
        g.proc.send_signal(signal.SIGTERM)
        code = g.proc.wait(30)
        took = time.monotonic() - t0
        for c in clients:
            c.join(10)
        output = g.stop()[1]
        assert len(up.closed_at) == 2 and up.open_connections == 0
    assert code == 0, output
    assert took < 6, took  # the 1 s timeout, and the cut; the upstream would wait 60 s
    assert json.loads(got["stream"][-1][6:])["error"]["code"] == "shutdown"
    assert got["whole"].status_code == 503
    assert got["whole"].json()["error"]["code"] == "shutdown"
