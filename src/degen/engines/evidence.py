"""What a server says about each generated token besides its text: the sampled
token's log-probability, and the *stopping evidence*: the log-probability the model
gave to ending (the sum over its stop tokens: end of sequence, end of turn) where it
emitted that token instead.

Both come from the OpenAI ``logprobs`` fields (vLLM, llama.cpp, OpenAI). The
sampled token's is there whenever log-probabilities are asked for; the stopping
evidence needs the top alternatives of every token (``top_logprobs``,
:data:`STOP_TOP_LOGPROBS` of them): where a stop token is among them its value is
exact, otherwise the ending had less than the last (k-th) value, which is kept as an
*upper bound* (``upper``). The local engine has the whole distribution and gives the
exact value always.

Stop tokens are recognized by their text: :data:`STOP_TOKENS` (the end tokens of the
common chat models) unless told the served model's own. The common list can count a
token that does not end this model's generations (SmolLM2 lists ``<|endoftext|>``
but ends its turns with ``<|im_end|>`` alone), which then reads as evidence of ending.
vLLM writes special tokens as themselves (``<|im_end|>``); llama-cpp-python writes
every special token as the empty string, so in its dialect ``""`` counts as a stop
token too (a special token inside an answer is almost always the end).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

#: alternatives asked with the sampled token's log-probability when only it is needed:
#: llama.cpp's server returns probabilities only when n_probs (its name for
#: top_logprobs / completions' logprobs) is above 0; vLLM, OpenAI and llama-cpp-python
#: accept 0 or 1 alike
TOP_LOGPROBS = 1
#: alternatives asked for the stopping evidence: OpenAI's and vLLM's default maximum
STOP_TOP_LOGPROBS = 20
#: the text of the end tokens of common chat and base models
STOP_TOKENS: tuple[str, ...] = (
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "</s>",
    "<end_of_turn>", "<eos>", "<|end|>", "<|return|>", "<|end▁of▁sentence|>",
    "<｜end▁of▁sentence｜>")


def stop_token_texts(dialect: str, only: Sequence[str] = ()) -> frozenset[str]:
    """The texts read as stop tokens for a server of ``dialect``: ``only`` when given
    (the served model's own), else :data:`STOP_TOKENS`."""
    return frozenset((*(only or STOP_TOKENS), *(("",) if dialect == "llamacpp" else ())))


def logprob_fields(chat: bool, top: int = TOP_LOGPROBS) -> dict[str, Any]:
    """The request fields asking for the sampled tokens' log-probabilities and ``top``
    alternatives: chat ``{"logprobs": true, "top_logprobs": top}``, completions
    ``{"logprobs": top}`` (the same on vLLM, llama.cpp and OpenAI)."""
    return {"logprobs": True, "top_logprobs": top} if chat else {"logprobs": top}


def token_logprobs(lp: Any) -> list[float] | None:
    """The sampled tokens' log-probabilities in one choice's ``logprobs`` (a chunk's or
    a whole answer's): chat ``{"content": [{"token", "logprob", ...}, ...]}`` (also what
    llama.cpp's server sends for completions), completions ``{"token_logprobs": [...]}``.
    None when there are none; tokens without a number (null) are left out."""
    if not isinstance(lp, dict):
        return None
    content = lp.get("content")
    if isinstance(content, list):
        vals = [t.get("logprob") for t in content if isinstance(t, dict)]
    elif isinstance(lp.get("token_logprobs"), list):
        vals = lp["token_logprobs"]
    else:
        return None
    return [float(v) for v in vals if _number(v)]


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _ending(pairs: Sequence[tuple[Any, Any]], stops: Collection[str]
            ) -> tuple[float, bool] | None:
    """(log-probability of ending, is an upper bound) from one token's alternatives as
    (text, log-probability) pairs; None when there are none."""
    vals = [float(v) for t, v in pairs if _number(v)]
    if not vals:
        return None
    hits = [float(v) for t, v in pairs if t in stops and _number(v)]
    if hits:
        top = max(hits)
        return top + math.log(sum(math.exp(h - top) for h in hits)), False
    return min(vals), True


def stop_evidence(lp: Any, stops: Collection[str]) -> list[tuple[float, bool]] | None:
    """The stopping evidence of every token in one choice's ``logprobs``, aligned with
    :func:`token_logprobs`: (log-probability of ending, upper bound?). The sampled
    token counts among its alternatives (a stop token the model emitted ended it).
    None when the tokens carry no alternatives."""
    if not isinstance(lp, dict):
        return None
    out: list[tuple[float, bool]] = []
    content = lp.get("content")
    if isinstance(content, list):
        for t in content:
            if not isinstance(t, dict) or not _number(t.get("logprob")):
                continue
            alts = t.get("top_logprobs")
            if not isinstance(alts, list) or not alts:
                return None
            pairs = [(a.get("token"), a.get("logprob")) for a in alts if isinstance(a, dict)]
            if not any(p[0] == t.get("token") for p in pairs):
                pairs.append((t.get("token"), t.get("logprob")))
            got = _ending(pairs, stops)
            if got is None:
                return None
            out.append(got)
        return out
    tops, vals, toks = lp.get("top_logprobs"), lp.get("token_logprobs"), lp.get("tokens")
    if not isinstance(tops, list) or not isinstance(vals, list):
        return None
    for i, v in enumerate(vals):
        if not _number(v):
            continue
        alts = tops[i] if i < len(tops) else None
        if not isinstance(alts, dict) or not alts:
            return None
        pairs = list(alts.items())
        tok = toks[i] if isinstance(toks, list) and i < len(toks) else None
        if tok is not None and tok not in alts:
            pairs.append((tok, v))
        got = _ending(pairs, stops)
        if got is None:
            return None
        out.append(got)
    return out
