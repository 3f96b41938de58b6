"""``degen tune`` and ``degen report``: search sampling parameters that stop runaways,
confirm the best on fresh requests, and show it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from degen.cli import options as o

HELP = """Search sampling parameters that stop runaways (an Optuna study), confirm the
best against the engine's defaults on new requests, and write a report.

Every trial sends the same requests (common random numbers); loops, babble and
glued words are cut early and count as failures; trials confidently worse than the
best are pruned. The study lives in OUT/study.db (or --storage, shared by several
workers)."""

REPORT_HELP = """Write OUT/report.html (self-contained, works offline) and OUT/report.md
from the folder of a tuning study (degen tune) or a comparison (degen compare)."""

TUNE = "Tuning"


def tune(
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
    preset: Annotated[str, typer.Option(help="Search space preset: wide (the bundled model's "
                                        "landscape) or seed000 (T 0.7-0.9, min_p 0-0.1, "
                                        "repetition_penalty 1.0-1.1); 'none' for only "
                                        "--space/--param.", rich_help_panel=TUNE)] = "wide",
    space: Annotated[Path | None, typer.Option(help="TOML file with a \\[space] table "
                                               "(overrides the preset).",
                                               rich_help_panel=TUNE)] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="A knob: temperature=0.5:1.2, top_k=0,40, min_p=0.05, "
        "penalty_scope=prompt+output,output,eot-exempt, system=none,concise (repeatable).",
        rich_help_panel=TUNE)] = None,
    objective: Annotated[list[str] | None, typer.Option(
        help="failure (always), tokens, latency, deviation (repeatable; default failure).",
        rich_help_panel=TUNE)] = None,
    fail_on: Annotated[str, typer.Option(help="Kinds that count as failure, comma-separated: "
                                         "runaway (would not end by --horizon), loop, "
                                         "spacing, gibberish.", rich_help_panel=TUNE)]
        = "runaway,loop,spacing,gibberish",
    trials: Annotated[int, typer.Option(help="Trials in the study (all workers).",
                                        rich_help_panel=TUNE)] = 10,
    requests: Annotated[int, typer.Option(help="Requests per trial (per run).",
                                          rich_help_panel=TUNE)] = 32,
    runs: o.Runs = 1,
    rate: o.Rate = None,
    arrivals: o.Arrivals = "poisson",
    concurrency: Annotated[int | None, typer.Option(
        help="Requests in flight (default: 16 locally, so pruning can stop a trial early).",
        rich_help_panel=o.LOAD)] = None,
    max_tokens: Annotated[int, typer.Option(help="Generation cap (reaching it is 'capped'; "
                                            "a runaway would not end by --horizon).",
                                            rich_help_panel=TUNE)] = 256,
    horizon: Annotated[int | None, typer.Option(
        help="A runaway would not end by this many tokens (default 8 x --max-tokens): "
        "predicted in the search, known in the confirmation (its capped generations are "
        "continued to it).", show_default=False, rich_help_panel=o.RUNAWAY)] = None,
    extend: Annotated[bool, typer.Option(
        help="Continue the confirmation's capped generations to --horizon, so its runaways "
        "are known, not predicted.", rich_help_panel=o.RUNAWAY)] = True,
    extend_share: o.ExtendShare = None,
    runaway_weights: o.RunawayWeights = None,
    seed: o.Seed = 0,
    early_cut: Annotated[bool, typer.Option(help="Cut a generation as soon as the watch "
                                            "confirms a loop, babble or glued words (a "
                                            "failure costs tens of tokens).",
                                            rich_help_panel=TUNE)] = True,
    prune: Annotated[bool, typer.Option(help="Race trials: stop one (and cancel its requests) "
                                        "once a paired test says it is worse than the best.",
                                        rich_help_panel=TUNE)] = True,
    stress: Annotated[bool, typer.Option(help="Send the risky prompts more often (from a first "
                                         "pass of the defaults) and report each trial's rate "
                                         "re-weighted to the original prompt mix.",
                                         rich_help_panel=TUNE)] = False,
    confirm: Annotated[int, typer.Option(help="Requests to re-run the best configurations and "
                                         "the baseline on (0 = skip).",
                                         rich_help_panel=TUNE)] = 48,
    confirm_top: Annotated[int, typer.Option(help="Front configurations to confirm.",
                                             rich_help_panel=TUNE)] = 2,
    sampler: Annotated[str, typer.Option(help="tpe or random.", rich_help_panel=TUNE)] = "tpe",
    jobs: Annotated[int | None, typer.Option(
        help="Trials run at once by this worker, sharing the engine (default: 2 locally, "
        "which keeps the batch full while a trial's last long answers finish; 1 for a "
        "server or with the latency objective).", rich_help_panel=TUNE)] = None,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage URL shared by several workers, e.g. postgresql://user@host/db "
        "(default: sqlite file OUT/study.db).", rich_help_panel=TUNE)] = None,
    study: Annotated[str, typer.Option(help="Study name in the storage.",
                                       rich_help_panel=TUNE)] = "degen",
    out: Annotated[Path, typer.Option(help="Output folder (records, study, report).")]
        = Path("runs/tune"),
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as one JSON "
                                           "object on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    report: Annotated[bool, typer.Option(help="Write the report at the end.")] = True,
) -> None:
    from degen.cli.run import print_risk
    from degen.detect.verdict import default_detectors
    from degen.engines import create_engine
    from degen.errors import InvalidParams
    from degen.experiments.load.schedule import ARRIVALS, parse_rate
    from degen.experiments.tune.space import SearchSpace, inert_knobs
    from degen.experiments.tune.study import TuneConfig
    from degen.experiments.tune.study import tune as run_tune
    from degen.measurement.progress import Progress, RichProgress
    from degen.prompts import load_prompts
    from degen.reports.tune import headline, runaway_headline, write_report

    # everything that can be wrong with the input is checked before anything is written
    space_ = SearchSpace.build(None if preset == "none" else preset, space, param or ())
    kinds = tuple(k.strip() for k in fail_on.split(",") if k.strip())
    o.check_positive("--concurrency", concurrency)
    o.check_positive("--jobs", jobs)
    objectives = tuple(objective or ("failure",))
    if jobs is None:
        jobs = 2 if engine == "local" and "latency" not in objectives else 1
    if arrivals not in ARRIVALS:
        raise InvalidParams(f"--arrivals must be one of {', '.join(ARRIVALS)}, got {arrivals!r}")
    if engine == "openai" and early_cut and not stream:
        stream = True  # the cut needs the stream; say so
        if not quiet:
            typer.echo("note: --early-cut streams the responses (--stream)", err=True)
    h, _, share, weights = o.runaway_settings(horizon, extend_share, max_tokens,
                                              runaway_weights)
    cfg = TuneConfig(space=space_, out=out, objectives=objectives, horizon=h, extend=extend,
                     extend_share=share,
                     kinds=kinds, trials=trials, requests=requests, runs=runs,
                     rate=parse_rate(rate), arrivals=arrivals,
                     concurrency=concurrency or (16 if engine == "local" else None),
                     max_tokens=max_tokens, seed=seed, early_cut=early_cut, prune=prune,
                     confirm=confirm, confirm_top=confirm_top, storage=storage, study=study,
                     sampler=sampler, jobs=jobs, stress=stress)
    prompts = load_prompts(None)
    opts = o.engine_options(engine, model=model, base_url=base_url, api_key=api_key, api=api,
                            stream=stream, dialect=dialect, timeout=timeout, retries=retries,
                            batch_size=batch_size, device=device, dtype=dtype)
    if engine in ("local", "openai"):
        opts.update(guard=early_cut, horizon=h, runaway_weights=weights)
    eng = create_engine(engine, **opts)
    err = typer.echo
    for knob, why in inert_knobs(space_, eng.unsupported).items():
        err(f"warning: {knob} is not applied by this engine ({why}); the study searches "
            "it but it changes nothing there: fix the knob with --param", err=True)
    log = (lambda s: None) if quiet else (lambda s: err(s, err=True))
    try:
        load = getattr(eng, "load", None)
        if load is not None:
            log(f"loading {eng.model} ...")
            load()
        total = (cfg.trials + cfg.stress) * cfg.requests * cfg.runs \
            + cfg.confirm * (cfg.confirm_top + 1)
        show = not quiet and sys.stderr.isatty()
        progress = (RichProgress if show else Progress)(total, "tune")
        try:
            result = run_tune(eng, prompts, cfg, progress=progress,
                              detectors=default_detectors(horizon=h, runaway={
                                  "weights": weights} if weights else None), log=log)
        except KeyboardInterrupt:
            progress.__exit__(None, None, None)
            err(f"interrupted; run the same command again to resume the study in {out}",
                err=True)
            # Requests still inside the engine would be recorded as errors if it were
            # closed now; every finished record is on disk and the interrupted trials
            # are queued again, so leave at once, as a killed worker would.
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(130)
    finally:
        eng.close()
    path = write_report(out) if report else None
    s = result.summary
    if json_out:
        c = s.get("confirmation") or {}
        arms = c.get("arms", {})
        obj = {"best": s["best"], "headline": headline(s), "runaways": runaway_headline(s),
               "horizon": cfg.horizon,
               "baseline": arms.get("baseline", {}).get("measure"),
               "best_confirmed": arms.get(c.get("best"), {}).get("measure") if c else None,
               "comparison": c.get("comparison"), "trials": len(s["trials"]),
               "complete": s["n_complete"], "pruned": s["n_pruned"],
               "generated_tokens": s["generated_tokens"], "tokens": s["tokens"],
               "out": str(out),
               "by_prompt": s["by_prompt"], "by_category": s["by_category"],
               "stress": _stress(s),
               "report": str(path) if path else None}
        sys.stdout.write(json.dumps(obj) + "\n")
    else:
        typer.echo(headline(s))
        line = runaway_headline(s)
        if line:
            typer.echo(line)
        t = s["tokens"]
        typer.echo(f"tokens for this decision: {s['generated_tokens']:,} (search "
                   f"{t['search']:,}" + (f", stress pilot {t['stress_pilot']:,}"
                                         if t["stress_pilot"] else "")
                   + f", confirmation {t['confirmation']:,}"
                   + (f", extension {t['extension']:,}" if t.get("extension") else "")
                   + f"; {s['n_pruned']} of {len(s['trials'])} trials dropped by the race)")
        print_risk(s)
        if path:
            typer.echo(f"report: {path}")


def _stress(s: dict[str, Any]) -> dict[str, Any] | None:
    """With --stress: the pilot's rate and each finished trial's stress-suite and
    re-weighted original-mix rates."""
    if not s.get("stress"):
        return None
    return {"pilot": s["stress"]["pilot"],
            "trials": [{"number": r["number"], **r["reweighted"]} for r in s["trials"]
                       if r.get("reweighted")]}


def report_cmd(
    folder: Annotated[Path, typer.Argument(help="A degen tune output folder.")],
) -> None:
    from degen.reports.compare import write_compare_report
    from degen.reports.tune import write_report

    if (folder / "compare.json").exists() and not (folder / "tune.json").exists():
        typer.echo(str(write_compare_report(folder)))
        return
    typer.echo(str(write_report(folder)))
