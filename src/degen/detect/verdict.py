"""Verdicts: every detector and every metric on one completion, as one JSON-able dict.

``{"id", "degenerate", "kinds", "findings", "metrics"}`` is the shape ``degen scan
--format jsonl`` prints and ``degen run`` stores on each record (``verdict``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from degen.detect.base import DetectorList, create_detector
from degen.detect.metrics import all_metrics
from degen.records import Completion
from degen.stats import wilson_interval

DEFAULT_KINDS: tuple[str, ...] = ("runaway", "loop", "spacing", "gibberish")


def default_detectors(kinds: Sequence[str] = DEFAULT_KINDS) -> DetectorList:
    """The detectors of ``kinds``: the text kinds share one watch (one pass over the
    text, the same judgment as the guard's), the others are created by name."""
    from degen.detect.watch import KINDS, TextWatch, WatchConfig

    text = tuple(k for k in KINDS if k in kinds)
    others = [create_detector(k) for k in kinds if k not in KINDS]
    return DetectorList([*others, *([TextWatch(WatchConfig(kinds=text))] if text else [])])


def judge(completion: Completion, detectors: DetectorList | None = None) -> dict[str, Any]:
    """The verdict on ``completion``. Error records are judged on nothing: an error is
    not a degeneration."""
    dl = detectors if detectors is not None else default_detectors()
    findings = [] if not completion.is_measured else dl(completion)
    return {
        "id": completion.request_id,
        "degenerate": bool(findings),
        "kinds": sorted({f.kind for f in findings}),
        "findings": [f.to_dict() for f in findings],
        "metrics": {k: round(v, 4) for k, v in
                    all_metrics(completion.text, completion.token_ids).items()},
    }


def kind_rates(verdicts: Iterable[dict[str, Any]],
               kinds: Sequence[str] = DEFAULT_KINDS) -> dict[str, dict[str, Any]]:
    """Per kind (and ``any``): count, n, rate and Wilson 95% interval."""
    vs = list(verdicts)
    n = len(vs)
    out: dict[str, dict[str, Any]] = {}
    for kind in (*kinds, "any"):
        k = sum(v["degenerate"] if kind == "any" else kind in v["kinds"] for v in vs)
        lo, hi = wilson_interval(k, n)
        out[kind] = {"count": k, "n": n, "rate": k / n if n else None, "ci95": [lo, hi]}
    return out
