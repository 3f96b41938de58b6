"""Samples from a model in memory, recorded and judged as degen records (seed 004).

:func:`sample` generates from a fixed set of prompts with transformers ``generate``
(batched, left-padded) and returns one :class:`~degen.records.Completion` per prompt and
sample, each with what the local engine records (``extra``):

- ``logprobs``: each generated token's log-probability under the model, and
  ``logprob_chars``: the characters of text each token brought (the watch reads the
  two together; the end token has neither);
- ``entropy``: the entropy (nats) of the model's next-token distribution at each step
  (the end token's step included);
- ``stop_logprobs``: the log-probability the model gave to ending at each step (summed
  over its end ids, :func:`degen.engines.hf.stop_token_ids`).

All three are of the model's own distribution (its logits before the repetition penalty,
temperature and truncation), as the local engine records them. Each record carries degen's
verdict (:func:`degen.detect.verdict.judge`, the same watch as everywhere else).

Sampling runs under a forked random state (``torch.random.fork_rng``) seeded with
``seed``, so the same model gives the same samples and the caller's random streams (a
training run's shuffling and dropout) are untouched; the model's train/eval mode is
put back as it was. torch and transformers are imported when called.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from typing import Any

from degen.errors import InvalidParams
from degen.records import Completion, Request, SamplingParams, Timings

ENGINE = "transformers-generate"


def _prompts(prompts: Iterable[Any]) -> list[tuple[str, tuple[Mapping[str, str], ...] | None,
                                                     str | None]]:
    """(id, messages, text) of each prompt: a string (raw text), a degen
    :class:`~degen.prompts.Prompt`, or a mapping with ``prompt`` or ``messages``."""
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            out.append((str(i), None, p))
        elif isinstance(p, Mapping):
            pid = str(p.get("id", i))
            if ("messages" in p) == ("prompt" in p):
                raise InvalidParams(f"prompt {pid}: give exactly one of 'prompt' or 'messages'")
            msgs = p.get("messages")
            out.append((pid, tuple(dict(m) for m in msgs) if msgs else None, p.get("prompt")))
        elif hasattr(p, "messages") and hasattr(p, "text"):  # degen.prompts.Prompt
            out.append((str(p.id), p.messages, p.text))
        else:
            raise InvalidParams(f"prompt {i}: expected a string, a degen Prompt or a mapping "
                                f"with 'prompt' or 'messages', got {type(p).__name__}")
    if not out:
        raise InvalidParams("sample() needs at least one prompt")
    return out


class _Recorder:
    """A logits processor that keeps, per step, the entropy and the log-probability of
    ending of the scores it is given, and each chosen token's log-probability (known one
    step later, from ``input_ids``). Placed first among the processors it sees raw
    logits; it hands them on unchanged."""

    def __init__(self, torch: Any, stop_cols: list[int], prompt_width: int) -> None:
        from degen.engines.sampling import entropy

        self.torch = torch
        self._entropy = entropy
        self.stop_cols = stop_cols
        self.width = prompt_width
        self.entropy: list[Any] = []  # (B,) per step
        self.stop: list[Any] = []
        self.chosen: list[Any] = []
        self._last: Any = None  # the previous step's log-softmax, (B, V)

    def _take(self, tokens: Any) -> None:
        idx = self.torch.arange(tokens.shape[0], device=tokens.device)
        self.chosen.append(self._last[idx, tokens])

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = self.torch
        if self._last is not None:
            self._take(input_ids[:, -1])
        lsm = torch.log_softmax(scores.float(), dim=-1)
        self.entropy.append(self._entropy(lsm))  # a log-softmax is its own logits
        if self.stop_cols:
            self.stop.append(lsm[:, self.stop_cols].logsumexp(-1))
        self._last = lsm
        return scores

    def finish(self, sequences: Any) -> None:
        if self._last is not None and sequences.shape[1] > self.width + len(self.chosen):
            self._take(sequences[:, self.width + len(self.chosen)])
        self._last = None


def sample(model: Any, tokenizer: Any, prompts: Iterable[Any], *, max_new_tokens: int = 128,
           seed: int = 0, do_sample: bool = True, temperature: float = 1.0,
           top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0,
           repetition_penalty: float = 1.0, n: int = 1, batch_size: int = 16,
           model_name: str | None = None, judge: bool = True) -> list[Completion]:
    """Generate ``n`` samples of each prompt and return them as judged records.

    Args:
        model: a transformers causal LM (in memory, on any device; train or eval mode).
        tokenizer: its tokenizer.
        prompts: raw text strings, degen :class:`~degen.prompts.Prompt` objects, or
            mappings with ``prompt`` or ``messages`` (and an ``id``).
        max_new_tokens: the cap of each generation.
        seed: seeds the forked random state: the same model and seed give the same samples.
        do_sample: False (or ``temperature=0``) decodes greedily.
        temperature, top_p, top_k, min_p, repetition_penalty: as in degen's
            :class:`~degen.records.SamplingParams` (``top_k=0`` and ``top_p=1`` are off;
            generate's own default of top-k 50 is not applied).
        n: samples per prompt.
        batch_size: rows per ``generate`` call.
        model_name: what the records call the model (default: its ``name_or_path``).
        judge: store degen's verdict on each record (``Completion.verdict``).
    """
    import torch
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    from degen.engines import hf
    from degen.engines.detokenize import Detokenizer, decode_after
    from degen.engines.hf import stop_token_ids

    if n < 1 or batch_size < 1 or max_new_tokens < 1:
        raise InvalidParams(f"n, batch_size and max_new_tokens must be >= 1, got {n}, "
                            f"{batch_size}, {max_new_tokens}")
    greedy = not do_sample or temperature == 0
    params = SamplingParams(temperature=0.0 if greedy else temperature, top_p=top_p,
                            top_k=top_k, min_p=min_p, repetition_penalty=repetition_penalty,
                            max_tokens=max_new_tokens, seed=seed)
    items = _prompts(prompts)
    stops = sorted(stop_token_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        (stops[0] if stops else 0)
    name = model_name or getattr(model.config, "name_or_path", "") or type(model).__name__
    requests = []
    for pid, messages, text in items:
        ids = hf.encode_prompt(tokenizer, messages, text, "the tokenizer")
        for k in range(n):
            i = len(requests)
            req = Request(request_id=f"{pid}-{k}" if n > 1 else pid, prompt_id=pid,
                          params=params, messages=messages, prompt=text, index=i)
            requests.append((req, ids))
    device = next(model.parameters()).device
    gen_kw: dict[str, Any] = {"do_sample": not greedy, "max_new_tokens": max_new_tokens,
                              "min_new_tokens": 0, "repetition_penalty": 1.0,
                              "no_repeat_ngram_size": 0, "use_cache": True,
                              "pad_token_id": pad, "eos_token_id": stops or None,
                              "return_dict_in_generate": True}
    if greedy:
        gen_kw.update(temperature=None, top_p=None, top_k=None, min_p=None)
    else:
        gen_kw.update(temperature=temperature, top_p=top_p, top_k=top_k,
                      min_p=min_p or None)
    forked = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    was_training = model.training
    out: list[Completion] = []
    try:
        model.eval()
        with torch.random.fork_rng(devices=forked), torch.inference_mode():
            torch.manual_seed(seed)
            for b in range(0, len(requests), batch_size):
                batch = requests[b:b + batch_size]
                width = max(len(ids) for _, ids in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for r, (_, ids) in enumerate(batch):
                    input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                    mask[r, width - len(ids):] = 1
                rec = _Recorder(torch, stops, width)
                procs = [rec]
                if repetition_penalty != 1.0:  # after the recorder: it sees raw logits
                    procs.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
                started = time.time()
                res = model.generate(input_ids=input_ids.to(device),
                                     attention_mask=mask.to(device),
                                     logits_processor=LogitsProcessorList(procs), **gen_kw)
                rec.finish(res.sequences)
                finished = time.time()
                seqs = res.sequences[:, width:].tolist()
                ent = torch.stack(rec.entropy, 1).tolist()
                chosen = torch.stack(rec.chosen, 1).tolist()
                stop_lp = torch.stack(rec.stop, 1).tolist() if rec.stop else None
                for r, (req, ids) in enumerate(batch):
                    row = seqs[r]
                    end = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
                    gen = row[:end]
                    ended = bool(gen) and gen[-1] in stops
                    detok = Detokenizer(tokenizer)
                    lps: list[float] = []
                    chars: list[int] = []
                    stop_lps: list[float] = []
                    for j, t in enumerate(gen):
                        if t in stops:
                            continue
                        lps.append(round(chosen[r][j], 4))
                        chars.append(len(detok.delta(gen[:j + 1])))
                        if stop_lp is not None:
                            stop_lps.append(round(max(stop_lp[r][j], -99.0), 4))
                    extra: dict[str, Any] = {"entropy": [round(x, 4) for x in ent[r][:len(gen)]],
                                             "logprobs": lps, "logprob_chars": chars}
                    if stop_lp is not None:
                        extra["stop_logprobs"] = stop_lps
                    body = gen[:-1] if ended else gen
                    c = Completion.from_request(
                        req, finish_reason="stop" if ended else "length",
                        text=decode_after(tokenizer, [], body), token_ids=tuple(gen),
                        prompt_tokens=len(ids), completion_tokens=len(gen), engine=ENGINE,
                        model=name, extra=extra,
                        timings=Timings(started_at=started, finished_at=finished))
                    out.append(c)
    finally:
        model.train(was_training)
    if judge:
        from degen.detect.verdict import default_detectors
        from degen.detect.verdict import judge as judge_one

        dl = default_detectors()
        out = [dataclasses.replace(c, verdict=judge_one(c, dl)) for c in out]
    return out


__all__ = ["sample"]
