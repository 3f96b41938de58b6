"""One guarded generation request: the client's shape, the per-choice watches, and the
answer built from the upstream's stream.

The guard always asks the upstream for a stream. :class:`Exchange` is fed the parsed
server-sent events one at a time (:meth:`Exchange.process`); it watches the text of
every choice (and the sampled tokens' log-probabilities when the chunks carry them)
with a :class:`~degen.detect.watch.Watch` for every kind. When it confirms a kind that
is cut, the choice is marked cut: the caller stops relaying it, closes the upstream
once every choice is done, and sends :meth:`Exchange.cut_chunk` (``finish_reason``
``"repetition"`` for a loop, ``"degenerate"`` for babble or glued words, or
``"length"`` for strict clients; the evidence in a ``degen`` field). Log-probabilities
the guard asked for and the client did not are taken out of what the client gets. For
a client that did not ask for a stream, the pieces are put back together into one
ordinary response (:meth:`Exchange.response`). No I/O happens here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from degen.detect.base import Finding
from degen.detect.loop import prompt_text
from degen.detect.watch import CUT_REASON, DEFAULT, TEXT_KINDS, Watch, WatchConfig
from degen.engines.evidence import stop_evidence, token_logprobs
from degen.outcomes import default_horizon
from degen.records import CUT_REASONS as STOPPED_EARLY

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def _logprobs(lp: Any) -> list[float] | None:
    """:func:`token_logprobs`, with a fast path for the usual one-token chunk."""
    if type(lp) is dict:
        content = lp.get("content")
        if type(content) is list and len(content) == 1 and type(content[0]) is dict:
            v = content[0].get("logprob")
            if type(v) is float:
                return [v]
    return token_logprobs(lp)


@dataclass(slots=True)
class ChoiceState:
    """What the guard knows of one choice (``index``) of the answer."""

    index: int
    watch: Watch | None
    tokens: int = 0  # generated tokens: logprobs received, else chunks that carried text
    fed: int = 0  # characters of reasoning and text read so far (the watch's offsets)
    finish: str | None = None
    finding: Finding | None = None  # the finding the choice was cut for
    cut: dict[str, Any] | None = None  # the ``degen`` evidence when cut
    role: str | None = None
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: dict[str, Any] | None = None
    refusal: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.cut is not None or self.finish is not None


class Exchange:
    """State of one request to a generation endpoint. See the module doc.

    Args:
        endpoint: :data:`CHAT` or :data:`COMPLETIONS`.
        client_body: the JSON the client sent.
        upstream_body: what goes upstream (after defaults, overrides and the cap).
        max_tokens: the generation limit the upstream was given.
        detect: watch the choices (every kind); ``cut_kinds``: the kinds that end a
            choice (the others are only recorded).
        cut_reason: ``"kind"`` (the finish_reason of the kind: ``"repetition"`` or
            ``"degenerate"``) or ``"length"`` (for clients that accept only OpenAI's
            values); the evidence names the kind either way.
        strip_logprobs: the guard asked the upstream for log-probabilities the client
            did not ask for: take them out of what the client gets.
        horizon, runaway_weights: the runaway prediction's (see
            :func:`~degen.detect.watch.stream_watch`).
        stop_texts: read each token's stopping evidence off its top alternatives with
            these as the stop tokens (None: not read).
    """

    def __init__(self, endpoint: str, client_body: dict[str, Any],
                 upstream_body: dict[str, Any], max_tokens: int, *, detect: bool = True,
                 cut_kinds: Iterable[str] = TEXT_KINDS, cut_reason: str = "kind",
                 strip_logprobs: bool = False, horizon: int | None = None,
                 runaway_weights: Mapping[str, Any] | None = None,
                 stop_texts: Collection[str] | None = None) -> None:
        self.endpoint = endpoint
        self.chat = endpoint == CHAT
        self.stream = bool(client_body.get("stream"))
        opts = client_body.get("stream_options")
        self.client_usage = self.stream and isinstance(opts, dict) and bool(
            opts.get("include_usage"))
        n = upstream_body.get("n", 1)
        self.n = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1
        self.max_tokens = max_tokens
        self.detect = detect
        self.cut_kinds = frozenset(cut_kinds)
        self.cut_reason = cut_reason
        self.strip_logprobs = strip_logprobs
        self.horizon, self.runaway_weights = horizon, runaway_weights
        self.stop_texts = stop_texts
        self._config = WatchConfig(runaway={"weights": runaway_weights}) \
            if runaway_weights else DEFAULT
        self._prompt: str | None = None
        self._body = upstream_body
        self.choices: dict[int, ChoiceState] = {}
        self.meta: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None
        self.started = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_stream = False  # [DONE] or every choice finished upstream
        # the text the last chunk carried, per choice: (index, start, end, reasoning?)
        self.parts: list[tuple[int, int, int, bool]] = []
        self.events = 0  # stream events read (for the metrics)

    # ------------------------------------------------------------------ feeding
    @property
    def prompt(self) -> str:
        if self._prompt is None:
            b = self._body
            msgs = b.get("messages") if isinstance(b.get("messages"), list) else None
            self._prompt = prompt_text(messages=msgs, prompt=b.get("prompt") if not self.chat
                                       else None)
        return self._prompt

    def choice(self, index: int) -> ChoiceState:
        st = self.choices.get(index)
        if st is None:
            watch = Watch(self.prompt, horizon=self.horizon or default_horizon(
                self.max_tokens), model=self._body.get("model"), config=self._config) \
                if self.detect else None
            st = self.choices[index] = ChoiceState(index, watch)
        return st

    def process(self, chunk: dict[str, Any]) -> tuple[bool, list[int]]:
        """Feed one upstream chunk. Returns (changed, newly cut choice indices); when
        ``changed``, the parts of cut choices were removed from ``chunk["choices"]``
        and log-probabilities to strip set to None."""
        if not self.meta:
            self.meta = {k: chunk[k] for k in ("id", "created", "model", "system_fingerprint")
                         if chunk.get(k) is not None}
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list):
            return False, []
        keep: list[Any] = []
        cut_now: list[int] = []
        changed = False
        self.parts = parts = []
        for ch in choices:
            if not isinstance(ch, dict):
                keep.append(ch)
                continue
            idx = ch.get("index", 0)
            st = self.choice(idx if isinstance(idx, int) else 0)
            if st.cut is not None:  # cut already: whatever still comes is dropped
                changed = True
                continue
            if self.chat:
                delta = ch.get("delta") or {}
                text = delta.get("content")
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            else:
                delta, text, reasoning = None, ch.get("text"), None
            lp = ch.get("logprobs")
            lps = _logprobs(lp) if lp is not None else None
            stops = stop_evidence(lp, self.stop_texts) if lps and self.stop_texts else None
            if text or reasoning or lps:
                st.tokens += len(lps) if lps else 1
                start = st.fed
                has_reasoning = isinstance(reasoning, str) and bool(reasoning)
                st.fed += (len(reasoning) if has_reasoning else 0) + (
                    len(text) if isinstance(text, str) else 0)
                if st.fed > start:
                    parts.append((st.index, start, st.fed, has_reasoning))
                if self.first_token_at is None and (text or reasoning):
                    self.first_token_at = time.monotonic()
                w = st.watch
                if w is not None and not w.done:
                    found = False
                    if isinstance(reasoning, str) and reasoning:
                        found = w.feed(reasoning, lps, stops) is not None
                        lps = stops = None  # fed once, with the chunk's first text
                    body = text if isinstance(text, str) else ""
                    if body or lps:
                        found = (w.feed(body, lps, stops) is not None) or found
                    f = w.first_of(self.cut_kinds) if found and self.cut_kinds else None
                    if f is not None and not ch.get("finish_reason"):  # (one that ended
                        # in this very chunk is not cut: its end wins, as in the engines)
                        st.finding = f
                        st.cut = self._evidence(st, f)
                        cut_now.append(st.index)
                        changed = True
                        continue
            if lp is not None and self.strip_logprobs:
                ch["logprobs"] = None  # what the client would have seen without them
                changed = True
            if not self.stream:
                self._collect(st, ch, delta, text, reasoning)
            if ch.get("finish_reason"):
                st.finish = ch["finish_reason"]
                told = self.client_reason(st)
                if told != st.finish:
                    ch["finish_reason"] = told
                    changed = True
                if st.watch is not None:  # what ran to the end (counted, not cut)
                    st.watch.finish(ended=st.finish not in ("length", *STOPPED_EARLY))
            keep.append(ch)
        if changed:
            chunk["choices"] = keep
        return changed, cut_now

    def _evidence(self, st: ChoiceState, f: Finding) -> dict[str, Any]:
        d = f.to_dict()
        d.update(index=st.index, completion_tokens=st.tokens, max_tokens=self.max_tokens)
        return d

    def reason(self, st: ChoiceState) -> str:
        """The finish_reason the client gets for a cut choice."""
        assert st.finding is not None
        return "length" if self.cut_reason == "length" else CUT_REASON[st.finding.kind]

    def client_reason(self, st: ChoiceState) -> str | None:
        """The finish_reason the client gets: a cut's (:meth:`reason`), or the
        upstream's, except that an upstream that stopped a generation early itself
        (vLLM's repetition_detection: ``"repetition"``) is reported as ``"length"``
        too under ``cut_reason="length"``, for clients that know no other values."""
        if st.cut is not None:
            return self.reason(st)
        if self.cut_reason == "length" and st.finish in STOPPED_EARLY:
            return "length"
        return st.finish

    def _collect(self, st: ChoiceState, ch: dict[str, Any], delta: dict[str, Any] | None,
                 text: Any, reasoning: Any) -> None:
        if isinstance(text, str) and text:
            st.text.append(text)
        if isinstance(reasoning, str) and reasoning:
            st.reasoning.append(reasoning)
        if delta:
            if delta.get("role"):
                st.role = delta["role"]
            if isinstance(delta.get("refusal"), str):
                st.refusal.append(delta["refusal"])
            for tc in delta.get("tool_calls") or ():
                if not isinstance(tc, dict):
                    continue
                cur = st.tool_calls.setdefault(tc.get("index", len(st.tool_calls)),
                                               {"id": None, "type": "function",
                                                "function": {"name": "", "arguments": ""}})
                if tc.get("id"):
                    cur["id"] = tc["id"]
                if tc.get("type"):
                    cur["type"] = tc["type"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    cur["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    cur["function"]["arguments"] += fn["arguments"]
        lp = ch.get("logprobs")
        if isinstance(lp, dict):
            if st.logprobs is None:
                st.logprobs = {}
            for k, v in lp.items():
                if isinstance(v, list):
                    st.logprobs.setdefault(k, []).extend(v)
                elif k not in st.logprobs:
                    st.logprobs[k] = v

    def trim_cuts(self) -> None:
        """End each cut choice's collected text at its last clean sentence (before the
        degeneration began): what ``--holdback`` does for a client that did not ask for
        a stream. A choice with reasoning text keeps its text as it is."""
        from degen.guard.holdback import clean_end

        for st in self.choices.values():
            if st.cut is None or st.reasoning or st.finding is None:
                continue
            text = "".join(st.text)
            onset = st.finding.start_char if st.finding.start_char is not None else len(text)
            st.text = [text[:clean_end(text, onset)]]

    # ------------------------------------------------------------------ state
    @property
    def any_cut(self) -> bool:
        return any(st.cut is not None for st in self.choices.values())

    def all_done(self) -> bool:
        """Every choice is finished or cut (after a cut: time to close the upstream)."""
        return len(self.choices) >= self.n and all(st.done for st in self.choices.values())

    @property
    def completion_tokens(self) -> int:
        if self.usage and not self.any_cut and isinstance(
                self.usage.get("completion_tokens"), int):
            return self.usage["completion_tokens"]
        return sum(st.tokens for st in self.choices.values())

    def final_usage(self) -> dict[str, Any]:
        """The upstream's usage when it reported it for a whole answer; after a cut (or
        from a server that does not report usage), the completion tokens counted here and
        the prompt tokens only if the upstream gave them."""
        if self.usage and not self.any_cut:
            return self.usage
        pt = (self.usage or {}).get("prompt_tokens")
        ct = sum(st.tokens for st in self.choices.values())
        return {"prompt_tokens": pt, "completion_tokens": ct,
                "total_tokens": pt + ct if isinstance(pt, int) else None}

    def finish_reasons(self) -> list[str]:
        """Each choice's finish reason as it truly was (a cut is named by its kind's
        reason even when the client is told ``"length"``): for metrics and the log."""
        return [(CUT_REASON[st.finding.kind] if st.cut is not None and st.finding is not None
                 else st.finish or "unfinished") for _, st in sorted(self.choices.items())]

    # ------------------------------------------------------------------ output
    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.meta.get("id") or f"degen-{uuid.uuid4().hex}", "object": obj,
                "created": self.meta.get("created") or int(time.time()),
                "model": self.meta.get("model") or self._body.get("model")}

    def cut_chunk(self, index: int) -> dict[str, Any]:
        """The last chunk of a cut choice: ``finish_reason`` ``"repetition"`` (vLLM's
        name) for a loop, ``"degenerate"`` for babble and glued words (or ``"length"``),
        the evidence in ``degen``."""
        st = self.choices[index]
        reason = self.reason(st)
        if self.chat:
            choice = {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}
            out = self._head("chat.completion.chunk")
        else:
            choice = {"index": index, "text": "", "logprobs": None, "finish_reason": reason}
            out = self._head("text_completion")
        out["choices"] = [choice]
        out["degen"] = st.cut
        return out

    def usage_chunk(self) -> dict[str, Any]:
        out = self._head("chat.completion.chunk" if self.chat else "text_completion")
        out["choices"] = []
        out["usage"] = self.final_usage()
        return out

    def response(self) -> dict[str, Any]:
        """The whole answer for a client that did not ask for a stream."""
        choices = []
        first_cut = None
        for idx, st in sorted(self.choices.items()):
            reason = self.client_reason(st)
            if self.chat:
                msg: dict[str, Any] = {"role": st.role or "assistant",
                                       "content": "".join(st.text)
                                       if st.text or not st.tool_calls else None}
                if st.reasoning:
                    msg["reasoning_content"] = "".join(st.reasoning)
                if st.refusal:
                    msg["refusal"] = "".join(st.refusal)
                if st.tool_calls:
                    msg["tool_calls"] = [st.tool_calls[k] for k in sorted(st.tool_calls)]
                c: dict[str, Any] = {"index": idx, "message": msg, "logprobs": st.logprobs,
                                     "finish_reason": reason}
            else:
                c = {"index": idx, "text": "".join(st.text), "logprobs": st.logprobs,
                     "finish_reason": reason}
            if st.cut is not None:
                c["degen"] = st.cut
                first_cut = first_cut or st.cut
            choices.append(c)
        out = self._head("chat.completion" if self.chat else "text_completion")
        out["choices"] = choices
        out["usage"] = self.final_usage()
        if self.meta.get("system_fingerprint"):
            out["system_fingerprint"] = self.meta["system_fingerprint"]
        if first_cut is not None:
            out["degen"] = first_cut
        return out
