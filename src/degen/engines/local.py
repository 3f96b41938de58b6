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
owns the model; concurrent callers share batches.
"""

from __future__ import annotations

import inspect
import queue
import secrets
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from degen.detect.watch import CUT_REASON
from degen.engines import hf
from degen.engines.base import Engine
from degen.engines.detokenize import Detokenizer, decode_after
from degen.errors import InvalidParams, ModelNotFound
from degen.records import CUT_REASONS, Completion, Request, SamplingParams, Timings


@dataclass(eq=False)
class _Job:
    """A request waiting for room in the batch; ``state`` (under the engine's lock)
    says whether the batch took it or its caller withdrew it first."""

    req: Request
    future: Future[Completion]
    cancel: threading.Event | None = None
    state: str = "queued"  # "queued" -> "admitted" | "dropped"


@dataclass
class _Row:
    req: Request
    future: Future[Completion]
    prompt_ids: list[int]
    max_new: int
    generator: Any
    started_at: float
    gen: list[int] = field(default_factory=list)
    first_token_at: float | None = None
    ngrams: dict[tuple[int, ...], set[int]] | None = None
    stop_hit: str | None = None
    entropy: list[float] = field(default_factory=list)
    logprobs: list[float] | None = None  # each sampled token's, when recorded
    logprob_chars: list[int] | None = None  # characters of text each token brought
    stop_logprobs: list[float] | None = None  # the model's log-probability of ending
    prompt_len: int = 0  # tokens of the prompt (prompt_ids also holds a continuation)
    study: list[list[float]] = field(default_factory=list)  # see _Batch._study
    watch: Any = None  # a Watch when the engine guards
    detok: Detokenizer | None = None  # its text deltas
    cut: Any = None  # the finding the row was cut for
    cancel: threading.Event | None = None


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
        self._study_stops = False  # benchmarks/runaway_data.py: see _Batch._study

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
        tok = self.tokenizer
        if request.messages is not None:
            if not getattr(tok, "chat_template", None):
                raise InvalidParams(
                    f"model {self.model} has no chat template; send raw 'prompt' lines "
                    "instead of 'messages'"
                )
            text = tok.apply_chat_template(
                [dict(m) for m in request.messages], add_generation_prompt=True, tokenize=False
            )
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok(request.prompt, add_special_tokens=True)["input_ids"])

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


class _Batch:
    """The running batch: rows, their KV cache (left-padded to one length), the
    attention mask over it, and per-row sampling state."""

    def __init__(self, engine: LocalEngine) -> None:
        import torch

        self.e = engine
        self.torch = torch
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: Any = None  # (B, S) long: 1 real, 0 padding
        self.next_tokens: Any = None  # (B,) token to feed at the next step
        self.positions: Any = None  # (B,) position id of that token
        self.seen: Any = None  # (B, V) bool: tokens the repetition penalty hits
        self.counts: Any = None  # (B, V) float: generated-token counts
        self.params: Any = None  # sampling.RowParams
        self._cache_arg = "past_key_values"
        self.can_merge = True
        self._stop_cols = sorted(engine._stop_ids)  # vocabulary columns of the stop ids

    # ---------------------------------------------------------------- admission
    def add(self, items: list[_Job]) -> None:
        torch = self.torch
        from transformers import DynamicCache

        from degen.engines.sampling import RowParams

        e = self.e
        rows: list[_Row] = []
        for job in items:
            req, fut = job.req, job.future
            started = time.time()
            cont = list(req.continuation_ids or ())
            try:
                ids = e.encode(req)
                room = e._ctx - len(ids) - len(cont)
                if room < 1:
                    raise InvalidParams(
                        f"prompt has {len(ids) + len(cont)} tokens; the model's context "
                        f"is {e._ctx}"
                    )
            except Exception as ex:
                fut.set_result(e._error(req, str(ex), started))
                continue
            seed = req.params.seed if req.params.seed is not None else secrets.randbits(63)
            gen = torch.Generator(device=e._device).manual_seed(seed)
            row = _Row(req, fut, ids + cont, min(req.params.max_tokens - len(cont), room),
                       gen, started, cancel=job.cancel, prompt_len=len(ids))
            if e.guard and not cont:  # a continuation is generated to its horizon
                from degen.detect.watch import stream_watch

                row.watch = stream_watch(req.messages, req.prompt, req.params.max_tokens,
                                         e.model, e.horizon, e.runaway_weights)
                row.detok = Detokenizer(e._tok)
            if e.record_logprobs:
                row.logprobs, row.logprob_chars, row.stop_logprobs = [], [], []
                row.detok = row.detok or Detokenizer(e._tok, cont)
            n = req.params.no_repeat_ngram_size
            if n > 0:
                row.ngrams = {}
                for i in range(len(ids) - n + 1):
                    row.ngrams.setdefault(tuple(ids[i:i + n - 1]), set()).add(ids[i + n - 1])
            rows.append(row)
        if not rows:
            return

        dev = e._device
        width = max(len(r.prompt_ids) for r in rows)
        pad = e._tok.pad_token_id if e._tok.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long, device=dev)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=dev)
        for i, r in enumerate(rows):
            n = len(r.prompt_ids)
            input_ids[i, width - n:] = torch.tensor(r.prompt_ids, device=dev)
            mask[i, width - n:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=e._model.config)
        with torch.inference_mode():
            out = e._model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                           use_cache=True, logits_to_keep=1, **{e._cache_arg: cache})
        logits = out.logits[:, -1, :].float()
        cache = getattr(out, e._cache_arg)

        V = logits.shape[-1]
        seen = torch.zeros((len(rows), V), dtype=torch.bool, device=dev)
        counts = torch.zeros((len(rows), V), dtype=torch.float32, device=dev)
        for i, r in enumerate(rows):
            if r.req.params.repetition_penalty_scope == "prompt+output":
                seen[i, torch.tensor(r.prompt_ids[:r.prompt_len], device=dev)] = True
            if len(r.prompt_ids) > r.prompt_len:  # a continuation's tokens were generated
                done = torch.tensor(r.prompt_ids[r.prompt_len:], device=dev)
                seen[i, done] = True
                counts[i].index_add_(0, done, torch.ones(len(done), device=dev))
        params = RowParams.from_params([r.req.params for r in rows], dev)
        self._exempt_stop_ids(seen, rows)

        new_next = self._pick(logits, rows, params, seen, counts)
        new_pos = mask.sum(-1)
        self._merge(rows, cache, mask, new_next, new_pos, seen, counts, params)
        e.max_rows_seen = max(e.max_rows_seen, len(self.rows))
        self._finish_rows()

    def _exempt_stop_ids(self, seen: Any, rows: list[_Row]) -> None:
        ids = sorted(i for i in self.e._stop_ids if i < seen.shape[1])
        if not ids:
            return
        for i, r in enumerate(rows):
            if not r.req.params.penalize_eot:
                seen[i, ids] = False

    def _merge(self, rows: list[_Row], cache: Any, mask: Any, next_tokens: Any, positions: Any,
               seen: Any, counts: Any, params: Any) -> None:
        torch = self.torch
        from degen.engines.sampling import RowParams

        if not self.rows:
            self.rows, self.cache, self.mask = rows, cache, mask
            self.next_tokens, self.positions = next_tokens, positions
            self.seen, self.counts, self.params = seen, counts, params
            self.can_merge = _plain_layers(cache)
            return
        s_old, s_new = self.mask.shape[1], mask.shape[1]
        width = max(s_old, s_new)
        F = torch.nn.functional
        for old_layer, new_layer in zip(self.cache.layers, cache.layers, strict=True):
            for attr in ("keys", "values"):
                a = getattr(old_layer, attr)
                b = getattr(new_layer, attr)
                a = F.pad(a, (0, 0, width - s_old, 0))
                b = F.pad(b, (0, 0, width - s_new, 0))
                setattr(old_layer, attr, torch.cat([a, b], dim=0))
        self.mask = torch.cat([F.pad(self.mask, (width - s_old, 0)),
                               F.pad(mask, (width - s_new, 0))])
        self.rows = self.rows + rows
        self.next_tokens = torch.cat([self.next_tokens, next_tokens])
        self.positions = torch.cat([self.positions, positions])
        self.seen = torch.cat([self.seen, seen])
        self.counts = torch.cat([self.counts, counts])
        self.params = RowParams.cat(self.params, params)

    # ---------------------------------------------------------------- decoding
    def step(self) -> None:
        torch = self.torch
        e = self.e
        ones = torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        with torch.inference_mode():
            out = e._model(input_ids=self.next_tokens.unsqueeze(1), attention_mask=self.mask,
                           position_ids=self.positions.unsqueeze(1), use_cache=True,
                           **{e._cache_arg: self.cache})
        self.cache = getattr(out, e._cache_arg)
        logits = out.logits[:, -1, :].float()
        self.positions = self.positions + 1
        self.next_tokens = self._pick(logits, self.rows, self.params, self.seen, self.counts)
        self._finish_rows()

    def _pick(self, logits: Any, rows: list[_Row], params: Any, seen: Any, counts: Any) -> Any:
        """Sample one token per row and record it in the row's state."""
        from degen.engines import sampling

        ents = sampling.entropy(logits).tolist() if self.e.record_entropy else None
        raw = logits if self.e.record_logprobs else None
        logits = sampling.apply_penalties(logits, params, seen, counts)
        if any(r.ngrams is not None for r in rows):
            banned = [self._banned(r) for r in rows]
            logits = sampling.ban_tokens(logits, banned)
        toks = sampling.sample(logits, params, [r.generator for r in rows])
        now = time.time()
        tl = toks.tolist()
        idx = self.torch.arange(len(rows), device=toks.device)
        lps = stops = None
        study: list[list[float]] | None = None
        if raw is not None:
            lsm = self.torch.log_softmax(raw, dim=-1)
            lps = lsm[idx, toks].tolist()
            stops = lsm[:, self._stop_cols].logsumexp(-1).tolist() if self._stop_cols \
                else None
            if self.e._study_stops and stops is not None:
                study = self._study(lsm, logits, params)
        counts[idx, toks] += 1
        seen[idx, toks] = True  # generated tokens count as seen in both scopes
        for k, (r, t) in enumerate(zip(rows, tl, strict=True)):
            if r.first_token_at is None:
                r.first_token_at = now
            r.gen.append(t)
            lp = lps[k] if lps is not None else None
            if r.detok is not None and t not in self.e._stop_ids:
                delta = r.detok.delta(r.gen)
                if r.logprobs is not None and r.logprob_chars is not None and lp is not None:
                    r.logprobs.append(round(lp, 4))
                    r.logprob_chars.append(len(delta))
                    if r.stop_logprobs is not None and stops is not None:
                        r.stop_logprobs.append(round(max(stops[k], -99.0), 4))
                    if study is not None:
                        r.study.append([round(x, 4) for x in study[k]])
                if r.watch is not None:
                    f = r.watch.feed(delta, None if lp is None else (lp,),
                                     None if stops is None else ((stops[k], False),))
                    if f is not None and r.cut is None:
                        r.cut = r.watch.first_of(self.e.cut_kinds)
            if ents is not None:
                r.entropy.append(round(ents[k], 4))
            n = r.req.params.no_repeat_ngram_size
            if r.ngrams is not None:
                seq = r.prompt_ids + r.gen
                if len(seq) >= n:
                    r.ngrams.setdefault(tuple(seq[-n:-1]), set()).add(seq[-1])
        return toks

    def _study(self, lsm: Any, logits: Any, params: Any) -> list[list[float]]:
        """For the runaway study (benchmarks/runaway_data.py): per row, the 20th most
        likely token's log-probability (what a server's top_logprobs=20 bounds the stop
        token by) and the log-probability of ending under the sampler's own distribution
        (penalties and warpers applied)."""
        from degen.engines import sampling

        torch = self.torch
        kth = lsm.topk(20, dim=-1).values[:, -1]
        warped = sampling.warp(logits, params).log_softmax(-1)
        greedy = params.temperature == 0
        top = logits.argmax(-1)
        stop_set = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        stop_set[self._stop_cols] = True
        sampled = warped[:, self._stop_cols].logsumexp(-1)
        sampled = torch.where(greedy, torch.where(stop_set[top], 0.0, -99.0), sampled)
        return torch.stack([kth, sampled.clamp(min=-99.0)], 1).tolist()

    @staticmethod
    def _banned(r: _Row) -> list[int]:
        if r.ngrams is None:
            return []
        n = r.req.params.no_repeat_ngram_size
        seq = r.prompt_ids + r.gen
        if len(seq) < n - 1:
            return []
        key = tuple(seq[len(seq) - (n - 1):]) if n > 1 else ()
        return sorted(r.ngrams.get(key, ()))

    def _finish_rows(self) -> None:
        e = self.e
        done: list[tuple[int, str]] = []
        for i, r in enumerate(self.rows):
            last = r.gen[-1]
            if last in e._stop_ids or (r.req.params.stop and self._stop_string(r)):
                done.append((i, "stop"))
            elif len(r.gen) >= r.max_new:
                done.append((i, "length"))
            elif r.cut is not None:
                done.append((i, CUT_REASON[r.cut.kind]))
            elif r.cancel is not None and r.cancel.is_set():
                done.append((i, "cancelled"))
        if not done:
            return
        for i, reason in done:
            self._resolve(self.rows[i], reason)
        gone = {i for i, _ in done}
        keep = [i for i in range(len(self.rows)) if i not in gone]
        self._keep(keep)

    def _stop_string(self, r: _Row) -> bool:
        longest = max(len(s) for s in r.req.params.stop)
        tail = self.e._tok.decode(r.gen[-(longest + 2):], skip_special_tokens=False)
        for s in r.req.params.stop:
            if s in tail:
                r.stop_hit = s
                return True
        return False

    def _resolve(self, r: _Row, reason: str) -> None:
        tok = self.e._tok
        ids = r.gen
        body = ids[:-1] if reason == "stop" and ids[-1] in self.e._stop_ids else ids
        text = decode_after(tok, r.prompt_ids[r.prompt_len:], body)
        if r.stop_hit is not None:
            cut = min((text.find(s) for s in r.req.params.stop if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
        extra: dict[str, Any] = {"entropy": r.entropy} if self.e.record_entropy else {}
        if r.logprobs is not None and r.logprob_chars is not None:
            extra["logprobs"], extra["logprob_chars"] = r.logprobs, r.logprob_chars
            if r.stop_logprobs:
                extra["stop_logprobs"] = r.stop_logprobs
            if r.study:
                extra["study"] = r.study
        if r.cut is not None and reason in CUT_REASONS:
            extra["cut"] = r.cut.to_dict()
        c = Completion.from_request(
            r.req, finish_reason=reason, text=text, token_ids=tuple(ids), extra=extra,
            prompt_tokens=r.prompt_len, completion_tokens=len(ids),
            engine=self.e.name, model=self.e.model,
            timings=Timings(scheduled_at=r.req.scheduled_at, started_at=r.started_at,
                            first_token_at=r.first_token_at, finished_at=time.time()),
        )
        r.future.set_result(c)

    def _keep(self, keep: list[int]) -> None:
        """Drop every row not in ``keep`` and trim padding nobody needs any more."""
        if not keep:
            self.rows = []
            self.cache = self.mask = None
            return
        torch = self.torch
        idx = torch.tensor(keep, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask[idx]
        self.next_tokens = self.next_tokens[idx]
        self.positions = self.positions[idx]
        self.seen = self.seen[idx]
        self.counts = self.counts[idx]
        self.params = self.params.select(idx)
        if not self.can_merge:  # let the cache class shrink its own (sliding) layers
            self.cache.batch_select_indices(idx)
            return
        first = int(self.mask.any(0).nonzero()[0])
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[idx, :, first:]
            layer.values = layer.values[idx, :, first:]

    def fail_all(self, msg: str) -> None:
        for r in self.rows:
            if not r.future.done():
                r.future.set_result(self.e._error(r.req, msg, r.started_at))
        self.rows = []
        self.cache = self.mask = None


def _stop_worker(q: queue.Queue[Any], workers: list[threading.Thread]) -> None:
    for w in workers:
        q.put(None)
        if w is not threading.current_thread():
            w.join()
    workers.clear()


def _plain_layers(cache: Any) -> bool:
    """True when every cache layer is a plain full-length tensor pair we can pad/merge."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
