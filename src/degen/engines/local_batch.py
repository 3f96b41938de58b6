"""The local engine's running batch: its rows, their KV cache and per-row sampling state.

What :class:`~degen.engines.local.LocalEngine` hands its worker thread's batch, and
how the batch keeps it (see :mod:`degen.engines.local` for the rules):

- :class:`_Job`: a request queued for the batch; :class:`_Row`: one request
  generating in it (its tokens, detokenizer, watch, log-probabilities).
- :class:`_Batch`: admission (left-padded prefill, then the new rows' KV cache
  merged into the running one), each decoding step (sampling, stop strings, the
  watch's cut), finishing rows into Completions, and the cache surgery that drops
  finished rows and trims padding nobody needs any more.
- :class:`BatchOwner`: what the batch reads from the engine that owns it.

torch and transformers are imported when a batch is built, never at import time.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from degen.detect.watch import CUT_REASON
from degen.engines.detokenize import Detokenizer, decode_after
from degen.errors import InvalidParams
from degen.records import CUT_REASONS, Completion, Request, Timings


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


class BatchOwner(Protocol):
    """What a :class:`_Batch` reads from its engine (:class:`~degen.engines.local.LocalEngine`,
    once loaded)."""

    name: ClassVar[str]
    model: str
    guard: bool
    cut_kinds: frozenset[str]
    horizon: int | None
    runaway_weights: Mapping[str, Any] | None
    record_entropy: bool
    record_logprobs: bool
    max_rows_seen: int
    _study_stops: bool
    _model: Any
    _tok: Any
    _device: Any
    _ctx: int
    _cache_arg: str
    _stop_ids: frozenset[int]

    def encode(self, request: Request) -> list[int]: ...

    def _error(self, req: Request, msg: str, started: float) -> Completion: ...


class _Batch:
    """The running batch: rows, their KV cache (left-padded to one length), the
    attention mask over it, and per-row sampling state."""

    def __init__(self, engine: BatchOwner) -> None:
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


def _plain_layers(cache: Any) -> bool:
    """True when every cache layer is a plain full-length tensor pair we can pad/merge."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
