"""The detector contract: ``detector(completion) -> Finding | None``.

A detector is a small callable, like transformers' ``StoppingCriteria``:

- its constructor validates its arguments and says what to use instead;
- calling it is a pure function of the :class:`~degen.records.Completion`: no I/O, no
  mutation, no state carried from one call to the next, so one instance may be used
  from many threads;
- it returns ``None`` when it sees nothing, or one :class:`Finding` with evidence.

:class:`DetectorList` runs several and returns every finding. A detector may also
report several kinds at once (:class:`~degen.detect.watch.TextWatch`, the one watch
behind every text kind): its call returns a list. Detectors are registered by name; a
miss lists the registered names.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from degen.errors import InvalidParams, UnknownName
from degen.records import Completion


@dataclass(frozen=True, slots=True)
class Finding:
    """One way a completion degenerated, with the evidence.

    ``start_char`` is where the degenerate part begins in ``completion.text``;
    ``start_unit`` the same position in units (token ids when the completion has them,
    else words; ``unit`` says which). ``score`` is in [0, 1]: how sure and how bad.
    """

    kind: str
    score: float
    message: str
    start_char: int | None = None
    start_unit: int | None = None
    unit: str = "word"
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise InvalidParams(f"a finding's score must be in [0, 1], got {self.score}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "score": self.score, "message": self.message,
                "start_char": self.start_char, "start_unit": self.start_unit,
                "unit": self.unit, "evidence": dict(self.evidence)}


class Detector(ABC):
    """Base of every detector. Subclasses set :attr:`kind` and implement ``__call__``."""

    kind: ClassVar[str] = ""

    @abstractmethod
    def __call__(self, completion: Completion) -> Finding | list[Finding] | None:
        """The finding for ``completion``, or None (a detector of several kinds: the
        list of its findings). Pure: no I/O, no mutation."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class DetectorList:
    """Several detectors run as one: ``DetectorList([...])(completion) -> [Finding, ...]``."""

    def __init__(self, detectors: Iterable[Detector]) -> None:
        self.detectors = list(detectors)
        for d in self.detectors:
            if not isinstance(d, Detector):
                raise InvalidParams(f"{d!r} is not a Detector")

    def __call__(self, completion: Completion) -> list[Finding]:
        out: list[Finding] = []
        for d in self.detectors:
            f = d(completion)
            if isinstance(f, list):
                out.extend(f)
            elif f is not None:
                out.append(f)
        return out

    def __iter__(self) -> Iterator[Detector]:
        return iter(self.detectors)

    def __len__(self) -> int:
        return len(self.detectors)


_REGISTRY: dict[str, str] = {
    "capped": "degen.detect.runaway:CappedDetector",
    "runaway": "degen.detect.runaway:RunawayDetector",
    "loop": "degen.detect.loop:LoopDetector",
    "spacing": "degen.detect.spacing:SpacingDetector",
    "gibberish": "degen.detect.gibberish:GibberishDetector",
}


def register_detector(name: str, target: str) -> None:
    """Register a detector class by import path (``"package.module:Class"``)."""
    if ":" not in target:
        raise ValueError(f"detector target must look like 'module:Class', got {target!r}")
    _REGISTRY[name] = target


def available_detectors() -> list[str]:
    return sorted(_REGISTRY)


def create_detector(name: str, **options: Any) -> Detector:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise UnknownName(
            f"detector {name!r} is not registered; available: {', '.join(available_detectors())}"
        ) from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)(**options)
