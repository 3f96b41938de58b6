"""What a set of completions says about one configuration: which count as failures,
the failure rate with its interval, tokens and latency, a few failing examples, and
two configurations compared on the same requests.

Shared by ``tune`` (trials, confirmation), ``compare`` (arms) and ``run``'s summary,
so a failure means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from degen.records import Completion
from degen.stats import mcnemar_exact_p, paired_difference, percentile, wilson_interval

#: what can count as a failure: ``runaway`` (ran to the cap or was cut early) or a
#: detector's kind in the verdict
FAILURE_KINDS = ("runaway", "loop", "spacing", "gibberish")


def is_failure(c: Completion, kinds: Sequence[str]) -> bool:
    """A failure: a runaway or a generation cut early (``runaway``), or a verdict of
    another kind."""
    if not c.is_measured:
        return False
    if "runaway" in kinds and c.is_failure:
        return True
    others = [k for k in kinds if k != "runaway"]
    if others and c.verdict:
        return any(k in c.verdict.get("kinds", ()) for k in others)
    return c.is_cut and ((c.extra or {}).get("cut") or {}).get("kind") in others


@dataclass
class Measure:
    """What a set of completions says about one configuration."""

    n: int
    failures: int
    cut: int
    errors: int
    tokens: int
    latency_p50: float | None
    cancelled: int = 0

    @classmethod
    def of(cls, cs: Sequence[Completion], kinds: Sequence[str]) -> Measure:
        valid = [c for c in cs if c.is_measured]
        lat = [c.timings.latency_s for c in valid if c.timings.latency_s is not None]
        return cls(n=len(valid), failures=sum(is_failure(c, kinds) for c in valid),
                   cut=sum(c.is_cut for c in valid), errors=sum(c.is_error for c in cs),
                   tokens=sum(c.completion_tokens or 0 for c in cs),  # cancelled ones too
                   latency_p50=percentile(lat, 50),
                   cancelled=sum(c.is_cancelled for c in cs))

    @property
    def rate(self) -> float | None:
        return self.failures / self.n if self.n else None

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.failures, self.n)

    def value(self, objective: str, values: dict[str, Any]) -> float:
        if objective == "failure":
            return self.rate if self.rate is not None else 1.0
        if objective == "tokens":
            return self.tokens / max(1, self.n + self.errors + self.cancelled)
        if objective == "latency":
            return self.latency_p50 if self.latency_p50 is not None else float("inf")
        from degen.tune.space import deviation

        return deviation(values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(rate=self.rate, ci95=list(self.ci95))
        return d


def finding_of(c: Completion) -> dict[str, Any] | None:
    """Where a generation goes wrong: the watch's cut, else the verdict's first finding
    that is not just "ran to the cap"."""
    finding = (c.extra or {}).get("cut")
    if finding is None and c.verdict:
        finding = next((f for f in c.verdict.get("findings", ()) if f["kind"] != "runaway"),
                       None)
    return finding


def examples(cs: Sequence[Completion], kinds: Sequence[str], k: int = 2) -> list[dict]:
    """A few failing generations with where they go wrong, for the report."""
    out = []
    for c in cs:
        if len(out) >= k:
            break
        if not is_failure(c, kinds):
            continue
        finding = finding_of(c)
        text = c.text
        start = (finding or {}).get("start_char")
        lo = max(0, (start or len(text)) - 300)
        out.append({"request_id": c.request_id, "prompt_id": c.prompt_id,
                    "finish_reason": c.finish_reason, "tokens": c.completion_tokens,
                    "excerpt": text[lo:lo + 700], "excerpt_from": lo,
                    "mark_at": None if start is None else start - lo,
                    "finding": None if finding is None else {
                        "kind": finding.get("kind"), "message": finding.get("message")}})
    return out


def params_key(values: dict[str, Any]) -> str:
    """A short stable name for a configuration (its records folder)."""
    blob = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def paired(first: Sequence[Completion], second: Sequence[Completion],
           kinds: Sequence[str]) -> dict[str, Any]:
    """Best vs baseline on the same requests: the 2x2 table of pairs, the difference of
    failure rates with Newcombe's interval, and the exact McNemar p-value."""
    a_by = {c.request_id: c for c in first if c.is_measured}
    b_by = {c.request_id: c for c in second if c.is_measured}
    both = sorted(set(a_by) & set(b_by))
    t = {"both": 0, "only_first": 0, "only_second": 0, "neither": 0}
    for rid in both:
        fa, fb = is_failure(a_by[rid], kinds), is_failure(b_by[rid], kinds)
        t["both" if fa and fb else "only_first" if fa else "only_second" if fb
          else "neither"] += 1
    diff, lo, hi = paired_difference(t["both"], t["only_first"], t["only_second"], t["neither"])
    return {"pairs": len(both), "table": t, "difference": diff, "ci95": [lo, hi],
            "p_value": mcnemar_exact_p(t["only_first"], t["only_second"])}
