"""Which prompts fail: failure rates by prompt and by prompt category, each with its
Wilson 95% interval, the prompts that fail most first, and one failing excerpt each.

Every arm of a run, a study or a comparison sends the same prompts with the same
seeds, so these tables line up across arms. A prompt's category comes from the
prompt file's ``category`` field; for records read back without their prompt file
it is the id's stem (``story-07`` -> ``story``), and ``-`` when there is none.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from degen.measurement.failure import FAILURE_KINDS, finding_of, is_failure
from degen.records import Completion
from degen.stats import wilson_interval

_STEM = re.compile(r"^(.+?)[-_]\d+$")


def category_of(prompt_id: str, categories: Mapping[str, str] | None = None) -> str:
    """The category of ``prompt_id``: from ``categories`` when it names it, else the
    id's stem.

    >>> category_of("story-07"), category_of("hello"), category_of("x", {"x": "code"})
    ('story', '-', 'code')
    """
    if categories and prompt_id in categories:
        return str(categories[prompt_id])
    m = _STEM.match(prompt_id)
    return m.group(1) if m else "-"


def _row(cs: Sequence[Completion], kinds: Sequence[str]) -> dict[str, Any]:
    measured = [c for c in cs if c.is_measured]
    bad = [c for c in measured if is_failure(c, kinds)]
    lo, hi = wilson_interval(len(bad), len(measured))
    row: dict[str, Any] = {"n": len(measured), "failures": len(bad),
                           "failure_rate": len(bad) / len(measured) if measured else None,
                           "ci95": [lo, hi]}
    if bad:
        row["example"] = _excerpt(bad[0])
    return row


def _excerpt(c: Completion, width: int = 160) -> dict[str, Any]:
    """Where a failing generation goes wrong: the text from the finding (the last
    ``width`` characters of a runaway without one)."""
    finding = finding_of(c)
    start = (finding or {}).get("start_char")
    text = c.text
    lo = start if start is not None else max(0, len(text) - width)
    return {"request_id": c.request_id, "finish_reason": c.finish_reason,
            "kind": (finding or {}).get("kind", "runaway"), "excerpt": text[lo:lo + width]}


def _ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (-(r["failure_rate"] or 0.0), -r["failures"], -r["n"]))


def by_prompt(cs: Sequence[Completion], kinds: Sequence[str] = FAILURE_KINDS,
              categories: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per prompt (``prompt_id``, ``category``, ``n``, ``failures``,
    ``failure_rate``, ``ci95``, and ``example`` when one failed), worst first."""
    groups: dict[str, list[Completion]] = defaultdict(list)
    for c in cs:
        groups[c.prompt_id].append(c)
    return _ranked([{"prompt_id": pid, "category": category_of(pid, categories),
                     **_row(g, kinds)} for pid, g in groups.items()])


def by_category(cs: Sequence[Completion], kinds: Sequence[str] = FAILURE_KINDS,
                categories: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per prompt category (``category``, ``prompts``, ``n``, ``failures``,
    ``failure_rate``, ``ci95``), worst first."""
    groups: dict[str, list[Completion]] = defaultdict(list)
    for c in cs:
        groups[category_of(c.prompt_id, categories)].append(c)
    return _ranked([{"category": cat, "prompts": len({c.prompt_id for c in g}),
                     **_row(g, kinds)} for cat, g in groups.items()])


def risk(cs: Sequence[Completion], kinds: Sequence[str] = FAILURE_KINDS,
         categories: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{"by_prompt": [...], "by_category": [...]}`` for ``cs``."""
    return {"by_prompt": by_prompt(cs, kinds, categories),
            "by_category": by_category(cs, kinds, categories)}


def prompt_categories(prompts: Sequence[Any]) -> dict[str, str]:
    """``{prompt id: category}`` for prompts whose file gives one."""
    return {p.id: str(p.meta["category"]) for p in prompts if p.meta.get("category")}


def format_rows(rows: Sequence[Mapping[str, Any]], key: str, top: int = 5) -> list[str]:
    """Text lines for the worst ``top`` rows of a table (those with failures)."""
    out = []
    for r in [r for r in rows if r["failures"]][:top]:
        lo, hi = r["ci95"]
        line = (f"{r[key]:<18} {r['failures']}/{r['n']}  {r['failure_rate']:.0%} "
                f"({lo:.0%}-{hi:.0%})")
        ex = r.get("example")
        if ex and key == "prompt_id":
            snippet = " ".join(ex["excerpt"].split())[:60]
            line += f"  {ex['kind']}: \"{snippet}\""
        out.append(line)
    return out
