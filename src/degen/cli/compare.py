"""``degen compare``: arms (parameter sets, models, servers) paired on the same requests."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from degen.cli import options as o

HELP = """Compare configurations on the same prompts and seeds, paired request by request.

Each --arm is NAME:key=value,... with any degen run setting: sampling fields
(temperature=0.7, repetition_penalty=1.1, top_p=0.9, ...), model=PATH (a GGUF
file or Hugging Face folder; default the bundled model), engine=openai with
base_url=URL, guard=true, batch_size=N, ... Arms run one after the other. Prints
each arm's failure rate with its 95% interval and every pair's difference with an
exact paired test, Holm-adjusted; writes OUT/compare.json and OUT/report.html.

Example: degen compare --arm default --arm cool:temperature=0.7,top_p=0.9"""


def compare(
    arm: Annotated[list[str], typer.Option(
        "--arm", help="NAME:key=value,... (repeat; at least two).")],
    prompts: o.Prompts = None,
    requests: o.Requests = 64,
    runs: o.Runs = 1,
    max_tokens: o.MaxTokens = 512,
    rate: o.Rate = None,
    arrivals: o.Arrivals = "poisson",
    concurrency: o.Concurrency = None,
    seed: o.Seed = 0,
    fail_on: Annotated[str, typer.Option(
        help="What counts as a failure, comma-separated: runaway (would not end by "
             "--horizon), loop, spacing, gibberish.")] = "runaway,loop,spacing,gibberish",
    horizon: o.Horizon = None,
    extend_share: o.ExtendShare = None,
    runaway_weights: o.RunawayWeights = None,
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default: runs/compare-YYYYmmdd-HHMMSS).")] = None,
    resume: Annotated[bool, typer.Option(
        help="Continue the comparison in --out: recorded requests are skipped.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON "
                                           "object on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    report: Annotated[bool, typer.Option(help="Write the HTML report at the end.")] = True,
) -> None:
    from degen.detect.verdict import default_detectors
    from degen.errors import UsageError
    from degen.experiments.compare import Arm, CompareConfig, check_arms, run_compare
    from degen.experiments.load.schedule import ARRIVALS, parse_rate
    from degen.measurement.failure import FAILURE_KINDS
    from degen.measurement.progress import Progress, RichProgress
    from degen.prompts import load_prompts
    from degen.reports.compare import verdict, write_compare_report

    # everything that can be wrong with the input is checked before anything is written
    arms = [Arm.parse(a) for a in arm]
    check_arms(arms)
    kinds = tuple(k.strip() for k in fail_on.split(",") if k.strip())
    bad = [k for k in kinds if k not in FAILURE_KINDS]
    if bad or not kinds:
        raise UsageError(f"--fail-on: unknown failure kind {', '.join(bad) or '(none)'}; "
                         f"choose from {', '.join(FAILURE_KINDS)}")
    if arrivals not in ARRIVALS:
        raise UsageError(f"--arrivals must be one of {', '.join(ARRIVALS)}, got {arrivals!r}")
    o.check_positive("--concurrency", concurrency)
    o.check_positive("--requests", requests)
    ps = load_prompts(prompts)
    if resume and out is None:
        raise UsageError("--resume needs --out DIR (the folder of the comparison to continue)")
    if out is None:
        out = Path("runs") / datetime.now().strftime("compare-%Y%m%d-%H%M%S")
    if not resume and (out / "arms").exists():
        raise UsageError(f"{out} already holds a comparison; pass --resume to continue it or "
                         "choose another --out")
    h, extend_to, share, weights = o.runaway_settings(horizon, extend_share, max_tokens,
                                                      runaway_weights)
    cfg = CompareConfig(out=out, requests=requests, runs=runs, max_tokens=max_tokens,
                        seed=seed, rate=parse_rate(rate), arrivals=arrivals,
                        concurrency=concurrency, kinds=kinds, resume=resume, horizon=h,
                        extend=extend_to is not None, extend_share=share,
                        runaway_weights=weights)
    err = typer.echo
    log = (lambda s: None) if quiet else (lambda s: err(s, err=True))
    total = len(arms) * requests * runs
    show = not quiet and sys.stderr.isatty()
    progress = (RichProgress if show else Progress)(total, "compare")
    try:
        s = run_compare(arms, ps, cfg, progress=progress,
                        detectors=default_detectors(horizon=h, runaway={"weights": weights}
                                                    if weights else None), log=log)
    except KeyboardInterrupt:
        err(f"interrupted; continue with the same flags plus --resume --out {out}", err=True)
        raise typer.Exit(130) from None
    path = write_compare_report(out) if report else None
    if json_out:
        sys.stdout.write(json.dumps(_public(s) | {"report": str(path) if path else None})
                         + "\n")
        return
    print_compare(s)
    for p in s["pairs"]:
        typer.echo(verdict(p))
    if path:
        typer.echo(f"report: {path}")


def _public(s: dict[str, Any]) -> dict[str, Any]:
    """The JSON summary without the long per-prompt examples of each arm."""
    return {**s, "arms": [{k: v for k, v in a.items() if k != "examples"} for a in s["arms"]]}


def print_compare(s: dict[str, Any]) -> None:
    from degen.cli.run import print_risk

    typer.echo(f"{'arm':<16} {'failure rate (95% CI)':<28} {'n':>4} {'runaways':>9} "
               f"{'capped':>7} {'long':>5} {'degen.':>6} {'tokens/req':>10} {'p50 s':>7}")
    for a in s["arms"]:
        lo, hi = a["ci95"]
        rate = "-" if a["failure_rate"] is None else \
            f"{a['failure_rate']:.1%} ({lo:.1%}-{hi:.1%})"
        tpr = "-" if a["tokens_per_request"] is None else f"{a['tokens_per_request']:.0f}"
        p50 = "-" if a["latency_p50_s"] is None else f"{a['latency_p50_s']:.2f}"
        typer.echo(f"{a['name']:<16} {rate:<28} {a['n']:>4} {a['runaways']:>9} "
                   f"{a['capped']:>7} {a['long']:>5} {a['degenerate']:>6} {tpr:>10} {p50:>7}")
    cfg = s["config"]
    from degen.measurement.failure import how_known

    known = sum(a["runaways_known"] for a in s["arms"])
    total = sum(a["runaways"] for a in s["arms"])
    typer.echo(f"runaways: would not end by {cfg['horizon']:,} tokens ("
               f"{how_known(known, total, bool(cfg.get('extend')))})")
    typer.echo("")
    typer.echo(f"{'a':<12} {'b':<12} {'a - b (95% CI)':<26} {'p':>8} {'adjusted':>9}")
    for p in s["pairs"]:
        lo, hi = p["ci95"]
        d = f"{p['difference']:+.1%} ({lo:+.1%} to {hi:+.1%})"
        typer.echo(f"{p['a']:<12} {p['b']:<12} {d:<26} {p['p_value']:>8.3g} "
                   f"{p['p_adjusted']:>9.3g}")
    for a in s["arms"]:
        if any(r["failures"] for r in a["by_category"]):
            typer.echo(f"\n{a['name']}:", nl=False)
            print_risk(a, top=3)
