"""The guard's ASGI app (Starlette): :func:`create_app`.

Routes:

- ``POST /v1/chat/completions``, ``POST /v1/completions``: guarded
  (:mod:`degen.guard.relay`). The request goes to the upstream that serves its
  ``model`` (named for it, or listing it in its ``/v1/models``; else the default one),
  with the configured defaults, overrides and the max_tokens cap, always as a stream,
  asking for the sampled tokens' log-probabilities when the client did not.
- ``GET /v1/models``: every upstream's models, merged.
- ``/v1/responses`` and any other ``/v1/...`` path: relayed as they are to the
  upstream of the body's ``model`` (buffered, **not watched**; the answer carries
  ``x-degen-guarded: false``).
- ``GET /health``: the guard is up, with each upstream's last health check (never
  calls an upstream itself); ``GET /ready``: 200 when an upstream is up and the guard
  is not shutting down, else 503 (for a load balancer or a readiness probe).
- ``GET /metrics``: Prometheus text (:mod:`degen.guard.metrics`), added up across
  workers.

Every error is OpenAI-shaped, ``{"error": {"message", "type", "code", "param"}}``: the
upstream's status and message when it answered, 502 when it could not be reached or
broke off, 504 when it sent nothing for ``timeout`` seconds; 400, 401, 404 (no upstream
for the model), 413 and 503 (shutting down) for requests the guard refuses.
Authorization headers and, unless ``log_content``, prompts and outputs are never
logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as Path

# ``X as X``: re-exported, names this module imported before the guard's state moved
# to degen.guard.state (still importable from here)
from degen.engines.evidence import STOP_TOP_LOGPROBS as STOP_TOP_LOGPROBS
from degen.engines.evidence import TOP_LOGPROBS as TOP_LOGPROBS
from degen.engines.evidence import logprob_fields as logprob_fields
from degen.engines.evidence import stop_token_texts as stop_token_texts
from degen.guard.config import GuardConfig
from degen.guard.exchange import CHAT, COMPLETIONS
from degen.guard.exchange import Exchange as Exchange
from degen.guard.metrics import CONTENT_TYPE
from degen.guard.metrics import GuardMetrics as GuardMetrics
from degen.guard.relay import ERROR_BODY_LIMIT, Relay
from degen.guard.routing import Reject as _Reject
from degen.guard.routing import Route, error_body, upstream_error
from degen.guard.shared import SharedMetrics as SharedMetrics
from degen.guard.shared import on_shutdown_signal
from degen.guard.state import Guard

log = logging.getLogger("degen.guard")

UNGUARDED = "/v1/responses"


class GuardApp(Guard):
    """The guard's endpoints, over its state (:class:`~degen.guard.state.Guard`)."""

    # ------------------------------------------------------------------ access
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
        """The body, within ``max_body`` bytes (413) and ``client_timeout`` seconds (408)."""
        try:
            async with asyncio.timeout(self.config.client_timeout):
                return await self._read_body_bytes(request)
        except TimeoutError:
            raise _Reject(408, f"the request body did not arrive within "
                          f"{self.config.client_timeout:g} s (the guard's --client-timeout)",
                          "request_timeout") from None

    async def _read_body_bytes(self, request: Request) -> bytes:
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

    # ------------------------------------------------------------------ endpoints
    async def health(self, request: Request) -> Response:
        ups = {r.label: r.health() for r in self.routes}
        down = [k for k, v in ups.items() if v["up"] is False]
        status = "shutting down" if self.draining else ("degraded" if down else "ok")
        return JSONResponse({"status": status, "worker": os.getpid(), "upstreams": ups})

    async def ready(self, request: Request) -> Response:
        up = any(r.up for r in self.routes)
        ok = up and not self.draining
        return JSONResponse({"ready": ok, "draining": self.draining, "upstream_up": up},
                            status_code=200 if ok else 503)

    async def metrics_page(self, request: Request) -> Response:
        try:
            self._check_key(request)
        except _Reject as r:
            self.metrics.rejected.inc(status=str(r.status))
            return r.response()
        text = self.shared.render(self.metrics) if self.shared else self.metrics.render()
        return Response(text, media_type=CONTENT_TYPE)

    def _refuse(self, r: _Reject, endpoint: str) -> Response:
        self.metrics.rejected.inc(status=str(r.status))
        self.metrics.requests.inc(model="other", endpoint=endpoint, stream="unknown")
        return r.response()

    async def generate(self, request: Request) -> Response:
        endpoint = request.url.path.rstrip("/")
        started = time.monotonic()
        try:
            if self.draining:
                raise _Reject(503, "the guard is shutting down; send the request to another "
                              "instance or again in a moment", "shutting_down")
            self._check_key(request)
            raw = await self._read_body(request)
            body = parse_body(raw)
            route = self.route_for(body.get("model"))
            up_body, limit = self.prepare(route, endpoint, body)
        except _Reject as r:
            return self._refuse(r, endpoint)
        strip = self.ask_logprobs(endpoint, up_body)
        ex = self.exchange(endpoint, body, up_body, limit, strip, route)
        ex.started = started
        model = self.model_label(body.get("model"), route)
        self.metrics.requests.inc(model=model, endpoint=endpoint, stream=str(ex.stream).lower())
        if self.config.log_content:
            log.info("prompt %s: %s", endpoint, ex.prompt[:4000])
        return Relay(self, route, ex, body, up_body, self.upstream_headers(request, route),
                     model)

    async def models(self, request: Request) -> Response:
        """Every upstream's ``/v1/models``, merged (the first upstream to list an id wins)."""
        try:
            self._check_key(request)
        except _Reject as r:
            return self._refuse(r, "/v1/models")
        self.metrics.requests.inc(model="other", endpoint="/v1/models", stream="false")
        if len(self.routes) == 1:
            return await self.passthrough(request, counted=True)
        await asyncio.gather(*(self.check(r) for r in self.routes))
        seen: dict[str, Any] = {}
        for r in self.routes:
            for d in r.model_entries:
                seen.setdefault(str(d.get("id")), d)
            if r.name is not None and r.name not in seen and r.up:
                seen[r.name] = {"id": r.name, "object": "model", "owned_by": r.label}
        if not any(r.up for r in self.routes):
            err = error_body("no upstream answered /v1/models", "upstream_error",
                             "upstream_unreachable")
            return JSONResponse(err, status_code=502)
        return JSONResponse({"object": "list", "data": list(seen.values())})

    async def passthrough(self, request: Request, counted: bool = False) -> Response:
        """Any other ``/v1`` request, relayed as it is to the upstream of its model."""
        path = request.url.path
        if not counted:
            self.metrics.requests.inc(model="other", endpoint=UNGUARDED if path.startswith(
                UNGUARDED) else ("/v1/models" if path.startswith("/v1/models") else "other"),
                stream="false")
        try:
            self._check_key(request)
            body = await self._read_body(request) if request.method not in ("GET", "HEAD") \
                else b""
            model = None
            if body and body[:1] == b"{":
                with contextlib.suppress(ValueError, AttributeError):
                    model = json.loads(body).get("model")
            route = self.route_for(model) if model is not None else (
                self.default or self.routes[0])
        except _Reject as r:
            self.metrics.rejected.inc(status=str(r.status))
            return r.response()
        if path.startswith(UNGUARDED) and not self._warned_unguarded:
            self._warned_unguarded = True
            log.warning("%s is relayed unguarded: its generations are not watched or cut "
                        "(use /v1/chat/completions or /v1/completions)", UNGUARDED)
        url = route.url + path.removeprefix("/v1")
        if request.url.query:
            url += "?" + request.url.query
        headers = self.upstream_headers(request, route, json_body=False)
        if request.headers.get("content-type"):
            headers["content-type"] = request.headers["content-type"]
        try:
            r = await self.client.request(request.method, url, content=body or None,
                                          headers=headers)
        except httpx.TimeoutException as e:
            return self._gateway(route, 504, e)
        except httpx.TransportError as e:
            return self._gateway(route, 502, e)
        if r.status_code >= 400:
            self.metrics.upstream_errors.inc(upstream=route.label, status=str(r.status_code))
            return JSONResponse(upstream_error(r.status_code, r.content[:ERROR_BODY_LIMIT]),
                                status_code=r.status_code)
        return Response(r.content, status_code=r.status_code,
                        media_type=r.headers.get("content-type"),
                        headers={"x-degen-guarded": "false"})

    def _gateway(self, route: Route, status: int, e: Exception) -> JSONResponse:
        self.metrics.upstream_errors.inc(upstream=route.label, status=str(status))
        return JSONResponse(self.gateway_error(route, status, e), status_code=status)


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body: a JSON object in UTF-8, else a 400 that says which it is not (the
    message never quotes the body: it may hold a prompt)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Reject(400, f"the request body is not UTF-8 (byte {e.start}); send JSON "
                      "encoded as UTF-8", "invalid_json") from None
    try:
        body = json.loads(text)
    except ValueError as e:
        where = f" (line {e.lineno}, column {e.colno})" if hasattr(e, "lineno") else ""
        raise _Reject(400, f"the request body is not valid JSON{where}",
                      "invalid_json") from None
    if not isinstance(body, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"
                }.get(type(body), "a number")
        raise _Reject(400, f"the request body must be a JSON object, got {kind}",
                      "invalid_json")
    return body


def create_app(config: GuardConfig, *, transport: httpx.AsyncBaseTransport | None = None
               ) -> Any:
    """The guard as an ASGI app (serve it with uvicorn, or :func:`degen.guard.serve`).
    ``transport`` replaces the HTTP transport of relayed requests and health checks
    (tests). The app's ``state.guard`` holds the :class:`GuardApp`, a
    :class:`~degen.guard.state.Guard` (its ``metrics``)."""
    guard = GuardApp(config, transport)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        on_shutdown_signal(guard.begin_drain)
        tasks = [asyncio.create_task(guard.watch_upstreams())]
        if guard.shared is not None:
            tasks.append(asyncio.create_task(guard.shared.run(guard.metrics)))
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            # requests the server cancelled at the shutdown timeout: let them end (each
            # sends its client an error event and is counted) before the loop stops
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 2.0
            while guard.open_relays and loop.time() < deadline:
                await asyncio.sleep(0.01)
            guard.end_drain()
            if guard.shared is not None:
                guard.shared.write(guard.metrics)
            await guard.aclose()

    routes = [
        Path("/health", guard.health, methods=["GET"]),
        Path("/ready", guard.ready, methods=["GET"]),
        Path("/metrics", guard.metrics_page, methods=["GET"]),
        Path(CHAT, guard.generate, methods=["POST"]),
        Path(COMPLETIONS, guard.generate, methods=["POST"]),
        Path("/v1/models", guard.models, methods=["GET"]),
        Path("/v1/{path:path}", guard.passthrough,
             methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.guard = guard
    return _FastPath(app, guard)


class _FastPath:
    """The app: guarded requests go straight to their :class:`Relay` (every chunk's
    write skips Starlette's middleware layers); everything else to Starlette."""

    def __init__(self, app: Starlette, guard: GuardApp) -> None:
        self.app, self.guard, self.state = app, guard, app.state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or scope["path"].rstrip("/") not in (CHAT, COMPLETIONS)):
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        response = None
        try:
            response = await self.guard.generate(Request(scope, receive))
            # a relay writes straight to the server, and knows what it sent
            await response(scope, receive, send if isinstance(response, Relay) else tracked)
        except Exception:
            log.exception("the guard failed on a request")
            if started or (isinstance(response, Relay) and response.status):
                raise
            err = error_body("the guard failed on this request (see its log)",
                             "server_error", "internal_error")
            await JSONResponse(err, status_code=500)(scope, receive, send)
