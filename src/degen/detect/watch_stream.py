"""The :class:`Watch` itself: the streaming loop that cuts the text into units as it
arrives, tells code from prose, hands each unit to the tracks
(:class:`~degen.detect.loop_track.LoopTrack`,
:class:`~degen.detect.babble.BabbleTrack`, :class:`~degen.detect.surprise.SurpriseTrack`,
:class:`~degen.detect.runaway_track.RunawayTrack`) and keeps the text they point into.

See :mod:`degen.detect.watch` for what it judges and how (and for the batch verdict,
:func:`~degen.detect.watch.watch_completion`, a watch run to the end of a record); its
options are :mod:`degen.detect.watch_config`'s. Everything here is importable from
:mod:`degen.detect.watch` too.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from degen.detect import lexicon
from degen.detect.babble import BabbleTrack
from degen.detect.base import Finding
from degen.detect.loop_track import LoopTrack
from degen.detect.period import UNIT
from degen.detect.runaway_track import RunawayTrack
from degen.detect.surprise import SurpriseTrack
from degen.detect.watch_config import DEFAULT, TEXT_KINDS, WatchConfig

_TRIM = 4096  # characters of text kept beyond what the tracks point into, at least
_LONGEST_UNIT = 256  # a unit this long is read even if the text so far ends in it
_INLINE_UNITS = 24  # inline code longer than this was a stray backtick
_PROSE_LINE_WORDS = 12  # a line of this many words and no code mark is not code
_CODE_CHARS = frozenset("{}()[];=<>#/*\"")
_COMMENT = frozenset("#/*;-%")  # what opens a comment line in code


class Watch:
    """Every kind of degeneration, judged as the text arrives. See the module doc.

    Args:
        prompt: what the request asked (see :func:`~degen.detect.asked.prompt_text`);
            repetition it asked for is not a loop.
        config: what to look for (:class:`WatchConfig`).

    :meth:`feed` a delta (and its tokens' log-probabilities if known), :meth:`finish`
    at the end. ``findings`` maps each kind found to its first finding; ``first`` is the
    earliest. ``vetoes`` counts the repeating runs passed over as legitimate, by reason.
    """

    def __init__(self, prompt: str = "", config: WatchConfig = DEFAULT,
                 horizon: int | None = None, model: str | None = None) -> None:
        self.config = config
        kinds = set(config.kinds)
        # the loop track reads the text through a weak reference: a bound method would
        # be a cycle (watch -> track -> watch), freed only by a full garbage collection
        ref = weakref.ref(self)

        def text(a: int, b: int) -> str:
            return ref()._slice(a, b)  # type: ignore[union-attr]

        self.loop = LoopTrack(prompt or "", text, **config.loop) if "loop" in kinds else None
        babble_kinds = kinds & {"gibberish", "spacing"}
        self.babble = BabbleTrack(kinds=babble_kinds, **config.babble) if babble_kinds else None
        self.surprise = SurpriseTrack(**config.surprise)
        if self.babble is not None:
            self.babble.surprise = self.surprise
        self.runaway: RunawayTrack | None = None
        if "runaway" in kinds:
            opts = dict(config.runaway)
            if opts.get("weights") is None:
                from degen.detect.runaway_weights import weights_for

                opts["weights"] = weights_for(model)[1]
            self.runaway = RunawayTrack(horizon or config.horizon, **opts)
            self._look = self.runaway.min_tokens
        self._kinds = kinds
        self.findings: dict[str, Finding] = {}
        self.first: Finding | None = None
        self._chunks: list[str] = []  # the stream's text from char ``_text_at`` on, as fed
        self._text_at = 0
        self._kept = 0  # characters in _chunks
        self._pending = ""  # text whose last unit may still grow
        self._pending_at = 0
        self._before = " "  # the character before _pending
        self._fence = False  # inside a fenced code block
        self._line_words = self._line_code = 0  # words and code marks on a fenced line
        self._inline: list[tuple[str, int, bool, bool]] | None = None  # inline code, held
        self.units = 0
        self.chars = 0
        self.done = False  # every watched kind found: nothing more to learn

    # ------------------------------------------------------------------ feeding
    def feed(self, delta: str, logprobs: Sequence[float] | None = None,
             stops: Sequence[tuple[float, bool]] | None = None) -> Finding | None:
        """A text delta and, optionally, the log-probabilities of the tokens it carries
        and their stopping evidence (aligned with them: the log-probability the model
        gave to ending, and whether it is an upper bound). Returns the first finding
        confirmed while reading it, else None.

        The first token's log-probability is taken before the text, the others after
        it, so a chunk of several tokens reads as its first token carrying the text and
        the others none (how a record stores them: :func:`watch_completion`). A chunk
        without log-probabilities counts as one token."""
        if logprobs:
            self.surprise.feed(logprobs[:1])
        found = self._read(delta) if delta else None
        if logprobs and len(logprobs) > 1:
            self.surprise.feed(logprobs[1:])
        track = self.runaway
        if track is not None and (logprobs or delta):
            if logprobs:
                for i, lp in enumerate(logprobs):
                    track.token(lp, stops[i] if stops is not None and i < len(stops)
                                else None, self.chars)
            else:
                track.chunk()
            if logprobs and track.tokens >= self._look:  # text alone: judged at the end
                self._look = track.tokens + track.every - track.tokens % track.every
                if track.finding is None and track.horizon is not None:
                    f = track.look(self._runaway_features(), self._evidence(),
                                   self._onset())
                    if f is not None:
                        self._note(f)
                        found = found or f
        return found

    def _evidence(self) -> str:
        assert self.runaway is not None
        return self.runaway.evidence(self.surprise.mean())

    def _runaway_features(self, tokens: int | None = None) -> dict[str, float]:
        assert self.runaway is not None
        b = self.babble
        bad = b.bad_windows / b.scored if b is not None and b.scored else 0.0
        found = self.findings
        return self.runaway.features(self.surprise.mean(), "loop" in found,
                                     "gibberish" in found or "spacing" in found, bad, tokens)

    def _onset(self) -> int:
        """Where a runaway starts: the degeneration the watch found, else just after the
        last place the model thought of ending."""
        starts = [f.start_char for k, f in self.findings.items()
                  if k in TEXT_KINDS and f.start_char is not None]
        if starts:
            return min(starts)
        return self.runaway.considered_char if self.runaway is not None else 0

    @property
    def p_runaway(self) -> float | None:
        """The probability, at the last look, that the generation will not end by the
        horizon (None: no look yet, or no horizon)."""
        return self.runaway.p if self.runaway is not None else None

    def _read(self, delta: str) -> Finding | None:
        size = len(delta)
        self.chars += size
        self._chunks.append(delta)
        self._kept += size
        if self.done:
            self._pending_at += size
            if self._kept > 2 * _TRIM:
                self._trim()
            return None
        findings = self.findings
        before = len(findings)
        pending = self._pending + delta
        end = len(pending)
        cut = 0
        unit = self._unit
        for m in UNIT.finditer(pending):
            a, b = m.span()
            if b == end and b - a < _LONGEST_UNIT:
                break  # may continue: wait for the next delta
            while b - a >= _LONGEST_UNIT:  # a giant unit is read in fixed pieces
                unit(pending, pending[a:a + _LONGEST_UNIT], a, cut)
                cut = a = a + _LONGEST_UNIT
            if a < b < end:
                unit(pending, pending[a:b], a, cut)
                cut = b
            if self.done:
                cut = end
                break
        # the gap after the last unit stays: a newline in it separates the next one
        if cut:
            self._before = pending[cut - 1]
            self._pending_at += cut
            self._pending = pending[cut:]
        else:
            self._pending = pending
        if self._kept > 2 * _TRIM:
            self._trim()
        return None if len(findings) == before else self._new(before)

    def finish(self, ended: bool = True, tokens: int | None = None) -> dict[str, Finding]:
        """The stream ended: read the held-back unit and judge what is still open.
        ``ended``: it ended by itself (an end token or a stop string), so it is no
        runaway; False for one that was capped or cut. ``tokens``: how many it
        generated, when the feeding did not count them (text alone). Returns
        :attr:`findings`."""
        before = len(self.findings)
        if not self.done and self._pending:
            cut = 0
            for m in UNIT.finditer(self._pending):
                a, b = m.span()
                while a < b:
                    self._unit(self._pending, self._pending[a:min(b, a + _LONGEST_UNIT)], a, cut)
                    cut = a = min(b, a + _LONGEST_UNIT)
            self._pending_at += len(self._pending)
            self._pending = ""
        if self.loop is not None and self.loop.finding is None:
            self._note(self.loop.finish())
        if self._inline is not None:
            self._flush_inline()
        if self.babble is not None and self.babble.finding is None:
            self._note(self.babble.finish())
        track = self.runaway
        if track is not None:
            if tokens is not None and tokens > track.tokens:
                track.chunk(tokens - track.tokens)
            had = track.finding
            f = track.finish(self._runaway_features(), self._evidence(), self._onset(),
                             ended, track.tokens)
            if f is None and had is not None:  # it ended after all: no runaway
                self._drop("runaway")
            elif f is not None:
                self._note(f)
        self._new(before)
        return self.findings

    def _drop(self, kind: str) -> None:
        self.findings.pop(kind, None)
        if self.first is not None and self.first.kind == kind:
            self.first = min(self.findings.values(), key=lambda f: f.start_char or 0,
                             default=None)

    def first_of(self, kinds: Iterable[str]) -> Finding | None:
        """The earliest finding among ``kinds`` (by start), or None."""
        got = [f for k, f in self.findings.items() if k in set(kinds)]
        return min(got, key=lambda f: f.start_char or 0) if got else None

    @property
    def vetoes(self) -> dict[str, int]:
        return dict(self.loop.vetoes) if self.loop is not None else {}

    @property
    def vetoed(self) -> list[dict[str, Any]]:
        return list(self.loop.vetoed) if self.loop is not None else []

    # ------------------------------------------------------------------ internals
    def _unit(self, pending: str, raw: str, start: int, gap_from: int) -> None:
        """One unit ``raw`` at ``start`` in ``pending``; the gap before it starts at
        ``gap_from``."""
        offset = self._pending_at + start
        newline = pending.find("\n", gap_from, start) >= 0
        self.units += 1
        if self.runaway is not None:
            self.runaway.unit(raw)
        c = raw[0]
        word = c.isalnum() or c == "_"
        if newline:
            self._end_line()
        loop = self.loop
        if loop is not None and loop.finding is None:
            f = loop.push(raw, offset, newline, self._fence or self._inline is not None)
            if f is not None:
                self._note(f)
        if c == "`":
            if len(raw) >= 3:
                self._fence = not self._fence
                self._line_words = self._line_code = 0
                self._inline = None
            elif not self._fence:
                # inline code closes on its line; a backtick left open was not code
                self._inline = None if self._inline is not None else []
            return
        if self._fence:
            if word:
                self._line_words += 1
                lw = self._line_words
                if self._line_code >= 0 and (
                        (lw >= 2 * _PROSE_LINE_WORDS and self._line_code == 0)
                        or (lw >= 4 * _PROSE_LINE_WORDS and self._line_code * 16 <= lw)):
                    self._fence = False  # a long line of plain words: not code any more
            elif self._line_words == 0 and self._line_code == 0 and c in _COMMENT:
                self._line_code = -1  # a comment line: code, however many words
            elif c in _CODE_CHARS and self._line_code >= 0:
                self._line_code += 1
            return
        if self.babble is None or self.babble.finding is not None:
            return
        tag = word and (pending[start - 1] if start else self._before) in "#@"
        if self._inline is not None:
            self._inline.append((raw, offset, word, tag))
            if len(self._inline) > _INLINE_UNITS:
                self._flush_inline()
            return
        self._babble(raw, offset, word, tag)

    def _babble(self, raw: str, offset: int, word: bool, tag: bool) -> None:
        babble = self.babble
        assert babble is not None
        if not word:
            babble.gap(raw)
        elif raw.isalpha():
            self._note(babble.word(raw, offset, tag))
        else:
            for w in lexicon.LETTERS.finditer(raw):
                self._note(babble.word(w.group(0), offset + w.start(), tag))

    def _flush_inline(self) -> None:
        pending, self._inline = self._inline or [], None
        for raw, offset, word, tag in pending:
            if self.babble is not None and self.babble.finding is None:
                self._babble(raw, offset, word, tag)

    def _end_line(self) -> None:
        """A line break: inline code left open was not code; a fenced "code" line of
        plain words with no code punctuation means the fence was never closed (the
        generation went on in prose; so does a line of 48 words with barely any)."""
        if self._inline is not None:
            self._flush_inline()
        if self._fence:
            if self._line_words >= _PROSE_LINE_WORDS and self._line_code == 0:
                self._fence = False  # (a comment line has _line_code -1)
            self._line_words = self._line_code = 0
        if self.babble is not None and self.babble.finding is None and not self._fence:
            self.babble.gap("", newline=True)

    def _note(self, f: Finding | None) -> None:
        if f is None or f.kind in self.findings or f.kind not in self._kinds:
            return
        self.findings[f.kind] = f
        if self.first is None:
            self.first = f
        loop_done = self.loop is None or self.loop.finding is not None
        babble_done = self.babble is None or self.babble.finding is not None
        self.done = loop_done and babble_done  # the runaway track still counts tokens

    def _new(self, before: int) -> Finding | None:
        if len(self.findings) <= before:
            return None
        return list(self.findings.values())[before]

    @property
    def _text(self) -> str:
        """The text kept (from char ``_text_at``), joined on demand (evidence only)."""
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    def _slice(self, a: int, b: int) -> str:
        """Characters ``a`` to ``b`` of the stream (what is still kept of them)."""
        lo = self._text_at
        return self._text[max(0, a - lo):max(0, b - lo)]

    def _trim(self) -> None:
        """Keep the text from the oldest unit a track still points into."""
        keep = self._pending_at
        if self.loop is not None and self.loop.finding is None:
            oldest = self.loop.oldest_offset
            if oldest is not None:
                keep = min(keep, oldest)
        drop = keep - self._text_at
        if drop > _TRIM and drop > self._kept // 2:
            text = self._text[drop:]
            self._chunks, self._kept, self._text_at = [text], len(text), keep



__all__ = ["Watch"]
