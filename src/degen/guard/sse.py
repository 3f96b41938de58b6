"""Server-sent events on bytes, for the guard's hot path: :class:`SSEBytes` splits what
the upstream sends into events and gives each event's ``data`` payload as the very
bytes it arrived as, so an event the guard does not alter is relayed unchanged.

The same rules as :class:`degen.engines.openai.SSEData` (which reads lines of text):
an event ends at a blank line (``\\n\\n``, ``\\r\\n\\r\\n`` or ``\\r\\r``); its ``data:``
lines are joined with ``\\n`` (one space after the colon dropped); comments and other
fields carry no payload.

>>> s = SSEBytes()
>>> s.feed(b'data: {"a": 1}\\n\\ndata: [DO')
[b'{"a": 1}']
>>> s.feed(b'NE]\\r\\n\\r\\n: keep-alive\\n\\n')
[b'[DONE]']
>>> s.feed(b'data: x\\ndata: y'), s.end()
([], [b'x\\ny'])
"""

from __future__ import annotations


class SSEBytes:
    """See the module doc. Not thread safe; one per stream."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads of the events that ``data`` completes, in order."""
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            if buf.endswith(b"\r"):  # its \n may come in the next read
                buf, keep = buf[:-1], b"\r"
            else:
                keep = b""
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            events = buf.split(b"\n\n")
            self._buf = events.pop() + keep
        else:
            events = buf.split(b"\n\n")
            self._buf = events.pop()
        out = []
        for ev in events:
            if ev.startswith(b"data: ") and b"\n" not in ev:  # the usual one-line event
                out.append(ev[6:])
            elif (p := _payload(ev)) is not None:
                out.append(p)
        return out

    def end(self) -> list[bytes]:
        """The last event of a stream that stopped without a blank line."""
        rest, self._buf = self._buf, b""
        p = _payload(rest.replace(b"\r\n", b"\n").replace(b"\r", b"\n")) if rest else None
        return [p] if p is not None else []


def _payload(event: bytes) -> bytes | None:
    data = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            v = line[5:]
            data.append(v[1:] if v.startswith(b" ") else v)
    return b"\n".join(data) if data else None
