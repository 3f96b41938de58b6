"""The watch: one streaming judge of a generation, for every kind of degeneration.

A :class:`Watch` is fed the text as it is generated (deltas of any size, cut anywhere,
even inside a word or a character's bytes' worth of text) and, when a server or the
engine gives them, the log-probabilities of the tokens each delta carries. It answers
as soon as one kind is confirmed, with the same :class:`~degen.detect.base.Finding`
(kind, start, evidence) the batch verdict carries, because the batch verdict *is* a
watch run to the end of the text (:func:`watch_completion`): the guard, the engines'
early cut, ``degen run``'s verdicts and ``degen scan`` cannot disagree.

Inside, the text is cut into units (words and runs of one punctuation character,
:data:`~degen.detect.period.UNIT`); a unit touching the end of the text so far is held
back until the next delta shows whether it goes on. Each unit goes to the tracks:

- :class:`~degen.detect.loop_track.LoopTrack` (``loop``): every unit, code included;
- :class:`~degen.detect.babble.BabbleTrack` (``gibberish``, ``spacing``): the words
  and punctuation outside code (fenced or inline);
- :class:`~degen.detect.surprise.SurpriseTrack`: the tokens' log-probabilities, which
  the babble track weighs in where they are given.

Cost per unit does not grow with the stream; memory is bounded (the tracks keep fixed
windows and the watch the text they point into). Not thread-safe: one per stream.

The watch is three modules, each importing only those below it:
:mod:`degen.detect.watch_config` (the kinds, the cut reasons and
:class:`WatchConfig`), :mod:`degen.detect.watch_stream` (the :class:`Watch` loop) and
this one (the batch verdict: a record read by a watch to its end, :func:`watched`,
:func:`watch_completion`, :func:`watch_text`, :class:`TextWatch`; the watch an engine
or the guard runs, :func:`stream_watch`). Every name of the other two is importable
from here.

>>> w = Watch(prompt="Tell me about the sea.")
>>> f = None
>>> for _ in range(30):
...     f = f or w.feed("The sea is deep. ")
>>> f.kind, f.evidence["period"], f.evidence["unit_text"]
('loop', 5, 'The sea is deep. ')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from degen.detect.asked import prompt_text
from degen.detect.base import Detector, Finding
from degen.detect.watch_config import (
    CUT_REASON,
    DEFAULT,
    KINDS,
    TEXT_KINDS,
    WatchConfig,
    cut_kinds,
)
from degen.detect.watch_stream import Watch
from degen.records import Completion


def stream_watch(messages: Sequence[Mapping[str, Any]] | None, prompt: str | None,
                 max_tokens: int, model: str | None = None, horizon: int | None = None,
                 weights: Mapping[str, Any] | None = None) -> Watch:
    """The watch an engine or the guard runs on one generation: every kind, the
    request's prompt (:func:`~degen.detect.asked.prompt_text`), the runaway horizon
    (default 8 times ``max_tokens``) and the runaway fit of ``model`` (or ``weights``)."""
    from degen.outcomes import default_horizon

    config = WatchConfig(runaway={"weights": weights}) if weights else DEFAULT
    return Watch(prompt_text(messages, prompt), config,
                 horizon=horizon or default_horizon(max_tokens), model=model)


def watch_text(text: str, prompt: str = "", config: WatchConfig = DEFAULT,
               logprobs: Sequence[float] | None = None) -> dict[str, Finding]:
    """A whole text through a :class:`Watch` (the batch verdict): each kind found, with
    its first finding. ``logprobs``: the tokens' log-probabilities, when known. (A text
    alone has no cap, so it is never judged a runaway: see :func:`watch_completion`.)"""
    w = Watch(prompt, config)
    w.feed(text, logprobs)
    return w.finish()


def horizon_of(completion: Completion, config: WatchConfig = DEFAULT) -> int:
    """The horizon a completion's runaway is judged against: the config's, else 8 times
    its cap."""
    from degen.outcomes import default_horizon

    return config.horizon or default_horizon(completion.params.max_tokens)


def stop_evidence_of(extra: Mapping[str, Any], n: int) -> list[tuple[float, bool]] | None:
    """A record's stopping evidence (``extra["stop_logprobs"]``, with
    ``extra["stop_upper"]`` marking upper bounds), when it is aligned with its ``n``
    log-probabilities."""
    stops, upper = extra.get("stop_logprobs"), extra.get("stop_upper")
    if not isinstance(stops, list) or len(stops) != n:
        return None
    if not isinstance(upper, list) or len(upper) != n:
        upper = [0] * n
    return [(float(v), bool(u)) for v, u in zip(stops, upper, strict=True)]


def watched(completion: Completion, config: WatchConfig = DEFAULT) -> Watch:
    """A completion read by a :class:`Watch` to its end, as it streamed: its prompt;
    when the record carries them, its tokens' log-probabilities and stopping evidence,
    read as they came (``extra["logprobs"]``, one per token, and
    ``extra["logprob_chars"]``, the characters of text each token brought, 0 for the
    second and later tokens of a chunk; without the characters, or when they do not add
    up to the text, the text is judged alone); whether it ended; and, for a runaway,
    what its extension found (``extra["outcome"]``), which beats the prediction."""
    prompt = prompt_text(completion.messages, completion.prompt or None)
    text = completion.text
    extra = completion.extra or {}
    w = Watch(prompt, config, horizon=horizon_of(completion, config), model=completion.model)
    lps, chars = extra.get("logprobs"), extra.get("logprob_chars")
    if isinstance(lps, list) and isinstance(chars, list) and len(lps) == len(chars) \
            and sum(chars) == len(text):
        stops = stop_evidence_of(extra, len(lps))
        pos = 0
        for i, (lp, n) in enumerate(zip(lps, chars, strict=True)):
            w.feed(text[pos:pos + n], (lp,), stops[i:i + 1] if stops is not None else None)
            pos += n
    else:
        w.feed(text)
    from degen.outcomes import UNENDED

    ended = completion.finish_reason not in UNENDED
    # a record that does not say how many tokens it has: about 4 characters each
    w.finish(ended=ended, tokens=completion.completion_tokens or max(1, len(text) // 4))
    outcome = extra.get("outcome")
    if w.runaway is not None and not ended and isinstance(outcome, Mapping):
        _known(w, outcome)
    return w


def _known(w: Watch, outcome: Mapping[str, Any]) -> None:
    """What an extension found replaces the prediction: no runaway if it ended by the
    horizon, a runaway (score 1) if it was followed that far and did not."""
    from degen.outcomes import Outcome

    track = w.runaway
    assert track is not None and track.horizon is not None
    ended = Outcome.from_dict(outcome).ended_by(track.horizon)
    if ended is None:
        return
    if ended:
        w._drop("runaway")
        return
    f = Finding(kind="runaway", score=1.0,
                message=f"did not end by {track.horizon} tokens: continued from its cap, "
                        f"it was still going at {outcome['tokens']}",
                start_char=w._onset(), start_unit=track.tokens, unit="token",
                evidence={"known": True, "horizon": track.horizon,
                          "followed_to": outcome["tokens"],
                          "p_runaway": None if track.p is None else round(track.p, 4)})
    w._drop("runaway")
    w._note(f)


def watch_completion(completion: Completion, config: WatchConfig = DEFAULT
                     ) -> dict[str, Finding]:
    """Each kind found in ``completion``, with its first finding: :func:`watched`'s."""
    return watched(completion, config).findings


class TextWatch(Detector):
    """Every text kind of a completion at once: one :class:`Watch` over its text (what
    :func:`~degen.detect.verdict.judge` runs). Returns the list of findings, one per
    kind found, in :data:`KINDS` order."""

    kind = "text"

    def __init__(self, config: WatchConfig = DEFAULT) -> None:
        self.config = config

    def __call__(self, completion: Completion) -> list[Finding]:  # type: ignore[override]
        return self.findings(watched(completion, self.config))

    @staticmethod
    def findings(w: Watch) -> list[Finding]:
        return [w.findings[k] for k in KINDS if k in w.findings]


__all__ = ["CUT_REASON", "DEFAULT", "KINDS", "TEXT_KINDS", "TextWatch", "Watch", "WatchConfig",
           "cut_kinds", "horizon_of", "stop_evidence_of", "stream_watch", "watch_completion",
           "watch_text", "watched"]
