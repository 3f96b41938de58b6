"""The guard's HTTP/1.1 connection handling: uvicorn's httptools protocol with the limits
a gateway keeps on what a client may send before its request reaches the app.

- **Request head size and header count.** The request line and headers together may
  take ``max_header_size`` bytes and ``max_headers`` header fields (Envoy's defaults:
  60 KiB and 100; NGINX's 4 x 8 KiB buffers). Past either, the client gets ``431``
  with an OpenAI-shaped error and the connection is closed, before the parser keeps
  any more of it.
- **Slow clients (slowloris).** A request's head and body must arrive within
  ``client_timeout`` seconds of its first byte (of the connection, for the first
  request): a client that dribbles its head is answered ``408`` and closed (NGINX's
  ``client_header_timeout``, 60 s; a gateway for generation requests needs far less).
  The body's deadline is kept by the app (:meth:`degen.guard.app.GuardApp._read_body`).
  Idle keep-alive connections are closed by uvicorn after ``timeout_keep_alive``.

:func:`uvicorn_options` gives the ``uvicorn.Config`` keywords that install it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from degen.guard.config import GuardConfig
from degen.guard.routing import error_body
from degen.guard.sockets import fix_buffer

log = logging.getLogger("degen.guard")

KEEP_ALIVE_S = 5  # uvicorn's default: an idle keep-alive connection is closed after it
REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops parsing and uvicorn answers."""


def response_bytes(status: int, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 response, OpenAI-shaped, that closes the connection."""
    body = json.dumps(error_body(message, "invalid_request_error", code)).encode()
    return b"".join([b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status]),
                     b"content-type: application/json\r\n",
                     b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n",
                     body])


class GuardProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the head limits and the slow-client deadline
    (the class attributes are set per guard by :func:`protocol_class`)."""

    max_header_size = 64 << 10
    max_headers = 100
    client_timeout = 10.0

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._head_bytes = 0
        self._head_fields = 0
        self._refusal: bytes | None = None
        self._deadline: asyncio.TimerHandle | None = None

    # the head's deadline: armed when the connection or a request begins, disarmed when
    # the head is whole
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        fix_buffer(transport, socket.SO_SNDBUF)  # a stalled client holds little (sockets.py)
        self._arm()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.client_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        log.info("closed a connection that sent no whole request head in %g s",
                 self.client_timeout)
        self._count_refusal(408)
        self.transport.write(response_bytes(
            408, f"the request's headers did not arrive within {self.client_timeout:g} s "
            "(the guard's --client-timeout)", "request_timeout"))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = self._head_fields = 0
        self._arm()

    def _count(self, n: int, field: bool) -> None:
        self._head_bytes += n
        self._head_fields += field
        if self._head_bytes > self.max_header_size:
            self._refusal = response_bytes(
                431, f"the request line and headers are over {self.max_header_size} bytes "
                "(the guard's --max-header-size)", "headers_too_large")
        elif self._head_fields > self.max_headers:
            self._refusal = response_bytes(
                431, f"the request has over {self.max_headers} header fields (the guard's "
                "--max-headers)", "headers_too_large")
        if self._refusal is not None:
            raise _HeadTooLarge

    def on_url(self, url: bytes) -> None:
        self._count(len(url), False)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, True)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            return super().send_400_response(msg)
        self.transport.write(self._refusal)
        self.transport.close()
        self._count_refusal(431)

    def _count_refusal(self, status: int) -> None:
        """Count it where the app counts the requests it refuses (the guard's metrics;
        the app may sit inside uvicorn's middleware)."""
        app = self.app
        while app is not None and not hasattr(app, "guard"):
            app = getattr(app, "app", None)
        if app is not None:
            app.guard.metrics.rejected.inc(status=str(status))


def protocol_class(config: GuardConfig) -> type[GuardProtocol]:
    """:class:`GuardProtocol` with ``config``'s limits."""
    return type("GuardProtocol", (GuardProtocol,), {
        "max_header_size": config.max_header_size, "max_headers": config.max_headers,
        "client_timeout": config.client_timeout})


def uvicorn_options(config: GuardConfig) -> dict[str, Any]:
    """The ``uvicorn.Config`` keywords for the guard's connection handling."""
    return {"http": protocol_class(config), "timeout_keep_alive": KEEP_ALIVE_S}
