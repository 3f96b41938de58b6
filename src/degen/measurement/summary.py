"""Summaries of a set of completions: runaway rate with its interval, errors, speed.

Everything is derived from the records alone, so a summary of a resumed run, or of
a folder written last week, is computed the same way as a live one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from degen.records import Completion
from degen.stats import percentile


def _span(cs: list[Completion]) -> float:
    """Seconds from the first request's start (or schedule) to the last one's end."""
    starts = [c.timings.scheduled_at or c.timings.started_at for c in cs]
    ends = [c.timings.finished_at for c in cs]
    starts = [s for s in starts if s is not None]
    ends = [e for e in ends if e is not None]
    if not starts or not ends:
        return 0.0
    return max(0.0, max(ends) - min(starts))


def summarize(completions: Iterable[Completion], out: str | None = None,
              categories: Mapping[str, str] | None = None, horizon: int | None = None,
              extend_share: float | None = None) -> dict[str, Any]:
    """The summary ``degen run`` prints (and ``--json`` emits).

    ``failures`` are runaways (generations that would not end by the horizon: known
    by extension, ``runaways_known``, or predicted by the watch) and degenerate
    generations (a loop, babble or glued words: cut early or in the verdict) among the
    requests that did not error; ``failure_rate`` and ``ci95`` (Wilson, 95%) are over
    those ``valid`` requests (with an extension of a share of them, the two-phase
    estimate, ``estimate``). ``capped`` counts the generations that reached the cap,
    ``long`` those of them that end by the horizon. Errors are counted apart, never as
    failures. When the records carry verdicts, ``kinds`` gives each detector kind's
    count, rate and interval. ``by_prompt`` and ``by_category`` give the failure rate
    of each prompt and prompt category (see :mod:`degen.measurement.risk`; ``categories`` maps
    prompt ids to categories). Cancelled requests are counted in ``cancelled`` and
    nowhere else.
    """
    from degen.measurement.failure import FAILURE_KINDS, Measure
    from degen.measurement.risk import risk

    cs = list(completions)
    by_run: dict[int, list[Completion]] = defaultdict(list)
    for c in cs:
        by_run[c.run].append(c)
    m = Measure.of(cs, FAILURE_KINDS, horizon, extend_share)
    valid = [c for c in cs if c.is_measured]
    tokens = sum(c.completion_tokens or 0 for c in valid)
    wall = sum(_span(v) for v in by_run.values())
    lat = [c.timings.latency_s for c in valid if c.timings.latency_s is not None]
    ttft = [c.timings.ttft_s for c in valid if c.timings.ttft_s is not None]
    runs = []
    for run in sorted(by_run):
        r = Measure.of(by_run[run], FAILURE_KINDS, horizon, extend_share)
        runs.append({"run": run, "n": r.n, "failures": r.failures, "failure_rate": r.rate,
                     "ci95": list(r.ci95), "errors": r.errors})
    first_error = next((c.error for c in cs if c.is_error), None)
    judged = [c.verdict for c in valid if c.verdict is not None]
    kinds = None
    if judged:
        from degen.detect.verdict import kind_rates

        kinds = kind_rates(judged)
    return {
        "n": len(cs),
        "valid": m.n,
        "failures": m.failures,
        "cut": m.cut,
        "failure_rate": m.rate,
        "ci95": list(m.ci95),
        "capped": m.capped,
        "runaways": m.runaways,
        "runaways_known": m.runaways_known,
        "runaways_predicted": m.runaways - m.runaways_known,
        "long": m.long,
        "degenerate": m.degenerate,
        "estimate": m.estimate,
        "errors": m.errors,
        "cancelled": m.cancelled,
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
