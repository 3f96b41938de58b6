"""A scripted OpenAI-compatible server for faults a real server will not produce on
demand: 500s, 429 with Retry-After, a 400 that quotes the prompt (``e400_echo``),
resets mid-stream, hangs, malformed SSE, and, for the guard, streams that loop
forever, drip forever or go as fast as they can.

Each POST takes the next behaviour from ``script`` (the last one repeats), or the one
its body names in a ``"scripted"`` field (mixed load). Every
request body is kept in ``bodies`` (and its Authorization header in ``auths``) so
tests can check what the client sent. A request that asks for log-probabilities (chat
``"logprobs": true``, completions ``"logprobs": N``) gets one per streamed chunk, in
vLLM's shapes (chat ``logprobs.content``, completions ``logprobs.token_logprobs``):
``logprob``, or the request's ``"scripted_logprob"``; ``logprobs=False`` plays a
server that ignores the request. ``open_connections`` counts the connections
open right now; an endless stream notes in ``closed_at`` (``time.monotonic()``) when
its client hung up, and so do the stalls (``stall``: no answer at all,
``stall_stream``: two chunks then nothing, ``stall_half``: a chunk and half an event
then nothing; each waits at most ``hang_s`` for the client to leave).
"""

from __future__ import annotations

import itertools
import json
import random
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OK_TEXT = "Hello there."
_PIECE = re.compile(r"\s*[^\s]{1,5}|\s+")  # a word piece: about one token

_SUBJECTS = ("the old farmer", "a young teacher", "my neighbour", "the tired doctor",
             "her brother", "the small child", "our captain", "a quiet student", "the baker",
             "his mother", "the new manager", "a friendly driver", "the village priest",
             "my cousin", "the careful pilot", "a local artist")
_VERBS = ("walked to", "looked at", "painted", "cleaned", "visited", "repaired", "found",
          "carried", "opened", "described", "photographed", "sold", "bought", "noticed",
          "left", "remembered")
_OBJECTS = ("the red barn", "a wooden boat", "the garden gate", "an empty house",
            "the long bridge", "a blue bicycle", "the market square", "a broken chair",
            "the stone wall", "an old piano", "the kitchen window", "a heavy box",
            "the church tower", "a winter coat", "the public library", "a small shop")
_WHEN = ("early in the morning", "after lunch", "before the storm", "on a rainy day",
         "late at night", "during the summer", "last week", "on Sunday", "in the spring",
         "after school", "before dinner", "at noon")
_TAILS = ("and then went home", "while the dog slept", "because it was needed",
          "without saying a word", "with great care", "as the sun went down",
          "and smiled at everyone", "although it was cold", "before anyone else arrived",
          "and told a long story about it")


def prose_words(seed: int = 0) -> Iterator[str]:
    """Plain English that never repeats (seeded sentences), one word at a time, without
    end: a stream the guard must relay whole, however long."""
    rng = random.Random(seed)
    while True:
        s = " ".join(rng.choice(part) for part in (_SUBJECTS, _VERBS, _OBJECTS, _WHEN, _TAILS))
        yield from (s[0].upper() + s[1:] + ".").split()


def prose(words: int, seed: int = 0) -> list[str]:
    """The first ``words`` words of :func:`prose_words`."""
    return list(itertools.islice(prose_words(seed), words))


def _chat(text: str, finish: str = "stop") -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "model": "scripted",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


class _QuietServer(ThreadingHTTPServer):
    request_queue_size = 512  # hundreds of clients may connect at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up on a hanging or resetting handler is expected here."""


class ScriptedServer:
    """See the module doc. Stream behaviours (``loop``, ``drip``, ``fast``, ``echo``)
    answer ``/completions`` with ``text`` chunks and ``/chat/completions`` with deltas.
    ``fast`` streams :func:`prose`, one word a chunk, all at once.

    Args:
        script: behaviours, one per POST (the last repeats).
        interval_s: pause between the chunks of ``loop`` and ``drip``.
        loop_prefix, loop_unit: ``loop`` streams the prefix's words, then the unit's
            words over and over (until ``max_chunks``, or the request's
            ``"scripted_max_chunks"``, then ``finish_reason: length``).
        fast_chunks: chunks (words) ``fast`` sends.
        echo_text: what ``echo`` streams when the request has no ``echo`` field.
        finish_in_last: ``echo`` sends its ``finish_reason`` with the last piece of text
            (as vLLM does) rather than in a chunk of its own (as llama.cpp does).
        logprobs: stream log-probabilities to requests that ask (False: ignore them).
        logprob: the log-probability given to every streamed token.
        stop_logprob: the end token's among each token's alternatives (None: not
            among them), for requests that ask for more than one.
        texts: what ``replay`` streams: the text whose index is the request's ``seed``,
            in word pieces (about a token each), then ``finish_reason: length``.
        model: the model ``/models`` lists.
    """

    def __init__(self, script: list[str], owned_by: str = "scripted",
                 hang_s: float = 5.0, interval_s: float = 0.01,
                 loop_prefix: str = "Once upon a time there was a cat.",
                 loop_unit: str = "The cat sat on the mat.", max_chunks: int = 5000,
                 fast_chunks: int = 32, echo_text: str = OK_TEXT, logprobs: bool = True,
                 logprob: float = -0.3, texts: list[str] | None = None,
                 model: str = "scripted-model", stop_logprob: float | None = None,
                 finish_in_last: bool = False, port: int = 0) -> None:
        self.script = list(script)
        self.finish_in_last = finish_in_last
        self.model = model
        self.owned_by = owned_by
        self.hang_s = hang_s
        self.interval_s = interval_s
        self.loop_prefix, self.loop_unit = loop_prefix, loop_unit
        self.max_chunks, self.fast_chunks = max_chunks, fast_chunks
        self.fast_words = prose(fast_chunks)
        self.echo_text = echo_text
        self.logprobs, self.logprob, self.stop_logprob = logprobs, logprob, stop_logprob
        self.texts = list(texts or ())
        self.bodies: list[dict[str, Any]] = []
        self.auths: list[str | None] = []
        self.closed_at: list[float] = []
        self.open_connections = 0
        self.calls = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server.open_connections += 1

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with server._lock:
                        server.open_connections -= 1

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
                        {"id": server.model, "object": "model", "owned_by": server.owned_by}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                with server._lock:
                    server.bodies.append(body)
                    server.auths.append(self.headers.get("Authorization"))
                    step = body.get("scripted") or server.script[
                        min(server.calls, len(server.script) - 1)]
                    server.calls += 1
                stream = bool(body.get("stream"))
                self.body = body
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

            def do_repetition(self, stream: bool) -> None:
                """A server that stopped a loop itself (vLLM's repetition_detection)."""
                if not stream:
                    self._json(200, _chat("again again again", "repetition"))
                    return
                self._sse([{"choices": [{"index": 0, "delta": {"content": w},
                                         "finish_reason": None}]}
                           for w in ("again", " again", " again")]
                          + [{"choices": [{"index": 0, "delta": {},
                                           "finish_reason": "repetition"}]}])

            def do_e500(self, stream: bool) -> None:
                self._json(500, {"error": {"message": "internal boom"}})

            def do_e400(self, stream: bool) -> None:
                self._json(400, {"error": {"message": "bad request: prompt too long"}})

            def do_e400_echo(self, stream: bool) -> None:
                """400 whose message quotes the prompt (as some servers' errors do)."""
                msgs = self.body.get("messages") or [{}]
                quoted = str(msgs[-1].get("content", self.body.get("prompt", "")))[:200]
                self._json(400, {"error": {"message": f"cannot handle the input {quoted!r}"}})

            def do_no_logprobs(self, stream: bool) -> None:
                """400 to a request that asks for log-probabilities (as OpenAI's reasoning
                models answer), else ``echo``."""
                if self.body.get("logprobs") not in (None, False) or \
                        self.body.get("top_logprobs") is not None:
                    self._json(400, {"error": {"message": "logprobs is not supported with "
                                               "this model", "code": "unsupported_parameter"}})
                else:
                    self.do_echo(stream)

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

            def _stall(self) -> None:
                """Send nothing more until the client hangs up (at most ``hang_s``); note
                in ``closed_at`` when it did."""
                deadline = time.monotonic() + server.hang_s
                while time.monotonic() < deadline:
                    if self._client_left(0.01):
                        with server._lock:
                            server.closed_at.append(time.monotonic())
                        return

            def do_stall(self, stream: bool) -> None:
                """The request read, then nothing: not even headers (a long prefill, a
                server that never answers)."""
                self._stall()
                self.close_connection = True

            def do_stall_stream(self, stream: bool) -> None:
                """Headers and two chunks, then a stalled stream."""
                self._start_sse()
                for w in ("Hello", " there"):
                    self._send_event(self._piece(w))
                self._stall()

            def do_stall_half(self, stream: bool) -> None:
                """Headers, one chunk and half of the next event, then nothing."""
                self._start_sse()
                self._send_event(self._piece("Hello"))
                self.wfile.write(b'data: {"choices":[{"index":0,"del')
                self.wfile.flush()
                self._stall()

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

            # --- streams for the guard ------------------------------------
            def _lp(self, chat: bool, text: str) -> dict[str, Any] | None:
                """The chunk's ``logprobs``: one token (``text``) when asked for, with the
                end token ``<|im_end|>`` among its alternatives at the request's
                ``"scripted_stop_logprob"`` (when it has one and asked for more than one
                alternative; else the last alternative is ``-12``: a bound)."""
                asked = self.body.get("logprobs")
                if not server.logprobs or not text or asked is None or asked is False:
                    return None
                lp = float(self.body.get("scripted_logprob", server.logprob))
                top = self.body.get("top_logprobs") if chat else asked
                alts = [(text, lp)]
                if isinstance(top, int) and not isinstance(top, bool) and top > 1:
                    stop = self.body.get("scripted_stop_logprob", server.stop_logprob)
                    alts.append(("<|im_end|>", float(stop)) if stop is not None
                                else (" and", -12.0))
                if chat:
                    return {"content": [{"token": text, "logprob": lp, "bytes": None,
                                         "top_logprobs": [{"token": t, "logprob": v,
                                                           "bytes": None} for t, v in alts]}]}
                return {"tokens": [text], "token_logprobs": [lp],
                        "top_logprobs": [dict(alts)], "text_offset": [0]}

            def _piece(self, text: str, finish: str | None = None) -> dict[str, Any]:
                if self.path.rstrip("/").endswith("/chat/completions"):
                    choice: dict[str, Any] = {"index": 0, "delta": {"content": text} if text
                                              else {}, "logprobs": self._lp(True, text),
                                              "finish_reason": finish}
                    obj = "chat.completion.chunk"
                else:
                    choice = {"index": 0, "text": text, "logprobs": self._lp(False, text),
                              "finish_reason": finish}
                    obj = "text_completion"
                return {"id": "scripted-1", "object": obj, "created": 1, "model": "scripted",
                        "choices": [choice]}

            def _send_event(self, ev: dict[str, Any] | str) -> None:
                data = ev if isinstance(ev, str) else json.dumps(ev)
                self.wfile.write(b"data: " + data.encode() + b"\n\n")
                self.wfile.flush()

            def _client_left(self, wait: float) -> bool:
                """Wait up to ``wait`` seconds; True when the client closed the connection."""
                readable, _, _ = select.select([self.connection], [], [], wait)
                if not readable:
                    return False
                try:
                    return self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    return True

            def _endless(self, pieces: Iterator[str]) -> None:
                self._start_sse()
                try:
                    for i, piece in enumerate(pieces):
                        if i >= self.body.get("scripted_max_chunks", server.max_chunks):
                            self._send_event(self._piece("", "length"))
                            self._send_event("[DONE]")
                            return
                        self._send_event(self._piece(piece))
                        if self._client_left(server.interval_s):
                            break
                except OSError:
                    pass
                with server._lock:
                    server.closed_at.append(time.monotonic())

            def do_loop(self, stream: bool) -> None:
                words = [w + " " for w in server.loop_prefix.split()]
                unit = [w + " " for w in server.loop_unit.split()]
                self._endless(itertools.chain(words, itertools.cycle(unit)))

            def do_drip(self, stream: bool) -> None:
                self._endless(w + " " for w in prose_words())

            def do_fast(self, stream: bool) -> None:
                self._start_sse()
                out = b"".join(b"data: " + json.dumps(self._piece(w + " ")).encode()
                               + b"\n\n" for w in server.fast_words)
                out += b"data: " + json.dumps(self._piece("", "stop")).encode() + b"\n\n"
                usage = {"id": "scripted-1", "object": "chat.completion.chunk", "created": 1,
                         "model": "scripted", "choices": [],
                         "usage": {"prompt_tokens": 5, "completion_tokens": server.fast_chunks,
                                   "total_tokens": 5 + server.fast_chunks}}
                out += b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n"
                try:
                    self.wfile.write(out)
                    self.wfile.flush()
                except OSError:
                    pass

            def do_replay(self, stream: bool) -> None:
                """Streams ``texts[seed]`` in word pieces, as a server streams tokens."""
                text = server.texts[int(self.body.get("seed", 0)) % len(server.texts)]
                self._start_sse()
                try:
                    for piece in _PIECE.findall(text):
                        self._send_event(self._piece(piece))
                    self._send_event(self._piece("", "length"))
                    self._send_event("[DONE]")
                except OSError:
                    pass

            def do_echo(self, stream: bool) -> None:
                """Streams the request's ``echo`` text back a few characters at a time."""
                text = str(self.body.get("echo", server.echo_text))
                self._start_sse()
                try:
                    last = server.finish_in_last
                    for i in range(0, len(text), 3):
                        end = last and i + 3 >= len(text)
                        self._send_event(self._piece(text[i:i + 3], "stop" if end else None))
                    if not last or not text:
                        self._send_event(self._piece("", "stop"))
                    self._send_event({"id": "scripted-1", "object": "chat.completion.chunk",
                                      "created": 1, "model": "scripted", "choices": [],
                                      "usage": {"prompt_tokens": 5,
                                                "completion_tokens": -(-len(text) // 3),
                                                "total_tokens": 5 - (-len(text) // 3)}})
                    self._send_event("[DONE]")
                except OSError:
                    pass

            def _sse(self, events: list[dict[str, Any]]) -> None:
                self._start_sse()
                for ev in events:
                    self.wfile.write(b"data: " + json.dumps(ev).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self.httpd = _QuietServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
