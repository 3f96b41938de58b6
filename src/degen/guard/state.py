"""The guard's state: :class:`Guard`, one per app (per worker).

It holds what every request shares (the config, the metrics, the routes to the
upstreams and their health, the models whose upstream refused log-probabilities, the
open relays, whether a shutdown began) and what a :class:`~degen.guard.relay.Relay`
calls back: the upstream body of a request and of its retry, the log-probabilities
asked for, the :class:`~degen.guard.exchange.Exchange` that judges it, and the
OpenAI-shaped errors of an upstream that failed. The HTTP endpoints over it are the
app's (:mod:`degen.guard.app`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import TYPE_CHECKING, Any

import httpx

from degen.engines.evidence import (
    STOP_TOP_LOGPROBS,
    TOP_LOGPROBS,
    logprob_fields,
    stop_token_texts,
)
from degen.guard.config import GuardConfig
from degen.guard.exchange import CHAT, Exchange
from degen.guard.metrics import GuardMetrics
from degen.guard.routing import Reject as _Reject
from degen.guard.routing import Route, error_body, upstream_error
from degen.guard.shared import SharedMetrics

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger("degen.guard")


class Guard:
    """The guard's shared state and what its relays call back. One per app (per
    worker); the app's endpoints are :class:`~degen.guard.app.GuardApp`'s."""

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
        self.open_relays: set[Response] = set()  # the open Relays
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

