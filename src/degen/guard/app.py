"""The guard's ASGI app (Starlette): :func:`create_app`.

Routes:

- ``POST /v1/chat/completions``, ``POST /v1/completions``: guarded. The request gets
  the configured defaults, overrides and the max_tokens cap and always goes upstream
  as a stream, asking for the sampled tokens' log-probabilities when the client did
  not (they are taken out of its answer; a server that refuses them with 400 gets the
  request again without, and is not asked again for that model); each choice's text
  is watched (:mod:`degen.guard.exchange`); a cut closes the upstream connection,
  which makes vLLM and llama.cpp abort the request.
- ``GET /v1/models`` and any other ``/v1/...`` path: relayed as they are (buffered,
  not watched).
- ``GET /health``: the guard is up (does not call the upstream).
- ``GET /metrics``: Prometheus text (:mod:`degen.guard.metrics`).

Every error is OpenAI-shaped, ``{"error": {"message", "type", "code", "param"}}``: the
upstream's status and message when it answered, 502 when it could not be reached or
broke off, 504 when it sent nothing for ``timeout`` seconds; 400, 401 and 413 for
requests the guard refuses. A client that leaves has its upstream request closed at
once (the disconnect is watched while waiting on the upstream, not only when a chunk
is written). Authorization headers and, unless ``log_content``, prompts and outputs
are never logged.
"""

from __future__ import annotations

import contextlib
import copy
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import anyio
import anyio.lowlevel
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from degen.engines.openai import SSEData, logprob_fields
from degen.guard.config import GuardConfig
from degen.guard.exchange import CHAT, COMPLETIONS, Exchange
from degen.guard.metrics import CONTENT_TYPE, GuardMetrics
from degen.records import CUT_REASONS as STOPPED_EARLY

log = logging.getLogger("degen.guard")

_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_DONE = b"data: [DONE]\n\n"
_ERROR_BODY_LIMIT = 64 * 1024
_LOGPROB_KEYS = ("logprobs", "top_logprobs")

try:  # faster (de)serialization of the chunks the guard changes, when installed
    import orjson

    def _loads(data: str) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:  # NaN or Infinity, which Python's json writes
            return json.loads(data)

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj).encode()


def error_body(message: str, type_: str, code: Any, param: Any = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


def _type_for(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "upstream_error"


def upstream_error(status: int, raw: bytes) -> dict[str, Any]:
    """The upstream's error answer, OpenAI-shaped (message, type and code kept when it
    gave them: OpenAI/llama.cpp ``{"error": {...}}``, vLLM's flat object, FastAPI's
    ``detail``)."""
    message: Any = None
    type_ = code = param = None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail") or err.get("msg")
            type_, code, param = err.get("type"), err.get("code"), err.get("param")
        elif isinstance(err, str):
            message = err
    if message is not None and not isinstance(message, str):
        message = json.dumps(message)[:1000]
    if not message:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = f"HTTP {status}"
        message = raw.decode("utf-8", "replace").strip()[:1000] or phrase
    return error_body(message, type_ or _type_for(status), code if code is not None else status,
                      param)


class _Reject(Exception):
    """A request the guard refuses before anything goes upstream."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(error_body(str(self), _type_for(self.status), self.code),
                            status_code=self.status, headers=headers)


async def _sse_payloads(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The ``data:`` payloads of a server-sent event stream (see :class:`SSEData`)."""
    events = SSEData()
    async for line in lines:
        if (payload := events.feed(line)) is not None:
            yield payload
    if (payload := events.end()) is not None:
        yield payload


async def _read_limited(resp: httpx.Response, limit: int) -> bytes:
    buf = bytearray()
    async for part in resp.aiter_bytes():
        buf += part
        if len(buf) >= limit:
            break
    return bytes(buf[:limit])


class Guard:
    """The guard's shared state and its endpoints. One per app; see :func:`create_app`."""

    def __init__(self, config: GuardConfig, transport: httpx.AsyncBaseTransport | None = None
                 ) -> None:
        self.config = config
        self.metrics = GuardMetrics()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        # models whose upstream refused the log-probabilities the guard asked for
        self.no_logprobs: set[str] = set()

    @property
    def client(self) -> httpx.AsyncClient:
        """The upstream client (made on first use, inside the server's event loop)."""
        if self._client is None:
            c = self.config
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=httpx.Timeout(c.timeout, connect=c.connect_timeout),
                limits=httpx.Limits(max_connections=c.max_connections,
                                    max_keepalive_connections=min(64, c.max_connections)),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------------ helpers
    def _check_key(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 key.encode()):
            raise _Reject(401, "missing or wrong API key: send the guard's key as "
                          "'Authorization: Bearer <key>'", "invalid_api_key")

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                raise _Reject(400, "malformed Content-Length header", "bad_request") from None
            if too_big:
                raise _Reject(413, f"request body over {limit} bytes (the guard's --max-body)",
                              "request_too_large")
        buf = bytearray()
        async for part in request.stream():
            buf += part
            if len(buf) > limit:
                raise _Reject(413, f"request body over {limit} bytes (the guard's --max-body)",
                              "request_too_large")
        return bytes(buf)

    def upstream_headers(self, request: Request, json_body: bool = True) -> dict[str, str]:
        """Authorization (the client's, or ``upstream_key`` in its place) and content type:
        nothing else of the client's headers goes upstream."""
        headers = {"accept": "application/json, text/event-stream"}
        if json_body:
            headers["content-type"] = "application/json"
        if self.config.upstream_key:
            headers["authorization"] = f"Bearer {self.config.upstream_key}"
        elif request.headers.get("authorization"):
            headers["authorization"] = request.headers["authorization"]
        return headers

    def prepare(self, endpoint: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The upstream body for ``body``, and the max_tokens it carries: defaults where
        the client sent nothing, the system prompt, overrides, the cap, and a stream."""
        cfg = self.config
        out = dict(body)
        for k, v in cfg.defaults.items():
            if k not in out:
                out[k] = copy.deepcopy(v)
        msgs = out.get("messages")
        if cfg.system and endpoint == CHAT and isinstance(msgs, list) and not any(
                isinstance(m, dict) and m.get("role") in ("system", "developer") for m in msgs):
            out["messages"] = [{"role": "system", "content": cfg.system}, *msgs]
        for k, v in cfg.overrides.items():
            out[k] = copy.deepcopy(v)
        cap = cfg.max_tokens_cap
        sent = [k for k in ("max_tokens", "max_completion_tokens") if out.get(k) is not None]
        for k in sent:
            v = out[k]
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int):
                raise _Reject(400, f"{k} must be an integer, got {v!r}", "invalid_value")
            out[k] = min(v, cap)
        if not sent:
            out["max_tokens"] = cap
        limit = min(out[k] for k in sent) if sent else cap
        out["stream"] = True
        opts = out.get("stream_options")
        out["stream_options"] = {**(opts if isinstance(opts, dict) else {}),
                                 "include_usage": True}
        return out, limit

    def ask_logprobs(self, endpoint: str, out: dict[str, Any]) -> bool:
        """Ask the upstream for the sampled tokens' log-probabilities in ``out`` (the
        upstream body) when the request does not already ask for them. True when the
        guard added them (they must then be taken out of the client's answer).

        Not asked: with ``logprobs`` off, for a model whose upstream refused them, or
        for chat requests with tools (llama.cpp refuses logprobs with tools when
        streaming)."""
        if not self.config.logprobs:
            return False
        chat = endpoint == CHAT
        asked = out.get("logprobs")
        if (asked if chat else asked is not None and asked is not False):
            return False  # the client's own: relayed untouched
        if chat and out.get("tools"):
            return False
        if str(out.get("model")) in self.no_logprobs:
            return False
        out.update(logprob_fields(chat))
        return True

    # ------------------------------------------------------------------ endpoints
    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics_page(self, request: Request) -> Response:
        try:
            self._check_key(request)
        except _Reject as r:
            self.metrics.rejected.inc(status=str(r.status))
            return r.response()
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def generate(self, request: Request) -> Response:
        endpoint = request.url.path.rstrip("/")
        started = time.monotonic()
        try:
            self._check_key(request)
            raw = await self._read_body(request)
            try:
                body = json.loads(raw)
            except ValueError:
                raise _Reject(400, "the request body is not valid JSON", "invalid_json") from None
            if not isinstance(body, dict):
                raise _Reject(400, "the request body must be a JSON object", "invalid_json")
            up_body, limit = self.prepare(endpoint, body)
        except _Reject as r:
            self.metrics.rejected.inc(status=str(r.status))
            self.metrics.requests.inc(endpoint=endpoint, stream="unknown")
            return r.response()
        strip = self.ask_logprobs(endpoint, up_body)
        cfg = self.config
        ex = Exchange(endpoint, body, up_body, limit, cut_kinds=cfg.cut_kinds,
                      cut_reason=cfg.cut_reason, strip_logprobs=strip)
        ex.started = started
        self.metrics.requests.inc(endpoint=endpoint, stream=str(ex.stream).lower())
        if self.config.log_content:
            log.info("prompt %s: %s", endpoint, ex.prompt[:4000])
        return _Relay(self, ex, self.config.upstream + endpoint.removeprefix("/v1"),
                      up_body, self.upstream_headers(request))

    async def passthrough(self, request: Request) -> Response:
        """Any other ``/v1`` request, relayed as it is."""
        path = request.url.path
        self.metrics.requests.inc(endpoint="/v1/models" if path.startswith("/v1/models")
                                  else "other", stream="false")
        try:
            self._check_key(request)
            body = await self._read_body(request) if request.method not in ("GET", "HEAD") \
                else b""
        except _Reject as r:
            self.metrics.rejected.inc(status=str(r.status))
            return r.response()
        url = self.config.upstream + path.removeprefix("/v1")
        if request.url.query:
            url += "?" + request.url.query
        headers = self.upstream_headers(request, json_body=False)
        if request.headers.get("content-type"):
            headers["content-type"] = request.headers["content-type"]
        try:
            r = await self.client.request(request.method, url, content=body or None,
                                          headers=headers)
        except httpx.TimeoutException as e:
            return self._gateway(504, e)
        except httpx.TransportError as e:
            return self._gateway(502, e)
        if r.status_code >= 400:
            self.metrics.upstream_errors.inc(status=str(r.status_code))
            return JSONResponse(upstream_error(r.status_code, r.content[:_ERROR_BODY_LIMIT]),
                                status_code=r.status_code)
        return Response(r.content, status_code=r.status_code,
                        media_type=r.headers.get("content-type"))

    def _gateway(self, status: int, e: Exception) -> JSONResponse:
        self.metrics.upstream_errors.inc(status=str(status))
        return JSONResponse(self.gateway_error(status, e), status_code=status)

    def gateway_error(self, status: int, e: BaseException | str) -> dict[str, Any]:
        what = e if isinstance(e, str) else type(e).__name__
        if status == 504:
            msg = (f"the upstream at {self.config.upstream} sent nothing for "
                   f"{self.config.timeout:g} s ({what})")
            return error_body(msg, "upstream_error", "upstream_timeout")
        msg = f"the upstream at {self.config.upstream} failed ({what})"
        return error_body(msg, "upstream_error", "upstream_unreachable")


class _Relay(Response):
    """Runs one guarded exchange as a raw ASGI response, watching for the client leaving
    the whole time (so an upstream still thinking is closed too)."""

    def __init__(self, guard: Guard, ex: Exchange, url: str, body: dict[str, Any],
                 headers: dict[str, str]) -> None:
        self.guard, self.ex, self.url, self.body, self.headers_up = guard, ex, url, body, headers
        self.status = 0  # what the client got
        self.complete = False
        self.error: str | None = None
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        m = self.guard.metrics
        m.in_flight.inc()
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
        finally:
            m.in_flight.dec()
            self._account(left)

    # ------------------------------------------------------------------ the exchange
    async def run(self, send: Send) -> None:
        g, ex = self.guard, self.ex
        resp: httpx.Response | None = None
        try:
            try:
                resp = await self._send()
                if resp.status_code in (400, 422) and ex.strip_logprobs:
                    resp = await self._without_logprobs(resp)
            except httpx.TimeoutException as e:
                return await self._fail(send, 504, e)
            except httpx.TransportError as e:
                return await self._fail(send, 502, e)
            if resp.status_code >= 400:
                raw = await _read_limited(resp, _ERROR_BODY_LIMIT)
                g.metrics.upstream_errors.inc(status=str(resp.status_code))
                self.error = f"upstream {resp.status_code}"
                return await self._json(send, resp.status_code,
                                        upstream_error(resp.status_code, raw))
            if "text/event-stream" not in resp.headers.get("content-type", ""):
                return await self._not_streamed(send, resp)
            if ex.stream:
                await self._relay(send, resp)
            else:
                await self._collect(send, resp)
        finally:
            if resp is not None:
                with anyio.CancelScope(shield=True):
                    await resp.aclose()

    async def _send(self) -> httpx.Response:
        g = self.guard
        req = g.client.build_request("POST", self.url, json=self.body, headers=self.headers_up)
        return await g.client.send(req, stream=True)

    async def _without_logprobs(self, refused: httpx.Response) -> httpx.Response:
        """The upstream refused the request the guard added log-probabilities to: send
        it again without them. If that one goes through, the guard stops asking for
        this model (and says so once)."""
        raw = await _read_limited(refused, _ERROR_BODY_LIMIT)
        await refused.aclose()
        self.body = {k: v for k, v in self.body.items() if k not in _LOGPROB_KEYS}
        self.ex.strip_logprobs = False
        resp = await self._send()
        if resp.status_code < 400:
            model = str(self.body.get("model"))
            if model not in self.guard.no_logprobs:
                self.guard.no_logprobs.add(model)
                msg = upstream_error(refused.status_code, raw)["error"]["message"]
                log.warning("the upstream refused logprobs for model %s (HTTP %d: %s); "
                            "watching its text only", model, refused.status_code,
                            str(msg)[:200])
        return resp

    async def _fail(self, send: Send, status: int, e: BaseException | str) -> None:
        self.guard.metrics.upstream_errors.inc(status=str(status))
        self.error = f"upstream {'timeout' if status == 504 else 'failure'}"
        await self._json(send, status, self.guard.gateway_error(status, e))

    async def _json(self, send: Send, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.status = status
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        self.complete = True
        await send({"type": "http.response.body", "body": data, "more_body": False})

    async def _not_streamed(self, send: Send, resp: httpx.Response) -> None:
        """An upstream that answered a stream request with one JSON object: relayed as
        is (nothing to watch while it was generated)."""
        data = await resp.aread()
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
        await self._json(send, resp.status_code, obj)

    async def _chunks(self, resp: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
        async for payload in _sse_payloads(resp.aiter_lines()):
            if payload == "[DONE]":
                yield payload, None
                return
            try:
                yield payload, _loads(payload)
            except ValueError:
                yield payload, ValueError(f"malformed event from the upstream: {payload[:80]!r}")

    async def _relay(self, send: Send, resp: httpx.Response) -> None:
        ex, m = self.ex, self.guard.metrics
        self.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})

        async def out(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})
            # let the loop run between chunks: a burst of buffered chunks from the
            # upstream then cannot starve other streams or hide a client that left
            await anyio.lowlevel.checkpoint()

        try:
            async with contextlib.aclosing(self._chunks(resp)) as chunks:
                await self._relay_chunks(chunks, resp, out)
            if not ex.finished_stream and self.error is None:
                raise _Broken("the upstream stream ended before the generation finished")
        except httpx.TimeoutException as e:
            m.upstream_errors.inc(status="504")
            self.error = "upstream timeout mid-stream"
            await out(b"data: " + json.dumps(self.guard.gateway_error(504, e)).encode()
                      + b"\n\n")
        except (httpx.TransportError, _Broken) as e:
            m.upstream_errors.inc(status="502")
            self.error = "upstream broke off"
            await out(b"data: " + json.dumps(self.guard.gateway_error(502, str(e) if isinstance(
                e, _Broken) else e)).encode() + b"\n\n")
        self.complete = True
        await send({"type": "http.response.body",
                    "body": _DONE if self.error is None else b"", "more_body": False})

    async def _relay_chunks(self, chunks: AsyncIterator[tuple[str, Any]], resp: httpx.Response,
                            out: Any) -> None:
        ex, m = self.ex, self.guard.metrics
        usage_sent = False
        async for payload, chunk in chunks:
            if chunk is None:  # [DONE]
                ex.finished_stream = True
                break
            if isinstance(chunk, ValueError) or not isinstance(chunk, dict):
                raise _Broken(str(chunk))
            if "error" in chunk and not chunk.get("choices"):
                m.upstream_errors.inc(status="stream")
                self.error = "upstream error mid-stream"
                await out(b"data: " + payload.encode() + b"\n\n")
                break
            changed, cut_now = ex.process(chunk)
            if not chunk.get("choices") and chunk.get("usage"):
                if not ex.client_usage:
                    continue  # the usage the guard asked for, not the client
                usage_sent = True
            if not changed:
                await out(b"data: " + payload.encode() + b"\n\n")
            elif chunk.get("choices") or chunk.get("usage"):
                await out(b"data: " + _dumps(chunk) + b"\n\n")
            if cut_now:
                if ex.all_done():
                    await resp.aclose()  # the upstream aborts the request now
                for i in cut_now:
                    await out(b"data: " + _dumps(ex.cut_chunk(i)) + b"\n\n")
                if ex.all_done():
                    ex.finished_stream = True
                    break
        else:
            if ex.all_done():  # every choice finished but no [DONE]: end it properly
                ex.finished_stream = True
        if ex.finished_stream and ex.client_usage and not usage_sent and self.error is None:
            # asked for, and the upstream did not send it (a cut, or llama-cpp-python)
            await out(b"data: " + _dumps(ex.usage_chunk()) + b"\n\n")

    async def _collect(self, send: Send, resp: httpx.Response) -> None:
        ex = self.ex
        try:
            async with contextlib.aclosing(self._chunks(resp)) as chunks:
                result = await self._collect_chunks(chunks, resp)
            if result is not None:
                status, payload = result
                return await self._json(send, status, upstream_error(status, payload.encode()))
            if not ex.finished_stream:
                raise _Broken("the upstream stream ended before the generation finished")
        except httpx.TimeoutException as e:
            return await self._fail(send, 504, e)
        except (httpx.TransportError, _Broken) as e:
            return await self._fail(send, 502, str(e) if isinstance(e, _Broken) else e)
        await self._json(send, 200, ex.response())

    async def _collect_chunks(self, chunks: AsyncIterator[tuple[str, Any]],
                              resp: httpx.Response) -> tuple[int, str] | None:
        """Reads the stream into the exchange; (status, payload) of an error event."""
        ex = self.ex
        async for payload, chunk in chunks:
            if chunk is None:
                ex.finished_stream = True
                break
            if isinstance(chunk, ValueError) or not isinstance(chunk, dict):
                raise _Broken(str(chunk))
            if "error" in chunk and not chunk.get("choices"):
                err = chunk["error"]
                status = err.get("code") if isinstance(err, dict) else None
                status = status if isinstance(status, int) and 400 <= status < 600 else 502
                self.guard.metrics.upstream_errors.inc(status=str(status))
                self.error = "upstream error mid-stream"
                return status, payload
            _, cut_now = ex.process(chunk)
            if cut_now and ex.all_done():
                await resp.aclose()
                ex.finished_stream = True
                break
        else:
            ex.finished_stream = ex.all_done()
        return None

    # ------------------------------------------------------------------ accounting
    def _account(self, left: bool) -> None:
        g, ex, m = self.guard, self.ex, self.guard.metrics
        ep = ex.endpoint
        dur = time.monotonic() - ex.started
        m.duration.observe(dur, endpoint=ep)
        if ex.first_token_at is not None:
            m.ttft.observe(ex.first_token_at - ex.started, endpoint=ep)
        if left:
            m.disconnects.inc()
        reasons = ["disconnected" if left else "error"] if (left or self.error) and \
            not ex.any_cut else ex.finish_reasons()
        for r in reasons:
            m.responses.inc(endpoint=ep, finish_reason=r)
        tokens = ex.completion_tokens
        m.completion_tokens.inc(tokens)
        for st in ex.choices.values():
            if st.watch is not None:
                for why, n in st.watch.vetoes.items():
                    m.vetoes.inc(n, reason=why)
                for kind in st.watch.findings:
                    m.detected.inc(kind=kind)
            if st.cut is None and st.finish in STOPPED_EARLY:
                m.upstream_cuts.inc(finish_reason=st.finish)
            if st.cut is not None:
                m.cuts.inc(kind=st.cut["kind"])
                m.cut_after.observe(st.tokens)
                m.tokens_saved.inc(max(0, ex.max_tokens - st.tokens))
        cut = next((st.cut for st in ex.choices.values() if st.cut is not None), None)
        log.info("%s stream=%s status=%s finish=%s tokens=%d %.2fs%s%s", ep,
                 str(ex.stream).lower(), self.status or "-", ",".join(reasons) or "-", tokens,
                 dur, f" cut={cut['kind']}@{cut['completion_tokens']}" if cut else "",
                 " client-left" if left else (f" error={self.error}" if self.error else ""))
        if g.config.log_content:
            for st in ex.choices.values():
                text = "".join(st.reasoning) + "".join(st.text)
                if text:
                    log.info("output %s[%d]: %s", ep, st.index, text[:4000])


class _Broken(Exception):
    """The upstream's stream cannot be read on."""


def create_app(config: GuardConfig, *, transport: httpx.AsyncBaseTransport | None = None
               ) -> Starlette:
    """The guard as an ASGI app (serve it with uvicorn). ``transport`` replaces the
    upstream HTTP transport (tests). The app's ``state.guard`` holds the :class:`Guard`
    (its ``metrics``, its upstream ``client``)."""
    guard = Guard(config, transport)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await guard.aclose()

    routes = [
        Route("/health", guard.health, methods=["GET"]),
        Route("/metrics", guard.metrics_page, methods=["GET"]),
        Route(CHAT, guard.generate, methods=["POST"]),
        Route(COMPLETIONS, guard.generate, methods=["POST"]),
        Route("/v1/{path:path}", guard.passthrough,
              methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.guard = guard
    return app
