"""Score detectors against labelled texts: precision and recall per kind.

A labelled example is a completion and the set of kinds a reader found in it.
Precision comes first in degen: a detector that flags legitimate code, tables or
refrains is worse than one that misses a loop, so the labelled corpus in
``tests/corpus`` mixes model outputs with legitimately repetitive texts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from degen.detect.base import DetectorList
from degen.records import Completion
from degen.stats import wilson_interval


def score(examples: Iterable[tuple[Completion, set[str]]], detectors: DetectorList,
          kinds: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per kind: tp, fp, fn, precision and recall (None when undefined), and the ids
    of the false positives and false negatives."""
    out = {k: {"tp": 0, "fp": 0, "fn": 0, "false_positives": [], "false_negatives": []}
           for k in kinds}
    for c, truth in examples:
        found = {f.kind for f in detectors(c)}
        for k in kinds:
            row = out[k]
            if k in found and k in truth:
                row["tp"] += 1
            elif k in found:
                row["fp"] += 1
                row["false_positives"].append(c.request_id)
            elif k in truth:
                row["fn"] += 1
                row["false_negatives"].append(c.request_id)
    for row in out.values():
        flagged, actual = row["tp"] + row["fp"], row["tp"] + row["fn"]
        row["precision"] = row["tp"] / flagged if flagged else None
        row["recall"] = row["tp"] / actual if actual else None
        row["precision_ci95"] = list(wilson_interval(row["tp"], flagged))
        row["recall_ci95"] = list(wilson_interval(row["tp"], actual))
    return out
