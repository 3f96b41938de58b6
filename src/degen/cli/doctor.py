"""``degen doctor [MODEL]``: diagnose a generation pipeline (:mod:`degen.diagnose.doctor`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

HELP = """Diagnose the configuration mistakes that make a model run away.

MODEL is a HF model folder or a GGUF file (default: the bundled model), checked in
this process; or --base-url checks a running OpenAI-compatible server through its
API. Each check prints pass / warn / fail, what it saw and the fix: the checkpoint's
files (architectures named, every weight under its own name), a next-token
distribution that is flat (weights that load but make noise; also through a server's
logprobs), chat template, end-of-turn token among the stop tokens, padding side and
batched vs alone output, attention given to padding, rope scaling for the advertised
context, sampling defaults in generation_config, and a repetition penalty that hits
the end-of-turn token. Exits 0 when nothing fails, 1 when a check fails."""


def doctor(
    model: Annotated[str | None, typer.Argument(
        help="HF model folder or GGUF file (default: the bundled model).",
        show_default=False)] = None,
    base_url: Annotated[str | None, typer.Option(
        help="Check a running OpenAI-compatible server instead, e.g. "
        "http://127.0.0.1:8000/v1.", show_default=False)] = None,
    server_model: Annotated[str | None, typer.Option(
        "--server-model", help="With --base-url: the model name (default: the first of "
        "/v1/models).", show_default=False)] = None,
    api_key: Annotated[str | None, typer.Option(
        help="With --base-url: bearer key (default: $DEGEN_API_KEY or $OPENAI_API_KEY).",
        show_default=False)] = None,
    repetition_penalty: Annotated[float, typer.Option(
        help="Penalty to measure on the end-of-turn token when generation_config sets "
        "none.")] = 1.3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    from degen.errors import UsageError

    if base_url and model:
        raise UsageError("give a MODEL or --base-url, not both")
    if repetition_penalty <= 1:
        raise UsageError(f"--repetition-penalty must be > 1, got {repetition_penalty}")

    def say(step: str) -> None:
        if not quiet:
            typer.echo(f"doctor: {step}...", err=True)

    if base_url:
        from degen.diagnose.doctor import diagnose_server
        from degen.engines.openai import normalize_base_url

        base_url = normalize_base_url(base_url)  # a malformed URL fails before any line
        say("asking the server")
        d = diagnose_server(base_url, model=server_model, api_key=api_key)
    else:
        from degen.diagnose.doctor import diagnose
        from degen.engines.hf import resolve_model

        resolve_model(model)  # a bad path fails here, before torch is imported
        d = diagnose(model, repetition_penalty=repetition_penalty, progress=say)
    typer.echo(json.dumps(d.to_dict(), indent=2, default=str) if as_json else d.render())
    if d.failed:
        raise typer.Exit(1)
