"""``degen scan FILE``: run every detector over completions in a JSONL file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

HELP = """Judge completions in a JSONL file: runaway, loop, spacing, gibberish.

Reads degen records, any JSONL with a "text" field (optional "id", "prompt",
"finish_reason"), or OpenAI completion response objects. By default prints the rate
of each kind with its Wilson 95% interval; --format jsonl prints one verdict per
input line, in input order: {"id", "degenerate", "kinds", "findings", "metrics"}."""


def scan(
    file: Annotated[Path, typer.Argument(help="JSONL file to scan.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or jsonl.")] = "table",
    detectors: Annotated[str, typer.Option(help="Comma-separated detector names.")] =
        "runaway,loop,spacing,gibberish",
) -> None:
    from degen.detect.inputs import read_completions
    from degen.detect.verdict import default_detectors, judge, kind_rates
    from degen.errors import UsageError

    if fmt not in ("table", "jsonl"):
        raise UsageError(f"--format must be table or jsonl, got {fmt!r}")
    kinds = tuple(k.strip() for k in detectors.split(",") if k.strip())
    dl = default_detectors(kinds)
    comps = list(read_completions(file))  # all lines checked before any output
    verdicts = []
    for c in comps:
        v = judge(c, dl)
        verdicts.append(v)
        if fmt == "jsonl":
            sys.stdout.write(json.dumps(v, ensure_ascii=False) + "\n")
    if fmt == "table":
        print_rates(kind_rates(verdicts, kinds), file)


def print_rates(rates: dict[str, dict], source: Path) -> None:
    typer.echo(f"{source}: {next(iter(rates.values()))['n']} completions")
    typer.echo(f"{'kind':<10} {'count':>6} {'rate':>7}   95% CI")
    for kind, r in rates.items():
        lo, hi = r["ci95"]
        rate = "-" if r["rate"] is None else f"{r['rate']:.1%}"
        typer.echo(f"{kind:<10} {r['count']:>6} {rate:>7}   {lo:.1%}-{hi:.1%}")
