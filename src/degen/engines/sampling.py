"""Per-row logits processing and sampling for the local engine.

Every row of a batch carries its own :class:`~degen.records.SamplingParams`, so
each knob is a tensor with one value per row and each stage skips rows for which
it is off. Nothing has a hidden default: transformers' ``generate`` quietly adds
``top_k=50`` when sampling; here a knob is off unless the params turn it on.

Order of operations (one step, one row):

1. repetition penalty over the row's *seen* set (multiplicative, HF/vLLM form);
2. presence and frequency penalties over generated tokens (additive, OpenAI form);
3. ``no_repeat_ngram_size`` bans (HF semantics: n-grams of prompt + output);
4. greedy rows (temperature 0) take the argmax here;
5. temperature, then top_k, then top_p, then min_p (each on the distribution left
   by the stage before), then one draw from the row's own ``torch.Generator``.

Because a row draws only from its own generator, a seeded request samples the
same tokens whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

NEG_INF = float("-inf")


@dataclass
class RowParams:
    """Per-row knobs as tensors of shape (B,), on the logits' device."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    repetition_penalty: torch.Tensor
    presence_penalty: torch.Tensor
    frequency_penalty: torch.Tensor

    @classmethod
    def from_params(cls, params: Sequence[Any], device: torch.device | str) -> RowParams:
        def f(name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.tensor([getattr(p, name) for p in params], dtype=dtype, device=device)

        return cls(
            temperature=f("temperature"),
            top_k=f("top_k", torch.long),
            top_p=f("top_p"),
            min_p=f("min_p"),
            repetition_penalty=f("repetition_penalty"),
            presence_penalty=f("presence_penalty"),
            frequency_penalty=f("frequency_penalty"),
        )

    def select(self, idx: torch.Tensor) -> RowParams:
        return RowParams(**{k: v[idx] for k, v in vars(self).items()})

    @staticmethod
    def cat(a: RowParams, b: RowParams) -> RowParams:
        return RowParams(**{k: torch.cat([getattr(a, k), getattr(b, k)]) for k in vars(a)})


def apply_penalties(
    logits: torch.Tensor,
    p: RowParams,
    seen: torch.Tensor,
    counts: torch.Tensor,
) -> torch.Tensor:
    """Repetition (multiplicative, over ``seen``) then presence/frequency (additive,
    over generated ``counts``). Returns a new tensor; ``logits`` is not modified."""
    out = logits
    rep = p.repetition_penalty
    if bool((rep != 1.0).any()):
        r = rep.unsqueeze(1)
        penalized = torch.where(out > 0, out / r, out * r)
        out = torch.where(seen, penalized, out)
    if bool((p.presence_penalty != 0).any() or (p.frequency_penalty != 0).any()):
        out = (
            out
            - p.frequency_penalty.unsqueeze(1) * counts
            - p.presence_penalty.unsqueeze(1) * (counts > 0).to(out.dtype)
        )
    return out


def ban_tokens(logits: torch.Tensor, banned: Sequence[Sequence[int]]) -> torch.Tensor:
    """Set ``logits[row, t] = -inf`` for each row's banned tokens."""
    rows = [i for i, b in enumerate(banned) for _ in b]
    if not rows:
        return logits
    cols = [t for b in banned for t in b]
    out = logits.clone()
    out[rows, cols] = NEG_INF
    return out


def warp(logits: torch.Tensor, p: RowParams) -> torch.Tensor:
    """Temperature, top_k, top_p, min_p. Rows with temperature 0 are left as they are
    (the caller takes their argmax). Returns masked, temperature-scaled logits."""
    temp = torch.where(p.temperature > 0, p.temperature, torch.ones_like(p.temperature))
    out = logits / temp.unsqueeze(1)

    k = p.top_k
    if bool((k > 0).any()):
        vocab = out.shape[-1]
        kk = torch.where(k > 0, k.clamp(max=vocab), torch.full_like(k, vocab))
        kmax = int(kk.max())
        top = torch.topk(out, kmax, dim=-1).values
        thresh = top.gather(1, (kk - 1).unsqueeze(1))
        out = out.masked_fill(out < thresh, NEG_INF)

    if bool((p.top_p < 1).any()):
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass strictly above each token
        drop_sorted = before >= p.top_p.unsqueeze(1)
        drop_sorted[:, 0] = False  # always keep the most likely token
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        out = out.masked_fill(drop, NEG_INF)

    if bool((p.min_p > 0).any()):
        probs = out.softmax(-1)
        thresh = p.min_p.unsqueeze(1) * probs.max(-1, keepdim=True).values
        out = out.masked_fill(probs < thresh, NEG_INF)
    return out


def sample(
    logits: torch.Tensor,
    p: RowParams,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """One token per row: argmax for greedy rows, a draw from the warped distribution
    (with the row's own generator) for the others. ``logits`` are already penalized."""
    greedy = p.temperature == 0
    out = logits.argmax(-1)
    if bool(greedy.all()):
        return out
    probs = warp(logits, p).softmax(-1)
    for i in (~greedy).nonzero().flatten().tolist():
        out[i] = torch.multinomial(probs[i], 1, generator=generators[i])[0]
    return out


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) per row."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).nan_to_num().sum(-1)
