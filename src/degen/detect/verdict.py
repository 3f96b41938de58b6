"""Verdicts: every detector and every metric on one completion, as one JSON-able dict.

``{"id", "degenerate", "kinds", "findings", "metrics"}`` is the shape ``degen scan
--format jsonl`` prints and ``degen run`` stores on each record (``verdict``).
``kinds`` holds ``capped`` for a generation that reached its cap, and ``runaway`` only
for one that would not end by the horizon (known by extension, or predicted:
``metrics["p_runaway"]`` is the probability); ``degenerate`` is any kind but
``capped`` (a long answer that reached the cap is not degenerate).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from degen.detect.base import DetectorList, create_detector
from degen.detect.metrics import all_metrics
from degen.records import Completion
from degen.stats import wilson_interval

DEFAULT_KINDS: tuple[str, ...] = ("capped", "runaway", "loop", "spacing", "gibberish")


def default_detectors(kinds: Sequence[str] = DEFAULT_KINDS, horizon: int | None = None,
                      runaway: Mapping[str, Any] | None = None) -> DetectorList:
    """The detectors of ``kinds``: the watch's kinds share one watch (one pass over the
    text, the same judgment as the guard's), the others are created by name.
    ``horizon``: tokens a generation must end by not to be a runaway (default 8 times
    each record's cap); ``runaway``: options of the runaway track (``weights``...)."""
    from degen.detect.watch import KINDS, TextWatch, WatchConfig

    text = tuple(k for k in KINDS if k in kinds)
    others = [create_detector(k) for k in kinds if k not in KINDS]
    watch = TextWatch(WatchConfig(kinds=text, horizon=horizon, runaway=runaway or {}))
    return DetectorList([*others, *([watch] if text else [])])


def judge(completion: Completion, detectors: DetectorList | None = None) -> dict[str, Any]:
    """The verdict on ``completion``. Error records are judged on nothing: an error is
    not a degeneration."""
    from degen.detect.watch import TextWatch, watched

    dl = detectors if detectors is not None else default_detectors()
    findings: list[Any] = []
    p_runaway = None
    if completion.is_measured:
        for d in dl:
            if isinstance(d, TextWatch):  # the one watch: its findings and probability
                w = watched(completion, d.config)
                findings.extend(TextWatch.findings(w))
                p_runaway = w.p_runaway
                continue
            f = d(completion)
            findings.extend(f if isinstance(f, list) else [] if f is None else [f])
    metrics = {k: round(v, 4) for k, v in
               all_metrics(completion.text, completion.token_ids).items()}
    if p_runaway is not None:
        metrics["p_runaway"] = round(p_runaway, 4)
    return {
        "id": completion.request_id,
        "degenerate": any(f.kind != "capped" for f in findings),
        "kinds": sorted({f.kind for f in findings}),
        "findings": [f.to_dict() for f in findings],
        "metrics": metrics,
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
