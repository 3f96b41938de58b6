"""The guard's edges, as a gateway operator expects them (compared with Envoy's and
NGINX's defaults in docs/guard-operations.md): limits on what a client may send (body,
request head, header count, choices), slow clients, bodies that are not UTF-8 JSON
objects, upstreams that fail or are not there, and logs that never hold a prompt or an
answer, on the error paths too. Over real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import httpx
import openai
import pytest

from degen.guard.metrics import sample
from degen.testing.llamacpp import free_port
from degen.testing.scripted import ScriptedServer
from tests.guard.test_proxy import chat, wait_for

SECRET = "private-words-9137"


def raw_exchange(port: int, data: bytes, wait: float = 10.0) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection and read until the guard closes it: what it
    answered, and how long the close took."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got, time.monotonic() - t0


def status_and_error(reply: bytes) -> tuple[int, dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def request_head(n_headers: int = 0, header_bytes: int = 0, body: bytes = b"") -> bytes:
    lines = [b"POST /v1/chat/completions HTTP/1.1", b"Host: 127.0.0.1",
             b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    lines += [b"X-Filler-%d: v" % i for i in range(n_headers)]
    if header_bytes:
        lines.append(b"X-Big: " + b"a" * header_bytes)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# ---------------------------------------------------------------- the request head
def test_a_request_head_over_the_limits_is_431_and_closed(make_guard) -> None:
    body = json.dumps(chat()).encode()
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up, max_header_size=8192, max_headers=20)
        # within both limits: answered
        reply, _ = raw_exchange(g.port, request_head(10, 4000, body).replace(
            b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1))
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        # a header over the size limit, and too many headers: 431, the connection closed
        for head in (request_head(0, 9000, body), request_head(30, 0, body)):
            status, err = status_and_error(raw_exchange(g.port, head)[0])
            assert status == 431 and err["code"] == "headers_too_large"
        # the default limits (64 KiB, 100 fields) through an ordinary client
        g2 = make_guard(up)
        r = httpx.post(g2.url + "/chat/completions", json=chat(),
                       headers={"x-big": "a" * (70 << 10)})
        assert r.status_code == 431 and "--max-header-size" in r.json()["error"]["message"]
        r = httpx.post(g2.url + "/chat/completions", json=chat(),
                       headers={f"x-h{i}": "v" for i in range(101)})
        assert r.status_code == 431 and "--max-headers" in r.json()["error"]["message"]
        assert httpx.post(g2.url + "/chat/completions", json=chat(),
                          headers={f"x-h{i}": "v" for i in range(90)}).status_code == 200
    assert len(up.bodies) == 2  # the refused ones never reached the upstream
    assert g.guard.metrics.rejected.total(status="431") == 2
    assert g2.guard.metrics.rejected.total(status="431") == 2


# ---------------------------------------------------------------- slow clients
def test_slow_clients_are_answered_408_and_closed(make_guard) -> None:
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up, client_timeout=0.5)
        # nothing sent at all
        reply, took = raw_exchange(g.port, b"")
        assert reply.startswith(b"HTTP/1.1 408") and took < 5
        # slowloris: a head dribbled a byte at a time (it would take 5 s), never finished
        with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
            stop = threading.Event()
            drip = threading.Thread(target=dribble, args=(
                s, request_head().replace(b"\r\n\r\n", b"\r\n"), stop))
            t0 = time.monotonic()
            drip.start()
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
            took = time.monotonic() - t0
            stop.set()
            drip.join()
        status, err = status_and_error(reply)
        assert status == 408 and err["code"] == "request_timeout" and took < 4
        # a whole head, then a body that stops half-way
        head = request_head(body=b"x" * 100)[:-50]
        with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
            s.sendall(head)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
                if b"}}" in reply:
                    break
        status, err = status_and_error(reply)
        assert status == 408 and "--client-timeout" in err["message"]
        # an ordinary client is not slow
        assert httpx.post(g.url + "/chat/completions", json=chat()).status_code == 200
    assert g.guard.metrics.rejected.total(status="408") == 3
    assert len(up.bodies) == 1


def dribble(s: socket.socket, data: bytes, stop: threading.Event) -> None:
    for b in data:
        if stop.is_set():
            return
        try:
            s.sendall(bytes([b]))
        except OSError:
            return
        time.sleep(0.05)


# ---------------------------------------------------------------- choices and tokens
def test_the_operator_caps_choices_and_tokens(make_guard) -> None:
    with ScriptedServer(["echo"]) as up:
        g = make_guard(up, max_n=4, max_tokens_cap=100)
        url = g.url + "/chat/completions"
        for field, v, needle in (("n", 5, "n must be at most 4 (the guard's --max-n)"),
                                 ("best_of", 9, "best_of must be at most 4"),
                                 ("n", 0, "n must be a whole number >= 1"),
                                 ("n", "two", "n must be a whole number >= 1")):
            r = httpx.post(url, json=chat(**{field: v}))
            assert r.status_code == 400 and needle in r.json()["error"]["message"]
            assert r.json()["error"]["code"] == "invalid_value"
        assert up.bodies == []
        assert httpx.post(url, json=chat(n=4, max_tokens=5000)).status_code == 200
        assert up.bodies[-1]["n"] == 4 and up.bodies[-1]["max_tokens"] == 100


# ---------------------------------------------------------------- bodies
@pytest.mark.parametrize(("raw", "needle"), [
    (b'{"model": "m", "messages": "\xff\xfe' + SECRET.encode() + b'"}',
     "the request body is not UTF-8 (byte 28)"),
    (b'{"model": "m",\n "messages": [' + SECRET.encode() + b']}',
     "the request body is not valid JSON (line 2, column 15)"),
    (b"", "the request body is not valid JSON"),
    (b'["' + SECRET.encode() + b'"]', "must be a JSON object, got an array"),
    (b'"' + SECRET.encode() + b'"', "must be a JSON object, got a string"),
    (b"null", "must be a JSON object, got null"),
    (b"42", "must be a JSON object, got a number"),
], ids=["not-utf8", "malformed", "empty", "array", "string", "null", "number"])
def test_a_body_that_is_not_a_utf8_json_object_is_400_without_a_trace(
        make_guard, caplog, raw, needle) -> None:
    with ScriptedServer(["echo"]) as up, caplog.at_level(logging.DEBUG):
        g = make_guard(up)
        r = httpx.post(g.url + "/chat/completions", content=raw,
                       headers={"content-type": "application/json"})
        assert r.status_code == 400
        err = r.json()["error"]
        assert needle in err["message"] and err["code"] == "invalid_json"
        assert SECRET not in r.text  # the message never quotes the body
    assert up.bodies == []
    assert g.guard.metrics.rejected.total(status="400") == 1
    assert "Traceback" not in caplog.text and SECRET not in caplog.text
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


# ---------------------------------------------------------------- upstream faults
def test_an_upstream_failure_mid_stream_reaches_the_sdk_and_the_metrics(make_guard) -> None:
    with ScriptedServer(["reset"]) as up:
        g = make_guard(up)
        client = openai.OpenAI(base_url=g.url, api_key="none", max_retries=0)
        stream = client.chat.completions.create(model="m", messages=chat()["messages"],
                                                stream=True)
        got = []
        with pytest.raises(openai.APIError) as e:
            for chunk in stream:
                got.append(chunk.choices[0].delta.content)
        assert got == ["Hel"] and "failed" in str(e.value)
    m = g.guard.metrics
    assert m.upstream_errors.total(status="502") == 1
    assert m.responses.total(finish_reason="error") == 1


def test_an_upstream_where_nothing_listens_is_a_fast_502_and_not_ready(make_guard) -> None:
    port = free_port()
    g = make_guard(f"http://127.0.0.1:{port}", health_interval=0.2)
    for stream in (False, True):
        t0 = time.monotonic()
        r = httpx.post(g.url + "/chat/completions", json=chat(stream=stream), timeout=10)
        assert r.status_code == 502 and time.monotonic() - t0 < 2.0
        assert r.json()["error"]["code"] == "upstream_unreachable"
    ready = httpx.get(g.base + "/ready")
    assert ready.status_code == 503 and ready.json()["upstream_up"] is False
    assert sample(httpx.get(g.base + "/metrics").text, "degen_guard_upstream_up") == 0.0
    # the upstream comes up on that port: the next health check finds it
    with ScriptedServer(["echo"], port=port):
        assert wait_for(lambda: httpx.get(g.base + "/ready").status_code == 200, 5.0)
        assert httpx.post(g.url + "/chat/completions", json=chat()).status_code == 200


def test_a_failed_request_marks_its_upstream_down_at_once(make_guard) -> None:
    up = ScriptedServer(["echo"]).__enter__()
    g = make_guard(up, health_interval=3600)  # no health check after the first
    assert wait_for(lambda: httpx.get(g.base + "/ready").status_code == 200)
    up.__exit__(None, None, None)
    assert httpx.post(g.url + "/chat/completions", json=chat()).status_code == 502
    assert httpx.get(g.base + "/ready").status_code == 503


# ---------------------------------------------------------------- logs
def test_no_prompt_or_answer_is_logged_on_any_path(make_guard, caplog) -> None:
    """At debug level, through every way a request can end, the log never holds the
    prompt or the answer (unless log_content)."""
    body = {"model": "m", "messages": [{"role": "user", "content": SECRET}],
            "echo": f"answer {SECRET}"}
    # the first 400 refuses the log-probabilities the guard asked for (it asks again
    # without them, and logs that), the second is the client's
    script = ["echo", "e400_echo", "echo", "e400_echo", "reset", "loop", "e500"]
    with ScriptedServer(script) as up, caplog.at_level(logging.DEBUG):
        g = make_guard(up, max_body=4000)
        url = g.url + "/chat/completions"
        statuses = []
        for stream in (False, False, False, True, True, False):
            with httpx.stream("POST", url, json={**body, "stream": stream}, timeout=10) as r:
                r.read()
                statuses.append(r.status_code)
        assert statuses == [200, 200, 400, 200, 200, 500]
        assert SECRET in up.bodies[1]["messages"][0]["content"]
        # refused before the upstream: too big, not JSON, too many choices
        for content in (json.dumps({**body, "pad": "x" * 5000}).encode(),
                        json.dumps(body).encode()[:-3], json.dumps({**body, "n": 99}).encode()):
            assert httpx.post(url, content=content).status_code in (400, 413)
        assert wait_for(lambda: caplog.text.count(" finish=") >= 6)
        assert "refused logprobs" in caplog.text
    assert SECRET not in caplog.text
    assert "Traceback" not in caplog.text
