"""A scripted OpenAI-compatible upstream fast enough to measure the guard's ceiling.

Raw asyncio (uvloop when installed) HTTP/1.1 with keep-alive: every POST gets a chat
stream in vLLM's shape, one token a chunk, each chunk written on its own (as vLLM writes
a token per engine step), built ahead of time so serving costs one ``write`` per chunk.
The text is :func:`degen.testing.scripted.prose` (long, good, never repeating) cut in
word pieces of up to five letters (about a token each), so the guard's watch reads every
word and never cuts. A request that asks for
log-probabilities gets one per chunk. Each chunk carries ``"ts"``: its send time in
``time.time_ns()`` (for latency; one field that the guard relays like any other).

Options: ``--chunks`` per answer, ``--interval`` seconds between chunks of a stream
(0: as fast as the socket takes them; > 0: a decode step, for measuring at a given load),
``--long`` another answer length built ahead of time. A request may ask for its own
pacing and length in its body (the guard relays fields it does not know):
``"fast_interval": 0`` and ``"fast_chunks": N`` (``--chunks`` or ``--long``), and name a
``"fast_tag"`` its figures are counted under.

``GET /stats``: the connections open now (its own included) and the requests served;
``streaming``, the answers being written now; ``blocked``, those of them waiting for
their reader to take what was written (back-pressure: the guard stopped reading);
``sent``, the bytes they have written so far, of which ``unsent`` still wait in this
process (the transport's buffer); the same per tag under ``tags``.

    python -m benchmarks.fast_upstream --port 9000 [--chunks 1000] [--interval 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

from degen.testing.scripted import _PIECE, prose


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Answers:
    """Chunk templates (with and without log-probabilities) for ``chunks`` tokens."""

    def __init__(self, chunks: int) -> None:
        # word pieces of up to five letters, a token each (as a tokenizer would cut them)
        words = _PIECE.findall(" ".join(prose(chunks)))[:chunks]
        self.chunks = chunks
        self.plain: list[tuple[bytes, bytes]] = []
        self.logprobs: list[tuple[bytes, bytes]] = []
        head = {"id": "chatcmpl-fast", "object": "chat.completion.chunk", "created": 1,
                "model": "fast"}
        for i, w in enumerate(words):
            delta = {"role": "assistant", "content": w} if i == 0 else {"content": w}
            for lp, out in ((None, self.plain),
                            ({"content": [{"token": w, "logprob": -0.5, "bytes": None,
                                           "top_logprobs": []}]}, self.logprobs)):
                obj = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": lp,
                                            "finish_reason": None}]}
                # the ts field goes last, filled in at send time
                raw = json.dumps(obj, separators=(",", ":"))[:-1] + ',"ts":'
                out.append((b"data: " + raw.encode(), b"}\n\n"))
        end = {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                    "finish_reason": "stop"}]}
        usage = {**head, "choices": [], "usage": {"prompt_tokens": 5,
                                                  "completion_tokens": chunks,
                                                  "total_tokens": chunks + 5}}
        self.tail = b"".join(_frame(b"data: " + json.dumps(o).encode() + b"\n\n")
                             for o in (end, usage)) + _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"


HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n")
MODELS = json.dumps({"object": "list", "data": [{"id": "fast", "object": "model",
                                                 "owned_by": "vllm"}]}).encode()


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length) if length else b""
    return head.split(b" ", 2)[1], body


_ASKS = re.compile(rb'"fast_(interval|chunks|tag)": ?"?([A-Za-z0-9_.-]+)')


def _counts() -> dict[str, Any]:
    return {"streaming": 0, "blocked": 0, "sent": 0, "writers": set()}


def _report(stats: dict[str, Any]) -> dict[str, Any]:
    def one(c: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in c.items() if k not in ("writers", "tags")}
        out["unsent"] = sum(w.transport.get_write_buffer_size() for w in c["writers"])
        return out

    return {**one(stats), "tags": {k: one(v) for k, v in stats["tags"].items()}}


async def serve(port: int, chunks: int, interval: float, long: int = 0) -> None:
    sizes = {n: Answers(n) for n in {chunks, long} if n}
    stats: dict[str, Any] = {"open": 0, "requests": 0, **_counts(), "tags": {}}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["open"] += 1
        try:
            while (req := await _read_request(reader)) is not None:
                path, body = req
                if path.endswith(b"/stats"):  # open connections, for leak checks
                    data = json.dumps(_report(stats)).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(data), data))
                    await writer.drain()
                    continue
                stats["requests"] += 1
                if path.endswith(b"/models") or path.endswith(b"/health"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(MODELS), MODELS))
                    await writer.drain()
                    continue
                asks = {k.decode(): v.decode() for k, v in _ASKS.findall(body)}
                answers = sizes.get(int(asks.get("chunks", chunks)), sizes[chunks])
                pace = float(asks.get("interval", interval))
                tag = stats["tags"].setdefault(asks["tag"], _counts()) \
                    if "tag" in asks else None
                lp = b'"logprobs":true' in body or b'"logprobs": true' in body
                parts = answers.logprobs if lp else answers.plain
                writer.write(HEAD)
                counted = [c for c in (stats, tag) if c is not None]
                for c in counted:
                    c["streaming"] += 1
                    c["writers"].add(writer)
                sent, flushed = len(HEAD), 0
                try:
                    for i, (a, b) in enumerate(parts):
                        frame = _frame(a + b"%d" % time.time_ns() + b)
                        writer.write(frame)
                        sent += len(frame)
                        if pace or i % 8 == 7:
                            for c in counted:
                                c["sent"] += sent - flushed
                                c["blocked"] += 1
                            flushed = sent
                            try:
                                await writer.drain()
                            finally:
                                for c in counted:
                                    c["blocked"] -= 1
                            if pace:
                                await asyncio.sleep(pace)
                            elif i % 512 == 511:  # a drain that need not wait does not
                                await asyncio.sleep(0)  # yield: let the others run
                    writer.write(answers.tail)
                    await writer.drain()
                finally:
                    for c in counted:
                        c["streaming"] -= 1
                        c["sent"] -= flushed
                        c["writers"].discard(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            stats["open"] -= 1
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--chunks", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=0.0)
    ap.add_argument("--long", type=int, default=0, help="another answer length, for "
                    "requests that ask for it (fast_chunks)")
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(serve(a.port, a.chunks, a.interval, a.long))


if __name__ == "__main__":
    main()
