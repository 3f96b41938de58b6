"""The detector contract, the list combinator, the registry and `capped`."""

from __future__ import annotations

import pytest

from degen.detect import DetectorList, Finding, create_detector
from degen.detect.runaway import CappedDetector, RunawayDetector
from degen.errors import InvalidParams, UnknownName
from degen.records import Completion, SamplingParams


def comp(fr: str, text: str = "abc", tokens: int | None = 7) -> Completion:
    return Completion("r", "p", SamplingParams(max_tokens=7), finish_reason=fr, text=text,
                      completion_tokens=tokens, error="boom" if fr == "error" else None)


def test_capped_flags_length_only() -> None:
    d = CappedDetector()
    f = d(comp("length"))
    assert f is not None and f.kind == "capped" and f.score == 1.0
    assert f.evidence == {"completion_tokens": 7, "max_tokens": 7}
    assert f.start_char == 3 and "max_tokens 7" in f.message
    assert d(comp("stop")) is None
    assert d(comp("error")) is None


def test_detector_is_pure() -> None:
    c = comp("length")
    before = c.to_json()
    CappedDetector()(c)
    RunawayDetector()(c)
    assert c.to_json() == before


def test_list_runs_every_detector() -> None:
    dl = DetectorList([CappedDetector(), CappedDetector()])
    assert len(dl) == 2
    assert [f.kind for f in dl(comp("length"))] == ["capped", "capped"]
    assert dl(comp("stop")) == []
    with pytest.raises(InvalidParams, match="is not a Detector"):
        DetectorList([lambda c: None])


def test_registry_miss_lists_the_choices() -> None:
    assert isinstance(create_detector("runaway"), RunawayDetector)
    assert isinstance(create_detector("capped"), CappedDetector)
    with pytest.raises(UnknownName, match="detector 'loops' is not registered; available: "):
        create_detector("loops")


def test_finding_validates_and_serializes() -> None:
    with pytest.raises(InvalidParams, match="score must be in"):
        Finding("loop", 1.5, "x")
    d = Finding("loop", 0.5, "x", 3, 1, evidence={"period": 2}).to_dict()
    assert d == {"kind": "loop", "score": 0.5, "message": "x", "start_char": 3,
                 "start_unit": 1, "unit": "word", "evidence": {"period": 2}}
