"""A scripted OpenAI-compatible server for faults a real server will not produce on
demand: 500s, 429 with Retry-After, resets mid-stream, hangs, malformed SSE.

Each POST takes the next behaviour from ``script`` (the last one repeats). Every
request body is kept in ``bodies`` so tests can check what the client sent.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OK_TEXT = "Hello there."


def _chat(text: str, finish: str = "stop") -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "model": "scripted",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up on a hanging or resetting handler is expected here."""


class ScriptedServer:
    def __init__(self, script: list[str], owned_by: str = "scripted",
                 hang_s: float = 5.0) -> None:
        self.script = list(script)
        self.owned_by = owned_by
        self.hang_s = hang_s
        self.bodies: list[dict[str, Any]] = []
        self.calls = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [
                        {"id": "scripted-model", "object": "model", "owned_by": server.owned_by}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                with server._lock:
                    server.bodies.append(body)
                    step = server.script[min(server.calls, len(server.script) - 1)]
                    server.calls += 1
                stream = bool(body.get("stream"))
                getattr(self, "do_" + step.replace("-", "_"))(stream)

            # --- behaviours -------------------------------------------------
            def do_ok(self, stream: bool) -> None:
                if not stream:
                    self._json(200, _chat(OK_TEXT))
                    return
                self._sse([{"choices": [{"index": 0, "delta": {"content": w},
                                         "finish_reason": None}]}
                           for w in ("Hello", " there", ".")]
                          + [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                             {"choices": [], "usage": {"prompt_tokens": 5,
                                                       "completion_tokens": 3}}])

            def do_length(self, stream: bool) -> None:
                self._json(200, _chat("again again again", "length"))

            def do_e500(self, stream: bool) -> None:
                self._json(500, {"error": {"message": "internal boom"}})

            def do_e400(self, stream: bool) -> None:
                self._json(400, {"error": {"message": "bad request: prompt too long"}})

            def do_e429(self, stream: bool) -> None:
                self._json(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.2"})

            def do_hang(self, stream: bool) -> None:
                time.sleep(server.hang_s)
                self._json(200, _chat(OK_TEXT))

            def _start_sse(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.close_connection = True

            def do_reset(self, stream: bool) -> None:
                # headers and one event, then the connection drops without [DONE]
                self._start_sse()
                self.wfile.write(b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n')
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)

            def do_malformed(self, stream: bool) -> None:
                self._start_sse()
                self.wfile.write(b"data: {not json\n\n")
                self.wfile.flush()

            def _sse(self, events: list[dict[str, Any]]) -> None:
                self._start_sse()
                for ev in events:
                    self.wfile.write(b"data: " + json.dumps(ev).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
