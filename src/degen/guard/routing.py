"""What the guard's requests are routed to and refused with: :class:`Route` (one
upstream, its pool and its health), and OpenAI-shaped errors (:func:`error_body`,
:func:`upstream_error`, :class:`Reject`)."""

from __future__ import annotations

import json
import time
from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

from degen.guard.config import GuardConfig, UpstreamConfig
from degen.guard.upstream import StreamPool, pool_for


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


class Reject(Exception):
    """A request the guard refuses before anything goes upstream."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(error_body(str(self), _type_for(self.status), self.code),
                            status_code=self.status, headers=headers)


class Route:
    """One upstream: its settings, its stream pool, and what its health checks found."""

    def __init__(self, spec: UpstreamConfig, config: GuardConfig) -> None:
        self.spec = spec
        self.name, self.label, self.url = spec.name, spec.label, spec.url
        self.key = spec.upstream_key or config.upstream_key
        self._config = config
        self._pool: StreamPool | None = None
        self.models: list[str] = []  # ids its /v1/models listed at the last check
        self.model_entries: list[Any] = []
        self.up: bool | None = None  # None: not checked yet
        self.checked_at: float | None = None
        self.error: str | None = None

    @property
    def pool(self) -> StreamPool:
        if self._pool is None:  # made inside the server's event loop
            self._pool = pool_for(self.url, self._config)
        return self._pool

    @property
    def dialect(self) -> str:
        """The server's kind, from ``owned_by`` in its ``/v1/models`` (``auto`` until
        the first health check)."""
        from degen.engines.openai import _OWNED_BY

        for m in self.model_entries:
            if isinstance(m, dict) and m.get("owned_by") in _OWNED_BY:
                return _OWNED_BY[m["owned_by"]]
        return "auto"

    def serves(self, model: Any) -> bool:
        return model == self.name or (isinstance(model, str) and model in self.models)

    def health(self) -> dict[str, Any]:
        return {"url": self.url, "up": self.up, "models": self.models,
                "checked_seconds_ago": None if self.checked_at is None
                else round(time.monotonic() - self.checked_at, 1),
                **({"error": self.error} if self.error else {})}
