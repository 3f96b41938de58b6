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
import copy
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

from degen.engines.evidence import (
    STOP_TOP_LOGPROBS,
    TOP_LOGPROBS,
    logprob_fields,
    stop_token_texts,
)
from degen.guard.config import GuardConfig
from degen.guard.exchange import CHAT, COMPLETIONS, Exchange
from degen.guard.metrics import CONTENT_TYPE, GuardMetrics
from degen.guard.relay import ERROR_BODY_LIMIT, Relay
from degen.guard.routing import Reject as _Reject
from degen.guard.routing import Route, error_body, upstream_error
from degen.guard.workers import SharedMetrics, on_shutdown_signal

log = logging.getLogger("degen.guard")

UNGUARDED = "/v1/responses"


class Guard:
    """The guard's shared state and its endpoints. One per app (per worker)."""

    def __init__(self, config: GuardConfig, transport: httpx.AsyncBaseTransport | None = None
                 ) -> None:
        self.config = config
        self.metrics = GuardMetrics()
        self.shared = SharedMetrics.from_env()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.routes = [Route(u, config) for u in config.routes()]
        self.default = next((r for r in self.routes if r.name is None), None)
        # models whose upstream refused the log-probabilities the guard asked for
        self.no_logprobs: set[str] = set()
        self.open_relays: set[Relay] = set()
        self.draining = False
        self._warned_unguarded = False

    @property
    def client(self) -> httpx.AsyncClient:
        """The client for relayed (unguarded) requests and health checks."""
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
        for r in self.routes:
            if r._pool is not None:
                await r._pool.aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------------ upstreams
    def route_for(self, model: Any) -> Route:
        for r in self.routes:
            if r.name is not None and model == r.name:
                return r
        for r in self.routes:
            if r.serves(model):
                return r
        if self.default is not None:
            return self.default
        known = sorted({m for r in self.routes for m in (r.name, *r.models) if m})
        raise _Reject(404, f"no upstream serves model {model!r}; the guard routes "
                      f"{', '.join(known) or 'nothing yet'}", "model_not_found")

    def model_label(self, model: Any, route: Route) -> str:
        """The ``model`` label of the metrics: a name an upstream is known by, else
        ``other`` (a client's arbitrary string never becomes a series)."""
        return model if route.serves(model) else "other"

    async def check(self, route: Route) -> None:
        """One health check: the upstream's ``/models`` (its models, and whether it is up)."""
        headers = {"connection": "close"}  # no idle connection held between checks
        if route.key:
            headers["authorization"] = f"Bearer {route.key}"
        try:
            r = await self.client.get(route.url + "/models", headers=headers,
                                      timeout=min(5.0, self.config.health_interval))
            data = r.json().get("data") if r.status_code == 200 else None
            if not isinstance(data, list):
                raise ValueError(f"HTTP {r.status_code}")
            route.model_entries = [d for d in data if isinstance(d, dict)]
            route.models = [str(d.get("id")) for d in route.model_entries if d.get("id")]
            route.up, route.error = True, None
            self.metrics.upstream_up.set(1.0, upstream=route.label)
        except (httpx.HTTPError, ValueError, AttributeError) as e:
            self.mark_down(route, e)
        route.checked_at = time.monotonic()

    def mark_down(self, route: Route, e: BaseException) -> None:
        """``route`` is down (a health check failed, or a request found nothing
        listening): ``/ready`` says so until a health check finds it up again."""
        if route.up is not False:
            log.warning("upstream %s at %s is down (%s)", route.label, route.url,
                        str(e) or type(e).__name__)
        route.up, route.error = False, str(e)[:200] or type(e).__name__
        self.metrics.upstream_up.set(0.0, upstream=route.label)

    async def watch_upstreams(self) -> None:
        """Check every upstream now and every ``health_interval`` seconds."""
        while True:
            await asyncio.gather(*(self.check(r) for r in self.routes))
            await asyncio.sleep(self.config.health_interval)

    def refused_logprobs(self, model: str, status: int, raw: bytes) -> None:
        if model not in self.no_logprobs:
            self.no_logprobs.add(model)
            # the upstream's message may quote the prompt: logged only with log_content
            msg = (": " + str(upstream_error(status, raw)["error"]["message"])[:200]
                   if self.config.log_content else "")
            log.warning("the upstream refused logprobs for model %s (HTTP %d%s); "
                        "watching its text only", model, status, msg)

    upstream_error = staticmethod(upstream_error)

    def gateway_error(self, route: Route, status: int, e: BaseException | str
                      ) -> dict[str, Any]:
        what = e if isinstance(e, str) else (str(e) or type(e).__name__)
        if status == 504:
            msg = (f"the upstream at {route.url} sent nothing for "
                   f"{self.config.timeout:g} s ({what})")
            return error_body(msg, "upstream_error", "upstream_timeout")
        msg = f"the upstream at {route.url} failed ({what})"
        return error_body(msg, "upstream_error", "upstream_unreachable")

    # ------------------------------------------------------------------ requests
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

    def upstream_headers(self, request: Request, route: Route,
                         json_body: bool = True) -> dict[str, str]:
        """Authorization (the client's, or the upstream's key in its place) and content
        type: nothing else of the client's headers goes upstream."""
        headers = {"accept": "application/json, text/event-stream"}
        if json_body:
            headers["content-type"] = "application/json"
        if route.key:
            headers["authorization"] = f"Bearer {route.key}"
        elif request.headers.get("authorization"):
            headers["authorization"] = request.headers["authorization"]
        return headers

    def prepare(self, route: Route, endpoint: str, body: dict[str, Any]
                ) -> tuple[dict[str, Any], int]:
        """The upstream body for ``body``, and the max_tokens it carries: defaults where
        the client sent nothing (the upstream's over the guard's), the system prompt,
        overrides, the cap, and a stream."""
        cfg, spec = self.config, route.spec
        out = dict(body)
        for k, v in {**cfg.defaults, **spec.defaults}.items():
            if k not in out:
                out[k] = copy.deepcopy(v)
        system = spec.system or cfg.system
        msgs = out.get("messages")
        if system and endpoint == CHAT and isinstance(msgs, list) and not any(
                isinstance(m, dict) and m.get("role") in ("system", "developer") for m in msgs):
            out["messages"] = [{"role": "system", "content": system}, *msgs]
        for k, v in {**cfg.overrides, **spec.overrides}.items():
            out[k] = copy.deepcopy(v)
        cap = cfg.max_tokens_cap
        sent = [k for k in ("max_tokens", "max_completion_tokens") if out.get(k) is not None]
        for k in ("n", "best_of"):
            v = out.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise _Reject(400, f"{k} must be a whole number >= 1, got {v!r}",
                              "invalid_value")
            if v is not None and v > cfg.max_n:
                raise _Reject(400, f"{k} must be at most {cfg.max_n} (the guard's --max-n), "
                              f"got {v}", "invalid_value")
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

    def retry_body(self, route: Route, endpoint: str, client_body: dict[str, Any]
                   ) -> dict[str, Any]:
        """What a retry sends: the request prepared again, the retry parameters on top."""
        out, _ = self.prepare(route, endpoint, client_body)
        for k, v in self.config.retry_params.items():
            out[k] = copy.deepcopy(v)
        return out

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
        # cutting runaways reads the model's stopping evidence off the top alternatives
        out.update(logprob_fields(chat, STOP_TOP_LOGPROBS if "runaway" in
                                  self.config.cut_kinds else TOP_LOGPROBS))
        return True

    def exchange(self, endpoint: str, client_body: dict[str, Any], body: dict[str, Any],
                 limit: int, strip: bool, route: Route | None = None) -> Exchange:
        cfg = self.config
        stops = stop_token_texts(route.dialect if route is not None else "auto",
                                 cfg.stop_tokens) if "runaway" in cfg.cut_kinds else None
        return Exchange(endpoint, client_body, body, limit, cut_kinds=cfg.cut_kinds,
                        cut_reason=cfg.cut_reason, strip_logprobs=strip,
                        horizon=cfg.horizon, runaway_weights=cfg.runaway_weights,
                        stop_texts=stops)

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

    # ------------------------------------------------------------------ shutdown
    def begin_drain(self) -> None:
        """A shutdown began: refuse new requests, let open ones finish."""
        if not self.draining:
            self.draining = True
            self._drain_open = len(self.open_relays)
            self._drain_started = time.monotonic()
            log.info("shutting down: %d open request(s) may take up to %g s to finish",
                     self._drain_open, self.config.shutdown_timeout,
                     extra={"shutdown": {"open": self._drain_open}})

    def end_drain(self) -> None:
        if not self.draining:
            return
        cut = int(self.metrics.responses.total(finish_reason="shutdown"))
        log.info("shut down: %d request(s) were open, %d finished, %d cut at the %g s "
                 "shutdown timeout", self._drain_open, max(0, self._drain_open - cut), cut,
                 self.config.shutdown_timeout,
                 extra={"shutdown": {"open": self._drain_open, "cut": cut,
                                     "seconds": round(time.monotonic()
                                                      - self._drain_started, 3)}})


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
    (tests). The app's ``state.guard`` holds the :class:`Guard` (its ``metrics``)."""
    guard = Guard(config, transport)

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

    def __init__(self, app: Starlette, guard: Guard) -> None:
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
