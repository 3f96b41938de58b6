"""``degen profile``: how quality changes along the generation, for one or more sources."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from degen.cli import options as o

HELP = """Plot repetition, distinct-1, entropy, surprise, P(end) and the share
degenerate by token position.

Profile existing records (RECORDS: files, or folders holding one records.jsonl per
checkpoint, such as a training callback's OUT/step-N/records.jsonl: one curve each), or
generate live with --model (repeatable: several models or checkpoints on the same prompts,
overlaid in one plot; "bundled" is the bundled model), which also records each step's
entropy. Writes OUT/profile.csv, OUT/profile.png, OUT/profile.html and prints a reading
of each curve."""


def profile_cmd(
    records: Annotated[list[Path] | None, typer.Argument(
        help="records.jsonl files (degen records or JSONL with text), or folders of "
        "per-checkpoint folders (each one curve).", show_default=False)]
        = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Generate live with this model (GGUF, HF folder or 'bundled'); "
        "repeatable.")] = None,
    requests: o.Requests = 16,
    max_tokens: o.MaxTokens = 256,
    temperature: o.Temperature = 1.0,
    min_p: o.MinP = 0.0,
    repetition_penalty: o.RepPenalty = 1.0,
    prompts: o.Prompts = None,
    seed: o.Seed = 0,
    batch_size: o.BatchSize = 16,
    window: Annotated[int, typer.Option(help="Window length in tokens.")] = 32,
    step: Annotated[int, typer.Option(help="Window step in tokens.")] = 16,
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default: runs/profile-YYYYmmdd-HHMMSS).")] = None,
) -> None:
    from degen.detect.inputs import read_completions
    from degen.errors import UsageError
    from degen.experiments.profile import profile, reading, write_csv, write_plots
    from degen.experiments.profile import sources as record_sources
    from degen.store import check_out_dir

    if not records and not model:
        raise UsageError("give records files to profile, or --model to generate "
                         "(--model bundled for the bundled model)")
    if window < 8 or step < 1:
        raise UsageError(f"--window must be >= 8 and --step >= 1, got {window}, {step}")
    out = check_out_dir(out or Path("runs") / datetime.now().strftime("profile-%Y%m%d-%H%M%S"))
    sources = []
    for label, f in record_sources(records or []):  # a folder: one source per checkpoint
        sources.append((label, list(read_completions(f))))  # checks every line first
    for m in model or []:
        sources.append(_generate(m, out, requests, max_tokens, temperature, min_p,
                                 repetition_penalty, prompts, seed, batch_size))
    curves = [profile(cs, label, window, step) for label, cs in sources]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(curves, out / "profile.csv")
    paragraphs = [reading(c) for c in curves]
    write_plots(curves, out / "profile.png", out / "profile.html", paragraphs)
    for p in paragraphs:
        typer.echo(p)
    typer.echo(f"wrote {out}/profile.csv, profile.png, profile.html")


def _generate(model: str, out: Path, requests: int, max_tokens: int, temperature: float,
              min_p: float, repetition_penalty: float, prompts: Path | None, seed: int,
              batch_size: int):
    from degen.detect.verdict import default_detectors
    from degen.engines.local import LocalEngine
    from degen.experiments.load.runner import run_load
    from degen.experiments.load.schedule import Plan
    from degen.prompts import load_prompts
    from degen.records import SamplingParams

    params = SamplingParams(temperature=temperature, min_p=min_p,
                            repetition_penalty=repetition_penalty, max_tokens=max_tokens)
    plan = Plan(prompts=tuple(load_prompts(prompts)), params=params, requests=requests,
                seed=seed)
    eng = LocalEngine(model=None if model == "bundled" else model, batch_size=batch_size,
                      record_entropy=True)
    label = eng.model
    typer.echo(f"generating {requests} x {max_tokens} tokens with {label} ...", err=True)
    try:
        eng.load()
        res = run_load(eng, plan, out / label, detectors=default_detectors())
    finally:
        eng.close()
    return label, res.completions
