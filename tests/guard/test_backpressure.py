"""A client that stops reading holds a bounded amount of its stream in the guard.

The upstream here streams a long, good answer as fast as its socket takes it (its own
send buffer fixed small, so what it has written is what left it); the client reads 16 KiB
through a 4 KiB receive buffer and stops. Back-pressure must reach the upstream (its
writes block) with at most a couple of MiB between them: the guard's kernel buffers
toward both sides are fixed (:mod:`degen.guard.sockets`), its own buffer stops at
``_HIGH_WATER``. Before the buffers were fixed, Linux grew them as it liked, and the
guard took about 4 MiB of such a stream (measured on loopback: 2.6 MiB read and judged,
1.5 MiB more in its receive queue) before the upstream blocked.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

from degen.testing.scripted import prose_words

BOUND = 2 << 20


class FastUpstream:
    """An OpenAI-compatible upstream in its own thread that streams an endless answer as
    fast as the socket takes it; ``written`` counts what left it."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(5)

    async def _serve(self) -> None:
        self.server = await asyncio.start_server(self._handle, sock=self.sock)

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                   32 << 10)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET"):  # the guard's health check
                body = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                return
            n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(n)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            for word in prose_words(3):
                event = {"id": "x", "object": "chat.completion.chunk", "model": "m",
                         "choices": [{"index": 0, "delta": {"content": word + " "},
                                      "finish_reason": None}]}
                data = b"data: %s\n\n" % json.dumps(event).encode()
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
                self.written += len(data)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.closed.set()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_a_client_that_stops_reading_stops_its_upstream_within_a_bound(make_guard) -> None:
    up = FastUpstream()
    try:
        g = make_guard(up.base_url)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", g.port))
        body = json.dumps({"model": "m", "stream": True, "max_tokens": 10**6,
                           "messages": [{"role": "user", "content": "a long story"}]})
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                       b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                       % (len(body), body.encode()))
        got = 0
        while got < 16 << 10:
            got += len(client.recv(4096))
        # then it stops reading: wait until the upstream's writes have stopped
        last, still, deadline = -1, 0.0, time.monotonic() + 30
        while still < 1.0 and time.monotonic() < deadline:
            time.sleep(0.1)
            still = still + 0.1 if up.written == last else 0.0
            last = up.written
        assert still >= 1.0, f"the upstream never blocked ({up.written} bytes written)"
        assert 16 << 10 < up.written < BOUND, up.written
        client.close()  # and the guard lets the upstream go
        assert up.closed.wait(10)
    finally:
        up.stop()
