"""Token ids to text as a generation grows, for the local engine: the text deltas the
watch is fed, and a continuation's text as it reads after the tokens it continues."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Detokenizer:
    """Text deltas of a growing list of token ids, decoded a few tokens at a time.

    Decoding one token alone is wrong for byte-level and SentencePiece vocabularies
    (a leading space, or a character split over tokens), so each call decodes from a
    few tokens back and returns only the new text; a delta ending in an incomplete
    character (U+FFFD) is held until the next token completes it.
    """

    #: tokens of a continuation's context decoded before its first new token
    CONTEXT = 5

    def __init__(self, tokenizer: Any, context: Sequence[int] = ()) -> None:
        self._tok = tokenizer
        # a continuation's last tokens: its first new token is decoded after them, so a
        # leading space (SentencePiece) or a character split over tokens comes out right
        self._ctx = list(context[-self.CONTEXT:])
        self._prefix = 0  # tokens before this are already in the text
        self._read = len(self._ctx)  # tokens up to this are in the text returned so far

    def _ids(self, ids: list[int], a: int) -> list[int]:
        """Tokens ``a``.. of the context followed by ``ids``."""
        c = len(self._ctx)
        return ids[a - c:] if a >= c else self._ctx[a:] + ids

    def delta(self, ids: list[int]) -> str:
        tok = self._tok
        both = self._ids(ids, self._prefix)
        read = self._read - self._prefix
        before = tok.decode(both[:read], skip_special_tokens=True)
        now = tok.decode(both, skip_special_tokens=True)
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ctx) + len(ids)
        return now[len(before):]


def decode_after(tok: Any, context: Sequence[int], ids: Sequence[int],
                 skip_special_tokens: bool = False) -> str:
    """The text of ``ids`` as it reads after ``context`` (a continuation's last tokens):
    decoded with them, their own text taken off."""
    ctx = list(context[-Detokenizer.CONTEXT:])
    if not ctx:
        return tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
    head = tok.decode(ctx, skip_special_tokens=skip_special_tokens)
    both = tok.decode(ctx + list(ids), skip_special_tokens=skip_special_tokens)
    if both.startswith(head):
        return both[len(head):]
    return tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
