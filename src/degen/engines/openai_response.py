"""Reading an OpenAI-compatible server's answer, for :class:`~degen.engines.openai.OpenAIEngine`.

- ``_Retryable`` and ``_Fatal``: the two ways an attempt fails (worth another try or
  not); ``_error_detail``: the message of an error response.
- :class:`SSEData` and ``_sse_payloads``: the ``data:`` payloads of a server-sent
  event stream.
- :class:`StreamReader`: one streamed completion, chunk by chunk: its text, the
  sampled tokens' log-probabilities and stopping evidence
  (:mod:`degen.engines.evidence`), the finish reason, and the watch's cut.
- :func:`read_reply`: the same from a whole (not streamed) response.

No I/O here: the engine opens the connection and feeds what it reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from degen.engines.evidence import stop_evidence, token_logprobs

if TYPE_CHECKING:
    import httpx


class _Retryable(Exception):
    """A failure worth another try (transport error, timeout, 429, 5xx)."""

    def __init__(self, msg: str, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


class _Fatal(Exception):
    """A failure another try will not fix (4xx, malformed response)."""


def _error_detail(r: httpx.Response) -> str:
    try:
        data = r.json()
    except ValueError:
        return r.text[:200] or r.reason_phrase
    if isinstance(data, Mapping):
        err = data.get("error", data)
        if isinstance(err, Mapping):
            return str(err.get("message") or err)[:200]
        return str(err)[:200]
    return str(data)[:200]


class SSEData:
    """The ``data:`` payloads of a server-sent event stream, fed one line at a time:
    :meth:`feed` returns a payload when a blank line ends an event (multi-line data
    joined), :meth:`end` the last one of a stream that stops without a blank line.
    Comments and other fields (``event:``, ``id:``, ``retry:``) carry no chunk."""

    def __init__(self) -> None:
        self._buf: list[str] = []

    def feed(self, line: str) -> str | None:
        if line == "":
            return self.end()
        if not line.startswith(":"):
            field, _, value = line.partition(":")
            if field == "data":
                self._buf.append(value[1:] if value.startswith(" ") else value)
        return None

    def end(self) -> str | None:
        if not self._buf:
            return None
        payload, self._buf = "\n".join(self._buf), []
        return payload


def _sse_payloads(lines: Iterator[str]) -> Iterator[str]:
    events = SSEData()
    for line in lines:
        if (payload := events.feed(line)) is not None:
            yield payload
    if (payload := events.end()) is not None:
        yield payload


class StreamReader:
    """One streamed completion, read one SSE payload at a time (:meth:`feed`).

    Args:
        logprobs: read the chunks' log-probabilities (when asked for).
        stop_evidence: also read the stopping evidence from their alternatives
            (``stop_texts``: the texts of the model's stop tokens).
        watch: a :class:`~degen.detect.watch.Watch` fed the text and evidence as they
            come, or ``None``; ``cut_kinds``: the findings that cut the stream.
    """

    def __init__(self, logprobs: bool, stop_evidence: bool, stop_texts: Collection[str],
                 watch: Any = None, cut_kinds: Iterable[str] = ()) -> None:
        self.ask_logprobs, self.stop_texts = logprobs, stop_texts
        self.watch, self.cut_kinds = watch, cut_kinds
        self.parts: list[str] = []
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.first: float | None = None
        self.chunks = 0
        self.done = False  # [DONE] came
        self.cut: dict[str, Any] | None = None
        self.cut_kind = ""
        self.lps: list[float] = []
        self.stops: list[tuple[float, bool]] | None = [] if stop_evidence else None
        self.lp_chars: list[int] | None = []  # text each token brought (None: not aligned)

    @property
    def ended(self) -> bool:
        """The stream said it was over (a finish_reason or ``[DONE]``)."""
        return self.done or self.finish is not None

    def feed(self, payload: str) -> bool:
        """Read one payload; True when reading should stop: ``[DONE]``, or the watch
        cut the generation (``finish`` is then its finish reason)."""
        if payload == "[DONE]":
            self.done = True
            return True
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise _Fatal(f"malformed server-sent event: {payload[:120]!r}") from None
        if not isinstance(chunk, dict):
            raise _Fatal(f"malformed server-sent event: {payload[:120]!r}")
        if "error" in chunk and not chunk.get("choices"):
            raise _Fatal(f"the server reported an error mid-stream: "
                         f"{str(chunk['error'])[:200]}")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            self._choice(choice)
        if self.cut is not None:
            if self.finish is not None:  # it ended in this very chunk: nothing
                self.cut = None  # was cut (as in the local engine, its end wins)
                return False
            from degen.detect.watch import CUT_REASON

            self.finish = CUT_REASON[self.cut_kind]
            return True
        return False

    def _choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        piece = delta.get("content") if "delta" in choice else choice.get("text")
        lp = choice.get("logprobs") if self.ask_logprobs else None
        got = token_logprobs(lp) if lp is not None else None
        if got:
            self.lps.extend(got)
            if self.lp_chars is not None:
                self.lp_chars.extend([len(piece or "")] + [0] * (len(got) - 1))
            if self.stops is not None:
                ev = stop_evidence(lp, self.stop_texts)
                if ev is not None and len(ev) == len(got):
                    self.stops.extend(ev)
                else:
                    self.stops = None  # not aligned: keep none
        elif piece:
            self.lp_chars = None  # text without log-probabilities
        if piece:
            if self.first is None:
                self.first = time.time()
            self.parts.append(piece)
            self.chunks += 1
        ev_now = self.stops[-len(got):] if got and self.stops is not None else None
        w = self.watch
        if w is not None and self.cut is None and (piece or got) and \
                w.feed(piece or "", got, ev_now) is not None:
            f = w.first_of(self.cut_kinds)
            if f is not None:
                self.cut, self.cut_kind = f.to_dict(), f.kind
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]

    def result(self) -> dict[str, Any]:
        """What was read, for the engine's Completion."""
        return {"text": "".join(self.parts), "finish_reason": self.finish, "usage": self.usage,
                "first_token_at": self.first, "chunks": self.chunks, "cut": self.cut,
                "logprobs": self.lps, "logprob_chars": self.lp_chars if self.lps else None,
                "stops": self.stops}

    def cancelled(self) -> dict[str, Any]:
        """What was read before the caller cancelled."""
        return {"cancelled": True, "text": "".join(self.parts), "chunks": self.chunks}


def read_reply(data: Any, stop_evidence_on: bool, stop_texts: Collection[str]
               ) -> dict[str, Any]:
    """What a whole (not streamed) response says, as :meth:`StreamReader.result`
    has it: the first choice's text, finish reason, usage, log-probabilities and
    (with ``stop_evidence_on``) stopping evidence."""
    try:
        choice = data["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise _Fatal(f"the server's response has no choices: {str(data)[:200]}") from None
    text = (choice.get("message") or {}).get("content") if "message" in choice \
        else choice.get("text")
    lp = choice.get("logprobs")
    return {"text": text or "", "finish_reason": choice.get("finish_reason"),
            "usage": data.get("usage"), "logprobs": token_logprobs(lp) or [],
            "stops": stop_evidence(lp, stop_texts) if stop_evidence_on else None}
