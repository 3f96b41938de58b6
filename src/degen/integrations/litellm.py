"""A guardrail for the LiteLLM proxy: degen's watch on every chat answer it relays.

:class:`DegenGuardrail` is a LiteLLM ``CustomGuardrail`` that the proxy loads from its
``config.yaml`` (see docs/integrations/litellm.md)::

    guardrails:
      - guardrail_name: degen
        litellm_params:
          guardrail: degen.integrations.litellm.DegenGuardrail
          mode: post_call
          default_on: true

It judges with the guard proxy's own per-request state,
:class:`degen.guard.exchange.Exchange`, fed the chunks LiteLLM relays, so the kinds,
the finish reasons and the evidence are exactly those of ``degen guard``:

- a **stream** is watched chunk by chunk (``async_post_call_streaming_iterator_hook``);
  when a kind is confirmed the choice's last chunk carries degen's finish_reason
  (``"repetition"`` for a loop, ``"degenerate"`` for babble and glued words) and the
  evidence, and the hook stops reading, which closes the upstream's stream: the server
  stops generating;
- a **whole answer** (``async_post_call_success_hook``) has already been generated;
  its text is read by the same watch in word-sized pieces, as a stream would have
  brought it, and a degenerate one is cut where the watch confirmed the kind, with the
  same finish_reason and evidence. Clean answers pass unchanged.

The evidence (:meth:`Exchange.cut_chunk`'s ``degen`` dict: kind, score, message,
start_char, evidence, completion_tokens, max_tokens) is put both at the top level of
the chunk or response (``degen``, where ``degen guard`` puts it) and in LiteLLM's
``provider_specific_fields["degen"]``. LiteLLM maps finish reasons it does not know
to ``"stop"`` when a choice is built; the hooks set degen's after building, which
LiteLLM relays as is.

Options (``litellm_params`` in the config, beside ``guardrail`` and ``mode``):
``cut_kinds`` (the kinds that end an answer: a list or ``"loop,gibberish"``; default
the text kinds), ``cut_reason`` (``"kind"``, or ``"length"`` for clients that accept
only OpenAI's values; the evidence names the kind either way), ``max_tokens`` (the
generation limit assumed when a request gives none, for the runaway horizon),
``horizon``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any

from degen.detect.watch import TEXT_KINDS
from degen.detect.watch import cut_kinds as parse_cut_kinds
from degen.errors import InvalidParams
from degen.guard.exchange import CHAT, Exchange
from degen.integrations._lazy import lazy_classes

#: the generation limit assumed for a request that gives none (the guard's cap)
DEFAULT_MAX_TOKENS = 8192
# a whole answer is read in word-sized pieces (the whitespace before a word with it, as
# tokenizers cut), so the watch confirms where a stream of it would have
_PIECE = re.compile(r"\s*\S+|\s+")


def _request_max_tokens(data: dict[str, Any], default: int) -> int:
    for k in ("max_completion_tokens", "max_tokens"):
        v = data.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return default


def _dump(obj: Any) -> Any:
    if obj is None or isinstance(obj, dict | list | str | int | float):
        return obj
    dump = getattr(obj, "model_dump", None)
    return dump() if callable(dump) else obj


def chunk_dict(chunk: Any) -> dict[str, Any]:
    """The parts of a LiteLLM ``ModelResponseStream`` that :meth:`Exchange.process`
    reads, as the plain dict of an OpenAI chunk (cheaper than a full ``model_dump``)."""
    choices = []
    for ch in getattr(chunk, "choices", None) or ():
        delta = getattr(ch, "delta", None)
        d: dict[str, Any] = {}
        if delta is not None:
            for k in ("content", "reasoning_content", "role"):
                v = getattr(delta, k, None)
                if v is not None:
                    d[k] = v
        choices.append({"index": getattr(ch, "index", 0) or 0, "delta": d,
                        "logprobs": _dump(getattr(ch, "logprobs", None)),
                        "finish_reason": getattr(ch, "finish_reason", None)})
    out: dict[str, Any] = {"choices": choices}
    for k in ("id", "created", "model", "system_fingerprint"):
        v = getattr(chunk, k, None)
        if v is not None:
            out[k] = v
    usage = getattr(chunk, "usage", None)
    if usage is not None:
        out["usage"] = _dump(usage)
    return out


class _Guardrail:
    """The body of :class:`DegenGuardrail`; the class itself is built on LiteLLM's
    ``CustomGuardrail`` when first read (:func:`_build`), with these methods in its own
    namespace (LiteLLM looks for the stream hook in the class's own ``__dict__``)."""

    def __init__(self, cut_kinds: str | Iterable[str] | None = None, cut_reason: str = "kind",
                 max_tokens: int = DEFAULT_MAX_TOKENS, horizon: int | None = None,
                 **kwargs: Any) -> None:
        kinds = parse_cut_kinds(cut_kinds) if cut_kinds is not None else frozenset(TEXT_KINDS)
        if cut_reason not in ("kind", "length"):
            raise InvalidParams(f"cut_reason must be 'kind' or 'length', got {cut_reason!r}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidParams(f"max_tokens must be a whole number >= 1, got {max_tokens!r}")
        if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int)
                                    or horizon < 1):
            raise InvalidParams(f"horizon must be a whole number >= 1, got {horizon!r}")
        self.cut_kinds, self.cut_reason = kinds, cut_reason
        self.max_tokens, self.horizon = max_tokens, horizon
        kwargs.setdefault("guardrail_name", "degen")
        kwargs.setdefault("event_hook", "post_call")
        from litellm.integrations.custom_guardrail import CustomGuardrail

        CustomGuardrail.__init__(self, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ judging
    def exchange(self, data: dict[str, Any], stream: bool) -> Exchange:
        """The guard's state for one request (``data``: LiteLLM's request dict)."""
        body = {k: data.get(k) for k in ("model", "messages", "n") if data.get(k) is not None}
        client = {"stream": stream, "stream_options": data.get("stream_options")}
        return Exchange(CHAT, client, body, _request_max_tokens(data, self.max_tokens),
                        cut_kinds=self.cut_kinds, cut_reason=self.cut_reason,
                        horizon=self.horizon)

    @staticmethod
    def _mark(obj: Any, evidence: dict[str, Any]) -> None:
        """Put the evidence where the client finds it (see the module doc)."""
        psf = getattr(obj, "provider_specific_fields", None)
        obj.provider_specific_fields = {**(psf if isinstance(psf, dict) else {}),
                                        "degen": evidence}
        obj.degen = evidence

    def cut_chunk(self, ex: Exchange, index: int) -> Any:
        """The last chunk of a cut choice, as LiteLLM's ``ModelResponseStream``."""
        from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices

        d = ex.cut_chunk(index)
        choice = StreamingChoices(index=index, delta=Delta(content=None))
        choice.finish_reason = d["choices"][0]["finish_reason"]  # unmapped: degen's own
        out = ModelResponseStream(id=d["id"], created=d["created"], model=d["model"],
                                  choices=[choice])
        self._mark(out, d["degen"])
        return out

    # ------------------------------------------------------------------ hooks
    async def async_post_call_streaming_iterator_hook(
            self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        """Relay the stream, watching it; end a choice that degenerates (see the module
        doc). Returning closes ``response``: LiteLLM then closes the upstream."""
        ex = self.exchange(request_data, stream=True)
        it: AsyncIterator[Any] = aiter(response)
        async for chunk in it:
            d = chunk_dict(chunk)
            changed, cut = ex.process(d)
            if changed:
                kept = {c["index"] for c in d["choices"]}
                rest = [ch for ch in (getattr(chunk, "choices", None) or ())
                        if (getattr(ch, "index", 0) or 0) in kept]
                if rest:
                    for ch in rest:  # a finish reason the guard renamed (cut_reason)
                        told = next(c["finish_reason"] for c in d["choices"]
                                    if c["index"] == (getattr(ch, "index", 0) or 0))
                        if told and ch.finish_reason != told:
                            ch.finish_reason = told
                    chunk.choices = rest
                    yield chunk
            else:
                yield chunk
            for index in cut:
                yield self.cut_chunk(ex, index)
            if cut and ex.all_done():
                break
        if ex.any_cut and ex.client_usage:
            yield self._usage_chunk(ex, request_data)

    @staticmethod
    def _usage_chunk(ex: Exchange, data: dict[str, Any]) -> Any:
        """The usage a client that asked for it gets after a cut: the tokens generated
        until the cut; the prompt's as the upstream gave them, else as LiteLLM counts
        them for a stream that brings none (``litellm.token_counter``)."""
        import litellm
        from litellm.types.utils import ModelResponseStream, Usage

        u = ex.final_usage()
        pt = u.get("prompt_tokens")
        if not isinstance(pt, int):
            try:
                pt = int(litellm.token_counter(model=str(data.get("model") or ""),
                                               messages=data.get("messages") or []))
            except Exception:  # a count is not worth failing the answer
                pt = 0
        ct = int(u.get("completion_tokens") or 0)
        out = ModelResponseStream(id=ex.meta.get("id"), created=ex.meta.get("created"),
                                  model=ex.meta.get("model"), choices=[])
        out.usage = Usage(prompt_tokens=pt, completion_tokens=ct, total_tokens=pt + ct)
        return out

    async def async_post_call_success_hook(self, data: dict[str, Any], user_api_key_dict: Any,
                                           response: Any) -> Any:
        """Judge a whole chat answer; cut a degenerate one (see the module doc). Anything
        else (other endpoints, streams) passes untouched."""
        from litellm.types.utils import ModelResponse

        if not isinstance(response, ModelResponse) or data.get("stream") is True:
            return response
        ex = self.exchange(data, stream=False)
        cut_at: dict[int, int] = {}  # choice -> characters of its text kept
        for ch in response.choices or ():
            msg = getattr(ch, "message", None)
            text = getattr(msg, "content", None)
            index = getattr(ch, "index", 0) or 0
            if not isinstance(text, str):
                continue
            kept = 0
            for m in _PIECE.finditer(text):
                _, cut = ex.process({"choices": [{"index": index, "delta": {"content":
                                                  m.group()}, "finish_reason": None}]})
                if cut:
                    cut_at[index] = kept
                    break
                kept = m.end()
            else:
                ex.process({"choices": [{"index": index, "delta": {},
                                         "finish_reason": ch.finish_reason or "stop"}]})
        if not cut_at:
            return response
        first = None
        for ch in response.choices:
            index = getattr(ch, "index", 0) or 0
            if index not in cut_at:
                continue
            st = ex.choices[index]
            ch.message.content = ch.message.content[:cut_at[index]]
            ch.finish_reason = ex.reason(st)  # unmapped: degen's own
            assert st.cut is not None
            ch.degen = st.cut
            first = first or st.cut
        assert first is not None
        self._mark(response, first)
        return response


DegenGuardrail: type  # built by __getattr__ on first use (LiteLLM imported then)


def _build() -> type:
    from litellm.integrations.custom_guardrail import CustomGuardrail

    ns = {k: v for k, v in vars(_Guardrail).items() if k not in ("__dict__", "__weakref__")}
    ns["__doc__"] = ("degen's watch on every chat answer a LiteLLM proxy relays (see the "
                     "module doc). Keyword arguments other than degen's own go to "
                     "LiteLLM's ``CustomGuardrail`` (the proxy passes ``guardrail_name``, "
                     "``event_hook``, ``default_on`` and the other ``litellm_params``).")
    return type("DegenGuardrail", (CustomGuardrail,), ns)


__getattr__ = lazy_classes(__name__, {"DegenGuardrail": _build},
                           "LiteLLM's proxy, in its environment: pip install 'degen[litellm]'")


__all__ = ["DEFAULT_MAX_TOKENS", "DegenGuardrail", "chunk_dict"]
