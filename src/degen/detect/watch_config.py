"""What a :class:`~degen.detect.watch.Watch` looks for, and how: the kinds it judges
(:data:`KINDS`, :data:`TEXT_KINDS`), the finish_reason of a generation cut for each
(:data:`CUT_REASON`), its options (:class:`WatchConfig`, validated by the tracks
themselves on construction; :data:`DEFAULT`) and the reading of a cut switch
(:func:`cut_kinds`).

Below the watch: it imports the tracks (to validate their options), never the watch.
Everything here is importable from :mod:`degen.detect.watch` too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from degen.detect.babble import BabbleTrack
from degen.detect.loop_track import LoopTrack
from degen.detect.runaway_track import RunawayTrack
from degen.detect.surprise import SurpriseTrack
from degen.errors import InvalidParams

#: the kinds the text shows (the degenerate kinds)
TEXT_KINDS: tuple[str, ...] = ("loop", "gibberish", "spacing")
#: every kind the watch judges: the text's, and ``runaway`` (would not end by the
#: horizon; :mod:`degen.detect.runaway`)
KINDS: tuple[str, ...] = (*TEXT_KINDS, "runaway")
# The finish_reason of a generation cut for each kind: vLLM's "repetition" for a loop,
# "degenerate" for babble and glued words, "runaway" for one predicted never to end
# (clients that accept only OpenAI's values can be sent "length" instead; the evidence
# says the kind either way).
CUT_REASON: dict[str, str] = {"loop": "repetition", "gibberish": "degenerate",
                              "spacing": "degenerate", "runaway": "runaway"}


@dataclass(frozen=True)
class WatchConfig:
    """What a :class:`Watch` looks for and how.

    ``kinds``: the kinds watched (:data:`KINDS`); ``loop``: options of
    :class:`~degen.detect.loop_track.LoopTrack`; ``babble``: of
    :class:`~degen.detect.babble.BabbleTrack`; ``surprise``: of
    :class:`~degen.detect.surprise.SurpriseTrack`; ``runaway``: of
    :class:`~degen.detect.runaway_track.RunawayTrack` (``weights``: a table, or None for the
    model's own fit); ``horizon``: the tokens by which a generation that is no
    runaway ends (None: 8 times a record's cap, or the stream's own). Validated on
    construction.
    """

    kinds: tuple[str, ...] = KINDS
    loop: Mapping[str, Any] = field(default_factory=dict)
    babble: Mapping[str, Any] = field(default_factory=dict)
    surprise: Mapping[str, Any] = field(default_factory=dict)
    runaway: Mapping[str, Any] = field(default_factory=dict)
    horizon: int | None = None

    def __post_init__(self) -> None:
        kinds = tuple(self.kinds)
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise InvalidParams(f"unknown kind {bad[0]!r} to watch; kinds: {', '.join(KINDS)}")
        object.__setattr__(self, "kinds", kinds)
        try:  # the tracks validate their own options
            LoopTrack("", str.__getitem__, **self.loop)
            BabbleTrack(**self.babble)
        except TypeError as e:
            raise InvalidParams(f"watch options: {e}") from None
        SurpriseTrack(**self.surprise)
        try:
            RunawayTrack(self.horizon, **self.runaway)
        except TypeError as e:
            raise InvalidParams(f"runaway options: {e}") from None


DEFAULT = WatchConfig()


def cut_kinds(spec: bool | str | Iterable[str] | None) -> frozenset[str]:
    """The kinds to cut from a switch: True or ``"all"`` (every kind), False/None/
    ``"none"`` (none), or kinds (``"loop,gibberish"`` or ``["loop"]``)."""
    if spec is True or spec == "all":
        return frozenset(KINDS)
    if not spec or spec == "none":
        return frozenset()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    kinds = {k.strip() for k in items if k.strip()}
    if "all" in kinds:
        return frozenset(KINDS)
    bad = sorted(kinds - set(KINDS))
    if bad:
        raise InvalidParams(f"unknown kind {bad[0]!r}: use all or any of {', '.join(KINDS)}")
    return frozenset(kinds)



__all__ = ["CUT_REASON", "DEFAULT", "KINDS", "TEXT_KINDS", "WatchConfig", "cut_kinds"]
