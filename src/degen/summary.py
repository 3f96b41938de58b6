"""Summaries of a set of completions: runaway rate with its interval, errors, speed.

Everything is derived from the records alone, so a summary of a resumed run, or of
a folder written last week, is computed the same way as a live one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from degen.records import Completion
from degen.stats import percentile, wilson_interval


def _span(cs: list[Completion]) -> float:
    """Seconds from the first request's start (or schedule) to the last one's end."""
    starts = [c.timings.scheduled_at or c.timings.started_at for c in cs]
    ends = [c.timings.finished_at for c in cs]
    starts = [s for s in starts if s is not None]
    ends = [e for e in ends if e is not None]
    if not starts or not ends:
        return 0.0
    return max(0.0, max(ends) - min(starts))


def rate_block(failures: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(failures, n)
    return {"n": n, "failures": failures, "failure_rate": failures / n if n else None,
            "ci95": [lo, hi]}


def summarize(completions: Iterable[Completion], out: str | None = None,
              categories: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The summary ``degen run`` prints (and ``--json`` emits).

    ``failures`` are runaways (``finish_reason == "length"``) and loops cut early
    (``"repetition"``, counted again in ``cut``) among the requests that did not
    error; ``failure_rate`` and ``ci95`` (Wilson, 95%) are over those
    ``valid`` requests. Errors are counted apart, never as runaways. When the records
    carry verdicts, ``kinds`` gives each detector kind's count, rate and interval.
    ``by_prompt`` and ``by_category`` give the failure rate of each prompt and prompt
    category (see :mod:`degen.risk`; ``categories`` maps prompt ids to categories).
    Cancelled requests are counted in ``cancelled`` and nowhere else.
    """
    from degen.risk import risk

    cs = list(completions)
    by_run: dict[int, list[Completion]] = defaultdict(list)
    for c in cs:
        by_run[c.run].append(c)
    errors = sum(c.is_error for c in cs)
    cancelled = sum(c.is_cancelled for c in cs)
    valid = [c for c in cs if c.is_measured]
    failures = sum(c.is_failure for c in valid)
    cut = sum(c.is_cut for c in valid)
    tokens = sum(c.completion_tokens or 0 for c in valid)
    wall = sum(_span(v) for v in by_run.values())
    lat = [c.timings.latency_s for c in valid if c.timings.latency_s is not None]
    ttft = [c.timings.ttft_s for c in valid if c.timings.ttft_s is not None]
    block = rate_block(failures, len(valid))
    runs = []
    for run in sorted(by_run):
        v = [c for c in by_run[run] if c.is_measured]
        r = rate_block(sum(c.is_failure for c in v), len(v))
        r.update(run=run, errors=sum(c.is_error for c in by_run[run]))
        runs.append(r)
    first_error = next((c.error for c in cs if c.is_error), None)
    judged = [c.verdict for c in valid if c.verdict is not None]
    kinds = None
    if judged:
        from degen.detect.verdict import kind_rates

        kinds = kind_rates(judged)
    return {
        "n": len(cs),
        "valid": len(valid),
        "failures": failures,
        "cut": cut,
        "failure_rate": block["failure_rate"],
        "ci95": block["ci95"],
        "errors": errors,
        "cancelled": cancelled,
        "first_error": first_error,
        "completion_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if wall > 0 else None,
        "latency_p50_s": percentile(lat, 50),
        "latency_p95_s": percentile(lat, 95),
        "ttft_p50_s": percentile(ttft, 50),
        "runs": runs,
        "kinds": kinds,
        **risk(cs, categories=categories),
        "out": out,
    }
