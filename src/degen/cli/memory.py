"""``degen memory MODEL``: parameters, weight and KV cache bytes, and what a runaway
costs (:mod:`degen.diagnose.memory`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

HELP = """Size a model's weights and KV cache, and what one runaway generation costs.

MODEL is a HF config.json or model folder, a GGUF file (its metadata and tensor
table are read; no weights are loaded), or a preset: llama-3.1-8b-instruct,
llama-3.1-70b-instruct, llama-3.1-405b-instruct, mistral-7b-instruct-v0.2,
qwen2.5-7b-instruct, smollm2-135m-instruct, bert-base-uncased.

Prints parameters by part, weight bytes in --dtype, KV cache bytes per token and at
--context, with --gpu-mem how many full-context sequences fit beside the weights and
how many tokens one runaway takes to fill the rest, and the KV cache and wall time of
one runaway at 8K, 32K and 128K tokens at --decode-tok-s."""


def memory(
    model: Annotated[str, typer.Argument(help="config.json, model folder, GGUF file or "
                                         "preset name.", show_default=False)],
    dtype: Annotated[str, typer.Option(help="Weight dtype: fp32, bf16, fp16, fp8, int8, "
                                       "int4.")] = "bf16",
    kv_dtype: Annotated[str | None, typer.Option(
        help="KV cache dtype (default: --dtype; bf16 for int4 weights).",
        show_default=False)] = None,
    context: Annotated[int | None, typer.Option(
        help="Tokens per sequence (default: the model's context length).",
        show_default=False)] = None,
    gpu_mem: Annotated[str | None, typer.Option(
        help="GPU memory, e.g. 80GiB, 24GB or 80 (GiB); all GPUs together with "
        "tensor parallelism.", show_default=False)] = None,
    utilization: Annotated[float, typer.Option(
        help="Share of --gpu-mem the server may use (vLLM's --gpu-memory-utilization).")
    ] = 0.9,
    decode_tok_s: Annotated[float, typer.Option(
        "--decode-tok-s", help="One sequence's decode speed, for the runaway's wall time.")
    ] = 70.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    from degen.diagnose.arch import Arch
    from degen.diagnose.memory import estimate, parse_size, render

    mem = parse_size(gpu_mem) if gpu_mem is not None else None
    m = estimate(Arch.load(model), dtype=dtype, kv_dtype=kv_dtype, context=context,
                 gpu_mem=mem, utilization=utilization, decode_tok_s=decode_tok_s)
    typer.echo(json.dumps(m.to_dict(), indent=2) if as_json else render(m))
