"""The watch fed token ids: for code that generates one token at a time outside degen's
engines (transformers ``generate``, a vLLM logits processor, a training loop's samples).

:class:`TokenWatch` turns each new token id into a text delta
(:class:`~degen.engines.detokenize.Detokenizer`: a few tokens decoded at a time, a
character split over tokens held until it is whole) and feeds it, with the token's
log-probability and stopping evidence when the caller has them, to the same
:class:`~degen.detect.watch.Watch` the engines and the guard run
(:func:`~degen.detect.watch.stream_watch`): the same kinds, the same evidence, the same
moment of confirmation. Not thread-safe: one per generated sequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from degen.detect.base import Finding
from degen.detect.watch import CUT_REASON, cut_kinds, stream_watch
from degen.engines.detokenize import Detokenizer


class TokenWatch:
    """One generated sequence's watch, fed token ids.

    Args:
        tokenizer: anything with ``decode(ids, skip_special_tokens=...)`` (a
            transformers tokenizer; vLLM's is one).
        prompt: the prompt's text, so repetition it asked for is not a loop.
        messages: the chat messages instead of ``prompt``.
        max_tokens: the generation's cap; the runaway horizon is 8 times it unless
            ``horizon`` is given.
        model: the model's name, for its runaway fit (else the default fit).
        cut: the kinds whose confirmation ends the sequence (:func:`cut_kinds`:
            ``"all"``, ``"none"``, ``"loop,gibberish"``...).
        stop_ids: token ids that end the sequence; they are not part of the text.

    :meth:`push` each new token; :attr:`cut` is the finding that ended it (None while it
    should go on); :meth:`close` at the end gives every finding.
    """

    def __init__(self, tokenizer: Any, prompt: str = "", *,
                 messages: Sequence[Mapping[str, Any]] | None = None, max_tokens: int = 512,
                 horizon: int | None = None, model: str | None = None,
                 cut: bool | str | Iterable[str] | None = "all",
                 stop_ids: Iterable[int] = ()) -> None:
        self.watch = stream_watch(messages, prompt, max_tokens, model, horizon)
        self.cut_kinds = cut_kinds(cut)
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        self._tok = tokenizer
        self._detok = Detokenizer(tokenizer)
        self.ids: list[int] = []
        self.cut: Finding | None = None
        self.cut_at: int | None = None  # tokens generated when the cut was confirmed
        self.closed = False

    def push(self, token_id: int, logprob: float | None = None,
             stop: tuple[float, bool] | None = None) -> Finding | None:
        """One new token (with its log-probability and the log-probability the model
        gave to ending, when known). Returns the cut finding once it is confirmed (and
        on every later call), else None."""
        t = int(token_id)
        self.ids.append(t)
        if self.closed or t in self.stop_ids:
            return self.cut
        delta = self._detok.delta(self.ids)
        f = self.watch.feed(delta, None if logprob is None else (logprob,),
                            None if stop is None else (stop,))
        if f is not None and self.cut is None:
            self.cut = self.watch.first_of(self.cut_kinds)
            if self.cut is not None:
                self.cut_at = len(self.ids)
        return self.cut

    def close(self, ended: bool | None = None) -> dict[str, Finding]:
        """The sequence is over: judge what is still open and return every finding.
        ``ended``: it ended by itself (default: its last token is a stop id)."""
        if not self.closed:
            if ended is None:
                ended = bool(self.ids) and self.ids[-1] in self.stop_ids
            self.watch.finish(ended=ended and self.cut is None)
            self.closed = True
        return self.watch.findings

    @property
    def findings(self) -> dict[str, Finding]:
        """Each kind found so far, with its first finding."""
        return self.watch.findings

    @property
    def text(self) -> str:
        """The sequence's text so far (its stop tokens left out)."""
        ids = [t for t in self.ids if t not in self.stop_ids]
        return self._tok.decode(ids, skip_special_tokens=True)

    @property
    def finish_reason(self) -> str | None:
        """degen's finish reason for the cut (``repetition``, ``degenerate``,
        ``runaway``), or None."""
        return CUT_REASON[self.cut.kind] if self.cut is not None else None


__all__ = ["TokenWatch"]
