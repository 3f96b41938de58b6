"""``degen report``: what a tuning study found, as one self-contained HTML page (plots
inlined as PNG data, no script, no font or stylesheet from anywhere: it works
offline and survives being mailed) and a Markdown summary beside it.

It is seed 000's missing "Results" section: the best parameters, baseline vs
optimized failure rates with their intervals and the paired test, the Pareto front,
the failure rate along each parameter, parameter importance, every trial, failing
generations with the place they go wrong highlighted, and the configuration and
versions. Everything comes from ``tune.json`` (written by ``degen tune``).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from degen.errors import UsageError
from degen.measurement.failure import how_known
from degen.reports.html import _CSS, _ci, _example, _pct, _png, _table, write_pages


def load_summary(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "tune.json"
    if not path.exists():
        raise UsageError(f"{folder} holds no tuning study (no tune.json); run degen tune "
                         f"--out {folder} first")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path} ({e}); re-run degen tune --out {folder}"
                         ) from None
    if not isinstance(data, dict) or data.get("kind") != "degen.tune":
        raise UsageError(f"{path} is not a degen tune summary; re-run degen tune --out "
                         f"{folder}")
    return data


def _rate(m: dict[str, Any]) -> str:
    if not m or m.get("rate") is None:
        return "-"
    lo, hi = m["ci95"]
    return f"{_pct(m['rate'])} ({_pct(lo)}-{_pct(hi)}, {m['failures']}/{m['n']})"


def _reweighted(rw: dict[str, Any] | None) -> str:
    if not rw or rw.get("rate") is None:
        return "-"
    lo, hi = rw["ci95"]
    return f"{_pct(rw['rate'])} ({_pct(lo)}-{_pct(hi)}, {rw['n_eff']:.0f})"


def _values(v: dict[str, Any]) -> str:
    if not v:
        return "engine defaults"
    return ", ".join(f"{k}={x:.3g}" if isinstance(x, float) else f"{k}={x}"
                     for k, x in v.items())


def headline(s: dict[str, Any]) -> str:
    c = s.get("confirmation")
    if c and c.get("comparison"):
        best = c["arms"][c["best"]]["measure"]
        base = c["arms"]["baseline"]["measure"]
        cmp_ = c["comparison"]
        lo, hi = cmp_["ci95"]
        verdict = ("tuned" if hi < 0 else "the defaults are better" if lo > 0
                   else "no clear difference")
        return (f"{verdict}: failure rate {_rate(base)} at the engine's defaults -> "
                f"{_rate(best)} with "
                f"{_values(c['arms'][c['best']]['values'])}; difference "
                f"{cmp_['difference']:+.1%} (95% CI {lo:+.1%} to {hi:+.1%}), paired exact "
                f"McNemar p = {cmp_['p_value']:.2g}, on {cmp_['pairs']} new requests")
    if s.get("best"):
        t = next((r for r in s["trials"] if r["number"] == s["best"]["trial"]), None)
        m = t["measure"] if t else {}
        tied = s["best"].get("tied_with") or []
        also = f" (tied with trial{'s' if len(tied) > 1 else ''} " \
            f"{', '.join(map(str, tied))}: confirm to settle it)" if tied else ""
        return (f"best in the search: {_values(s['best']['values'])}, failure rate "
                f"{_rate(m)}{also}")
    return "no trial finished"


def runaway_headline(s: dict[str, Any]) -> str | None:
    """The confirmation's runaways, capped and degenerate generations, defaults -> best."""
    c = s.get("confirmation")
    if not c or not c.get("best"):
        return None
    base, best = c["arms"]["baseline"]["measure"], c["arms"][c["best"]]["measure"]
    if "runaways" not in base:
        return None
    h = c.get("horizon")
    n_b, n_t = base["n"], best["n"]
    known = base.get("runaways_known", 0) + best.get("runaways_known", 0)
    total = base["runaways"] + best["runaways"]
    how = how_known(known, total, bool(c.get("extended")))
    if c.get("extend_share") not in (None, 1.0):
        how += f" (a share {c['extend_share']:g} continued: two-phase estimate)"
    return (f"runaways (would not end by {h:,} tokens, {how}): {base['runaways']}/{n_b} at "
            f"the defaults -> {best['runaways']}/{n_t}; capped {base['capped']} -> "
            f"{best['capped']} (of them long answers that end: {base['long']} -> "
            f"{best['long']}); degenerate {base['degenerate']} -> {best['degenerate']}")


# ------------------------------------------------------------------------ plots
def _finished(s: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in s["trials"] if r["measure"].get("rate") is not None
            and r["state"] in ("complete", "pruned")]


def plot_along(s: dict[str, Any]) -> str | None:
    """Failure rate (with its interval) against each parameter, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _finished(s)
    names = list(s["config"]["space"])
    if not rows or not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        xs, ys, los, his, colors = [], [], [], [], []
        for r in rows:
            x = r["values"].get(name)
            if x is None:
                continue
            m = r["measure"]
            xs.append(str(x) if isinstance(x, str) else x)
            ys.append(m["rate"])
            los.append(m["rate"] - m["ci95"][0])
            his.append(m["ci95"][1] - m["rate"])
            colors.append("#999" if r["state"] == "pruned" else "#1f5fa8")
        ax.errorbar(xs, ys, yerr=[los, his], fmt="none", ecolor="#bbb", zorder=1)
        ax.scatter(xs, ys, c=colors, zorder=2, s=22)
        ax.set_xlabel(name)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("failure rate (95% CI)")
    fig.suptitle("failure rate along each parameter (grey: pruned)", fontsize=10)
    return _png(fig)


def plot_front(s: dict[str, Any]) -> str | None:
    """Failure rate against deviation from defaults (seed 000's two objectives)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in _finished(s) if r["state"] == "complete"]
    if not rows:
        return None
    pts = sorted((r["deviation"], r["measure"]["rate"]) for r in rows)
    front, best = [], None
    for d, f in pts:
        if best is None or f < best:
            front.append((d, f))
            best = f
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=20, c="#1f5fa8", label="trials")
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", c="#c0392b",
            label="Pareto front")
    ax.set_xlabel("|repetition_penalty - 1|")
    ax.set_ylabel("failure rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


# ------------------------------------------------------------------------ HTML
def _risk_html(s: dict[str, Any], top: int = 10) -> list[str]:
    """Which prompts fail under the best configuration (and under the defaults when
    the confirmation ran them on the same requests)."""
    e = html.escape
    if not s.get("by_category"):
        return []
    base = ((s.get("confirmation") or {}).get("arms") or {}).get("baseline") or {}
    base_cat = {r["category"]: r for r in base.get("by_category", [])}
    base_pr = {r["prompt_id"]: r for r in base.get("by_prompt", [])}
    cols = ["best configuration"] + (["engine defaults"] if base_cat else [])
    rows = [[e(r["category"]), str(r["prompts"]), e(_ci(r))]
            + ([e(_ci(base_cat[r["category"]]))] if r["category"] in base_cat else
               [] if not base_cat else ["-"]) for r in s["by_category"]]
    out = ["<h2>Which prompts fail</h2><p class='muted'>failure rate (95% CI, failures/n) by "
           "prompt category and the prompts that fail most; every arm saw the same prompts "
           "and seeds</p>", _table(["category", "prompts", *cols], rows)]
    worst = [r for r in s["by_prompt"] if r["failures"]][:top]
    if worst:
        prow = []
        for r in worst:
            ex = r.get("example") or {}
            prow.append([e(r["prompt_id"]), e(r["category"]), e(_ci(r))]
                        + ([e(_ci(base_pr[r["prompt_id"]]))] if r["prompt_id"] in base_pr
                           else [] if not base_pr else ["-"])
                        + [e(f"{ex.get('kind', '')}: {ex.get('excerpt', '')[:120]}")])
        out.append(_table(["prompt", "category", *cols, "example (from where it goes wrong)"],
                          prow))
    return out


def render_html(s: dict[str, Any]) -> str:
    e = html.escape
    cfg = s["config"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>degen tune: "
             f"{e(s['study'])}</title><style>{_CSS}</style></head><body>",
             f"<h1>degen tune: {e(s['study'])}</h1>",
             f"<p class='muted'>{e(s['engine'].get('engine', ''))} "
             f"{e(str(s['engine'].get('model', '')))}, {s['n_complete']} finished trials, "
             f"{s['n_pruned']} pruned, {s['generated_tokens']:,} tokens generated, "
             f"{s.get('wall_s', 0):.0f} s</p>",
             f"<div class='head'><b>Result.</b> {e(headline(s))}"
             + (f"<br>{e(runaway_headline(s) or '')}" if runaway_headline(s) else "")
             + "</div>"]
    c = s.get("confirmation")
    if c:
        rows = []
        for name, arm in c["arms"].items():
            rows.append([e(name), e(_values(arm["values"])), e(_rate(arm["measure"])),
                         str(arm["measure"]["cut"]), f"{arm['deviation']:.3g}"])
        parts.append(f"<h2>Confirmed on {c['requests']} new requests</h2>")
        parts.append(_table(["arm", "parameters", "failure rate (95% CI, n)", "cut early",
                             "|rp-1|"], rows))
        if c.get("comparison"):
            t = c["comparison"]["table"]
            parts.append(f"<p>Paired on the same requests: both failed {t['both']}, only "
                         f"{e(c['best'])} {t['only_first']}, only the baseline "
                         f"{t['only_second']}, neither {t['neither']}.</p>")
        from degen.reports.survival import survival_html

        parts.extend(survival_html(
            [(n, {**a["measure"], "lengths": a.get("lengths")}) for n, a in c["arms"].items()],
            cfg.get("max_tokens"), c.get("horizon")))
    if s.get("best"):
        parts.append("<h2>Best parameters</h2><pre>"
                     + e(json.dumps(s["best"]["values"], indent=1)) + "</pre>")
    front = plot_front(s)
    along = plot_along(s)
    if front:
        parts.append(f"<h2>Pareto front</h2><img alt='Pareto front' src='{front}'>")
    if along:
        parts.append(f"<h2>Failure rate along each parameter</h2>"
                     f"<img alt='failure rate along each parameter' src='{along}'>")
    if s.get("importance"):
        parts.append("<h2>Parameter importance</h2>" + _table(
            ["parameter", "importance (fANOVA)"],
            [[e(k), f"{v:.2f}"] for k, v in s["importance"].items()]))
    parts.extend(_risk_html(s))
    stress = bool(s.get("stress"))
    rows = []
    for r in s["trials"]:
        m = r["measure"]
        rw = r.get("reweighted")
        rows.append([str(r["number"]), e(r["state"]), e(_values(r["values"])), e(_rate(m))]
                    + ([e(_reweighted(rw))] if stress else [])
                    + [str(m.get("cut", "-")), str(m.get("tokens", "-")),
                       "-" if r["seconds"] is None else f"{r['seconds']:.0f}"])
    head = "stress-suite failure rate (95% CI, n)" if stress else "failure rate (95% CI, n)"
    parts.append("<h2>Trials</h2>" + (
        "<p class='muted'>--stress: risky prompts sent more often (weights from a first "
        f"pass of the defaults, {e(_rate(s['stress']['pilot']))}); the original mix's rate "
        "is re-weighted (Horvitz-Thompson, Wilson interval at the effective n)</p>"
        if stress else "") + _table(
        ["#", "state", "parameters", head]
        + (["original mix, re-weighted (95% CI, n_eff)"] if stress else [])
        + ["cut", "tokens", "s"], rows))
    exs = []
    if c:
        exs = [(n, x) for n, a in c["arms"].items() for x in a.get("examples", [])]
    if not exs:
        exs = [(f"trial {r['number']}", x) for r in s["trials"] for x in r["examples"]]
    if exs:
        parts.append("<h2>Failing generations</h2><p class='muted'>highlighted from where "
                     "the detector says it goes wrong</p>")
        parts.extend(f"<h3>{e(n)}</h3>{_example(x)}" for n, x in exs[:6])
    parts.append("<h2>Configuration and versions</h2><pre>"
                 + e(json.dumps({"config": cfg, "engine": s["engine"],
                                 "versions": s.get("versions")}, indent=1)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(s: dict[str, Any]) -> str:
    lines = [f"# degen tune: {s['study']}", "", f"**Result.** {headline(s)}", ""]
    if runaway_headline(s):
        lines += [str(runaway_headline(s)), ""]
    c = s.get("confirmation")
    if c:
        lines += [f"## Confirmed on {c['requests']} new requests", "",
                  "| arm | parameters | failure rate (95% CI, n) | cut early |",
                  "|---|---|---|---|"]
        lines += [f"| {n} | {_values(a['values'])} | {_rate(a['measure'])} | "
                  f"{a['measure']['cut']} |" for n, a in c["arms"].items()]
        lines.append("")
    if s.get("by_category"):
        lines += ["## Which prompts fail (best configuration)", "",
                  "| category | prompts | failure rate (95% CI, n) |", "|---|---|---|"]
        lines += [f"| {r['category']} | {r['prompts']} | {_ci(r)} |" for r in s["by_category"]]
        lines += ["", "| prompt | failure rate (95% CI, n) |", "|---|---|"]
        lines += [f"| {r['prompt_id']} | {_ci(r)} |" for r in s["by_prompt"]
                  if r["failures"]][:10]
        lines.append("")
    lines += ["## Trials", "", "| # | state | parameters | failure rate (95% CI, n) |",
              "|---|---|---|---|"]
    lines += [f"| {r['number']} | {r['state']} | {_values(r['values'])} | "
              f"{_rate(r['measure'])} |" for r in s["trials"]]
    lines += ["", f"{s['generated_tokens']:,} tokens generated; report: report.html", ""]
    return "\n".join(lines)


def write_report(folder: Path | str) -> Path:
    """Write ``report.html`` and ``report.md`` into ``folder``; returns the HTML path."""
    folder = Path(folder)
    s = load_summary(folder)
    return write_pages(folder, render_html(s), render_markdown(s))
