"""What a set of completions says about one configuration: which count as failures,
the failure rate with its interval, tokens and latency, a few failing examples, and
two configurations compared on the same requests.

Shared by ``tune`` (trials, confirmation), ``compare`` (arms) and ``run``'s summary,
so a failure means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from degen.records import Completion
from degen.stats import mcnemar_exact_p, paired_difference, percentile, wilson_interval

#: what can count as a failure: ``runaway`` (would not end by the horizon: known by
#: extension, or predicted) or a degenerate kind (cut early by the watch, or in the
#: verdict). Reaching the cap is not one: most capped answers end a little later.
FAILURE_KINDS = ("runaway", "loop", "spacing", "gibberish")
DEGENERATE = ("loop", "spacing", "gibberish")


@dataclass(frozen=True, slots=True)
class Status:
    """How one measured generation ended, as degen counts it.

    ``ended``: by itself (an end token or a stop string); ``capped``: it reached its
    cap; ``degenerate``: the degenerate kinds found (the watch's cut, or the verdict);
    ``runaway``: it would not end by the horizon (None for a generation cut as
    degenerate: how it would have ended is not asked); ``known``: by extension, else
    predicted; ``long``: capped (or cut as a runaway) but it ends by the horizon;
    ``p_runaway``: the watch's probability, when it gave one.
    """

    ended: bool
    capped: bool
    degenerate: frozenset[str]
    runaway: bool | None
    known: bool
    p_runaway: float | None

    @property
    def long(self) -> bool:
        return self.runaway is False and not self.ended


def status(c: Completion, horizon: int | None = None) -> Status:
    """The :class:`Status` of a measured completion; ``horizon`` is what an
    extension's outcome is read against (default: the horizon it was extended to, else
    8 times its cap)."""
    from degen.outcomes import UNENDED, Outcome, default_horizon

    verdict = c.verdict or {}
    kinds = set(verdict.get("kinds") or ())
    bad = {k for k in kinds if k in DEGENERATE}
    if c.finish_reason in ("repetition", "degenerate"):
        cut = ((c.extra or {}).get("cut") or {}).get("kind")
        bad.add(cut if cut in DEGENERATE else "loop" if c.finish_reason == "repetition"
                else "gibberish")
    p = (verdict.get("metrics") or {}).get("p_runaway")
    ended = c.finish_reason == "stop"
    runaway: bool | None = False if ended else None
    known = ended
    if c.finish_reason in UNENDED:
        outcome = (c.extra or {}).get("outcome")
        got = None
        if isinstance(outcome, Mapping):
            o = Outcome.from_dict(outcome)
            got = o.ended_by(horizon or o.horizon or default_horizon(c.params.max_tokens))
        if got is not None:
            runaway, known = not got, True
        elif c.finish_reason == "runaway" or "runaway" in kinds or c.verdict is None:
            runaway = True
        else:
            runaway = False
    return Status(ended=ended, capped=c.finish_reason == "length",
                  degenerate=frozenset(bad), runaway=runaway, known=known,
                  p_runaway=p if isinstance(p, int | float) else None)


def how_known(known: int, total: int, extended: bool) -> str:
    """How ``total`` runaways are known, ``known`` of them by extension, as a phrase;
    ``extended``: the capped generations were continued (then none is a known 0)."""
    if known == total and (total or extended):
        return "known by extension"
    if not known:
        return "predicted"
    return f"{known} of {total} known by extension, the rest predicted"


def is_failure(c: Completion, kinds: Sequence[str] = FAILURE_KINDS,
               horizon: int | None = None) -> bool:
    """A failure: a runaway (``"runaway"`` in ``kinds``) or one of the degenerate
    ``kinds``."""
    if not c.is_measured:
        return False
    return _fails(status(c, horizon), set(kinds))


def _fails(s: Status, kinds: set[str]) -> bool:
    return bool(("runaway" in kinds and s.runaway) or s.degenerate & kinds)


@dataclass
class Measure:
    """What a set of completions says about one configuration.

    ``failures`` are runaways and degenerate kinds among ``kinds``; ``capped``,
    ``runaways`` (``runaways_known`` of them by extension, the rest predicted),
    ``long`` and ``degenerate`` count each status. With an extension of a share
    ``extend_share`` < 1 of the unended generations, ``estimate`` is the two-phase
    estimate of the failure rate (:func:`degen.stats.two_phase`), which :attr:`rate`
    and :attr:`ci95` then report.
    """

    n: int
    failures: int
    cut: int
    errors: int
    tokens: int
    latency_p50: float | None
    cancelled: int = 0
    capped: int = 0
    runaways: int = 0
    runaways_known: int = 0
    long: int = 0
    degenerate: int = 0
    estimate: dict[str, Any] | None = None
    extension_tokens: int = 0  # generated by continuing capped generations

    @classmethod
    def of(cls, cs: Sequence[Completion], kinds: Sequence[str] = FAILURE_KINDS,
           horizon: int | None = None, extend_share: float | None = None) -> Measure:
        valid = [c for c in cs if c.is_measured]
        lat = [c.timings.latency_s for c in valid if c.timings.latency_s is not None]
        sts = [status(c, horizon) for c in valid]
        want = set(kinds)
        fails = [_fails(s, want) for s in sts]
        m = cls(n=len(valid), failures=sum(fails),
                cut=sum(c.is_cut for c in valid), errors=sum(c.is_error for c in cs),
                tokens=sum(c.completion_tokens or 0 for c in cs),  # cancelled ones too
                latency_p50=percentile(lat, 50),
                cancelled=sum(c.is_cancelled for c in cs),
                capped=sum(s.capped for s in sts), runaways=sum(bool(s.runaway) for s in sts),
                runaways_known=sum(bool(s.runaway) and s.known for s in sts),
                long=sum(s.long for s in sts), degenerate=sum(bool(s.degenerate) for s in sts),
                extension_tokens=sum(_continued(c) for c in valid))
        if extend_share is not None and extend_share < 1 and "runaway" in want:
            from degen.outcomes import chosen
            from degen.stats import two_phase

            m.estimate = two_phase([_phase(s, f, want, chosen(c, extend_share))
                                    for c, s, f in zip(valid, sts, fails, strict=True)],
                                   extend_share)
        return m

    @property
    def rate(self) -> float | None:
        if self.estimate is not None:
            return self.estimate["rate"]
        return self.failures / self.n if self.n else None

    @property
    def ci95(self) -> tuple[float, float]:
        if self.estimate is not None:
            lo, hi = self.estimate["ci95"]
            return (lo, hi)
        return wilson_interval(self.failures, self.n)

    def value(self, objective: str, values: dict[str, Any]) -> float:
        if objective == "failure":
            return self.rate if self.rate is not None else 1.0
        if objective == "tokens":
            return self.tokens / max(1, self.n + self.errors + self.cancelled)
        if objective == "latency":
            return self.latency_p50 if self.latency_p50 is not None else float("inf")
        return deviation(values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(rate=self.rate, ci95=list(self.ci95))
        return d


def lengths(cs: Sequence[Completion]) -> list[list[int]]:
    """Each measured generation's length as survival data: ``[tokens, 1]`` for one that
    ended there, ``[tokens, 0]`` for one last seen still going (at its cap, where it was
    cut, or as far as an extension followed it): what a Kaplan-Meier curve of "still
    generating after L tokens" is drawn from (:func:`degen.stats.kaplan_meier`)."""
    out = []
    for c in cs:
        if not c.is_measured:
            continue
        o = (c.extra or {}).get("outcome")
        if isinstance(o, Mapping):
            out.append([int(o["tokens"]), int(bool(o["ended"]))])
        else:
            out.append([c.completion_tokens or 0, int(c.finish_reason == "stop")])
    return out


def _continued(c: Completion) -> int:
    """Tokens an extension generated after ``c``'s own."""
    o = (c.extra or {}).get("outcome")
    return max(0, int(o["tokens"]) - (c.completion_tokens or 0)) if isinstance(o, Mapping) \
        else 0


def _phase(s: Status, failed: bool, kinds: set[str], drawn: bool
           ) -> tuple[float, float | None]:
    """A generation in the two-phase estimate: (its prediction, its known value or
    None). Degenerate and ended generations are known in the first phase; a capped one's
    truth counts only when it was ``drawn`` for the share (one known from an earlier,
    larger extension is left to its prediction: counting it would bias the estimate)."""
    if s.degenerate & kinds or s.ended or s.runaway is None:
        return (float(failed), float(failed))
    pred = s.p_runaway if s.p_runaway is not None else float(bool(s.runaway))
    return (pred, float(bool(s.runaway)) if s.known and drawn else None)


def finding_of(c: Completion) -> dict[str, Any] | None:
    """Where a generation goes wrong: the watch's cut, else the verdict's first
    degenerate finding, else its runaway finding (never just "reached the cap")."""
    finding = (c.extra or {}).get("cut")
    if finding is None and c.verdict:
        found = [f for f in c.verdict.get("findings", ()) if f["kind"] != "capped"]
        finding = next((f for f in found if f["kind"] in DEGENERATE),
                       found[0] if found else None)
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


def deviation(values: Mapping[str, Any]) -> float:
    """Seed 000's second objective: how far the repetition penalty is from off (1.0)."""
    rp = values.get("repetition_penalty", 1.0)
    return abs(float(rp) - 1.0) if not (isinstance(rp, float) and math.isnan(rp)) else 0.0
