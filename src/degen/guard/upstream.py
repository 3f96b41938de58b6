"""The guard's HTTP/1.1 client for generation streams: asyncio protocols, httptools'
parser (in C) and a keep-alive pool per upstream, so relaying one chunk costs a parse
of bytes already in memory, not a trip through a general-purpose client's layers.

:meth:`StreamPool.post` sends one request and returns an :class:`UpstreamResponse`
once its status and headers are in; :meth:`UpstreamResponse.read` gives the body as it
arrives (de-chunked; what came in since the last call, joined, at most :data:`READ_MAX`
bytes a call), ``b""`` at its end. Reading stops while ``_HIGH_WATER`` bytes wait
unread (back-pressure: a client that stops reading stops its upstream). Closing a
response before its end closes the connection: that is how vLLM and llama.cpp learn to
abort the generation. A response read to its end returns its
connection to the pool. Errors: :class:`UpstreamTimeout` (no data for ``timeout``
seconds, or no connection within ``connect_timeout``), :class:`UpstreamBroken` (refused,
reset, closed early, not HTTP). A request on a pooled connection that the server had
closed meanwhile is sent once more on a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import httptools

from degen.guard.sockets import SOCKET_BUFFER

_HIGH_WATER = 1 << 18  # bytes buffered from the upstream before it is paused
# the most one read() gives: the relay judges what it reads in one go, with the event loop
# to itself, so a stream that fell behind (a client that reads slowly) takes its backlog
# in slices, and the worker's other streams are served between them
READ_MAX = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not be read."""


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamBroken(UpstreamError):
    pass


class UpstreamUnreachable(UpstreamBroken):
    """Nothing accepted the connection: the upstream is down."""


class _Conn(asyncio.Protocol):
    """One connection; one response at a time."""

    def __init__(self, pool: StreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.alive = False
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.keep_alive = False
        self.complete = False
        self.error: UpstreamError | None = None
        self.body: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.wait_until = 0.0
        self.got_bytes = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.alive = True

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamBroken(f"the upstream's answer is not HTTP ({e})"))
            if self.transport is not None:
                self.transport.close()
            return
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self.head_done and not self.complete and exc is None and not any(
                k in (b"content-length", b"transfer-encoding") for k, _ in self.headers):
            self.complete = True  # a body that ends where the connection does
            self._wake()
        if not self.complete:
            self._fail(UpstreamBroken("the upstream closed the connection"
                                      + (f" ({type(exc).__name__})" if exc else "")))
        self.pool._forget(self)
        # the parser and the transport point back at this protocol: without these cycles
        # a closed connection (and the body it buffered) is freed as soon as its response
        # is, not at the next full collection (which the guard's workers make rare)
        self.parser = self.transport = None  # type: ignore[assignment]

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # (not known once complete)
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def take(self, n: int) -> bytes:
        """The first ``n`` bytes of the body (it holds more)."""
        out, size = [], 0
        while size < n:
            part = self.body[0]
            if size + len(part) <= n:
                out.append(self.body.pop(0))
                size += len(part)
            else:
                out.append(part[:n - size])
                self.body[0] = part[n - size:]
                size = n
        self.buffered -= size
        return b"".join(out)

    # -- waiting
    def _fail(self, err: UpstreamError) -> None:
        if self.error is None:
            self.error = err
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until something happens; the pool's watchdog ends a wait longer than
        ``timeout`` (one timer for the pool, not one per wait)."""
        loop = asyncio.get_running_loop()
        self.waiter = w = loop.create_future()
        self.wait_until = loop.time() + timeout
        self.pool._watch(self)
        try:
            await w
        finally:
            self.waiter = None

    def expire(self, now: float) -> bool:
        """End a wait that ran past its deadline; True when there is none any more."""
        w = self.waiter
        if w is None or w.done():
            return True
        if now >= self.wait_until:
            w.set_exception(UpstreamTimeout("the upstream sent nothing in time"))
            return True
        return False


class UpstreamResponse:
    """A response being read; see the module doc."""

    def __init__(self, conn: _Conn, timeout: float) -> None:
        self._conn: _Conn | None = conn
        self.status = conn.status
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in conn.headers}
        self._timeout = timeout
        self.waited = False  # the last read had to wait (the event loop ran meanwhile)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    async def read(self) -> bytes:
        """What arrived since the last call (waiting for something); b"" at the end."""
        c = self._conn
        if c is None:
            return b""
        self.waited = not c.body
        while not c.body:
            if c.complete:
                self._release()
                return b""
            if c.error is not None:
                raise c.error
            await c.wait(self._timeout)
        if c.buffered <= READ_MAX:
            data = c.body[0] if len(c.body) == 1 else b"".join(c.body)
            c.body.clear()
            c.buffered = 0
        else:
            data = c.take(READ_MAX)
        if c.paused and c.buffered <= _HIGH_WATER // 2 and c.transport is not None:
            c.paused = False
            c.transport.resume_reading()
        return data

    async def read_all(self, limit: int) -> bytes:
        """The body, up to ``limit`` bytes (the rest is not read; the connection closed)."""
        out = bytearray()
        while len(out) < limit and (part := await self.read()):
            out += part
        if self._conn is not None:
            self.close()
        return bytes(out[:limit])

    def _release(self) -> None:
        c, self._conn = self._conn, None
        if c is not None:
            c.pool._release(c)
            c.pool._slots.release()

    def close(self) -> None:
        """Stop reading: a response not read to its end closes its connection."""
        c, self._conn = self._conn, None
        if c is None:
            return
        if c.complete and c.error is None and not c.body:
            c.pool._release(c)
        else:
            c.pool._drop(c)
        c.pool._slots.release()

    async def aclose(self) -> None:
        self.close()


class StreamPool:
    """Keep-alive connections to one upstream (``base``: ``http[s]://host:port/path``)."""

    def __init__(self, base: str, *, timeout: float, connect_timeout: float,
                 max_connections: int = 1024, max_idle: int = 64) -> None:
        u = urlsplit(base)
        self.base_path = u.path.rstrip("/")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() \
            if u.scheme == "https" else None
        self.authority = u.netloc.rsplit("@", 1)[-1].encode("latin-1")
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.max_idle = max_idle
        self._idle: deque[_Conn] = deque()
        self._all: set[_Conn] = set()
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False
        self._waiting: set[_Conn] = set()
        self._watchdog: asyncio.TimerHandle | None = None
        self._tick = min(1.0, timeout / 4, connect_timeout / 4)

    def _watch(self, conn: _Conn) -> None:
        self._waiting.add(conn)
        if self._watchdog is None:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_later(self._tick, self._check_waits, loop)

    def _check_waits(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self._waiting = {c for c in self._waiting if not c.expire(now)}
        self._watchdog = loop.call_later(self._tick, self._check_waits, loop) \
            if self._waiting else None

    @property
    def open_connections(self) -> int:
        return len(self._all)

    async def _connect(self) -> _Conn:
        try:
            conn = await asyncio.wait_for(self._open(), self.connect_timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"no connection to {self.host}:{self.port} within "
                                  f"{self.connect_timeout:g} s") from None
        except OSError as e:
            raise UpstreamUnreachable(f"cannot connect to {self.host}:{self.port} "
                                 f"({e.strerror or type(e).__name__})") from None
        self._all.add(conn)
        return conn

    async def _open(self) -> _Conn:
        """A new connection whose receive buffer is fixed before it connects (so the
        window it offers fits it; see :mod:`degen.guard.sockets`)."""
        loop = asyncio.get_running_loop()
        error: OSError = OSError(f"no address for {self.host}")
        for family, kind, proto, _, addr in await loop.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
                await loop.sock_connect(sock, addr)
            except OSError as e:
                sock.close()
                error = e
                continue
            except BaseException:  # cancelled (the connect timeout): nothing left open
                sock.close()
                raise
            _, conn = await loop.create_connection(
                lambda: _Conn(self), sock=sock, ssl=self.ssl,
                server_hostname=self.host if self.ssl else None)
            return conn
        raise error

    def _request(self, method: str, path: str, body: bytes,
                 headers: dict[str, str]) -> bytes:
        lines = [f"{method} {self.base_path}{path} HTTP/1.1".encode("latin-1"),
                 b"host: " + self.authority, b"content-length: %d" % len(body)]
        lines += [f"{k}: {v}".encode("latin-1") for k, v in headers.items()]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        """Send a POST to ``base + path``; the response once its head is in."""
        raw = self._request("POST", path, body, headers)
        await self._slots.acquire()  # held until the response is closed or read out
        try:
            for attempt in (0, 1):
                conn = None
                while self._idle:
                    c = self._idle.pop()
                    if c.alive:
                        conn = c
                        break
                reused = conn is not None
                if conn is None:
                    conn = await self._connect()
                conn._reset()
                assert conn.transport is not None
                conn.transport.write(raw)
                try:
                    while not conn.head_done:
                        if conn.error is not None:
                            raise conn.error
                        await conn.wait(self.timeout)
                except UpstreamBroken:
                    self._drop(conn)
                    if reused and attempt == 0 and not conn.got_bytes:
                        continue  # a keep-alive connection the server had closed: retry
                    raise
                except BaseException:
                    self._drop(conn)
                    raise
                return UpstreamResponse(conn, self.timeout)
        except BaseException:
            self._slots.release()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop(self, conn: _Conn) -> None:
        conn.alive = False
        if conn.transport is not None:
            conn.transport.close()

    def _release(self, conn: _Conn) -> None:
        if (conn.alive and not self._closed and conn.keep_alive
                and len(self._idle) < self.max_idle):
            self._idle.append(conn)
        else:
            self._drop(conn)

    def _forget(self, conn: _Conn) -> None:
        self._all.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    async def aclose(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for c in list(self._all):
            self._drop(c)
        self._idle.clear()


def pool_for(base: str, config: Any) -> StreamPool:
    """A pool for ``base`` with the guard's timeouts and connection limit."""
    return StreamPool(base, timeout=config.timeout, connect_timeout=config.connect_timeout,
                      max_connections=config.max_connections)
