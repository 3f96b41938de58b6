"""The reports' view of how generations end: for each arm, the share still generating
after L tokens (a Kaplan-Meier curve: a generation last seen still going, at its cap,
where it was cut or as far as an extension followed it, is censored there) and the
table of capped, long, runaway and degenerate generations. Shared by the tuning and
the comparison reports."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from degen.stats import kaplan_meier

_COLORS = ("#1f5fa8", "#c0392b", "#2e8b57", "#8e44ad", "#d35400", "#555555")


def survival_at(curve: Sequence[tuple[int, float]], length: int, longest: int
                ) -> float | None:
    """The share still going after ``length`` tokens (None past the longest length
    seen: unknown there)."""
    if length > longest:
        return None
    share = 1.0
    for t, s in curve:
        if t > length:
            break
        share = s
    return share


def plot_survival(arms: Sequence[tuple[str, Sequence[Sequence[int]]]], cap: int | None,
                  horizon: int | None) -> str | None:
    """Each arm's Kaplan-Meier curve of "still generating after L tokens", with the cap
    and the horizon marked; a PNG data URL, or None without data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from degen.reports.html import _png

    arms = [(n, d) for n, d in arms if d]
    if not arms:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for i, (name, data) in enumerate(arms):
        curve = kaplan_meier(data)
        longest = max(t for t, _ in data)
        xs = [t for t, _ in curve] + [longest]
        ys = [s for _, s in curve] + [curve[-1][1]]
        ax.step(xs, ys, where="post", color=_COLORS[i % len(_COLORS)], label=name)
    for x, what in ((cap, "cap"), (horizon, "horizon")):
        if x:
            ax.axvline(x, color="#999", lw=0.8, ls="--")
            ax.text(x, 1.02, what, fontsize=7, ha="center", color="#777")
    ax.set_xlabel("tokens generated")
    ax.set_ylabel("share still generating")
    ax.set_ylim(-0.02, 1.08)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def survival_html(arms: Sequence[tuple[str, Mapping[str, Any]]], cap: int | None,
                  horizon: int | None) -> list[str]:
    """The section of a report: the curves and a table per arm (each arm a mapping
    with ``lengths``, ``n``, ``capped``, ``long``, ``runaways``, ``runaways_known``,
    ``degenerate``)."""
    from degen.reports.html import _table

    e = html.escape
    data = [(n, a.get("lengths") or []) for n, a in arms]
    if not any(d for _, d in data):
        return []
    img = plot_survival(data, cap, horizon)
    rows = []
    for (name, a), (_, d) in zip(arms, data, strict=True):
        curve = kaplan_meier(d) if d else [(0, 1.0)]
        longest = max((t for t, _ in d), default=0)
        at_h = survival_at(curve, horizon, longest) if horizon else None
        at_cap = survival_at(curve, cap, longest) if cap else None
        known = a.get("runaways_known", 0)
        rows.append([e(name), str(a.get("n", len(d))), str(a.get("capped", "-")),
                     str(a.get("long", "-")),
                     f"{a.get('runaways', '-')} ({known} known, "
                     f"{a.get('runaways', 0) - known} predicted)",
                     str(a.get("degenerate", "-")),
                     "-" if at_cap is None else f"{at_cap:.1%}",
                     "unknown (not followed)" if at_h is None else f"{at_h:.1%}"])
    h = f"{horizon:,}" if horizon else "the horizon"
    out = [f"<h2>How generations end</h2><p class='muted'>the share still generating after "
           f"L tokens (Kaplan-Meier; a generation last seen still going, at the cap, where "
           f"it was cut, or as far as an extension followed it, is censored there). "
           f"<b>capped</b>: reached the cap; <b>long</b>: capped but ends by {h} tokens; "
           f"<b>runaway</b>: would not end by {h} (known by extension, or predicted)</p>"]
    if img:
        out.append(f"<img alt='share still generating' src='{img}'>")
    out.append(_table(["arm", "n", "capped", "long", "runaways", "degenerate",
                       "still going at the cap", f"still going at {h} (never ends)"], rows))
    return out
