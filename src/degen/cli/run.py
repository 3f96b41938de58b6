"""``degen run``: one configuration under load, summarized with its runaway rate."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from degen.cli import options as o

HELP = """Send one sampling configuration to an engine under load and report its failure rate.

A failure is a runaway (a generation that would not end by --horizon tokens, 8 x
--max-tokens by default: known when --horizon is given, as every capped generation
is then continued to it; else predicted by the watch) or a degenerate one (a loop,
babble, glued words). Reaching --max-tokens alone is "capped", not a failure. The
rate comes with its Wilson 95% interval; errors are counted apart. Records go to
OUT/records.jsonl as each request finishes, continuations to OUT/extensions.jsonl."""


def run(
    engine: o.Engine = "local",
    model: o.Model = None,
    base_url: o.BaseUrl = "http://127.0.0.1:8000/v1",
    api_key: o.ApiKey = None,
    api: o.Api = "auto",
    stream: o.Stream = False,
    dialect: o.Dialect = "auto",
    timeout: o.Timeout = 120.0,
    retries: o.Retries = 3,
    batch_size: o.BatchSize = 32,
    device: o.Device = "auto",
    dtype: o.Dtype = "auto",
    guard: o.Guard = False,
    logprobs: o.Logprobs = None,
    temperature: o.Temperature = 1.0,
    top_p: o.TopP = 1.0,
    top_k: o.TopK = 0,
    min_p: o.MinP = 0.0,
    repetition_penalty: o.RepPenalty = 1.0,
    penalty_scope: o.PenaltyScope = "prompt+output",
    penalize_eot: o.PenalizeEot = True,
    presence_penalty: o.Presence = 0.0,
    frequency_penalty: o.Frequency = 0.0,
    no_repeat_ngram_size: o.NoRepeat = 0,
    repetition_min_count: o.RepMinCount = 0,
    repetition_max_pattern: o.RepMaxPattern = 64,
    repetition_min_pattern: o.RepMinPattern = 1,
    max_tokens: o.MaxTokens = 512,
    stop: o.Stop = None,
    prompts: o.Prompts = None,
    requests: o.Requests = 32,
    runs: o.Runs = 1,
    rate: o.Rate = None,
    arrivals: o.Arrivals = "poisson",
    concurrency: o.Concurrency = None,
    seed: o.Seed = 0,
    horizon: o.Horizon = None,
    extend_share: o.ExtendShare = None,
    runaway_weights: o.RunawayWeights = None,
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default: runs/run-YYYYmmdd-HHMMSS).")] = None,
    resume: Annotated[bool, typer.Option(
        help="Continue the run in --out: recorded requests are skipped.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON "
                                           "object on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    detect: Annotated[bool, typer.Option(help="Judge every completion with the detectors "
                                         "(loop, spacing, gibberish) and store the verdict.")]
        = True,
) -> None:
    from degen.detect.verdict import default_detectors
    from degen.engines import create_engine
    from degen.errors import UsageError
    from degen.experiments.load.runner import run_load
    from degen.experiments.load.schedule import Plan, parse_rate
    from degen.measurement.progress import Progress, RichProgress
    from degen.measurement.risk import prompt_categories
    from degen.measurement.summary import summarize
    from degen.prompts import load_prompts
    from degen.records import SamplingParams
    from degen.store import check_out_dir

    # Everything that can be wrong with the input is checked before anything is written.
    params = SamplingParams(
        temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        repetition_penalty=repetition_penalty, repetition_penalty_scope=penalty_scope,
        penalize_eot=penalize_eot, presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        repetition_min_count=repetition_min_count,
        repetition_max_pattern=repetition_max_pattern,
        repetition_min_pattern=repetition_min_pattern, max_tokens=max_tokens,
        stop=tuple(stop or ()),
    )
    o.check_positive("--concurrency", concurrency)
    h, extend_to, share, weights = o.runaway_settings(horizon, extend_share, max_tokens,
                                                      runaway_weights)
    plan = Plan(prompts=tuple(load_prompts(prompts)), params=params, requests=requests,
                runs=runs, rate=parse_rate(rate), arrivals=arrivals, seed=seed)
    if resume and out is None:
        raise UsageError("--resume needs --out DIR (the folder of the run to continue)")
    if out is None:
        out = Path("runs") / datetime.now().strftime("run-%Y%m%d-%H%M%S")
    check_out_dir(out)
    if not resume and ((out / "records.jsonl").exists() or (out / "run.json").exists()):
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose "
                         "another --out")

    err = typer.echo
    if guard and engine == "openai" and not stream:
        stream = True  # the cut needs the stream; say so
        if not quiet:
            err("note: --guard streams the responses (--stream)", err=True)
    opts = o.engine_options(
        engine, model=model, base_url=base_url, api_key=api_key, api=api, stream=stream,
        dialect=dialect, timeout=timeout, retries=retries, batch_size=batch_size,
        device=device, dtype=dtype, logprobs=logprobs)
    if engine in ("local", "openai"):
        opts.update(guard=guard, horizon=h, runaway_weights=weights)
    elif guard:
        raise UsageError(f"--guard needs engine local or openai, not {engine!r}")
    eng = create_engine(engine, **opts)
    dropped = eng.unsupported(params)
    for name, why in dropped.items():
        err(f"warning: {name} is not applied by this engine: {why}", err=True)
    try:
        load = getattr(eng, "load", None)
        if load is not None and not quiet:
            err(f"loading {eng.model} ...", err=True)
        if load is not None:
            load()
        show = not quiet and sys.stderr.isatty()
        bar = RichProgress if show else Progress
        progress = bar(plan.total, f"{engine}:{eng.model}"[:40])
        detectors = default_detectors(horizon=h, runaway={"weights": weights}
                                      if weights else None) if detect else None
        try:
            result = run_load(eng, plan, out, concurrency=concurrency, resume=resume,
                              progress=progress, extra_meta={"dropped_params": dropped,
                                                             "horizon": h},
                              detectors=detectors, horizon=extend_to, extend_share=share,
                              extend_progress=lambda n: bar(n, f"extend to {extend_to}"))
        except KeyboardInterrupt:
            err(f"interrupted; continue with the same flags plus --resume --out {out}", err=True)
            raise typer.Exit(130) from None
    finally:
        eng.close()
    summary = summarize(result.completions, out=str(out),
                        categories=prompt_categories(plan.prompts), horizon=h,
                        extend_share=share if extend_to else None)
    summary.update(horizon=h, extended_to=extend_to, extend_share=share if extend_to
                   else None, continuations=result.extended)
    if json_out:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        print_summary(summary)


def _fmt(x: float | None, spec: str, unit: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{unit}"


def print_summary(s: dict[str, Any]) -> None:
    lo, hi = s["ci95"]
    rate = "-" if s["failure_rate"] is None else (
        f"{s['failure_rate']:.1%}  (95% CI {lo:.1%}-{hi:.1%}, n={s['valid']})")
    rows = [
        ("requests", str(s["n"])),
        ("failures", f"{s['failures']}  rate {rate}"),
        ("runaways", runaway_line(s)),
        ("capped", f"{s['capped']}  (of them {s['long']} long answers: end by "
                   f"{s['horizon']:,} tokens, "
                   + ("known by extension)" if s.get("extended_to") else "predicted)")
                   if s.get("horizon") else str(s["capped"])),
        ("degenerate", str(s["degenerate"])),
        ("errors", str(s["errors"]) + (f"  first: {s['first_error']}"
                                       if s["first_error"] else "")),
        ("tokens/s", _fmt(s["tokens_per_s"], ".1f")),
        ("latency p50 / p95", f"{_fmt(s['latency_p50_s'], '.2f', ' s')} / "
                              f"{_fmt(s['latency_p95_s'], '.2f', ' s')}"),
    ]
    if s["ttft_p50_s"] is not None:
        rows.append(("first token p50", _fmt(s["ttft_p50_s"], ".3f", " s")))
    if s.get("kinds"):
        rows.append(("detected", "  ".join(
            f"{k} {r['count']}" for k, r in s["kinds"].items()
            if k not in ("capped", "runaway", "any"))
            + f"  (any kind: {s['kinds']['any']['count']}/{s['kinds']['any']['n']})"))
    if len(s["runs"]) > 1:
        rows.append(("failures per run", ", ".join(f"{r['failures']}/{r['n']}"
                                                   for r in s["runs"])))
    if s.get("cancelled"):
        rows.append(("cancelled", f"{s['cancelled']}  (sent again by --resume)"))
    rows.append(("records", f"{s['out']}/records.jsonl"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"{k:<{width}}  {v}")
    print_risk(s)


def runaway_line(s: dict[str, Any]) -> str:
    """How many would not end by the horizon, and how that is known."""
    from degen.measurement.failure import how_known

    h = s.get("horizon")
    by = f" by {h:,} tokens" if h else ""
    how = how_known(s["runaways_known"], s["runaways"], s.get("extended_to") is not None)
    line = f"{s['runaways']}  (would not end{by}; {how})"
    est = s.get("estimate")
    if est and est.get("rate") is not None:
        lo, hi = est["ci95"]
        line += (f"; two-phase estimate of the failure rate {est['rate']:.1%} "
                 f"({lo:.1%}-{hi:.1%}), {est['known']} of {est['n']} known")
    return line


def print_risk(s: dict[str, Any], top: int = 5) -> None:
    """The categories and prompts that fail most, with an excerpt of each prompt's."""
    from degen.measurement.risk import format_rows

    cats = format_rows(s.get("by_category") or [], "category", top)
    if not cats:
        return
    typer.echo("\nfailing most, by category (failures/n, rate, 95% CI):")
    for line in cats:
        typer.echo("  " + line)
    typer.echo("by prompt:")
    for line in format_rows(s.get("by_prompt") or [], "prompt_id", top):
        typer.echo("  " + line)
