"""The ``openai`` engine: any OpenAI-compatible server (vLLM, llama.cpp, TGI, Ollama...).

Each sampling field is sent under the name the server understands, chosen by a
*dialect* (``auto`` reads ``owned_by`` from ``/v1/models``):

========================  ===================  ==================  ==============
SamplingParams            ``vllm``             ``llamacpp``        ``openai``
========================  ===================  ==================  ==============
temperature, top_p,       same names           same names          same names
max_tokens, seed, stop,
presence/frequency_pen.
top_k (0 = off)           ``top_k`` (-1 = off) ``top_k`` (0 = off) dropped
min_p                     ``min_p``            ``min_p``           dropped
repetition_penalty        ``repetition_penal`` ``repeat_penalty``  dropped
no_repeat_ngram_size      dropped              dropped             dropped
repetition_min_count,     ``repetition_        dropped             dropped
repetition_max/min_pat.   detection`` (0=off)
logprobs (asked)          ``logprobs: true``, ``top_logprobs: 20`` (chat); ``logprobs: 20``
                          (completions), every dialect (1 without the stopping evidence)
========================  ===================  ==================  ==============

Where the server has a knob it is always sent, even at its neutral value, so the
server's own defaults (llama.cpp: top_k 40, min_p 0.05; vLLM: the model's
generation_config) never sneak in. A field the dialect cannot send is *dropped*
only when it is set to something other than off, and :meth:`OpenAIEngine.unsupported`
says so before a run starts.

The same name does not always mean the same thing: vLLM's ``repetition_penalty``
covers prompt and output (as HF does), llama.cpp's ``repeat_penalty`` only the last
64 tokens of the context by default (``--repeat-last-n``). Neither can exempt
end-of-turn tokens or skip the prompt, so ``repetition_penalty_scope="output"``
and ``penalize_eot=False`` are reported as dropped there.

Log-probabilities: with ``logprobs`` (the default when guarding) the engine asks for
the sampled tokens' log-probabilities (:func:`logprob_fields`; at least 1 alternative,
not 0, because llama.cpp's server returns none below 1), feeds them to the watch and
stores them, rounded to 4 decimals, in ``extra["logprobs"]``, so the batch verdict sees
what the stream saw. With them comes the *stopping evidence* (``stop_evidence``, on by
default): 20 alternatives a token, from which the probability the model gave to
ending is read (:mod:`degen.engines.evidence`; ``extra["stop_logprobs"]`` and
``extra["stop_upper"]``). A server that ignores the request still works (text-only
watch). A continuation (an extension, :mod:`degen.experiments.load.extend`) is sent as the text so
far (:func:`build_body`) and never cut.

Failures: connection errors, timeouts, 429 and 5xx are retried with exponential
backoff (honouring ``Retry-After``); what still fails, and every 4xx, becomes a
Completion with ``finish_reason="error"``.

This module holds the engine: discovery, the request loop and its retries. What
each dialect sends is :mod:`degen.engines.openai_dialects`; reading the server's
answer (server-sent events, chunks, log-probabilities and stopping evidence) is
:mod:`degen.engines.openai_response`. Their names are importable from here too.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from degen.engines.base import Engine
from degen.engines.evidence import (
    STOP_TOP_LOGPROBS,
    TOP_LOGPROBS,
    stop_token_texts,
)
from degen.engines.evidence import logprob_fields as logprob_fields
from degen.engines.evidence import stop_evidence as stop_evidence
from degen.engines.evidence import token_logprobs as token_logprobs
from degen.engines.openai_dialects import (
    _FINISH,
    _OWNED_BY,
    APIS,
    DIALECTS,
    build_body,
    unsupported_fields,
)
from degen.engines.openai_dialects import DETECTION_FIELDS as DETECTION_FIELDS
from degen.engines.openai_dialects import repetition_detection as repetition_detection
from degen.engines.openai_response import SSEData as SSEData
from degen.engines.openai_response import (
    StreamReader,
    _error_detail,
    _Fatal,
    _Retryable,
    _sse_payloads,
    read_reply,
)
from degen.errors import InvalidParams, ServerUnreachable, UsageError
from degen.records import Completion, Request, SamplingParams, Timings


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1``; trailing slashes dropped."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise InvalidParams(f"--base-url must start with http:// or https://, got {url!r}")
    if httpx.URL(url).path in ("", "/"):
        url += "/v1"
    return url



class OpenAIEngine(Engine):
    """Talks to an OpenAI-compatible server over HTTP. See the module doc.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is added when the path is empty).
        api_key: bearer key; default ``$DEGEN_API_KEY`` or ``$OPENAI_API_KEY``.
        model: model name to request; default the first of ``/v1/models``.
        api: ``chat``, ``completions`` or ``auto`` (chat for messages, completions for prompts).
        stream: use server-sent events (records time to first token).
        dialect: ``auto``, ``vllm``, ``llamacpp`` or ``openai`` (standard fields only).
        timeout: seconds allowed for one attempt without data; ``connect_timeout`` to connect.
        max_retries: extra attempts after a retryable failure; ``backoff`` is the first wait.
        guard: cut a generation as soon as the watch confirms a degeneration (needs
            ``stream``): ``True`` for every kind, or the kinds to cut (``("loop",)``);
            finish_reason ``"repetition"`` for a loop, ``"degenerate"`` for babble and
            glued words, the finding in ``extra["cut"]``.
        logprobs: ask for the sampled tokens' log-probabilities, feed them to the watch
            and store them in ``extra["logprobs"]``; default: when guarding.
        stop_evidence: also ask for each token's top alternatives
            (:data:`~degen.engines.evidence.STOP_TOP_LOGPROBS`) and keep the
            log-probability the model gave to ending (``extra["stop_logprobs"]``; where no
            stop token was among them, the last alternative's value, an upper bound,
            marked 1 in ``extra["stop_upper"]``); default: with ``logprobs``.
        stop_tokens: the texts of the model's stop tokens; default: the common ones,
            :data:`~degen.engines.evidence.STOP_TOKENS`.
        horizon, runaway_weights: as the local engine's (the runaway cut).
    """

    name = "openai"

    def __init__(self, base_url: str = "http://127.0.0.1:8000/v1", api_key: str | None = None,
                 model: str | None = None, api: str = "auto", stream: bool = False,
                 dialect: str = "auto", timeout: float = 120.0, connect_timeout: float = 5.0,
                 max_retries: int = 3, backoff: float = 0.5, concurrency: int = 8,
                 guard: bool | Iterable[str] = False, logprobs: bool | None = None,
                 stop_evidence: bool | None = None, stop_tokens: Iterable[str] = (),
                 horizon: int | None = None,
                 runaway_weights: Mapping[str, Any] | None = None) -> None:
        from degen.detect.watch import cut_kinds

        if dialect not in DIALECTS:
            raise InvalidParams(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
        if api not in APIS:
            raise InvalidParams(f"api must be one of {', '.join(APIS)}, got {api!r}")
        if timeout <= 0 or connect_timeout <= 0:
            raise InvalidParams(f"timeouts must be > 0 seconds, got --timeout {timeout}, "
                                f"connect timeout {connect_timeout}")
        if max_retries < 0:
            raise InvalidParams(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = normalize_base_url(base_url)
        key = api_key or os.environ.get("DEGEN_API_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.cut_kinds = cut_kinds(guard)
        if self.cut_kinds and not stream:
            raise InvalidParams("guard (cutting degenerate generations early) needs "
                                "stream=True (--stream)")
        self.api, self.stream, self.guard = api, stream, bool(self.cut_kinds)
        self.logprobs = self.guard if logprobs is None else bool(logprobs)
        self.stop_evidence = self.logprobs if stop_evidence is None else bool(stop_evidence)
        if self.stop_evidence and not self.logprobs:
            raise InvalidParams("stop evidence comes with the tokens' log-probabilities: "
                                "turn logprobs on, or stop_evidence off")
        self._stop_tokens = tuple(stop_tokens)
        if horizon is not None and horizon < 1:
            raise InvalidParams(f"horizon must be >= 1 token, got {horizon}")
        self.horizon, self.runaway_weights = horizon, runaway_weights
        self.max_retries, self.backoff = max_retries, backoff
        self.preferred_concurrency = concurrency
        from degen.engines.abort import Aborter, abortable_transport

        # a cancelled request's connection is closed from this side (abort.py): a
        # stalled server never holds a cancelled request
        self._aborter = Aborter()
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=abortable_transport(
                httpx.Limits(max_connections=None, max_keepalive_connections=64)),
        )
        self._dropped: dict[str, str] = {}
        self._dropped_lock = threading.Lock()
        try:
            self.model, owned_by = self._discover(model)
        except BaseException:
            self._client.close()
            raise
        self.dialect = dialect if dialect != "auto" else _OWNED_BY.get(owned_by or "", "openai")
        self.server_owned_by = owned_by
        self.stop_texts = stop_token_texts(self.dialect, self._stop_tokens)

    # ------------------------------------------------------------------ setup
    def _discover(self, model: str | None) -> tuple[str, str | None]:
        try:
            r = self._client.get("/models")
        except httpx.TransportError as e:
            raise ServerUnreachable(
                f"no server answered at {self.base_url} ({type(e).__name__}); start one or "
                "pass --base-url"
            ) from None
        if r.status_code in (401, 403):
            raise UsageError(
                f"the server at {self.base_url} refused the API key ({r.status_code}); pass "
                "--api-key or set OPENAI_API_KEY"
            )
        data: list[dict[str, Any]] = []
        if r.status_code == 200:
            try:
                data = [m for m in r.json().get("data", []) if isinstance(m, dict)]
            except (ValueError, AttributeError):
                data = []
        if model is None:
            if not data:
                raise UsageError(
                    f"{self.base_url}/models lists no model (HTTP {r.status_code}); pass --model"
                )
            chosen = data[0]
            return str(chosen.get("id")), chosen.get("owned_by")
        for m in data:
            if m.get("id") == model:
                return model, m.get("owned_by")
        return model, (data[0].get("owned_by") if data else None)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(base_url=self.base_url, dialect=self.dialect, api=self.api, stream=self.stream,
                 owned_by=self.server_owned_by, max_retries=self.max_retries, guard=self.guard,
                 logprobs=self.logprobs, stop_evidence=self.stop_evidence)
        if self.guard:
            d["cut_kinds"] = sorted(self.cut_kinds)
        return d

    def unsupported(self, params: SamplingParams) -> dict[str, str]:
        return unsupported_fields(params, self.dialect)

    @property
    def dropped_params(self) -> dict[str, str]:
        with self._dropped_lock:
            return dict(self._dropped)

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ requests
    def complete(self, request: Request, cancel: threading.Event | None = None) -> Completion:
        started = time.time()
        dropped = self.unsupported(request.params)
        if dropped:
            with self._dropped_lock:
                self._dropped.update(dropped)
        attempts = 0
        error = ""
        try:
            path, body = build_body(
                request, self.model, self.dialect, self.api, self.stream,
                logprobs=self.logprobs,
                top=STOP_TOP_LOGPROBS if self.stop_evidence else TOP_LOGPROBS)
        except _Fatal as e:
            return self._error(request, str(e), started, 0)
        while True:
            if cancel is not None and cancel.is_set():
                return self.cancelled(request, started, attempts=attempts)
            attempts += 1
            try:
                with self._aborter.making(cancel):
                    got = self._stream(path, body, cancel, watch=not request.continued) \
                        if self.stream else self._once(path, body)
                if got.get("cancelled"):
                    return self.cancelled(request, started, got.get("text") or "",
                                          got.get("chunks"), attempts=attempts)
                return self._completion(request, got, started, attempts)
            except _Fatal as e:
                return self._error(request, str(e), started, attempts)
            except _Retryable as e:
                if cancel is not None and cancel.is_set():  # the cancel closed it
                    return self.cancelled(request, started, attempts=attempts)
                error = str(e)
                if attempts > self.max_retries:
                    return self._error(request, f"{error} (after {attempts} attempts)",
                                       started, attempts)
                wait = self.backoff * 2 ** (attempts - 1) + random.uniform(0, self.backoff)
                if e.retry_after is not None:
                    wait = max(wait, min(e.retry_after, 30.0))
                if cancel is not None:
                    cancel.wait(wait)
                else:
                    time.sleep(wait)

    def _error(self, req: Request, msg: str, started: float, attempts: int) -> Completion:
        return Completion.from_request(
            req, finish_reason="error", error=msg, engine=self.name, model=self.model,
            attempts=attempts,
            timings=Timings(scheduled_at=req.scheduled_at, started_at=started,
                            finished_at=time.time()),
        )

    def _completion(self, req: Request, got: dict[str, Any], started: float,
                    attempts: int) -> Completion:
        raw = got.get("finish_reason")
        reason = _FINISH.get(raw or "")
        extra: dict[str, Any] = {}
        if reason is None:
            if raw is None:
                return self._error(req, "the server ended the response without a "
                                   "finish_reason (aborted? llama-cpp-python interrupts a "
                                   "stream when another request arrives unless started with "
                                   "--interrupt_requests False)", started, attempts)
            reason = "stop"
        if raw != reason:
            extra["server_finish_reason"] = raw
        if got.get("cut"):
            extra["cut"] = got["cut"]
        if got.get("logprobs"):
            extra["logprobs"] = [round(v, 4) for v in got["logprobs"]]
            if got.get("logprob_chars"):
                extra["logprob_chars"] = got["logprob_chars"]
            stops = got.get("stops")
            if stops and len(stops) == len(got["logprobs"]):
                extra["stop_logprobs"] = [round(v, 4) for v, _ in stops]
                if any(u for _, u in stops):
                    extra["stop_upper"] = [int(u) for _, u in stops]
        usage = got.get("usage") or {}
        completion_tokens = usage.get("completion_tokens")
        if completion_tokens is None and got.get("chunks") is not None:
            completion_tokens = got["chunks"]
            extra["completion_tokens_estimated"] = True
        return Completion.from_request(
            req, finish_reason=reason, text=got.get("text") or "",
            prompt_tokens=usage.get("prompt_tokens"), completion_tokens=completion_tokens,
            engine=self.name, model=self.model, attempts=attempts, extra=extra,
            timings=Timings(scheduled_at=req.scheduled_at, started_at=started,
                            first_token_at=got.get("first_token_at"), finished_at=time.time()),
        )

    def _check_status(self, r: httpx.Response) -> None:
        if r.status_code < 400:
            return
        detail = _error_detail(r)
        msg = f"HTTP {r.status_code} from {r.request.url.path}: {detail}"
        if self.logprobs and r.status_code in (400, 422):
            msg += " (the request asked for logprobs: pass --no-logprobs if the server " \
                   "refuses them)"
        if r.status_code == 429 or r.status_code >= 500:
            ra = r.headers.get("retry-after")
            try:
                retry_after = float(ra) if ra is not None else None
            except ValueError:
                retry_after = None
            raise _Retryable(msg, retry_after)
        raise _Fatal(msg)

    def _once(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = self._client.post(path, json=body)
            self._check_status(r)
            data = r.json()
        except httpx.TransportError as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from None
        except ValueError:
            raise _Fatal("the server's response is not JSON") from None
        return read_reply(data, self.stop_evidence, self.stop_texts)

    def _stream(self, path: str, body: dict[str, Any],
                cancel: threading.Event | None = None, watch: bool = True) -> dict[str, Any]:
        w = None
        if self.guard and watch:
            from degen.detect.watch import stream_watch

            w = stream_watch(body.get("messages"), body.get("prompt"), body["max_tokens"],
                             self.model, self.horizon, self.runaway_weights)
        reader = StreamReader(self.logprobs, self.stop_evidence, self.stop_texts, w,
                              self.cut_kinds)
        try:
            with self._client.stream("POST", path, json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    self._check_status(r)
                for payload in _sse_payloads(r.iter_lines()):
                    if cancel is not None and cancel.is_set():  # closing aborts it
                        return reader.cancelled()
                    if reader.feed(payload):  # [DONE], or cut: leaving the block closes
                        break  # the connection: vLLM and llama.cpp abort the request
        except httpx.TransportError as e:
            broken = f"{type(e).__name__} during the stream: {e}"
        else:
            broken = "" if reader.ended else \
                "the stream ended before a finish_reason or [DONE]"
        if broken:
            if cancel is not None and cancel.is_set():  # we closed it (abort.py)
                return reader.cancelled()
            raise _Retryable(broken)
        return reader.result()
