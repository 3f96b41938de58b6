"""Where text degrades: quality along the generation, by token position (seed 004).

For each completion, windows of ``window`` units every ``step`` units give:

- ``repetition``: seq-rep-4 inside the window (share of repeated 4-grams);
- ``distinct_1``: distinct unigrams / unigrams inside the window;
- ``entropy``: mean entropy (nats) of the model's next-token distribution over the
  window, when the records carry it (``degen profile --model`` records it).

Units are token ids when the records have them, else words. Curves average each
position over the completions that reach it (``n`` says how many). Several sources
(record files, models, checkpoints) give several curves on one plot.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from degen.detect.metrics import distinct_n, seq_rep_n, words
from degen.errors import InvalidParams
from degen.records import Completion

METRICS = ("repetition", "distinct_1", "entropy")


@dataclass
class Curve:
    """One source's averages by window start position."""

    source: str
    positions: list[int] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    values: dict[str, list[float | None]] = field(default_factory=dict)


def _windows(units: Sequence[Any], ent: Sequence[float] | None, window: int,
             step: int) -> list[tuple[int, dict[str, float | None]]]:
    out = []
    for start in range(0, max(0, len(units) - window) + 1, step):
        w = units[start:start + window]
        if len(w) < window:
            break
        e = None
        if ent is not None and len(ent) >= start + window:
            e = sum(ent[start:start + window]) / window
        out.append((start, {"repetition": seq_rep_n(w, 4), "distinct_1": distinct_n(w, 1),
                            "entropy": e}))
    return out


def profile(completions: Iterable[Completion], source: str, window: int = 32,
            step: int = 16) -> Curve:
    """Average window metrics by position over ``completions`` (errors skipped)."""
    if window < 8 or step < 1:
        raise InvalidParams(f"--window must be >= 8 and --step >= 1, got {window}, {step}")
    sums: dict[int, dict[str, float]] = {}
    counts: dict[int, dict[str, int]] = {}
    for c in completions:
        if not c.is_measured:
            continue
        units: Sequence[Any] = c.token_ids if c.token_ids else words(c.text)
        ent = c.extra.get("entropy") if c.token_ids else None
        for start, vals in _windows(units, ent, window, step):
            s = sums.setdefault(start, dict.fromkeys(METRICS, 0.0))
            k = counts.setdefault(start, dict.fromkeys(METRICS, 0))
            for m, v in vals.items():
                if v is not None:
                    s[m] += v
                    k[m] += 1
    curve = Curve(source=source, values={m: [] for m in METRICS})
    for start in sorted(sums):
        curve.positions.append(start)
        curve.n.append(counts[start]["repetition"])
        for m in METRICS:
            k = counts[start][m]
            curve.values[m].append(sums[start][m] / k if k else None)
    return curve


def _trend(xs: list[float | None]) -> tuple[float, float] | None:
    vals = [x for x in xs if x is not None]
    if len(vals) < 3:
        return None
    third = max(1, len(vals) // 3)
    return sum(vals[:third]) / third, sum(vals[-third:]) / third


def reading(curve: Curve) -> str:
    """One paragraph on how the curve moves from the first third to the last."""
    if len(curve.positions) < 3:
        return (f"{curve.source}: too few windows to read a trend ({len(curve.positions)}); "
                "generate longer texts or lower --window.")
    rep = _trend(curve.values["repetition"])
    dis = _trend(curve.values["distinct_1"])
    ent = _trend(curve.values["entropy"])
    assert rep is not None and dis is not None
    span = f"tokens {curve.positions[0]}-{curve.positions[-1]}"
    parts = [f"{curve.source}: over {max(curve.n)} completions ({span}), repetition goes "
             f"from {rep[0]:.2f} to {rep[1]:.2f} and distinct-1 from {dis[0]:.2f} to "
             f"{dis[1]:.2f}"]
    if ent is not None:
        parts.append(f", mean entropy from {ent[0]:.2f} to {ent[1]:.2f} nats")
    rising = rep[1] - rep[0] > 0.05
    if rising and ent is not None and ent[1] < ent[0] - 0.1:
        verdict = ("Entropy falls while repetition rises: the model grows surer of the "
                   "text it has already written, the loop reinforcing itself.")
    elif rising and ent is not None and ent[1] > ent[0] + 0.1:
        verdict = ("Repetition rises while entropy also rises: the text degrades into "
                   "uncertain babble as well as repeats.")
    elif rising:
        verdict = "Repetition rises along the generation: the text degrades as it grows."
    elif ent is not None and ent[1] > ent[0] + 0.3:
        verdict = ("Repetition stays flat but entropy climbs: the model loses the thread "
                   "(babble rather than loops).")
    else:
        verdict = "No clear degradation along the generation."
    return "".join(parts) + ". " + verdict


def write_csv(curves: Sequence[Curve], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["source", "position", "n", *METRICS])
        for c in curves:
            for i, pos in enumerate(c.positions):
                vals = ["" if c.values[m][i] is None else f"{c.values[m][i]:.5f}"
                        for m in METRICS]
                w.writerow([c.source, pos, c.n[i], *vals])


def _figure(curves: Sequence[Curve]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in METRICS if any(v is not None for c in curves for v in c.values[m])]
    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 2.6 * len(shown)), sharex=True)
    axes = [axes] if len(shown) == 1 else list(axes)
    labels = {"repetition": "repetition (seq-rep-4)", "distinct_1": "distinct-1",
              "entropy": "entropy (nats)"}
    for ax, m in zip(axes, shown, strict=True):
        for c in curves:
            pts = [(p, v) for p, v in zip(c.positions, c.values[m], strict=True) if v is not None]
            if pts:
                ax.plot([p for p, _ in pts], [v for _, v in pts], marker=".", label=c.source)
        ax.set_ylabel(labels[m])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[-1].set_xlabel("window start (token position)")
    fig.suptitle("Quality along the generation")
    fig.tight_layout()
    return fig


def write_plots(curves: Sequence[Curve], png: Path, html: Path, paragraphs: Sequence[str]) -> None:
    """A PNG and a self-contained HTML page (inline SVG, no scripts, works offline)."""
    from html import escape

    import matplotlib.pyplot as plt

    fig = _figure(curves)
    fig.savefig(png, dpi=110)
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    body = "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    html.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>degen profile</title>"
        "<style>body{font-family:sans-serif;max-width:60rem;margin:2rem auto}</style>"
        f"</head><body><h1>Quality along the generation</h1>{body}{svg}</body></html>",
        encoding="utf-8",
    )
