"""``degen extend DIR`` (continue a finished run's capped generations to a horizon) and
``degen fit-runaway DIR...`` (fit the runaway predictor on extended runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from degen.cli import options as o

HELP = """Continue the capped generations of a finished run to --horizon tokens, so its
runaways are known, not predicted.

DIR is the --out folder of degen run, degen compare (every arm) or degen tune (its
confirmation). Every generation that reached its cap (or was cut as a runaway) is
continued from its own tokens, with the same parameters and a derived seed, until it
ends or reaches --horizon tokens in all (default 8 x the cap); the continuations go
to extensions.jsonl beside the records, and the summary (compare.json, tune.json and
the report) is measured again. Ctrl-C stops; run the same command again to resume.
The engine is the one the run used (run.json); --base-url points at a server that
moved."""

FIT_HELP = """Fit the runaway predictor on your own model's runs.

Each DIR is a run folder whose capped generations were continued (degen run
--horizon, or degen extend) with the tokens' log-probabilities recorded. Writes the
fit (its weights and how well it does on the runs, at the cap and mid-stream) to
--out; pass it to run, tune, compare or guard with --runaway-weights FILE."""


def _kind(folder: Path) -> str:
    from degen.errors import UsageError

    if (folder / "tune.json").is_file():
        return "tune"
    if (folder / "compare.json").is_file():
        return "compare"
    if (folder / "records.jsonl").is_file():
        return "run"
    raise UsageError(f"{folder} holds no run (no records.jsonl, compare.json or tune.json); "
                     "pass the --out folder of degen run, compare or tune")


def _runs(folder: Path, kind: str) -> list[Path]:
    if kind == "run":
        return [folder]
    if kind == "compare":
        from degen.reports.compare import load_compare

        return [folder / "arms" / a["name"] for a in load_compare(folder)["arms"]]
    from degen.measurement.failure import params_key
    from degen.reports.tune import load_summary

    conf = load_summary(folder).get("confirmation") or {}
    return [folder / "confirm" / params_key(a["values"]) for a in conf.get("arms", {}).values()]


def extend_cmd(
    folder: Annotated[Path, typer.Argument(help="The --out folder of degen run, compare or "
                                           "tune.", show_default=False)],
    horizon: o.Horizon = None,
    extend_share: o.ExtendShare = None,
    base_url: Annotated[str | None, typer.Option(
        help="openai: the server's URL now (default: the run's).", show_default=False)] = None,
    api_key: o.ApiKey = None,
    concurrency: o.Concurrency = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON "
                                           "object on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    from degen.engines.base import engine_from_description
    from degen.errors import UsageError
    from degen.experiments.load.extend import check_horizon, check_share, default_horizon, extend
    from degen.measurement.progress import Progress, RichProgress
    from degen.store import RunDir, iter_records, settled

    o.check_positive("--concurrency", concurrency)
    kind = _kind(folder)
    runs = _runs(folder, kind)
    if not runs:
        raise UsageError(f"{folder}: nothing to extend")
    caps, metas = [], []
    for run in runs:
        if not (run / "run.json").is_file() or not (run / "records.jsonl").is_file():
            raise UsageError(f"{run} holds no finished run (no run.json or records.jsonl)")
        meta = RunDir(run).read_meta()
        if "engine" not in meta:
            raise UsageError(f"{run}/run.json does not say which engine made it")
        metas.append(meta)
        caps += [c.params.max_tokens for c in settled(iter_records(run / "records.jsonl",
                                                                   allow_torn_tail=True))
                 if c.is_measured]
    if not caps:
        raise UsageError(f"{folder}: no measured generation to extend")
    cap = max(caps)
    if horizon is None:  # the horizon the folder was measured against, else 8 x the cap
        horizon = next(filter(None, map(_recorded_horizon, metas)), default_horizon(cap))
    h = check_horizon(horizon, cap)
    share = check_share(extend_share) if extend_share is not None else 1.0
    err = typer.echo
    show = not quiet and sys.stderr.isatty()
    bar = RichProgress if show else Progress
    engines: dict[str, Any] = {}
    sent = 0
    try:
        for run, meta in zip(runs, metas, strict=True):
            key = json.dumps(meta["engine"], sort_keys=True, default=str)
            if key not in engines:
                if not quiet:
                    err(f"loading {meta['engine'].get('model', '')} ...", err=True)
                engines[key] = engine_from_description(meta["engine"], base_url=base_url,
                                                       api_key=api_key)
                load = getattr(engines[key], "load", None)
                if load is not None:  # a model that cannot load fails here, once
                    load()
            res = extend(engines[key], run, h, share=share, concurrency=concurrency,
                         progress=lambda n, name=run.name: bar(n, f"extend {name}"))
            sent += res.sent
    except KeyboardInterrupt:
        err(f"interrupted; run the same command again to resume extending {folder}", err=True)
        raise typer.Exit(130) from None
    finally:
        for eng in engines.values():
            eng.close()
    _summarize(folder, kind, h, share, sent, json_out)


def _recorded_horizon(meta: dict[str, Any]) -> int | None:
    """The horizon a run was extended to (``extension``) or measured against (a study's
    runs record theirs as ``horizon``)."""
    ext = meta.get("extension")
    h = ext.get("horizon") if isinstance(ext, dict) else meta.get("horizon")
    return h if isinstance(h, int) and not isinstance(h, bool) else None


def _summarize(folder: Path, kind: str, horizon: int, share: float, sent: int,
               json_out: bool) -> None:
    if kind == "run":
        from degen.cli.run import print_summary
        from degen.experiments.load.extend import load_run
        from degen.measurement.summary import summarize

        s = summarize(load_run(folder), out=str(folder), horizon=horizon, extend_share=share)
        s.update(horizon=horizon, extended_to=horizon, extend_share=share, continuations=sent)
        if json_out:
            sys.stdout.write(json.dumps(s) + "\n")
        else:
            print_summary(s)
        return
    if kind == "compare":
        from degen.cli.compare import print_compare
        from degen.experiments.compare import refresh_compare
        from degen.reports.compare import write_compare_report

        s = refresh_compare(folder, horizon, share)
        path = write_compare_report(folder)
        if json_out:
            sys.stdout.write(json.dumps(s | {"continuations": sent, "report": str(path)}) + "\n")
        else:
            print_compare(s)
            typer.echo(f"report: {path}")
        return
    from degen.experiments.tune.summary import refresh
    from degen.reports.tune import headline, runaway_headline, write_report

    s = refresh(folder, horizon, share)
    path = write_report(folder)
    if json_out:
        sys.stdout.write(json.dumps({"headline": headline(s), "runaways": runaway_headline(s),
                                     "confirmation": s["confirmation"], "continuations": sent,
                                     "report": str(path)}) + "\n")
    else:
        typer.echo(headline(s))
        typer.echo(runaway_headline(s) or "")
        typer.echo(f"report: {path}")


def fit_runaway_cmd(
    folders: Annotated[list[Path], typer.Argument(help="Run folders whose capped generations "
                                                  "were extended.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Where to write the fit (JSON).")] =
        Path("runaway-fit.json"),
    horizon: Annotated[int | None, typer.Option(
        help="The horizon the fit is scored at (default: the longest the extensions "
        "followed).", show_default=False)] = None,
) -> None:
    from degen.errors import UsageError
    from degen.measurement.runaway_fit import fit_report
    from degen.store import check_out_file, write_json_atomic

    for f in folders:
        if not (f / "records.jsonl").is_file():
            raise UsageError(f"{f} holds no run (no records.jsonl); pass run folders whose "
                             "capped generations were extended (degen extend)")
    check_out_file(out)
    report = fit_report(folders, horizon)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, report)
    for ev, sc in report["scores"].items():
        at = sc["at_cap"]
        typer.echo(f"{ev:>9}: at the cap ({at['n']} generations, {at['runaways']} runaways) "
                   f"precision {_r(at['precision'])}, recall {_r(at['recall'])}; mid-stream "
                   f"cut precision {_r(sc['cuts']['precision'])}, recall "
                   f"{_r(sc['cuts']['recall'])}")
    typer.echo(f"fit: {out} (use it with --runaway-weights {out})")


def _r(x: dict[str, Any]) -> str:
    return "-" if x["value"] is None else f"{x['value']:.2f} ({x['k']}/{x['n']})"
