"""One guarded request, run as a raw ASGI response: :class:`Relay`.

It sends the request upstream as a stream (:mod:`degen.guard.upstream`), reads what
arrives in whatever pieces the socket gives, splits it into events on bytes
(:mod:`degen.guard.sse`), and has the :class:`~degen.guard.exchange.Exchange` judge
each chunk. An event nothing changed goes to the client as the upstream's own bytes;
all the events of one read go out in one write. A cut closes the upstream connection
(the server aborts the request). With ``holdback`` the last N tokens wait in
:class:`~degen.guard.holdback.Held` so a cut can end the answer at its last clean
sentence; with ``on_degenerate="retry"`` a request cut before any of its text reached
the client is sent once more with the safer parameters, and the client gets that
answer instead. The client leaving closes the upstream request at once, even while the
upstream is still thinking.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from degen.guard.accounting import account
from degen.guard.exchange import Exchange
from degen.guard.holdback import Event, Held
from degen.guard.sse import SSEBytes
from degen.guard.upstream import (
    UpstreamBroken,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from degen.records import CUT_REASONS as STOPPED_EARLY  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from degen.guard.routing import Route
    from degen.guard.state import Guard

log = logging.getLogger("degen.guard")

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
DONE = b"data: [DONE]\n\n"
ERROR_BODY_LIMIT = 64 * 1024
LOGPROB_KEYS = ("logprobs", "top_logprobs")

try:  # fast (de)serialization of the chunks the guard reads and changes
    import orjson

    def loads(data: bytes) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:  # NaN or Infinity, which Python's json writes
            return json.loads(data)

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover - orjson is a dependency; kept for vendored installs
    loads = json.loads

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj).encode()


class Broken(Exception):
    """The upstream's stream cannot be read on."""


def parse_chunk(payload: bytes) -> dict[str, Any]:
    """One event's JSON object; :class:`Broken` when it is not one."""
    try:
        chunk = loads(payload)
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict):
        raise Broken(f"malformed event from the upstream: {payload[:80]!r}")
    return chunk


class Relay(Response):
    """See the module doc. ``body`` goes upstream to ``route``'s ``path``."""

    def __init__(self, guard: Guard, route: Route, ex: Exchange, client_body: dict[str, Any],
                 body: dict[str, Any], headers: dict[str, str], model: str) -> None:
        self.guard, self.route, self.ex = guard, route, ex
        self.client_body, self.body, self.headers_up = client_body, body, headers
        self.model = model  # the metrics' label
        self.path = ex.endpoint.removeprefix("/v1")
        self.first: Exchange | None = None  # the cut exchange a retry replaced
        self.status = 0  # what the client got
        self.complete = False
        self.error: str | None = None
        self.shutdown_cut = False
        self.retry_failed = False
        self.held: Held | None = None
        self.background = None
        self.resp: UpstreamResponse | None = None

    @property
    def config(self) -> Any:
        return self.guard.config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        g = self.guard
        g.metrics.running.inc()
        g.open_relays.add(self)
        left = False
        try:
            async with anyio.create_task_group() as tg:
                async def watch() -> None:
                    nonlocal left
                    while True:
                        msg = await receive()
                        if msg["type"] == "http.disconnect":
                            if not self.complete:
                                left = True
                                tg.cancel_scope.cancel()
                            return

                tg.start_soon(watch)
                try:
                    await self.run(send)
                finally:
                    tg.cancel_scope.cancel()
        except asyncio.CancelledError:
            if g.draining:  # the shutdown timeout ran out with this request open
                self.shutdown_cut = True
                self.error = "cut by the guard's shutdown"
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await self._end_on_shutdown(send)
            raise
        finally:
            if self.resp is not None:
                self.resp.close()
            g.open_relays.discard(self)
            g.metrics.running.dec()
            self._account(left)

    async def _end_on_shutdown(self, send: Send) -> None:
        err = {"error": {"message": "the guard is shutting down and its shutdown timeout "
                         "ran out; send the request again", "type": "upstream_error",
                         "code": "shutdown", "param": None}}
        if self.status == 200 and self.ex.stream and not self.complete:
            self.complete = True
            await send({"type": "http.response.body", "body": b"data: " + dumps(err)
                        + b"\n\n", "more_body": False})
        elif self.status == 0:
            await self._json(send, 503, err)

    # ------------------------------------------------------------------ upstream
    async def _open(self) -> UpstreamResponse:
        """Send the request; once more without log-probabilities if the upstream refuses
        the ones the guard added (it is then not asked again for this model)."""
        pool = self.route.pool
        resp = await pool.post(self.path, dumps(self.body), self.headers_up)
        if resp.status in (400, 422) and self.ex.strip_logprobs:
            refused, raw = resp.status, await resp.read_all(ERROR_BODY_LIMIT)
            self.body = {k: v for k, v in self.body.items() if k not in LOGPROB_KEYS}
            self.ex.strip_logprobs = False
            resp = await pool.post(self.path, dumps(self.body), self.headers_up)
            if resp.status < 400:
                self.guard.refused_logprobs(str(self.body.get("model")), refused, raw)
        self.resp = resp
        return resp

    def _upstream_failed(self, status: str) -> None:
        self.guard.metrics.upstream_errors.inc(upstream=self.route.label, status=status)

    async def run(self, send: Send) -> None:
        try:
            try:
                resp = await self._open()
            except UpstreamTimeout as e:
                return await self._fail(send, 504, e)
            except UpstreamBroken as e:
                if isinstance(e, UpstreamUnreachable):
                    self.guard.mark_down(self.route, e)
                return await self._fail(send, 502, e)
            if resp.status >= 400:
                raw = await resp.read_all(ERROR_BODY_LIMIT)
                self._upstream_failed(str(resp.status))
                self.error = f"upstream {resp.status}"
                return await self._json(send, resp.status, self.guard.upstream_error(
                    resp.status, raw))
            if "text/event-stream" not in resp.content_type:
                return await self._not_streamed(send, resp)
            if self.ex.stream:
                await self._stream(send, resp)
            else:
                await self._collect(send, resp)
        finally:
            if self.resp is not None:
                self.resp.close()

    async def _fail(self, send: Send, status: int, e: BaseException | str) -> None:
        self._upstream_failed(str(status))
        self.error = f"upstream {'timeout' if status == 504 else 'failure'}"
        await self._json(send, status, self.guard.gateway_error(self.route, status, e))

    async def _json(self, send: Send, status: int, obj: Any) -> None:
        data = dumps(obj)
        self.status = status
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        self.complete = True
        await send({"type": "http.response.body", "body": data, "more_body": False})

    async def _not_streamed(self, send: Send, resp: UpstreamResponse) -> None:
        """An upstream that answered a stream request with one JSON object: relayed as
        is (nothing to watch while it was generated)."""
        data = await resp.read_all(1 << 30)
        try:
            obj = json.loads(data)
        except ValueError:
            return await self._fail(send, 502, "its answer is neither a stream nor JSON")
        choices = obj.get("choices") if isinstance(obj, dict) else None
        for c in choices if isinstance(choices, list) else ():
            if isinstance(c, dict):
                st = self.ex.choice(c.get("index", 0))
                st.finish = c.get("finish_reason") or "stop"
                c["finish_reason"] = self.ex.client_reason(st)
                if self.ex.strip_logprobs and c.get("logprobs") is not None:
                    c["logprobs"] = None
        await self._json(send, resp.status, obj)

    # ------------------------------------------------------------------ retrying
    def _can_retry(self, relayed: bool) -> bool:
        """A cut request may be sent again: retry is on, it is its first answer, it has
        one choice, and none of its text has reached the client."""
        return (self.config.on_degenerate == "retry" and self.first is None
                and not self.retry_failed and self.ex.n == 1 and not relayed)

    async def _retry(self) -> UpstreamResponse | None:
        """Close the cut answer and send the request again with the safer parameters;
        the new response (None when it failed: the cut answer stands)."""
        assert self.resp is not None
        self.resp.close()
        self.first, old = self.ex, self.ex
        self.body = self.guard.retry_body(self.route, self.ex.endpoint, self.client_body)
        strip = self.guard.ask_logprobs(self.ex.endpoint, self.body)
        self.ex = self.guard.exchange(self.ex.endpoint, self.client_body, self.body,
                                      old.max_tokens, strip, self.route)
        self.ex.started = old.started
        try:
            resp = await self._open()
        except (UpstreamTimeout, UpstreamBroken):
            resp = None
        if resp is not None and (resp.status >= 400
                                 or "text/event-stream" not in resp.content_type):
            resp.close()
            resp = None
        if resp is None:  # the cut answer stands (and is not retried again)
            self.guard.metrics.retries.inc(model=self.model, outcome="error")
            self.ex = old
            self.retry_failed = True
        return resp

    # ------------------------------------------------------------------ streaming
    async def _stream(self, send: Send, resp: UpstreamResponse) -> None:
        self.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        try:
            await self._pump(send, resp)
            if not self.ex.finished_stream and self.error is None:
                raise Broken("the upstream stream ended before the generation finished")
        except (UpstreamTimeout, UpstreamBroken, Broken) as e:
            status = 504 if isinstance(e, UpstreamTimeout) else 502
            self._upstream_failed(str(status))
            self.error = "upstream timeout mid-stream" if status == 504 else "upstream broke off"
            out = bytearray()
            if self.held is not None:  # what was held was clean: it goes first
                self._out(out, self.held.release())
            out += b"data: " + dumps(self.guard.gateway_error(
                self.route, status, str(e) if isinstance(e, Broken) else e)) + b"\n\n"
            await self._write(send, out)
        self.complete = True
        await send({"type": "http.response.body",
                    "body": DONE if self.error is None else b"", "more_body": False})

    async def _write(self, send: Send, data: bytes | bytearray) -> None:
        await send({"type": "http.response.body", "body": bytes(data), "more_body": True})

    async def _pump(self, send: Send, resp: UpstreamResponse) -> None:
        """Relay ``resp`` (and a retry's) to the client until the answer ends."""
        holdback = self.config.holdback
        self.held = held = Held(holdback, dumps, self.ex.chat) if holdback else None
        relayed = False  # some generated text reached the client
        usage_sent = False
        out = bytearray()
        sse = SSEBytes()
        ex = self.ex
        while True:
            data = await resp.read()
            payloads = sse.feed(data) if data else sse.end()
            stop = not data
            for payload in payloads:
                ex.events += 1
                if payload == b"[DONE]":
                    ex.finished_stream = stop = True
                    break
                chunk = parse_chunk(payload)
                if "error" in chunk and not chunk.get("choices"):
                    self._upstream_failed("stream")
                    self.error = "upstream error mid-stream"
                    if held is not None:
                        relayed = self._out(out, held.release()) or relayed
                    out += b"data: " + payload + b"\n\n"
                    stop = True
                    break
                changed, cut_now = ex.process(chunk)
                if cut_now and self._can_retry(relayed):
                    retry = await self._retry()
                    if retry is not None:
                        resp, ex, sse, stop = retry, self.ex, SSEBytes(), False
                        if held is not None:
                            held.clear()
                        break
                usage_only = not chunk.get("choices")
                if usage_only and chunk.get("usage"):
                    if not ex.client_usage:
                        continue  # the usage the guard asked for, not the client
                    usage_sent = True
                if not changed or chunk.get("choices") or chunk.get("usage"):
                    body = payload if not changed else dumps(chunk)
                    if held is None:
                        out += b"data: " + body + b"\n\n"
                        relayed = relayed or bool(ex.parts)
                    else:
                        parts = [p for p in ex.parts if p[0] not in cut_now]
                        ev = Event(body, chunk, parts, len(parts))
                        relayed = self._out(out, held.push(ev)) or relayed
                if cut_now:
                    if ex.all_done():
                        resp.close()  # the upstream aborts the request now
                    for i in cut_now:
                        if held is not None:
                            st = ex.choices[i]
                            onset = st.finding.start_char if st.finding is not None and \
                                st.finding.start_char is not None else st.fed
                            held.trim(i, onset)
                            relayed = self._out(out, held.release()) or relayed
                        out += b"data: " + dumps(ex.cut_chunk(i)) + b"\n\n"
                    if ex.all_done():
                        ex.finished_stream = stop = True
                        break
            else:
                if stop and ex.all_done():  # every choice finished but no [DONE]
                    ex.finished_stream = True
            if stop:
                if held is not None:  # what is still held was judged clean
                    self._out(out, held.release())
                if (ex.finished_stream and ex.client_usage and not usage_sent
                        and self.error is None):
                    out += b"data: " + dumps(ex.usage_chunk()) + b"\n\n"
                if out:
                    await self._write(send, out)
                self.resp = resp
                return
            if out:
                await self._write(send, out)
                out.clear()
            if not resp.waited:  # the loop has not run since the last read: let it
                await asyncio.sleep(0)  # (a fast upstream cannot starve the others)

    def _out(self, out: bytearray, events: list[Event]) -> bool:
        """Append released events; True when one carried generated text."""
        text = False
        for ev in events:
            out += b"data: " + ev.data + b"\n\n"
            text = text or bool(ev.parts)
        return text

    # ------------------------------------------------------------------ whole answers
    async def _collect(self, send: Send, resp: UpstreamResponse) -> None:
        while True:
            try:
                result = await self._read_whole(resp)
                if result is not None:
                    status, payload = result
                    return await self._json(send, status,
                                            self.guard.upstream_error(status, payload))
                if not self.ex.finished_stream:
                    raise Broken("the upstream stream ended before the generation finished")
            except UpstreamTimeout as e:
                return await self._fail(send, 504, e)
            except (UpstreamBroken, Broken) as e:
                return await self._fail(send, 502, str(e) if isinstance(e, Broken) else e)
            if self.ex.any_cut and self._can_retry(False):
                retry = await self._retry()
                if retry is not None:
                    resp = retry
                    continue
            break
        if self.config.holdback:
            self.ex.trim_cuts()
        answer = self.ex.response()
        if self.first is not None and self.first is not self.ex:  # retried: say why
            answer["degen_retried"] = next((st.cut for st in self.first.choices.values()
                                            if st.cut is not None), None)
        await self._json(send, 200, answer)

    async def _read_whole(self, resp: UpstreamResponse) -> tuple[int, bytes] | None:
        """Reads the stream into the exchange; (status, payload) of an error event."""
        ex = self.ex
        sse = SSEBytes()
        while True:
            data = await resp.read()
            for payload in sse.feed(data) if data else sse.end():
                ex.events += 1
                if payload == b"[DONE]":
                    ex.finished_stream = True
                    return None
                chunk = parse_chunk(payload)
                if "error" in chunk and not chunk.get("choices"):
                    err = chunk["error"]
                    status = err.get("code") if isinstance(err, dict) else None
                    status = status if isinstance(status, int) and 400 <= status < 600 else 502
                    self._upstream_failed(str(status))
                    self.error = "upstream error mid-stream"
                    return status, payload
                _, cut_now = ex.process(chunk)
                if cut_now and ex.all_done():
                    resp.close()
                    ex.finished_stream = True
                    return None
            if not data:
                ex.finished_stream = ex.all_done()
                return None

    # ------------------------------------------------------------------ accounting
    def _account(self, left: bool) -> None:
        account(self, left)
