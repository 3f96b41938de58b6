"""``degen scan FILE``: run every detector over completions in a file, in order."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

if TYPE_CHECKING:
    from degen.detect.inputs import Source
    from degen.measurement.progress import VerdictProgress

HELP = """Judge completions in a file: capped, runaway, loop, spacing, gibberish.

capped: reached its cap (finish_reason "length"). runaway: would not end by --horizon
tokens (default 8 x its cap): predicted from the text, the tokens' log-probabilities
and the stopping evidence when the records carry them, or known when the file is a
run's records.jsonl with an extensions.jsonl beside it (degen extend); the
probability is the verdict's metrics.p_runaway.

Reads JSONL (degen records, any object with a "text" field and optional "id",
"prompt", "finish_reason", or OpenAI completion response objects) or a vLLM benchmark
result (vllm bench serve --save-result --save-detailed; failed requests are skipped
and counted). By default prints the rate of each kind with its Wilson 95% interval;
--format jsonl prints one verdict per completion, in input order: {"id",
"degenerate", "kinds", "findings", "metrics"}. --jobs N judges in N worker processes
(0: one per CPU core); the order and the output are the same."""


def scan(
    file: Annotated[Path, typer.Argument(help="JSONL file or vLLM result to scan.",
                                         show_default=False)],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or jsonl.")] = "table",
    detectors: Annotated[str, typer.Option(help="Comma-separated detector names.")] =
        "capped,runaway,loop,spacing,gibberish",
    horizon: Annotated[int | None, typer.Option(
        help="A runaway would not end by this many tokens (default 8 x each record's "
        "cap).", show_default=False)] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help=(
        "Worker processes: 1 judges in this process, 0 one per CPU core."))] = 1,
) -> None:
    from contextlib import closing

    from degen.detect.inputs import open_completions
    from degen.detect.scan import KindTally, resolve_jobs, scan_file
    from degen.detect.verdict import default_detectors
    from degen.errors import UsageError

    if fmt not in ("table", "jsonl"):
        raise UsageError(f"--format must be table or jsonl, got {fmt!r}")
    kinds = tuple(k.strip() for k in detectors.split(",") if k.strip())
    if horizon is not None and horizon < 2:
        raise UsageError(f"--horizon must be at least 2 tokens, got {horizon}")
    default_detectors(kinds, horizon)  # an unknown name fails before the file is read
    resolve_jobs(jobs)
    src = open_completions(file)
    total = src.check() if fmt == "jsonl" else None  # every line checked before any output
    out, tally = sys.stdout, KindTally(kinds)
    verdicts = scan_file(src, kinds, jobs, horizon=horizon)
    with _progress(src, total, fmt) as bar, closing(verdicts):
        for v in verdicts:
            tally.add(v)
            bar.update(v)
            if fmt == "jsonl":
                _write(out, v)
    if fmt == "table":
        print_rates(tally.rates(), file)
    if src.skipped_note:
        typer.echo(f"note: {src.skipped_note}", err=True)


def _write(out: TextIO, verdict: dict[str, Any]) -> None:
    out.write(json.dumps(verdict, ensure_ascii=False) + "\n")


def _progress(src: Source, total: int | None, fmt: str) -> VerdictProgress:
    """A bar on stderr when it is a terminal, and stdout is not one showing verdicts."""
    from degen.measurement.progress import RichVerdictProgress, VerdictProgress

    if not sys.stderr.isatty() or (fmt == "jsonl" and sys.stdout.isatty()):
        return VerdictProgress(total)
    return RichVerdictProgress(total if total is not None else src.count())


def print_rates(rates: dict[str, dict], source: Path) -> None:
    typer.echo(f"{source}: {next(iter(rates.values()))['n']} completions")
    typer.echo(f"{'kind':<10} {'count':>6} {'rate':>7}   95% CI")
    for kind, r in rates.items():
        lo, hi = r["ci95"]
        rate = "-" if r["rate"] is None else f"{r['rate']:.1%}"
        typer.echo(f"{kind:<10} {r['count']:>6} {rate:>7}   {lo:.1%}-{hi:.1%}")
