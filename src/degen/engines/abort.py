"""Cancelling an HTTP request without waiting on the server.

A blocking read from a server that stalls (a long prefill, a busy GPU, a hung
connection) only returns when the server sends something, so a request whose cancel
is checked between chunks is held as long as the server likes, with its thread and
its slot. Here the cancelling side closes the connection instead: the socket is shut
down, the blocked read (or write) fails at once, and the server sees the client gone
(vLLM and llama.cpp then abort the generation).

- :func:`tracking_backend` is an httpcore network backend whose streams note, on every
  read and write, the socket in use in the :class:`Slot` of the request the calling
  thread is making (:meth:`Aborter.making`), pooled keep-alive connections included;
  :func:`abortable_transport` puts it under an httpx client.
- :class:`Aborter` is one daemon thread that watches the cancel events of the
  requests in flight (every :data:`POLL_S` seconds, only while there are any) and
  shuts down the socket of a cancelled one.

A request that reuses a pooled connection notes its socket on its first write, so
there is no moment in which a cancel has nothing to close. The slot forgets its socket
when the request ends. Closing a connection (the engine closed while requests are in
flight, as on Ctrl-C) shuts its socket down first, which a bare close does not: the
thread blocked reading it wakes up.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any

POLL_S = 0.02  # how often the aborter looks at the cancel events

_current = threading.local()  # .slot: the Slot of the request this thread is making


class Slot:
    """One request's connection, as far as cancelling goes."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel
        self._sock: socket.socket | None = None
        self._done = False
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket | None) -> None:
        """The socket the request is reading or writing now."""
        if sock is None or sock is self._sock:
            return
        with self._lock:
            if self._done:
                return
            self._sock = sock
            if self.cancel.is_set():
                self._kill()

    def abort(self) -> None:
        """Shut the request's socket down (the blocked read or write fails)."""
        with self._lock:
            if not self._done:
                self._kill()

    def close(self) -> None:
        """The request is over: a later cancel touches nothing."""
        with self._lock:
            self._done = True
            self._sock = None

    def _kill(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)


class _Stream:
    """An httpcore network stream that notes its socket in the current slot."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._sock = inner.get_extra_info("socket")

    def _note(self) -> None:
        slot = getattr(_current, "slot", None)
        if slot is not None:
            slot.attach(self._sock)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._note()
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._note()
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        # shut down before closing: a thread blocked reading this socket (a request
        # of another thread, when the engine is closed under it) wakes up at once;
        # a bare close would leave it blocked until the server sends something
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> _Stream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def tracking_backend() -> Any:
    """An httpcore network backend whose streams note their sockets (see the module
    doc)."""
    import httpcore

    class TrackingBackend(httpcore.NetworkBackend):
        def __init__(self) -> None:
            self._inner = httpcore.SyncBackend()

        def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                        local_address: str | None = None,
                        socket_options: Iterable[Any] | None = None) -> Any:
            return _Stream(self._inner.connect_tcp(host, port, timeout, local_address,
                                                   socket_options))

        def connect_unix_socket(self, path: str, timeout: float | None = None,
                                socket_options: Iterable[Any] | None = None) -> Any:
            return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options))

        def sleep(self, seconds: float) -> None:
            self._inner.sleep(seconds)

    return TrackingBackend()


def abortable_transport(limits: Any) -> Any:
    """An ``httpx.HTTPTransport`` (no proxy) whose connections a :class:`Slot` can
    close; a plain one if this httpx builds its pool otherwise (then a cancel waits
    for the server's next bytes, as before)."""
    import httpcore
    import httpx

    transport = httpx.HTTPTransport(limits=limits)
    pool = getattr(transport, "_pool", None)
    if isinstance(pool, httpcore.ConnectionPool):
        transport._pool = httpcore.ConnectionPool(  # the same pool, tracking its sockets
            ssl_context=pool._ssl_context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry, network_backend=tracking_backend())
    return transport


class Aborter:
    """Watches the cancel events of the requests in flight and closes the connection
    of a cancelled one. One per engine; its thread runs only while requests are in
    flight."""

    def __init__(self) -> None:
        self._slots: set[Slot] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def making(self, cancel: threading.Event | None) -> Iterator[Slot | None]:
        """The block makes one request (in this thread) that ``cancel`` may cancel."""
        if cancel is None:
            yield None
            return
        slot = Slot(cancel)
        with self._cond:
            self._slots.add(slot)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="degen-abort",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        previous = getattr(_current, "slot", None)
        _current.slot = slot
        try:
            yield slot
        finally:
            _current.slot = previous
            slot.close()
            with self._cond:
                self._slots.discard(slot)

    def _watch(self) -> None:
        while True:
            with self._cond:
                while not self._slots:
                    if not self._cond.wait(timeout=5.0) and not self._slots:
                        self._thread = None  # idle: a new request starts another
                        return
                slots = list(self._slots)
            for slot in slots:
                if slot.cancel.is_set():
                    slot.abort()
                    with self._cond:
                        self._slots.discard(slot)
            with self._cond:
                self._cond.wait(timeout=POLL_S)
