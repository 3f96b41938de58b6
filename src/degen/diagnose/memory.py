"""Memory maths for serving a model, and what one runaway generation costs.

Seed 003 does this by hand for BERT-base; :func:`estimate` does it for any
:class:`~degen.diagnose.arch.Arch`:

- **parameters by part**: embeddings, attention (grouped-query: the key and value
  projections are ``kv_heads * head_dim`` wide), MLP (gated MLPs have three
  matrices), norms, and the LM head (nothing when tied to the embeddings). A GGUF's
  tensor table gives the exact counts; the formula is checked against it in tests;
- **weight bytes** for a ``dtype`` (int4: half a byte per parameter, scales aside);
- **KV cache** per token: ``2 (K and V) x layers x kv_heads x head_dim x bytes``;
  layers with a sliding window stop growing at their window;
- **what fits** in ``gpu_mem`` (times ``utilization``, vLLM's default 0.9) beside the
  weights: full-context sequences, and the tokens one runaway takes to fill it all;
- **a runaway's cost**: the KV cache one sequence holds at 8K, 32K and 128K tokens,
  and the time it takes to get there decoding at ``decode_tok_s``.

>>> from degen.diagnose.arch import Arch
>>> m = estimate(Arch.from_preset("bert-base"), dtype="fp16", kv_dtype="fp16", context=4096)
>>> m.kv_bytes_at_context / 2**20  # seed 003: 2 x 12 x 12 x 4096 x 64 x 2 bytes
144.0
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from degen.diagnose.arch import Arch
from degen.errors import InvalidParams

DTYPE_BYTES = {"fp32": 4.0, "float32": 4.0, "bf16": 2.0, "bfloat16": 2.0, "fp16": 2.0,
               "float16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
RUNAWAY_TOKENS = (8192, 32768, 131072)
GIB = 1024**3


def dtype_bytes(name: str) -> float:
    try:
        return DTYPE_BYTES[name.lower()]
    except KeyError:
        raise InvalidParams(f"unknown dtype {name!r}; use one of fp32, bf16, fp16, fp8, "
                            "int8, int4") from None


def parse_size(text: str | float) -> int:
    """Bytes from ``80``, ``80GiB``, ``80G``, ``24GB``, ``512MiB`` (a bare number is
    GiB; GB means 10^9)."""
    if isinstance(text, int | float):
        return int(text * GIB)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?)(B?)\s*", str(text), re.I)
    if not m or (not m.group(2) and (m.group(3) or m.group(4))):
        raise InvalidParams(f"cannot read a memory size from {text!r}; write e.g. 80GiB or 24GB")
    value, unit, binary, b = m.group(1), m.group(2).upper(), m.group(3), m.group(4)
    if not unit:
        return int(float(value) * GIB)
    power = "KMGT".index(unit) + 1
    base = 1024 if binary or not b else 1000  # "80G" is GiB, as nvidia-smi shows it
    return int(float(value) * base**power)


def parameters(a: Arch) -> dict[str, int]:
    """Parameters by part, from the shape (see the module doc)."""
    h, L = a.hidden, a.layers
    q, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
    norm = 2 * h if a.layernorm else h
    emb = a.vocab * h
    if a.encoder:
        emb += a.max_context * h + a.type_vocab * h + norm  # positions, token types, LN
    attn = h * q + 2 * h * kv + q * h
    if a.qkv_bias:
        attn += q + 2 * kv
    if a.o_bias:
        attn += h
    if a.qk_norm:
        attn += 2 * a.head_dim
    mlp = (3 if a.gated_mlp else 2) * h * a.intermediate
    if a.mlp_bias:
        mlp += a.intermediate * (2 if a.gated_mlp else 1) + h
    parts = {
        "embeddings": emb,
        "attention": L * attn,
        "mlp": L * mlp,
        "norms": L * a.norms_per_layer * norm + (0 if a.encoder else norm),
        "lm_head": 0 if a.tied else a.vocab * h,
    }
    if a.encoder:
        parts["pooler"] = h * h + h
    return parts


@dataclass(frozen=True, slots=True)
class Estimate:
    """What :func:`estimate` found; ``to_dict`` is ``degen memory --json``."""

    arch: Arch
    params: dict[str, int]
    params_source: str  # "gguf tensors" or "config"
    formula_params: dict[str, int]
    dtype: str
    kv_dtype: str
    weight_bytes: int
    kv_bytes_per_token: int  # while every layer still grows
    context: int
    kv_bytes_at_context: int
    gpu_mem: int | None
    utilization: float
    free_for_kv: int | None  # gpu_mem * utilization - weights
    sequences_at_context: int | None
    runaway_tokens_to_fill: int | None
    decode_tok_s: float
    runaway: list[dict[str, Any]]
    notes: list[str]

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = self.arch.to_dict()
        d["total_params"] = self.total_params
        return d


def kv_bytes(a: Arch, tokens: int, per_value: float) -> int:
    """KV cache of one sequence of ``tokens`` tokens (sliding layers capped)."""
    per_layer = 2 * a.kv_heads * a.head_dim * per_value
    windows = a.windows or (None,) * a.layers
    return int(sum(per_layer * (tokens if w is None else min(tokens, w)) for w in windows))


def tokens_to_fill(a: Arch, budget: int, per_value: float) -> int | None:
    """Tokens one sequence can hold before its KV cache needs more than ``budget``
    bytes (``None``: never, every layer has a window)."""
    if budget <= 0:
        return 0
    windows = a.windows or (None,) * a.layers
    full = sum(1 for w in windows if w is None)
    if full == len(windows):
        return int(budget // (2 * a.kv_heads * a.head_dim * per_value * full))
    if not full and kv_bytes(a, max(w or 0 for w in windows), per_value) <= budget:
        return None
    return _search(a, budget, per_value)  # sliding layers fill, then only full ones grow


def _search(a: Arch, budget: int, per_value: float) -> int:
    lo, hi = 0, 1
    while kv_bytes(a, hi, per_value) <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if kv_bytes(a, mid, per_value) <= budget else (lo, mid)
    return lo


def estimate(a: Arch, dtype: str = "bf16", kv_dtype: str | None = None,
             context: int | None = None, gpu_mem: int | None = None,
             utilization: float = 0.9, decode_tok_s: float = 70.0) -> Estimate:
    """The numbers of ``degen memory`` (see the module doc). ``kv_dtype`` defaults to
    ``dtype`` (int4 weights keep a bf16 cache); ``context`` to the model's."""
    wb = dtype_bytes(dtype)
    if kv_dtype is None:
        kv_dtype = dtype if dtype_bytes(dtype) >= 1 else "bf16"
    kb = dtype_bytes(kv_dtype)
    if not 0 < utilization <= 1:
        raise InvalidParams(f"utilization must be in (0, 1], got {utilization}")
    if decode_tok_s <= 0:
        raise InvalidParams(f"decode tokens/s must be > 0, got {decode_tok_s}")
    if context is not None and context < 1:
        raise InvalidParams(f"--context must be >= 1 token, got {context}")
    ctx = context if context is not None else a.max_context
    if ctx is None or ctx < 1:
        raise InvalidParams("the model does not say its context length; pass --context N")
    formula = parameters(a)
    params = dict(a.tensor_params) if a.tensor_params else formula
    notes: list[str] = []
    if a.max_context and ctx > a.max_context:
        notes.append(f"--context {ctx} is beyond the {a.max_context} tokens the model "
                     "advertises")
    if a.sliding_layers:
        w = sorted({x for x in a.windows if x is not None})
        notes.append(f"{a.sliding_layers} of {a.layers} layers attend to a sliding window of "
                     f"{'/'.join(map(str, w))} tokens: their KV cache stops growing there")
    if a.encoder:
        notes.append("an encoder keeps no KV cache between steps; the cache figures are "
                     "seed 003's for comparison")
    if wb < 1:
        notes.append("int4 weights are counted at half a byte per parameter, without the "
                     "quantization scales (GGUF Q4 formats add 12-25%)")
    weights = math.ceil(sum(params.values()) * wb)
    per_token = kv_bytes(a, 1, kb)
    at_ctx = kv_bytes(a, ctx, kb)
    free = seqs = fill = None
    if gpu_mem is not None:
        free = int(gpu_mem * utilization) - weights
        if free <= 0:
            notes.append(f"the weights ({weights / GIB:.1f} GiB) do not fit in "
                         f"{utilization:.0%} of {gpu_mem / GIB:.1f} GiB")
            seqs, fill = 0, 0
        else:
            seqs = int(free // at_ctx)
            fill = tokens_to_fill(a, free, kb)
    runaway = []
    for n in RUNAWAY_TOKENS:
        kvb = kv_bytes(a, n, kb)
        runaway.append({"tokens": n, "kv_bytes": kvb, "kv_gib": round(kvb / GIB, 3),
                        "seconds": round(n / decode_tok_s, 1),
                        "beyond_model_context": bool(a.max_context and n > a.max_context),
                        "fits": None if free is None else kvb <= max(free, 0)})
    return Estimate(arch=a, params=params,
                    params_source="gguf tensors" if a.tensor_params else "config",
                    formula_params=formula, dtype=dtype, kv_dtype=kv_dtype,
                    weight_bytes=weights, kv_bytes_per_token=per_token, context=ctx,
                    kv_bytes_at_context=at_ctx, gpu_mem=gpu_mem, utilization=utilization,
                    free_for_kv=free, sequences_at_context=seqs, runaway_tokens_to_fill=fill,
                    decode_tok_s=decode_tok_s, runaway=runaway, notes=notes)


# ---------------------------------------------------------------------- text
def human_bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            v = n / size
            return f"{v:,.0f} {unit}" if v == int(v) else f"{v:,.2f} {unit}"
    return f"{n:,.0f} B"


def human_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def render(m: Estimate) -> str:
    """The text ``degen memory`` prints."""
    a = m.arch
    lines = [f"{a.name} ({a.model_type or 'unknown type'}; {a.source})",
             f"  {a.layers} layers, hidden {a.hidden}, {a.heads} heads, {a.kv_heads} KV heads "
             f"x {a.head_dim}, MLP {a.intermediate}{' gated' if a.gated_mlp else ''}, "
             f"vocab {a.vocab:,}, context {a.max_context:,}"
             + (", tied embeddings" if a.tied else ""),
             "", f"parameters ({m.params_source})"]
    total = m.total_params
    for part, n in m.params.items():
        if n:
            lines.append(f"  {part:<11} {n:>16,}  {n / total:6.1%}")
    lines.append(f"  {'total':<11} {total:>16,}")
    wt = f"weights in {m.dtype}: {human_bytes(m.weight_bytes)}"
    if a.stored_bytes:
        wt += f" (as stored in the file, {a.stored_type}: {human_bytes(a.stored_bytes)})"
    lines += ["", wt, "",
              f"KV cache ({m.kv_dtype}): {human_bytes(m.kv_bytes_per_token)} per token "
              f"(2 x {a.layers} layers x {a.kv_heads} KV heads x {a.head_dim} x "
              f"{dtype_bytes(m.kv_dtype):g} bytes)",
              f"  at {m.context:,} tokens: {human_bytes(m.kv_bytes_at_context)} per sequence"]
    if m.gpu_mem is not None:
        lines += ["", f"with {human_bytes(m.gpu_mem)} of GPU memory at {m.utilization:.0%} "
                      f"utilization: {human_bytes(max(m.free_for_kv or 0, 0))} left for the "
                      "KV cache"]
        if m.free_for_kv and m.free_for_kv > 0:
            fill = m.runaway_tokens_to_fill
            lines.append(f"  {m.sequences_at_context:,} full-context sequences fit "
                         f"({m.context:,} tokens each)")
            if m.sequences_at_context == 0 and fill is not None:
                lines.append(f"  not one fits: a server needs its context capped at "
                             f"{fill:,} tokens (vLLM: --max-model-len)")
            if fill is None:
                lines.append("  one runaway never fills it alone: every layer has a window")
            else:
                lines.append(f"  one runaway fills it alone after {fill:,} tokens "
                             f"({human_seconds(fill / m.decode_tok_s)} at "
                             f"{m.decode_tok_s:g} tok/s)")
                if a.max_context and fill > a.max_context:
                    share = kv_bytes(a, a.max_context, dtype_bytes(m.kv_dtype)) / m.free_for_kv
                    lines.append(f"  (past the model's {a.max_context:,}-token context: "
                                 f"stopped there, it holds {share:.0%} of it)")
    lines += ["", f"one runaway sequence, decoding at {m.decode_tok_s:g} tok/s:",
              f"  {'tokens':>8}  {'KV cache':>10}  {'time':>7}"]
    for r in m.runaway:
        flags = []
        if r["beyond_model_context"]:
            flags.append("beyond the model's context")
        if r["fits"] is False:
            flags.append("does not fit")
        lines.append(f"  {r['tokens']:>8,}  {human_bytes(r['kv_bytes']):>10}  "
                     f"{human_seconds(r['seconds']):>7}" + (f"  ({', '.join(flags)})"
                                                            if flags else ""))
    if m.notes:
        lines += [""] + [f"note: {n}" for n in m.notes]
    return "\n".join(lines)
