"""``degen guard``: the OpenAI-compatible proxy that cuts degenerate generations early."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

HELP = """Serve an OpenAI-compatible proxy in front of --upstream that cuts degenerate
generations: loops, gibberish and glued words.

Chat and text completions (streamed or not) are watched as they are generated,
with the tokens' log-probabilities (asked from the upstream, never shown to a
client that did not ask). A confirmed loop ends the answer with finish_reason
"repetition", babble or glued words with "degenerate" (--cut-reason length:
"length" for strict clients), the evidence in a "degen" field, and the upstream
request is closed (vLLM and llama.cpp then abort it). Legitimate repetition
(asked for, table rows, counting) is left alone. max_tokens is capped; /metrics
serves Prometheus metrics. Listens on 127.0.0.1 unless --host says otherwise.
See docs/guard.md."""

SERVER = "Server"
PARAMS = "Request parameters"
WATCH = "Watching and cutting"


def guard(
    upstream: Annotated[str, typer.Option(
        help="The server to guard, e.g. http://127.0.0.1:8000 (vLLM) or "
        "http://127.0.0.1:8080 (llama.cpp); /v1 is added when the path is empty.",
        show_default=False, rich_help_panel=SERVER)],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every "
                                      "interface; then set --api-key).",
                                      rich_help_panel=SERVER)] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", rich_help_panel=SERVER)]
        = 8100,
    api_key: Annotated[str | None, typer.Option(
        envvar="DEGEN_GUARD_API_KEY", help="Clients must send 'Authorization: Bearer KEY' "
        "(default: $DEGEN_GUARD_API_KEY; none = no check).", show_default=False,
        rich_help_panel=SERVER)] = None,
    upstream_key: Annotated[str | None, typer.Option(
        envvar="DEGEN_UPSTREAM_KEY", help="Bearer key sent upstream in place of the "
        "client's Authorization (default: $DEGEN_UPSTREAM_KEY; none = forward the "
        "client's).", show_default=False, rich_help_panel=SERVER)] = None,
    timeout: Annotated[float, typer.Option(help="Seconds without data from the upstream "
                                           "before a request fails with 504.",
                                           rich_help_panel=SERVER)] = 600.0,
    max_body: Annotated[str, typer.Option(help="Largest request body accepted (413 above): "
                                          "bytes or 512KiB, 1MiB, ...",
                                          rich_help_panel=SERVER)] = "1MiB",
    max_tokens_cap: Annotated[int, typer.Option(
        help="Most tokens a request may generate; a request that asks for more, or names "
        "no limit, gets this (max_tokens and max_completion_tokens).",
        rich_help_panel=PARAMS)] = 8192,
    default: Annotated[list[str] | None, typer.Option(
        help="name=value set on requests that do not send it, e.g. temperature=0.7 "
        "(repeatable; the value is read as JSON when it is JSON).", show_default=False,
        rich_help_panel=PARAMS)] = None,
    override: Annotated[list[str] | None, typer.Option(
        help="name=value set on every request, e.g. min_p=0.1 (repeatable).",
        show_default=False, rich_help_panel=PARAMS)] = None,
    params_from: Annotated[Path | None, typer.Option(
        help="Folder of a finished `degen tune` (its tune.json): its best parameters become "
        "defaults (--default wins over them, the client over both).", show_default=False,
        rich_help_panel=PARAMS)] = None,
    dialect: Annotated[str, typer.Option(
        help="Parameter names of the upstream for --params-from: auto (from /v1/models), "
        "vllm, llamacpp or openai.", rich_help_panel=PARAMS)] = "auto",
    cut: Annotated[str, typer.Option(
        "--cut", metavar="KINDS", help="Kinds that end a generation, comma-separated: loop, "
        "gibberish, spacing, or all. Every kind is watched and counted in /metrics either "
        "way.", rich_help_panel=WATCH)] = "all",
    no_cut: Annotated[str | None, typer.Option(
        "--no-cut", metavar="KINDS", help="Kinds not to cut (taken out of --cut); --no-cut "
        "all only watches and counts (a dry run for a rollout).", show_default=False,
        rich_help_panel=WATCH)] = None,
    cut_reason: Annotated[str, typer.Option(
        help="finish_reason of a cut: kind (\"repetition\" for a loop, \"degenerate\" for "
        "gibberish and glued words) or length (for clients that accept only OpenAI's "
        "values; the degen field still names the kind).", rich_help_panel=WATCH)] = "kind",
    logprobs: Annotated[bool, typer.Option(
        "--logprobs/--no-logprobs", help="Ask the upstream for the sampled tokens' "
        "log-probabilities when the client did not (they sharpen the gibberish judgment "
        "and are taken out of the client's answer).", rich_help_panel=WATCH)] = True,
    log_content: Annotated[bool, typer.Option(help="Log prompts and outputs (never logged "
                                              "otherwise).")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    import dataclasses
    import logging

    from degen.errors import InvalidParams
    from degen.guard.config import (
        GuardConfig,
        load_tuned,
        parse_assignments,
        parse_kinds,
        parse_size,
        resolve_dialect,
        tuned_fields,
    )

    levels = ("debug", "info", "warning", "error")
    if log_level not in levels:
        raise InvalidParams(f"--log-level must be one of {', '.join(levels)}, got {log_level!r}")
    if dialect not in ("auto", "vllm", "llamacpp", "openai"):
        raise InvalidParams(f"--dialect must be auto, vllm, llamacpp or openai, got {dialect!r}")
    kinds = parse_kinds(cut, "--cut") - parse_kinds(no_cut, "--no-cut")
    explicit = parse_assignments(default or (), "--default")
    overrides = parse_assignments(override or (), "--override")
    cfg = GuardConfig(upstream=upstream, host=host, port=port, api_key=api_key,
                      upstream_key=upstream_key, max_tokens_cap=max_tokens_cap,
                      defaults=explicit, overrides=overrides, max_body=parse_size(max_body),
                      timeout=timeout, cut_kinds=kinds, cut_reason=cut_reason,
                      logprobs=logprobs, log_content=log_content)
    warn = typer.echo
    if params_from is not None:
        values = load_tuned(params_from)
        if dialect == "auto":
            dialect = resolve_dialect(cfg.upstream, upstream_key)
        fields, system, warnings = tuned_fields(values, dialect)
        for w in warnings:
            warn(f"warning: {w}", err=True)
        cfg = dataclasses.replace(cfg, defaults={**fields, **explicit}, system=system)

    import uvicorn

    from degen.guard import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    app = create_app(cfg)
    applied = ", ".join(f"{k}={v}" for k, v in cfg.defaults.items()) or "none"
    warn(f"degen guard on {cfg.url} -> {cfg.upstream} (max_tokens cap {cfg.max_tokens_cap}, "
         f"{describe_cuts(cfg.cut_kinds, cfg.cut_reason)}; logprobs "
         f"{'asked' if cfg.logprobs else 'off'}; defaults: {applied}"
         f"{'; key required' if cfg.api_key else ''})", err=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        warn(f"warning: listening on {host} without --api-key: anyone who can reach this "
             "port can use the upstream", err=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=5)


def describe_cuts(kinds: frozenset[str], reason: str) -> str:
    """``cutting loop, gibberish, spacing`` / ``cutting loop; watching gibberish`` /
    ``watching loop, ..., cutting nothing`` for the startup line."""
    from degen.detect.watch import KINDS

    cut = [k for k in KINDS if k in kinds]
    rest = [k for k in KINDS if k not in kinds]
    if not cut:
        return f"watching {', '.join(rest)}, cutting nothing"
    out = f"cutting {', '.join(cut)}"
    if reason == "length":
        out += " (finish_reason length)"
    return out + (f"; watching {', '.join(rest)}" if rest else "")
