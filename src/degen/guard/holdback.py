"""Holding back the last few tokens of a stream (``--holdback N``), so that when a
generation is cut the start of the degenerate part never reaches the client and the
answer ends at the last clean sentence.

:class:`Held` is a queue of events (each an SSE payload, with the parsed chunk and the
text each choice gained in it) that releases its head once more than ``limit`` tokens
are queued behind it. On a cut, :meth:`Held.trim` cuts the cut choice's queued text back
to the last sentence end before the degeneration began (:func:`clean_end`); what stays
is released before the cut's final chunk. No I/O happens here.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# a sentence ends at . ! ? (closing quotes and brackets kept) before a space, or a line end
_END = re.compile(r"""[.!?\u2026\u3002\uff01\uff1f]["'\u201d\u2019)\]]*(?=\s|$)|\n""")


def clean_end(text: str, limit: int) -> int:
    """The end of the last whole sentence of ``text[:limit]`` (0 when there is none); a
    sentence's final mark may sit at ``limit`` itself (a loop's onset is often the
    period that ends the sentence before it).

    >>> clean_end("It rained. Then the the the the", 20)
    10
    >>> clean_end("no sentence ends here", 21)
    0
    """
    best = 0
    for m in _END.finditer(text, 0, max(0, min(len(text), limit + 1))):
        best = m.end()
    return best


@dataclass(slots=True)
class Event:
    """One queued event: ``data`` the payload to send, ``chunk`` the parsed chunk (None
    for one that is not a chunk), ``parts`` (choice, start, end, reasoning?) the text it
    carries in each choice's offsets, ``tokens`` how many tokens that is."""

    data: bytes
    chunk: dict[str, Any] | None
    parts: list[tuple[int, int, int, bool]] = field(default_factory=list)
    tokens: int = 0


class Held:
    """See the module doc. ``dumps`` serializes a chunk that had to be changed."""

    def __init__(self, limit: int, dumps: Callable[[Any], bytes], chat: bool) -> None:
        self.limit = limit
        self.dumps = dumps
        self.chat = chat
        self.queue: deque[Event] = deque()
        self.tokens = 0

    def push(self, ev: Event) -> list[Event]:
        """Queue ``ev``; the events now free to go, oldest first."""
        self.queue.append(ev)
        self.tokens += ev.tokens
        out = []
        while self.queue and self.tokens - self.queue[0].tokens >= self.limit:
            head = self.queue.popleft()
            self.tokens -= head.tokens
            out.append(head)
        return out

    def release(self) -> list[Event]:
        """Everything queued (the stream ended cleanly, or a cut was trimmed)."""
        out, self.queue, self.tokens = list(self.queue), deque(), 0
        return out

    def clear(self) -> None:
        self.queue.clear()
        self.tokens = 0

    def _text(self, chunk: dict[str, Any], index: int) -> str:
        for ch in chunk.get("choices") or ():
            if isinstance(ch, dict) and ch.get("index", 0) == index:
                t = (ch.get("delta") or {}).get("content") if self.chat else ch.get("text")
                return t if isinstance(t, str) else ""
        return ""

    def _set_text(self, chunk: dict[str, Any], index: int, text: str | None) -> None:
        """Shorten choice ``index``'s text in ``chunk`` (None: take the choice out)."""
        keep = []
        for ch in chunk.get("choices") or ():
            if isinstance(ch, dict) and ch.get("index", 0) == index:
                if text is None:
                    continue
                if self.chat:
                    ch["delta"] = {**(ch.get("delta") or {}), "content": text}
                else:
                    ch["text"] = text
                ch["logprobs"] = None
            keep.append(ch)
        chunk["choices"] = keep

    def trim(self, index: int, onset: int) -> None:
        """Cut choice ``index``'s queued text back to the last sentence end before
        ``onset`` (a character offset in the choice's text)."""
        mine = [(ev, p) for ev in self.queue for p in ev.parts if p[0] == index]
        if not mine:
            return
        base = mine[0][1][1]
        pieces = []
        for ev, (_, start, end, reasoning) in mine:
            pieces.append("\0" * (end - start) if reasoning or ev.chunk is None
                          else self._text(ev.chunk, index))
        stop = base + clean_end("".join(pieces), onset - base)
        for ev, (_, start, end, reasoning) in mine:
            if end <= stop or ev.chunk is None:
                continue
            if start >= stop or reasoning:
                self._set_text(ev.chunk, index, None)
            else:
                self._set_text(ev.chunk, index, self._text(ev.chunk, index)[:stop - start])
            ev.parts = [p for p in ev.parts if p[0] != index]
            ev.data = self.dumps(ev.chunk)
        kept = deque(ev for ev in self.queue if ev.chunk is None or ev.parts
                     or ev.chunk.get("choices") or ev.chunk.get("usage"))
        self.queue = kept
        self.tokens = sum(ev.tokens for ev in kept)
