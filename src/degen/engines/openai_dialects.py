"""What differs between OpenAI-compatible servers: the request body each *dialect* takes.

The table of which sampling field goes under which name is in :mod:`degen.engines.openai`'s
doc; here is the code that follows it:

- :data:`DIALECTS` and :data:`APIS`: the choices; ``_OWNED_BY``: which ``owned_by`` of
  ``/v1/models`` names which dialect; ``_FINISH``: each server's finish reasons in
  degen's words.
- :func:`build_body`: the endpoint path and JSON body of one request for one dialect
  (continuations included); :func:`unsupported_fields`: what a dialect drops, with the
  reason; :func:`repetition_detection` and :data:`DETECTION_FIELDS`: vLLM's own loop stop.

No I/O here: the engine (:class:`~degen.engines.openai.OpenAIEngine`) sends what these build.
"""

from __future__ import annotations

from typing import Any

from degen.engines.evidence import TOP_LOGPROBS, logprob_fields
from degen.engines.openai_response import _Fatal
from degen.records import Request, SamplingParams

DIALECTS = ("auto", "vllm", "llamacpp", "openai")
APIS = ("auto", "chat", "completions")
_OWNED_BY = {"vllm": "vllm", "llamacpp": "llamacpp", "me": "llamacpp", "llama.cpp": "llamacpp"}
_FINISH = {"stop": "stop", "eos": "stop", "eos_token": "stop", "stop_sequence": "stop",
           "tool_calls": "stop", "function_call": "stop", "content_filter": "stop",
           "length": "length", "max_tokens": "length", "repetition": "repetition",
           "degenerate": "degenerate", "runaway": "runaway"}


def unsupported_fields(params: SamplingParams, dialect: str) -> dict[str, str]:
    """Fields of ``params`` a server of ``dialect`` will not apply, with the reason."""
    out: dict[str, str] = {}
    if params.no_repeat_ngram_size:
        out["no_repeat_ngram_size"] = f"the {dialect} API has no such parameter"
    if dialect == "openai":
        for name, off in (("top_k", 0), ("min_p", 0.0), ("repetition_penalty", 1.0)):
            if getattr(params, name) != off:
                out[name] = "not a standard OpenAI parameter (use --dialect vllm or llamacpp)"
    if params.repetition_min_count and dialect != "vllm":
        out["repetition_min_count"] = ("only vLLM stops a repeating generation itself "
                                       "(repetition_detection)")
    if params.repetition_penalty != 1.0 and dialect in ("vllm", "llamacpp"):
        if params.repetition_penalty_scope != "prompt+output":
            out["repetition_penalty_scope"] = f"{dialect} always penalizes prompt tokens too"
        if not params.penalize_eot:
            out["penalize_eot"] = f"{dialect} cannot exempt end-of-turn tokens"
    return out


# vLLM's repetition_detection keys -> the SamplingParams fields that carry them
DETECTION_FIELDS = {"max_pattern_size": "repetition_max_pattern",
                    "min_pattern_size": "repetition_min_pattern",
                    "min_count": "repetition_min_count"}


def repetition_detection(params: SamplingParams) -> dict[str, int]:
    """vLLM's ``repetition_detection`` request field for ``params`` (when
    ``repetition_min_count`` is on): stop once the output ends in one pattern of
    ``min_pattern_size``..``max_pattern_size`` tokens repeated ``min_count`` times."""
    return {key: getattr(params, name) for key, name in DETECTION_FIELDS.items()}


def build_body(request: Request, model: str, dialect: str, api: str,
               stream: bool, logprobs: bool = False, top: int = TOP_LOGPROBS
               ) -> tuple[str, dict[str, Any]]:
    """The endpoint path and JSON body for ``request``; ``logprobs`` asks for the
    sampled tokens' log-probabilities and ``top`` alternatives (:func:`logprob_fields`).

    A continuation (an extension) sends the text so far after the prompt: raw
    prompts on the completions API as one prompt, chat requests as a final assistant
    message that vLLM continues (``continue_final_message``); ``max_tokens`` is what
    is left of the horizon."""
    p = request.params
    if api == "auto":
        api = "chat" if request.messages is not None else "completions"
    body: dict[str, Any] = {"model": model}
    so_far = request.continuation_text if request.continued else None
    if api == "chat":
        if request.messages is None:
            raise _Fatal("raw 'prompt' requests need the completions API (--api completions "
                         "or --api auto)")
        body["messages"] = [dict(m) for m in request.messages]
        if so_far is not None:
            if dialect != "vllm":
                raise _Fatal(f"continuing a chat answer needs a server that can continue "
                             f"the last assistant message (vLLM); the {dialect} dialect "
                             "cannot: extend raw prompts on the completions API instead")
            body["messages"].append({"role": "assistant", "content": so_far})
            body.update(continue_final_message=True, add_generation_prompt=False)
        path = "/chat/completions"
    else:
        if request.prompt is None:
            raise _Fatal("chat 'messages' requests need the chat API (--api chat or auto)")
        body["prompt"] = request.prompt + (so_far or "")
        path = "/completions"
    body.update(
        max_tokens=p.max_tokens - request.continued, temperature=p.temperature, top_p=p.top_p,
        presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty,
    )
    if p.seed is not None:
        body["seed"] = p.seed
    if p.stop:
        body["stop"] = list(p.stop)
    if dialect == "vllm":
        body.update(top_k=p.top_k if p.top_k > 0 else -1, min_p=p.min_p,
                    repetition_penalty=p.repetition_penalty)
        if p.repetition_min_count:
            body["repetition_detection"] = repetition_detection(p)
    elif dialect == "llamacpp":
        body.update(top_k=p.top_k, min_p=p.min_p, repeat_penalty=p.repetition_penalty)
    if logprobs:
        body.update(logprob_fields(api == "chat", top))
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return path, body
