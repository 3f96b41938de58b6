"""The progress display counts what the runner reports."""

from __future__ import annotations

import io

from degen.measurement.progress import Progress, RichProgress
from degen.records import Completion, SamplingParams


def comp(fr: str, tokens: int = 5) -> Completion:
    return Completion("r", "p", SamplingParams(), finish_reason=fr, completion_tokens=tokens,
                      error="x" if fr == "error" else None)


def test_counts() -> None:
    p = Progress(10)
    p.skip(2)
    for fr in ("stop", "length", "error", "length"):
        p.update(comp(fr))
    assert (p.done, p.failures, p.errors, p.tokens) == (6, 2, 1, 15)
    assert p.tok_s > 0


def test_rich_bar_renders() -> None:
    from rich.console import Console

    buf = io.StringIO()
    p = RichProgress(4, "local:test", console=Console(file=buf, force_terminal=True, width=120))
    with p:
        p.update(comp("length"))
        p.update(comp("stop"))
    text = buf.getvalue()
    assert "local:test" in text and "2/4" in text and "failing" in text
