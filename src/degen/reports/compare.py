"""The report of ``degen compare``: one self-contained HTML page and a Markdown twin,
from ``compare.json`` alone (arms with intervals, paired differences with Holm-adjusted
p-values, failure rates by category per arm, the prompts that fail most, examples)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from degen.errors import UsageError
from degen.reports.html import _CSS, _example, _table, write_pages
from degen.reports.html import _ci as _rate


def load_compare(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "compare.json"
    if not path.exists():
        raise UsageError(f"{folder} holds no comparison (no compare.json); run degen compare "
                         f"--out {folder} first")
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path} ({e}); re-run degen compare --out {folder}"
                         ) from None
    if not isinstance(data, dict) or data.get("kind") != "degen.compare":
        raise UsageError(f"{path} is not a degen compare summary; re-run degen compare --out "
                         f"{folder}")
    return data


def _settings(a: dict[str, Any]) -> str:
    s = {**a["settings"]["engine"], **a["settings"]["sampling"]}
    return ", ".join(f"{k}={v}" for k, v in s.items()) or "defaults"


def _diff(p: dict[str, Any]) -> str:
    lo, hi = p["ci95"]
    return f"{p['difference']:+.1%} ({lo:+.1%} to {hi:+.1%})"


def verdict(p: dict[str, Any], alpha: float = 0.05) -> str:
    """One sentence for a pair."""
    if p["p_adjusted"] >= alpha:
        return (f"no difference shown between {p['a']} and {p['b']} "
                f"(adjusted p = {p['p_adjusted']:.3g})")
    worse = p["a"] if p["difference"] > 0 else p["b"]
    return f"{worse} fails more (adjusted p = {p['p_adjusted']:.3g})"


def _category_rows(s: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = [a["name"] for a in s["arms"]]
    by = {a["name"]: {r["category"]: r for r in a["by_category"]} for a in s["arms"]}
    cats = sorted({c for t in by.values() for c in t},
                  key=lambda c: -max((by[n].get(c) or {}).get("failure_rate") or 0
                                     for n in names))
    return names, [[c] + [_rate(by[n][c]) if c in by[n] else "-" for n in names] for c in cats]


def render_html(s: dict[str, Any]) -> str:
    e = html.escape
    cfg = s["config"]
    arms = s["arms"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>degen compare: "
             f"{e(' vs '.join(a['name'] for a in arms))}</title><style>{_CSS}</style>"
             "</head><body>",
             f"<h1>degen compare: {e(' vs '.join(a['name'] for a in arms))}</h1>",
             f"<p class='muted'>{cfg['requests'] * cfg['runs']} requests per arm, the same "
             f"prompts and seeds in every arm, max_tokens {cfg['max_tokens']}, failures: "
             f"{e(', '.join(cfg['kinds']))}</p>",
             "<div class='head'>" + "<br>".join(e(verdict(p)) for p in s["pairs"]) + "</div>",
             "<h2>Arms</h2>" + _table(
                 ["arm", "settings", "failure rate (95% CI, n)", "cut early", "errors",
                  "tokens / request", "latency p50 / p95"],
                 [[e(a["name"]), e(_settings(a)), e(_rate(a)), str(a["cut"]), str(a["errors"]),
                   "-" if a["tokens_per_request"] is None else f"{a['tokens_per_request']:.0f}",
                   f"{_s(a['latency_p50_s'])} / {_s(a['latency_p95_s'])}"] for a in arms]),
             "<h2>Paired differences</h2><p class='muted'>on the same requests; Newcombe's "
             "95% interval, exact McNemar p, Holm-adjusted over all pairs</p>" + _table(
                 ["a", "b", "a - b (95% CI)", "only a failed", "only b failed", "pairs", "p",
                  "adjusted p"],
                 [[e(p["a"]), e(p["b"]), e(_diff(p)), str(p["table"]["only_first"]),
                   str(p["table"]["only_second"]), str(p["pairs"]), f"{p['p_value']:.3g}",
                   f"{p['p_adjusted']:.3g}"] for p in s["pairs"]])]
    from degen.reports.survival import survival_html

    parts.extend(survival_html([(a["name"], a) for a in arms], cfg["max_tokens"],
                               cfg.get("horizon")))
    names, rows = _category_rows(s)
    parts.append("<h2>Which prompts fail, by category</h2>"
                 + _table(["category", *names], [[e(x) for x in r] for r in rows]))
    for a in arms:
        worst = [r for r in a["by_prompt"] if r["failures"]][:8]
        if worst:
            parts.append(f"<h3>{e(a['name'])}: the prompts that fail most</h3>" + _table(
                ["prompt", "category", "failure rate", "example"],
                [[e(r["prompt_id"]), e(r["category"]), e(_rate(r)),
                  e(f"{r['example']['kind']}: {r['example']['excerpt'][:120]}")]
                 for r in worst]))
    exs = [(a["name"], x) for a in arms for x in a.get("examples", [])]
    if exs:
        parts.append("<h2>Failing generations</h2>")
        parts.extend(f"<h3>{e(n)}</h3>{_example(x)}" for n, x in exs[:8])
    parts.append("<h2>Configuration and versions</h2><pre>" + e(json.dumps(
        {"config": cfg, "engines": s.get("engines"), "versions": s.get("versions")},
        indent=1)) + "</pre></body></html>")
    return "\n".join(parts)


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def render_markdown(s: dict[str, Any]) -> str:
    lines = [f"# degen compare: {' vs '.join(a['name'] for a in s['arms'])}", ""]
    lines += [f"- {verdict(p)}" for p in s["pairs"]] + [""]
    lines += ["| arm | settings | failure rate (95% CI, n) | tokens / request |",
              "|---|---|---|---|"]
    lines += [f"| {a['name']} | {_settings(a)} | {_rate(a)} | "
              f"{(a['tokens_per_request'] or 0):.0f} |" for a in s["arms"]]
    lines += ["", "| a | b | a - b (95% CI) | p | adjusted p |", "|---|---|---|---|---|"]
    lines += [f"| {p['a']} | {p['b']} | {_diff(p)} | {p['p_value']:.3g} | "
              f"{p['p_adjusted']:.3g} |" for p in s["pairs"]]
    names, rows = _category_rows(s)
    lines += ["", "| category | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_compare_report(folder: Path | str) -> Path:
    """Write ``report.html`` and ``report.md`` for the comparison in ``folder``."""
    folder = Path(folder)
    s = load_compare(folder)
    return write_pages(folder, render_html(s), render_markdown(s))
