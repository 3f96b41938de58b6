"""The HTML every report page shares: the stylesheet, tables, highlighted examples,
rates with their intervals, inlined PNG plots, and writing a page pair atomically.
Reports (:mod:`degen.reports.tune`, :mod:`degen.reports.compare`,
:mod:`degen.reports.survival`) import it; it imports no report.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;
border-bottom:1px solid #ddd}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.head{background:#eef5ff;padding:.8em 1em;border-radius:6px}
pre{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:.6em;
font-size:12px;max-height:16em;overflow:auto}mark{background:#ffd54f}
.muted{color:#777}img{max-width:100%}
"""


def _table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _example(ex: dict[str, Any]) -> str:
    text, at = ex["excerpt"], ex.get("mark_at")
    if at is None or not 0 <= at <= len(text):
        body = html.escape(text)
    else:
        body = html.escape(text[:at]) + "<mark>" + html.escape(text[at:]) + "</mark>"
    f = ex.get("finding") or {}
    what = html.escape(f.get("message") or f"finish_reason {ex['finish_reason']}")
    return (f"<p><b>{html.escape(ex['prompt_id'])}</b> ({html.escape(ex['finish_reason'])}, "
            f"{ex.get('tokens')} tokens): {what}</p><pre>{body}</pre>")


def _ci(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{_pct(r['failure_rate'])} ({_pct(lo)}-{_pct(hi)}, {r['failures']}/{r['n']})"


def write_pages(folder: Path, html_text: str, markdown: str) -> Path:
    """Write ``report.html`` and ``report.md`` into ``folder``, each atomically (a
    temporary file renamed into place); returns the HTML path."""
    out = folder / "report.html"
    for path, text in ((out, html_text), (folder / "report.md", markdown)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return out
