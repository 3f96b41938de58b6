"""The ``local`` engine: a transformers model in this process, continuously batched.

How a batch is kept (the pitfalls of seed 001 and seed 002, done right):

- Prompts are **left-padded** with an attention mask, and position ids count only
  real tokens, so a padded row computes what it would compute alone. (Right
  padding puts pad tokens between the prompt and the continuation: the model then
  reads garbage, and the seed's "wasreleasedinSeptember" follows.)
- Each row's continuation is its own list of sampled tokens: nothing is sliced by
  one shared ``input_len``.
- A row stops on **every** end id the model declares (tokenizer, generation config,
  config), on a stop string, or at ``max_tokens``/the context (``"length"``).
  With ``guard=True`` each row's text, detokenized as it grows, also feeds a
  :class:`~degen.detect.watch.Watch` (loops, babble and glued words, with the
  model's own log-probability of each sampled token) and the row stops on its own as
  soon as one is confirmed (``"repetition"`` for a loop, ``"degenerate"`` for the
  others; the finding in ``extra["cut"]``): a degeneration costs tens of tokens
  instead of ``max_tokens``.
- **Continuous batching**: a row that finishes leaves the batch at once and a
  waiting request is prefilled and merged in (its KV cache left-padded to the
  batch's length), so one runaway never holds the others up. Models whose cache
  is not a plain per-layer tensor (sliding-window layers) fall back to admitting
  new requests only when the batch has drained.
- **Cancellation**: a request whose ``cancel`` event is set leaves the batch after
  the step in progress (``"cancelled"``, with what it generated); one still queued is
  answered at once and never prefilled.

Every call to :meth:`LocalEngine.complete` is queued to one worker thread that
owns the model; concurrent callers share batches. This module holds the engine (loading,
the queue, admission, the worker); the batch itself (rows, KV-cache surgery, sampling
each step, finishing rows) is :mod:`degen.engines.local_batch`.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from degen.engines import hf
from degen.engines.base import Engine
from degen.engines.local_batch import _Batch, _Job
from degen.errors import InvalidParams, ModelNotFound
from degen.records import Completion, Request, SamplingParams, Timings


class LocalEngine(Engine):
    """In-process transformers engine (the default). See the module doc.

    Args:
        model: ``None`` for the bundled SmolLM2-135M-Instruct, a GGUF file or a HF folder.
        batch_size: most rows decoded together.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``...
        dtype: ``auto`` (fp32 on CPU, bf16 on CUDA), ``float32``, ``bfloat16``, ``float16``.
        continuous: admit waiting requests into a running batch (default on).
        record_entropy: store each step's entropy (nats) of the model's own next-token
            distribution, before any penalty or warping, in ``extra["entropy"]``.
        guard: cut a row as soon as the watch confirms a degeneration: ``True`` for
            every kind, or the kinds to cut (``("loop",)``); finish_reason
            ``"repetition"`` for a loop, ``"degenerate"`` for babble and glued words.
        logprobs: store each sampled token's log-probability under the model's own
            distribution (before penalties and sampling settings) in
            ``extra["logprobs"]`` (the watch weighs them in), and the probability it gave
            to ending (its stop tokens) in ``extra["stop_logprobs"]``; default: when
            guarding.
        horizon: a row is cut as a ``"runaway"`` (when guarding) once the watch
            predicts it will not end by this many tokens (default 8 times its
            ``max_tokens``).
        runaway_weights: the runaway predictor's fit (default the model's own).
    """

    name = "local"

    def __init__(self, model: str | None = None, batch_size: int = 32, device: str = "auto",
                 dtype: str = "auto", continuous: bool = True,
                 record_entropy: bool = False, guard: bool | Iterable[str] = False,
                 logprobs: bool | None = None, horizon: int | None = None,
                 runaway_weights: Mapping[str, Any] | None = None) -> None:
        if batch_size < 1:
            raise InvalidParams(f"batch_size must be >= 1, got {batch_size}")
        if horizon is not None and horizon < 1:
            raise InvalidParams(f"horizon must be >= 1 token, got {horizon}")
        self.horizon, self.runaway_weights = horizon, runaway_weights
        from degen.detect.watch import cut_kinds

        self.cut_kinds = cut_kinds(guard)
        self.source = hf.resolve_model(model)
        self.model = self.source.name
        self.batch_size = batch_size
        self.preferred_concurrency = batch_size
        self.continuous = continuous
        self.record_entropy = record_entropy
        self.guard = bool(self.cut_kinds)
        self.record_logprobs = self.guard if logprobs is None else logprobs
        self._device_opt, self._dtype_opt = device, dtype
        self._model: Any = None
        self._tok: Any = None
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        #: rows generating in the batch after the last step (for tests and monitoring)
        self.running = 0
        # the worker thread (0 or 1); stopped by close(), or at exit if nobody closed us
        self._workers: list[threading.Thread] = []
        self._finalizer = weakref.finalize(self, _stop_worker, self._queue, self._workers)
        self._lock = threading.Lock()
        self._closed = False
        self.max_rows_seen = 0  # largest batch so far (for tests and benchmarks)
        self._study_stops = False  # benchmarks/runaway_data.py: see local_batch._Batch._study

    # ------------------------------------------------------------------ setup
    def load(self) -> None:
        """Load the model now (otherwise the first request does)."""
        with self._lock:
            if self._model is not None:
                return
            with hf.loading(self.source.path):
                model, tok = hf.load_model(self.source, self._device_opt, self._dtype_opt)
            self._stop_ids = hf.stop_token_ids(model, tok)
            if not self._stop_ids:
                raise ModelNotFound(
                    f"{self.source.path} declares no end-of-sequence token (eos_token_id in "
                    "its tokenizer, generation_config.json or config.json): it can never "
                    "end a generation; set one")
            # transformers 5 renamed past_key_values to cache (the old name warns)
            params = inspect.signature(model.forward).parameters
            self._cache_arg = "cache" if "cache" in params else "past_key_values"
            self._ctx = hf.context_length(model)
            self._device = next(model.parameters()).device
            self._model, self._tok = model, tok

    @property
    def tokenizer(self) -> Any:
        self.load()
        return self._tok

    @property
    def hf_model(self) -> Any:
        self.load()
        return self._model

    @property
    def stop_ids(self) -> frozenset[int]:
        self.load()
        return self._stop_ids

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(source=str(self.source.path), batch_size=self.batch_size,
                 device=self._device_opt, dtype=self._dtype_opt, continuous=self.continuous,
                 guard=self.guard, cut_kinds=sorted(self.cut_kinds),
                 logprobs=self.record_logprobs)
        return d

    def unsupported(self, params: SamplingParams) -> dict[str, str]:
        if params.repetition_min_count:
            return {"repetition_min_count": "vLLM's server-side repetition_detection; "
                    "the local engine stops loops with guard=True instead"}
        return {}

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._finalizer()

    # ------------------------------------------------------------------ API
    def complete(self, request: Request, cancel: threading.Event | None = None) -> Completion:
        job = self._submit(request, cancel)
        if cancel is None:
            return job.future.result()
        while True:  # a queued request is withdrawn here; a running row at its next step
            try:
                return job.future.result(timeout=0.05)
            except FutureTimeout:
                pass
            if cancel.is_set():
                with self._lock:
                    if job.state != "queued":
                        continue
                    job.state = "dropped"
                return self.cancelled(request, time.time())

    def submit(self, request: Request) -> Future[Completion]:
        """Queue ``request``; the future resolves to its Completion (never an exception)."""
        return self._submit(request, None).future

    def _submit(self, request: Request, cancel: threading.Event | None) -> _Job:
        fut: Future[Completion] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("engine is closed")
            if not self._workers:
                worker = threading.Thread(target=self._serve, name="degen-local", daemon=True)
                self._workers.append(worker)
                worker.start()
        job = _Job(request, fut, cancel)
        self._queue.put(job)
        return job

    def encode(self, request: Request) -> list[int]:
        """Token ids of the request's prompt: the chat template for ``messages``,
        the raw text (with the tokenizer's special tokens) for ``prompt``."""
        return hf.encode_prompt(self.tokenizer, request.messages, request.prompt,
                                f"model {self.model}")

    # ------------------------------------------------------------------ worker
    def _serve(self) -> None:
        try:
            self.load()
        except Exception as e:  # fail every request rather than hang the callers
            self._fail_waiting(f"model failed to load: {e}", until_closed=True)
            return
        batch = _Batch(self)
        while True:
            if self._admit(batch):  # closing: nothing in flight survives close()
                batch.fail_all("the engine was closed")
                self._fail_waiting("the engine was closed")
                return
            if batch.rows:
                try:
                    batch.step()
                except Exception as e:  # a bug or OOM: fail the rows, keep serving
                    batch.fail_all(f"{type(e).__name__}: {e}")
            self.running = len(batch.rows)

    def _admit(self, batch: _Batch) -> bool:
        """Move waiting requests into the batch. Blocks when the batch is empty.
        Returns True when the engine is closing."""
        closing = False
        room = self.batch_size - len(batch.rows)
        if batch.rows and not (self.continuous and batch.can_merge):
            room = 0
        new: list[_Job] = []
        while room > len(new):
            try:
                item = self._queue.get(block=not batch.rows and not new)
            except queue.Empty:
                break
            if item is None:
                closing = True
                break
            with self._lock:
                if item.state == "dropped":
                    continue
                withdrawn = item.cancel is not None and item.cancel.is_set()
                item.state = "dropped" if withdrawn else "admitted"
            if withdrawn:
                item.future.set_result(self.cancelled(item.req, time.time()))
                continue
            new.append(item)
        if new:
            batch.add(new)
        return closing

    def _fail_waiting(self, msg: str, until_closed: bool = False) -> None:
        """Answer every queued request with an error; with ``until_closed`` keep doing
        so for new ones until the engine is closed."""
        while True:
            try:
                item = self._queue.get(block=until_closed)
            except queue.Empty:
                return
            if item is None:
                return
            with self._lock:
                if item.state == "dropped":
                    continue
                item.state = "admitted"
            item.future.set_result(self._error(item.req, msg, time.time()))

    def _error(self, req: Request, msg: str, started: float) -> Completion:
        return Completion.from_request(
            req, finish_reason="error", error=msg, engine=self.name, model=self.model,
            timings=Timings(scheduled_at=req.scheduled_at, started_at=started,
                            finished_at=time.time()),
        )


def _stop_worker(q: queue.Queue[Any], workers: list[threading.Thread]) -> None:
    for w in workers:
        q.put(None)
        if w is not threading.current_thread():
            w.join()
    workers.clear()
