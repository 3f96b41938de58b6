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


OPS = "Operations"
RETRY = "Better than a cut"


def guard(
    upstream: Annotated[list[str] | None, typer.Option(
        help="The server to guard, e.g. http://127.0.0.1:8000 (vLLM) or "
        "http://127.0.0.1:8080 (llama.cpp); /v1 is added when the path is empty. NAME=URL "
        "(repeatable) routes requests whose model is NAME (or that the upstream lists in "
        "/v1/models) to URL; a bare URL is the default for the rest.",
        show_default=False, rich_help_panel=SERVER)] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="A TOML file with any of these settings (flags win); see "
        "docs/guard-operations.md.", show_default=False, rich_help_panel=SERVER)] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (0.0.0.0: every "
                                             "interface; then set --api-key). [default: "
                                             "127.0.0.1]", show_default=False,
                                             rich_help_panel=SERVER)] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on. (default: 8100)",
                                             show_default=False, rich_help_panel=SERVER)]
        = None,
    workers: Annotated[int | None, typer.Option(
        help="Processes serving the port (one per core; metrics add up across them). "
        "[default: 1]", show_default=False, rich_help_panel=SERVER)] = None,
    api_key: Annotated[str | None, typer.Option(
        envvar="DEGEN_GUARD_API_KEY", help="Clients must send 'Authorization: Bearer KEY' "
        "(default: $DEGEN_GUARD_API_KEY; none = no check).", show_default=False,
        rich_help_panel=SERVER)] = None,
    upstream_key: Annotated[str | None, typer.Option(
        envvar="DEGEN_UPSTREAM_KEY", help="Bearer key sent upstream in place of the "
        "client's Authorization (default: $DEGEN_UPSTREAM_KEY; none = forward the "
        "client's).", show_default=False, rich_help_panel=SERVER)] = None,
    timeout: Annotated[float | None, typer.Option(
        help="Seconds without data from the upstream before a request fails with 504. "
        "[default: 600]", show_default=False, rich_help_panel=SERVER)] = None,
    max_body: Annotated[str | None, typer.Option(
        help="Largest request body accepted (413 above): bytes or 512KiB, 1MiB, ... "
        "[default: 1MiB]", show_default=False, rich_help_panel=SERVER)] = None,
    max_n: Annotated[int | None, typer.Option(
        help="Most choices a request may ask for (n, best_of); more is refused with 400. "
        "(default: 16)", show_default=False, rich_help_panel=SERVER)] = None,
    max_header_size: Annotated[str | None, typer.Option(
        help="Largest request line and headers accepted (431 above): bytes or 32KiB, ... "
        "[default: 64KiB]", show_default=False, rich_help_panel=SERVER)] = None,
    max_headers: Annotated[int | None, typer.Option(
        help="Most header fields a request may have (431 above). (default: 100)",
        show_default=False, rich_help_panel=SERVER)] = None,
    client_timeout: Annotated[float | None, typer.Option(
        help="Seconds a client may take to send a request's headers, and again its body "
        "(408 past either: slow clients do not hold connections). (default: 10)",
        show_default=False, rich_help_panel=SERVER)] = None,
    max_tokens_cap: Annotated[int | None, typer.Option(
        help="Most tokens a request may generate; a request that asks for more, or names "
        "no limit, gets this (max_tokens and max_completion_tokens). (default: 8192)",
        show_default=False, rich_help_panel=PARAMS)] = None,
    default: Annotated[list[str] | None, typer.Option(
        help="name=value set on requests that do not send it, e.g. temperature=0.7 "
        "(repeatable; the value is read as JSON when it is JSON).", show_default=False,
        rich_help_panel=PARAMS)] = None,
    override: Annotated[list[str] | None, typer.Option(
        help="name=value set on every request, e.g. min_p=0.1 (repeatable).",
        show_default=False, rich_help_panel=PARAMS)] = None,
    params_from: Annotated[str | None, typer.Option(
        help="Folder of a finished `degen tune` (its tune.json): its best parameters become "
        "defaults (--default wins over them, the client over both).", show_default=False,
        rich_help_panel=PARAMS)] = None,
    dialect: Annotated[str | None, typer.Option(
        help="Parameter names of the upstream for --params-from: auto (from /v1/models), "
        "vllm, llamacpp or openai. (default: auto)", show_default=False,
        rich_help_panel=PARAMS)] = None,
    cut: Annotated[str | None, typer.Option(
        "--cut", metavar="KINDS", help="Kinds that end a generation, comma-separated: loop, "
        "gibberish, spacing (the default), runaway (predicted never to end: asks the "
        "upstream for 20 alternatives per token to read the model's stopping evidence), "
        "or all. Every kind is watched and counted in /metrics either way.",
        show_default=False, rich_help_panel=WATCH)] = None,
    horizon: Annotated[int | None, typer.Option(
        help="A runaway would not end by this many tokens (default 8 x each request's "
        "max_tokens).", show_default=False, rich_help_panel=WATCH)] = None,
    runaway_weights: Annotated[str | None, typer.Option(
        help="A runaway predictor fitted on your model's runs (degen fit-runaway).",
        show_default=False, rich_help_panel=WATCH)] = None,
    stop_token: Annotated[list[str] | None, typer.Option(
        help="The text of the served model's stop token (repeatable); default: the "
        "common ones (<|im_end|>, <|eot_id|>, </s>, ...).", show_default=False,
        rich_help_panel=WATCH)] = None,
    no_cut: Annotated[str | None, typer.Option(
        "--no-cut", metavar="KINDS", help="Kinds not to cut (taken out of --cut); --no-cut "
        "all only watches and counts (a dry run for a rollout).", show_default=False,
        rich_help_panel=WATCH)] = None,
    cut_reason: Annotated[str | None, typer.Option(
        help="finish_reason of a cut: kind (\"repetition\" for a loop, \"degenerate\" for "
        "gibberish and glued words; the default) or length (for clients that accept only "
        "OpenAI's values; the degen field still names the kind).", show_default=False,
        rich_help_panel=WATCH)] = None,
    logprobs: Annotated[bool | None, typer.Option(
        "--logprobs/--no-logprobs", help="Ask the upstream for the sampled tokens' "
        "log-probabilities when the client did not (they sharpen the gibberish judgment "
        "and are taken out of the client's answer). (default: --logprobs)",
        show_default=False, rich_help_panel=WATCH)] = None,
    holdback: Annotated[int | None, typer.Option(
        help="Tokens held back before they are relayed: on a cut the degenerate start is "
        "never shown and the answer ends at its last clean sentence (costs N tokens of "
        "latency). (default: 0)", show_default=False, rich_help_panel=RETRY)] = None,
    on_degenerate: Annotated[str | None, typer.Option(
        help="cut, or retry: a request cut before any of its text reached the client (a "
        "non-streaming one, or one still held back) is sent once more with "
        "--retry-param on top, and the client gets that answer. (default: cut)",
        show_default=False, rich_help_panel=RETRY)] = None,
    retry_param: Annotated[list[str] | None, typer.Option(
        help="name=value for the retry, e.g. temperature=0.3 (repeatable).",
        show_default=False, rich_help_panel=RETRY)] = None,
    retry_params_from: Annotated[str | None, typer.Option(
        help="Folder of a finished `degen tune`: its best parameters are the retry's.",
        show_default=False, rich_help_panel=RETRY)] = None,
    shutdown_timeout: Annotated[float | None, typer.Option(
        help="Seconds open streams may take to finish after SIGTERM or Ctrl-C; what is "
        "left is cut and counted. (default: 30)", show_default=False,
        rich_help_panel=OPS)] = None,
    log_format: Annotated[str | None, typer.Option(
        help="text or json (one object a line). (default: text)", show_default=False,
        rich_help_panel=OPS)] = None,
    log_content: Annotated[bool | None, typer.Option(
        "--log-content/--no-log-content", help="Log prompts and outputs (never logged "
        "otherwise).", show_default=False, rich_help_panel=OPS)] = None,
    log_level: Annotated[str | None, typer.Option(
        help="debug, info, warning or error. (default: info)", show_default=False,
        rich_help_panel=OPS)] = None,
) -> None:
    from degen.guard import settings

    file = settings.read(config) if config is not None else {}
    cfg = settings.build(file, {
        "upstreams": upstream, "host": host, "port": port, "workers": workers,
        "api_key": api_key, "upstream_key": upstream_key, "timeout": timeout,
        "max_body": max_body, "max_n": max_n,
        "max_header_size": max_header_size, "max_headers": max_headers,
        "client_timeout": client_timeout, "max_tokens_cap": max_tokens_cap, "default": default,
        "override": override, "params_from": params_from, "dialect": dialect, "cut": cut,
        "no_cut": no_cut, "cut_reason": cut_reason, "logprobs": logprobs,
        "horizon": horizon, "runaway_weights": runaway_weights, "stop_tokens": stop_token,
        "holdback": holdback, "on_degenerate": on_degenerate, "retry_param": retry_param,
        "retry_params_from": retry_params_from, "shutdown_timeout": shutdown_timeout,
        "log_format": log_format, "log_content": log_content, "log_level": log_level})

    from degen.guard.logs import setup
    from degen.guard.workers import serve

    setup(cfg)
    warn = typer.echo
    applied = ", ".join(f"{k}={v}" for k, v in cfg.defaults.items()) or "none"
    targets = ", ".join(f"{u.label} {u.url}" if u.name else u.url for u in cfg.routes())
    extras = []
    if cfg.workers > 1:
        extras.append(f"{cfg.workers} workers")
    if cfg.holdback:
        extras.append(f"holdback {cfg.holdback}")
    if cfg.on_degenerate == "retry":
        extras.append("retry with " + ", ".join(f"{k}={v}" for k, v in
                                                 cfg.retry_params.items()))
    warn(f"degen guard on {cfg.url} -> {targets} (max_tokens cap {cfg.max_tokens_cap}, "
         f"{describe_cuts(cfg.cut_kinds, cfg.cut_reason)}; logprobs "
         f"{'asked' if cfg.logprobs else 'off'}; defaults: {applied}"
         f"{'; key required' if cfg.api_key else ''}"
         f"{'; ' + '; '.join(extras) if extras else ''})", err=True)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        warn(f"warning: listening on {cfg.host} without --api-key: anyone who can reach this "
             "port can use the upstream", err=True)
    serve(cfg)


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
