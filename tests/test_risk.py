"""Failure rates by prompt and by category: counts, intervals, order, examples, and
the summary, the run CLI's table and the cancelled requests they leave out."""

from __future__ import annotations

import pytest

from degen.measurement.risk import by_category, by_prompt, category_of, risk
from degen.measurement.summary import summarize
from degen.records import Completion, SamplingParams


def comp(pid: str, i: int, reason: str, text: str = "ok") -> Completion:
    return Completion(f"r{pid}{i}", pid, SamplingParams(), reason, text=text,
                      completion_tokens=5, index=i, error="x" if reason == "error" else None)


def sample() -> list[Completion]:
    cs = [comp("story-01", i, "length" if i < 3 else "stop", "once upon " * 9)
          for i in range(4)]
    cs += [comp("story-02", i, "stop") for i in range(4)]
    cs += [comp("qa-01", i, "repetition" if i == 0 else "stop") for i in range(4)]
    cs += [comp("qa-01", 9, "error"), comp("qa-01", 10, "cancelled")]
    return cs


def test_by_prompt_counts_rates_and_orders_worst_first() -> None:
    rows = by_prompt(sample())
    assert [r["prompt_id"] for r in rows] == ["story-01", "qa-01", "story-02"]
    top = rows[0]
    assert (top["n"], top["failures"], top["failure_rate"]) == (4, 3, 0.75)
    assert top["category"] == "story" and top["ci95"][0] < 0.75 < top["ci95"][1]
    assert top["example"]["finish_reason"] == "length" and "once upon" in \
        top["example"]["excerpt"]
    qa = rows[1]
    assert (qa["n"], qa["failures"]) == (4, 1)  # the error and the cancelled one left out
    assert "example" not in rows[2]


def test_by_category_pools_prompts_and_a_mapping_wins_over_the_id() -> None:
    rows = {r["category"]: r for r in by_category(sample())}
    assert (rows["story"]["n"], rows["story"]["failures"], rows["story"]["prompts"]) == (8, 3, 2)
    assert rows["qa"]["failure_rate"] == pytest.approx(0.25)
    mapped = by_category(sample(), categories={"qa-01": "facts"})
    assert {r["category"] for r in mapped} == {"story", "facts"}
    assert category_of("plain") == "-"


def test_kinds_choose_what_counts_as_a_failure() -> None:
    cs = [comp("a-1", 0, "stop"), comp("a-1", 1, "stop")]
    cs[0] = Completion.from_dict(cs[0].to_dict() | {"verdict": {"kinds": ["gibberish"],
                                                                  "findings": []}})
    assert by_prompt(cs, kinds=("runaway",))[0]["failures"] == 0
    assert by_prompt(cs, kinds=("gibberish",))[0]["failures"] == 1
    assert by_prompt(cs)[0]["failures"] == 1  # by default a degenerate kind is a failure


def test_the_summary_carries_both_tables_and_counts_cancelled_apart() -> None:
    s = summarize(sample())
    assert s["cancelled"] == 1 and s["errors"] == 1 and s["valid"] == 12
    assert s["by_prompt"] == risk(sample())["by_prompt"]
    assert sum(r["n"] for r in s["by_category"]) == s["valid"]
    assert sum(r["failures"] for r in s["by_category"]) == s["failures"]
