"""The records that flow through degen: :class:`SamplingParams`, :class:`Request`,
:class:`Completion` and its :class:`Timings`.

Every record is a frozen dataclass that validates itself on construction and
round-trips exactly through JSON (``Completion.from_dict(c.to_dict()) == c``).
Keys a reader does not know are kept in ``extra`` rather than dropped, so a
record written by a newer degen survives being rewritten by an older one.

Semantics worth pinning down (engines follow these; see docs/parameters.md):

- ``temperature`` 0 means greedy decoding. Penalties still apply before the argmax.
- ``repetition_penalty`` is *multiplicative*, as in HF transformers and vLLM: a
  positive logit of an already-seen token is divided by it, a negative one
  multiplied. ``repetition_penalty_scope`` says which tokens count as seen:
  ``"prompt+output"`` (HF and vLLM) or ``"output"`` (only generated tokens).
  ``penalize_eot=False`` exempts the model's stop tokens (e.g. ``<|im_end|>``,
  which every chat prompt contains) from the penalty.
- ``presence_penalty`` and ``frequency_penalty`` are *additive*, as in OpenAI,
  over generated tokens only.
- ``top_k`` 0, ``top_p`` 1, ``min_p`` 0, ``no_repeat_ngram_size`` 0 turn each off.
- ``repetition_min_count`` (0 = off) asks the server to stop a generation whose last
  tokens are one pattern of ``repetition_min_pattern``..``repetition_max_pattern``
  tokens repeated that many times: vLLM's ``repetition_detection`` (it ends such a
  generation with finish_reason ``"repetition"``). Only the vLLM dialect sends it.
- ``finish_reason`` is ``"stop"`` (an end token or a stop string), ``"length"``
  (``max_tokens`` or the context ran out: *capped*), ``"repetition"`` (cut early
  because a loop was confirmed: by degen's watch, or by vLLM's repetition_detection),
  ``"degenerate"`` (cut early because the watch confirmed babble or glued words),
  ``"runaway"`` (cut early because the watch predicted it would not end by the
  horizon), ``"error"`` (the request failed; never counted as a runaway) or
  ``"cancelled"`` (the caller withdrew it: a pruned trial, a dropped racing arm,
  Ctrl-C; its partial text and tokens are kept, it is neither a failure nor a success,
  and a resumed run sends it again). A *failure* is a runaway (it would not end by the
  horizon: known by extension, or predicted) or a degenerate kind; reaching the cap
  is not one by itself (see :mod:`degen.measurement.failure`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from degen.errors import InvalidParams

FinishReason = Literal["stop", "length", "repetition", "degenerate", "runaway", "error",
                       "cancelled"]
FINISH_REASONS: tuple[str, ...] = ("stop", "length", "repetition", "degenerate", "runaway",
                                   "error", "cancelled")
CUT_REASONS: tuple[str, ...] = ("repetition", "degenerate", "runaway")  # cut early
PENALTY_SCOPES: tuple[str, ...] = ("prompt+output", "output")


def _check_number(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False,
                  hint: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParams(f"{name} must be a number, got {value!r}")
    value = float(value)
    bad = (
        not math.isfinite(value)
        or value > hi
        or (value <= lo if lo_open else value < lo)
    )
    if bad:
        left = "(" if lo_open else "["
        rng = f"{left}{lo:g}, {hi:g}]" if math.isfinite(hi) else f"{left}{lo:g}, inf)"
        raise InvalidParams(f"{name} must be in {rng}, got {value:g}{hint}")
    return value


def _check_int(name: str, value: Any, lo: int, hi: int | None = None, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidParams(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InvalidParams(f"{name} must be {rng}, got {value}{hint}")
    return value


def _from_mapping(cls: type, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Split ``data`` into known constructor arguments, rejecting unknown keys."""
    if not isinstance(data, Mapping):
        raise InvalidParams(f"{what} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InvalidParams(
            f"unknown {what} field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
        )
    return dict(data)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample one generation. Validated on construction; see the module doc."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_penalty_scope: str = "prompt+output"
    penalize_eot: bool = True
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    repetition_min_count: int = 0
    repetition_max_pattern: int = 64
    repetition_min_pattern: int = 1
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        s = object.__setattr__
        s(self, "temperature", _check_number("temperature", self.temperature, 0, 100,
                                             hint=" (0 = greedy)"))
        s(self, "top_p", _check_number("top_p", self.top_p, 0, 1, lo_open=True,
                                       hint=" (1 = off)"))
        s(self, "top_k", _check_int("top_k", self.top_k, 0, hint=" (0 = off)"))
        s(self, "min_p", _check_number("min_p", self.min_p, 0, 1, hint=" (0 = off)"))
        s(self, "repetition_penalty", _check_number(
            "repetition_penalty", self.repetition_penalty, 0, 10, lo_open=True,
            hint=" (1 = off; it is multiplicative, as in HF/vLLM)"))
        if self.repetition_penalty_scope not in PENALTY_SCOPES:
            raise InvalidParams(
                f"repetition_penalty_scope must be one of {', '.join(PENALTY_SCOPES)}, "
                f"got {self.repetition_penalty_scope!r}"
            )
        if not isinstance(self.penalize_eot, bool):
            raise InvalidParams(f"penalize_eot must be true or false, got {self.penalize_eot!r}")
        s(self, "presence_penalty", _check_number(
            "presence_penalty", self.presence_penalty, -2, 2, hint=" (additive, as OpenAI)"))
        s(self, "frequency_penalty", _check_number(
            "frequency_penalty", self.frequency_penalty, -2, 2, hint=" (additive, as OpenAI)"))
        s(self, "no_repeat_ngram_size", _check_int(
            "no_repeat_ngram_size", self.no_repeat_ngram_size, 0, hint=" (0 = off)"))
        s(self, "repetition_min_count", _check_int(
            "repetition_min_count", self.repetition_min_count, 0,
            hint=" (0 = off; vLLM's repetition_detection needs at least 2)"))
        if self.repetition_min_count == 1:
            raise InvalidParams("repetition_min_count must be 0 (off) or at least 2: a "
                                "pattern seen once is not a repetition")
        s(self, "repetition_min_pattern", _check_int(
            "repetition_min_pattern", self.repetition_min_pattern, 1))
        s(self, "repetition_max_pattern", _check_int(
            "repetition_max_pattern", self.repetition_max_pattern,
            self.repetition_min_pattern, hint=" (at least repetition_min_pattern)"))
        s(self, "max_tokens", _check_int("max_tokens", self.max_tokens, 1))
        if self.seed is not None:
            s(self, "seed", _check_int("seed", self.seed, 0, 2**63 - 1))
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, list | tuple) or not all(isinstance(x, str) and x for x in stop):
            raise InvalidParams(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if len(stop) > 16:
            raise InvalidParams(f"stop takes at most 16 strings, got {len(stop)}")
        s(self, "stop", tuple(stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **changes: Any) -> SamplingParams:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["stop"] = list(self.stop)
        return d

    def changed(self) -> dict[str, Any]:
        """Only the fields that differ from the defaults."""
        default = SamplingParams()
        return {k: v for k, v in self.to_dict().items() if getattr(default, k) != getattr(self, k)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SamplingParams:
        return cls(**_from_mapping(cls, data, "sampling parameter"))


@dataclass(frozen=True, slots=True)
class Request:
    """One generation to run: a chat conversation (``messages``) or a raw ``prompt``."""

    request_id: str
    prompt_id: str
    params: SamplingParams
    messages: tuple[Mapping[str, str], ...] | None = None
    prompt: str | None = None
    run: int = 0
    index: int = 0
    scheduled_at: float | None = None
    #: an extension (see :mod:`degen.experiments.load.extend`): the tokens (and their text) already
    #: generated for this prompt, to be continued, not repeated; ``params.max_tokens``
    #: then counts them too (the horizon), and the answer holds only the new tokens
    continuation_ids: tuple[int, ...] | None = None
    continuation_text: str | None = None
    continued: int = 0  # how many tokens that is (the length of ``continuation_ids``)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise InvalidParams(
                f"request {self.request_id}: give exactly one of messages or prompt"
            )
        if self.messages is not None:
            object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
        if self.continuation_ids is not None:
            object.__setattr__(self, "continuation_ids",
                               tuple(int(t) for t in self.continuation_ids))
            object.__setattr__(self, "continued", len(self.continuation_ids))
        if self.continued and self.params.max_tokens <= self.continued:
            raise InvalidParams(f"request {self.request_id}: a continuation of "
                                f"{self.continued} tokens needs max_tokens above that")


@dataclass(frozen=True, slots=True)
class Timings:
    """Wall-clock times (seconds since the epoch) of one request's life."""

    scheduled_at: float | None = None
    started_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None

    @property
    def latency_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def ttft_s(self) -> float | None:
        if self.started_at is None or self.first_token_at is None:
            return None
        return self.first_token_at - self.started_at

    @property
    def queue_s(self) -> float | None:
        if self.scheduled_at is None or self.started_at is None:
            return None
        return self.started_at - self.scheduled_at


@dataclass(frozen=True, slots=True)
class Completion:
    """The outcome of one request: what was asked, what came back, how and when.

    ``finish_reason="length"`` means the generation ended because ``max_tokens`` (or
    the model's context) ran out before any end token: it was *capped* (seed 000's
    proxy for a runaway; an extension, ``extra["outcome"]``, says whether it would have
    ended by the horizon).
    ``"error"`` means no generation could be had; ``error`` says why.
    """

    SCHEMA: ClassVar[int] = 1

    request_id: str
    prompt_id: str
    params: SamplingParams
    finish_reason: str
    text: str = ""
    messages: tuple[Mapping[str, str], ...] | None = None
    prompt: str | None = None
    token_ids: tuple[int, ...] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    timings: Timings = field(default_factory=Timings)
    engine: str = ""
    model: str = ""
    run: int = 0
    index: int = 0
    attempts: int = 1
    #: what the detectors said (see degen.detect.verdict), when they were run
    verdict: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise InvalidParams(
                f"finish_reason must be one of {', '.join(FINISH_REASONS)}, "
                f"got {self.finish_reason!r}"
            )
        if self.finish_reason == "error" and not self.error:
            raise InvalidParams("a Completion with finish_reason 'error' needs an error text")
        if self.messages is not None:
            object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
        if self.token_ids is not None:
            object.__setattr__(self, "token_ids", tuple(int(t) for t in self.token_ids))

    # --- derived -----------------------------------------------------------------
    @property
    def is_error(self) -> bool:
        return self.finish_reason == "error"

    @property
    def is_cancelled(self) -> bool:
        """Withdrawn by the caller before it ended: neither a failure nor a success."""
        return self.finish_reason == "cancelled"

    @property
    def is_measured(self) -> bool:
        """Counts in a failure rate: neither an error nor cancelled."""
        return self.finish_reason not in ("error", "cancelled")

    @property
    def is_capped(self) -> bool:
        """Reached ``max_tokens`` (or the context) without an end token (whether it
        would have ended later is what :func:`degen.measurement.failure.status` says)."""
        return self.finish_reason == "length"

    @property
    def is_cut(self) -> bool:
        """Stopped early because the watch confirmed a loop, babble or glued words, or
        predicted it would never end."""
        return self.finish_reason in CUT_REASONS

    @classmethod
    def from_request(cls, request: Request, **fields: Any) -> Completion:
        """A completion for ``request``, copying its identity and inputs."""
        return cls(
            request_id=request.request_id,
            prompt_id=request.prompt_id,
            params=request.params,
            messages=request.messages,
            prompt=request.prompt,
            run=request.run,
            index=request.index,
            **fields,
        )

    # --- JSON --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": self.SCHEMA}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if f.name == "params":
                v = v.to_dict()
            elif f.name == "timings":
                v = dataclasses.asdict(v)
            elif f.name == "messages" and v is not None:
                v = [dict(m) for m in v]
            elif f.name == "token_ids" and v is not None:
                v = list(v)
            d[f.name] = v
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Completion:
        if not isinstance(data, Mapping):
            raise InvalidParams(f"a completion record must be a JSON object, got {data!r:.60}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k != "schema"}
        extra.update(data.get("extra") or {})
        missing = {"request_id", "prompt_id", "params", "finish_reason"} - set(known)
        if missing:
            raise InvalidParams(f"completion record lacks {', '.join(sorted(missing))}")
        known["params"] = SamplingParams.from_dict(known["params"])
        if "timings" in known:
            known["timings"] = Timings(**_from_mapping(Timings, known["timings"], "timings"))
        return cls(**known, extra=extra)

    @classmethod
    def from_json(cls, line: str) -> Completion:
        return cls.from_dict(json.loads(line))


def derive_seed(seed: int, *parts: int | str) -> int:
    """A 63-bit seed from ``seed`` and ``parts``, stable across Python versions."""
    h = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1
