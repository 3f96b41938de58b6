"""Where text degrades: quality along the generation, by token position (seed 004).

For each completion, windows of ``window`` units every ``step`` units give:

- ``repetition``: seq-rep-4 inside the window (share of repeated 4-grams);
- ``distinct_1``: distinct unigrams / unigrams inside the window;
- ``entropy``: mean entropy (nats) of the model's next-token distribution over the
  window, when the records carry it (``degen profile --model`` records it);
- ``surprise``: mean surprise (-log-probability, nats) of the tokens in the window, when
  the records carry their log-probabilities (``extra["logprobs"]``);
- ``p_stop``: mean probability the model gave to ending at each step of the window
  (``extra["stop_logprobs"]``): how much it still thinks of stopping;
- ``degenerate``: the share of completions already degenerate by the end of the window:
  their first finding (any kind but ``capped``; from the record's verdict, else from
  the watch run on it) starts at or before the window's last character. Token positions
  map to characters through ``extra["logprob_chars"]`` when present, else in proportion.

Units are token ids when the records have them, else words (the token-level metrics are
then left empty). Curves average each position over the completions that reach it
(``n`` says how many). Several sources (record files, models, checkpoints) give several
curves on one plot; :func:`sources` turns files and folders (one ``records.jsonl`` per
checkpoint folder) into them.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from degen.detect.metrics import distinct_n, seq_rep_n, words
from degen.errors import InvalidParams
from degen.records import Completion

METRICS = ("repetition", "distinct_1", "entropy", "surprise", "p_stop", "degenerate")
LABELS = {"repetition": "repetition (seq-rep-4)", "distinct_1": "distinct-1",
          "entropy": "entropy (nats)", "surprise": "surprise (nats/token)",
          "p_stop": "P(end)", "degenerate": "share degenerate"}


@dataclass
class Curve:
    """One source's averages by window start position."""

    source: str
    positions: list[int] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    values: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass
class _View:
    """One completion as the windows read it."""

    units: Sequence[Any]
    ends: list[int]  # characters of text covered by units[:k + 1]
    onset: float  # character where the degeneration starts (inf: none)
    entropy: Sequence[float] | None = None
    logprobs: Sequence[float] | None = None
    stop_logprobs: Sequence[float] | None = None


def _numbers(v: Any) -> list[float] | None:
    if isinstance(v, list) and all(isinstance(x, int | float) for x in v):
        return v
    return None


def onset_char(c: Completion) -> float:
    """Where ``c`` starts to degenerate: the smallest ``start_char`` of its findings (any
    kind but ``capped``; a finding without one counts from 0), ``inf`` when none. The
    record's verdict when it has one, else the watch run on it."""
    if isinstance(c.verdict, Mapping) and isinstance(c.verdict.get("findings"), list):
        found = [(f.get("kind"), f.get("start_char")) for f in c.verdict["findings"]
                 if isinstance(f, Mapping)]
    else:
        from degen.detect.watch import watch_completion

        found = [(f.kind, f.start_char) for f in watch_completion(c).values()]
    starts = [s if isinstance(s, int) else 0 for k, s in found if k != "capped"]
    return float(min(starts)) if starts else math.inf


def _ends(c: Completion, units: Sequence[Any], tokens: bool) -> list[int]:
    text = c.text
    chars = _numbers(c.extra.get("logprob_chars")) if tokens else None
    if chars is not None and sum(chars) == len(text) and 0 <= len(units) - len(chars) <= 1:
        out, pos = [], 0
        for n in chars:
            pos += int(n)
            out.append(pos)
        return out + [pos] * (len(units) - len(chars))  # the end token adds no text
    if not tokens:
        spans = [m.end() for m in re.finditer(r"\w+|[^\w\s]", text, re.UNICODE)]
        if len(spans) == len(units):
            return spans
    m = max(1, len(units))
    return [round(len(text) * (k + 1) / m) for k in range(len(units))]


def _view(c: Completion, with_onset: bool) -> _View:
    tokens = bool(c.token_ids)
    units: Sequence[Any] = c.token_ids if c.token_ids else words(c.text)
    extra = c.extra

    def get(key: str) -> list[float] | None:
        return _numbers(extra.get(key)) if tokens else None

    return _View(units, _ends(c, units, tokens) if with_onset else [],
                 onset_char(c) if with_onset else math.inf, get("entropy"), get("logprobs"),
                 get("stop_logprobs"))


def _mean(xs: Sequence[float] | None, start: int, window: int, *, whole: bool = False,
          f: Any = None) -> float | None:
    """Mean over the window of ``xs`` (``f`` applied to each); None when ``xs`` does not
    reach the window's end (``whole``) or holds less than half of it."""
    if xs is None or (whole and len(xs) < start + window):
        return None
    part = xs[start:start + window]
    if len(part) * 2 < window:
        return None
    return sum(f(x) for x in part) / len(part) if f is not None else sum(part) / len(part)


def _windows(v: _View, window: int, step: int, with_onset: bool = True
             ) -> list[tuple[int, dict[str, float | None]]]:
    out = []
    units = v.units
    for start in range(0, max(0, len(units) - window) + 1, step):
        w = units[start:start + window]
        if len(w) < window:
            break
        vals: dict[str, float | None] = {
            "repetition": seq_rep_n(w, 4), "distinct_1": distinct_n(w, 1),
            "entropy": _mean(v.entropy, start, window, whole=True),
            "surprise": _mean(v.logprobs, start, window, f=lambda x: -x),
            "p_stop": _mean(v.stop_logprobs, start, window, f=math.exp),
            "degenerate": (1.0 if v.onset < v.ends[start + window - 1] else 0.0)
            if with_onset else None,
        }
        out.append((start, vals))
    return out


def profile(completions: Iterable[Completion], source: str, window: int = 32,
            step: int = 16, degenerate: bool = True) -> Curve:
    """Average window metrics by position over ``completions`` (errors skipped).
    ``degenerate=False`` leaves the ``degenerate`` share out (it runs the watch on records
    that carry no verdict)."""
    if window < 8 or step < 1:
        raise InvalidParams(f"--window must be >= 8 and --step >= 1, got {window}, {step}")
    sums: dict[int, dict[str, float]] = {}
    counts: dict[int, dict[str, int]] = {}
    for c in completions:
        if not c.is_measured:
            continue
        for start, vals in _windows(_view(c, degenerate), window, step, degenerate):
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


def _natural(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def sources(paths: Iterable[Path]) -> list[tuple[str, Path]]:
    """(label, records file) for each path: a file is itself (labelled by its folder
    when it is called ``records.jsonl``, else by its stem); a folder is its own
    ``records.jsonl``, else each ``*/records.jsonl`` one level down (one per checkpoint
    folder, ``step-100/records.jsonl``...), in natural order (step-9 before step-10)."""
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = [p / "records.jsonl"] if (p / "records.jsonl").is_file() else \
                sorted(p.glob("*/records.jsonl"), key=_natural)
            if not found:
                raise InvalidParams(f"{p} is a folder without records.jsonl, in itself or "
                                    "one level down; pass records files")
            out.extend((f.parent.name, f) for f in found)
        else:
            out.append((p.parent.name if p.name == "records.jsonl" else p.stem, p))
    return out


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
    sur = _trend(curve.values["surprise"])
    if sur is not None:
        parts.append(f", surprise from {sur[0]:.2f} to {sur[1]:.2f} nats/token")
    stop = _trend(curve.values["p_stop"])
    if stop is not None:
        parts.append(f", P(end) from {stop[0]:.3f} to {stop[1]:.3f}")
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
    deg = [(p, v) for p, v in zip(curve.positions, curve.values["degenerate"], strict=True)
           if v is not None]
    if deg:
        verdict += (f" By the window at token {deg[-1][0]}, {deg[-1][1]:.0%} of the "
                    "completions that reach it have degenerated.")
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
    shown = shown or ["repetition"]  # no windows at all: an empty panel, not an error
    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 2.6 * len(shown)), sharex=True)
    axes = [axes] if len(shown) == 1 else list(axes)
    for ax, m in zip(axes, shown, strict=True):
        for c in curves:
            pts = [(p, v) for p, v in zip(c.positions, c.values[m], strict=True) if v is not None]
            if pts:
                ax.plot([p for p, _ in pts], [v for _, v in pts], marker=".", label=c.source)
        ax.set_ylabel(LABELS[m], fontsize=8)
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
