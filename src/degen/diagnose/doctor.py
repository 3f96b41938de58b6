"""``degen doctor``: find the configuration mistakes that make a model run away.

Most runaways users report come from the pipeline, not from sampling: a checkpoint
whose weights load without an error but make noise (:mod:`degen.diagnose.checkpoint`), a chat
template that is missing or ends turns with a token nobody stops on (Llama-3's
``<|eot_id|>`` vs its tokenizer's ``<|end_of_text|>``, vLLM #4180), batched
generation with right padding or a mask that lets padding be attended (seeds 001
and 002), a context advertised past what rope scaling supports, sampling defaults
in ``generation_config.json`` that servers apply silently, and a repetition
penalty that also hits the end-of-turn token because the template puts it in every
prompt.

Each :class:`Check` says pass / warn / fail, what it saw, and the fix.
:func:`diagnose` runs them on a model folder or GGUF file in this process (the
measured checks load the model: greedy generation, attention weights, next-token
probabilities); :func:`diagnose_server` runs the ones that can be seen through an
OpenAI-compatible API.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from degen.diagnose.checks import STATUSES, Check, Diagnosis  # noqa: F401
from degen.engines import hf

SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "min_p", "typical_p",
                 "repetition_penalty", "no_repeat_ngram_size", "presence_penalty",
                 "frequency_penalty")
PROMPTS = (  # mixed lengths, short answers
    "Say hello.",
    "What is the capital of France? Answer in one sentence.",
    "Name three colours of the rainbow, then explain in two sentences why the sky "
    "looks blue during the day and red at sunset.",
)
_MARK = "DEGENMARK"
_MANY = 1 << 40  # a tokenizer's "no limit" model_max_length is huge


def _read_json(p: Path) -> dict[str, Any]:
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


# ---------------------------------------------------------------------- in-process
@dataclass
class _Pipeline:
    """What a transformers pipeline would load from the model's folder."""

    folder: Path
    model: Any
    tok: Any
    config: dict[str, Any]
    tok_config: dict[str, Any]  # tokenizer_config.json as written (explicit settings)
    gen_config: dict[str, Any]  # generation_config.json as written ({} if none)

    def name(self, i: int) -> str:
        return f"{self.tok.convert_ids_to_tokens(i)} ({i})"

    @property
    def has_template(self) -> bool:
        return bool(getattr(self.tok, "chat_template", None))

    def prompts(self) -> list[str]:
        """:data:`PROMPTS` as the model would see them (templated when it can be)."""
        return [self.render([{"role": "user", "content": q}], True) if self.has_template
                else q for q in PROMPTS]

    def render(self, messages: list[dict[str, str]], gen: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False,
                                            add_generation_prompt=gen)


def load_pipeline(model: str | Path | None) -> _Pipeline:
    """The model folder (a GGUF is converted once and cached, as the local engine
    does) with eager attention, so attention weights can be read."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    src = hf.resolve_model(model)
    with hf.loading(src.path):
        folder = hf.materialize(src)
        tok = AutoTokenizer.from_pretrained(str(folder))
        m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                 attn_implementation="eager")
    m.eval()
    return _Pipeline(folder=folder, model=m, tok=tok,
                     config=_read_json(folder / "config.json"),
                     tok_config=_read_json(folder / "tokenizer_config.json"),
                     gen_config=_read_json(folder / "generation_config.json"))


def diagnose(model: str | Path | None = None, *, repetition_penalty: float = 1.3,
             new_tokens: int = 16, progress: Callable[[str], None] | None = None
             ) -> Diagnosis:
    """Every check on a model folder or GGUF file (``None``: the bundled model)."""
    from degen.diagnose.arch import Arch
    from degen.diagnose.checkpoint import check_checkpoint, check_distribution, first_token_logprobs

    say = progress or (lambda _m: None)
    say("loading the model")
    p = load_pipeline(model)
    checks: list[Check] = []
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("checkpoint", lambda: check_checkpoint(p.folder, p.config, p.model)),
        ("distribution", lambda: check_distribution(
            first_token_logprobs(p.model, p.tok, p.prompts()), "greedy, in this process")),
        ("chat template", lambda: check_template(p)),
        ("end of turn", lambda: check_end_of_turn(p)),
        ("padding", lambda: check_padding(p, new_tokens)),
        ("padding attention", lambda: check_pad_attention(p)),
        ("rope scaling", lambda: check_rope(Arch.from_config(p.config, source=str(p.folder)))),
        ("sampling defaults", lambda: check_sampling_defaults(p.gen_config)),
        ("penalty on EOT", lambda: check_eot_penalty(p, repetition_penalty)),
    ]
    for name, run in steps:
        say(name)
        try:
            checks.append(run())
        except Exception as e:  # one broken check must not hide the others
            checks.append(Check(name, "fail", f"the check itself failed: "
                                f"{type(e).__name__}: {str(e)[:200]}",
                                "see the error; the model files may be inconsistent"))
    target = str(model) if model else f"bundled model ({p.folder.name})"
    return Diagnosis(target, checks)


def check_template(p: _Pipeline) -> Check:
    name = "chat template"
    if not p.has_template:
        return Check(name, "fail", "the tokenizer has no chat template: prompts reach the "
                     "model as raw text, and an instruct model then rarely ends its turn "
                     "(seed 001)",
                     "ship the model's chat_template (chat_template.jinja or "
                     "tokenizer_config.json), or send already formatted prompts to "
                     "/v1/completions")
    msgs = [{"role": "user", "content": "Hi"}]
    try:
        with_gen, without = p.render(msgs, True), p.render(msgs, False)
    except Exception as e:
        return Check(name, "fail", f"the chat template does not render a conversation: "
                     f"{str(e)[:160]}", "fix the template")
    header = with_gen[len(without):] if with_gen.startswith(without) else ""
    if not header.strip():
        return Check(name, "fail", "the template ignores add_generation_prompt: the "
                     "rendered prompt does not end in an assistant header, so the model "
                     "is not told it is its turn", "add the assistant header to the template "
                     "when add_generation_prompt is true", {"rendered": with_gen[-200:]})
    return Check(name, "pass", f"renders a conversation ending in the assistant header "
                 f"{header!r}", data={"header": header})


def end_of_turn(p: _Pipeline) -> tuple[int | None, str]:
    """The first special token the template puts after an assistant's words, and the
    text that follows the words."""
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _MARK}]
    text = p.render(msgs, False)
    tail = text[text.rindex(_MARK) + len(_MARK):]
    special = set(p.tok.all_special_ids)
    special |= {i for i, t in getattr(p.tok, "added_tokens_decoder", {}).items()
                if getattr(t, "special", False)}
    ids = p.tok.encode(tail, add_special_tokens=False)
    return next((i for i in ids if i in special), None), tail


def check_end_of_turn(p: _Pipeline) -> Check:
    name = "end of turn"
    if not p.has_template:
        return Check(name, "skip", "no chat template, so no end-of-turn token to check")
    eot, tail = end_of_turn(p)
    every = sorted(hf.stop_token_ids(p.model, p.tok))  # tokenizer, generation config, config
    shown = ", ".join(p.name(i) for i in every) or "none"
    data = {"end_of_turn": eot, "stop_ids": every, "after_answer": tail}
    if eot is None:
        return Check(name, "warn", f"the template ends an assistant turn with {tail!r}, "
                     "no special token: the model can only stop on a stop string",
                     "make sure the server stops on that text (stop=[...])", data)
    if eot in every:
        return Check(name, "pass", f"assistant turns end with {p.name(eot)}, a stop token "
                     f"(stop ids: {shown})", data=data)
    return Check(name, "fail", f"assistant turns end with {p.name(eot)}, which is not a stop "
                 f"token (stop ids: {shown}): generation runs past the end of the answer "
                 "until max_tokens (vLLM #4180)",
                 f"add {eot} to eos_token_id in generation_config.json (a list may hold "
                 "several), or pass it as a stop token id", data)


def check_padding(p: _Pipeline, new_tokens: int) -> Check:
    name = "padding"
    tok, model = p.tok, p.model
    if tok.pad_token_id is None:
        return Check(name, "fail", "no pad token: batched generation cannot pad prompts of "
                     "different lengths", "set pad_token (the EOS token is a common choice "
                     "when the attention mask is passed)")
    texts = p.prompts()
    alone = [hf.static_batch_generate(model, tok, [t], padding_side="left",
                                      max_new_tokens=new_tokens)[0] for t in texts]
    left = hf.static_batch_generate(model, tok, texts, padding_side="left",
                                    max_new_tokens=new_tokens)
    right = hf.static_batch_generate(model, tok, texts, padding_side="right",
                                     max_new_tokens=new_tokens)

    def differ(rows: list[list[int]]) -> list[int]:
        return [i for i, (a, b) in enumerate(zip(rows, alone, strict=True)) if a != b]

    bad_left, bad_right = differ(left), differ(right)
    side = tok.padding_side
    explicit = "padding_side" in p.tok_config
    data = {"padding_side": side, "explicit": explicit, "pad_token_id": tok.pad_token_id,
            "rows_differing_left": bad_left, "rows_differing_right": bad_right,
            "new_tokens": new_tokens}
    pad = f"pad {p.name(tok.pad_token_id)}"
    right_saw = (f"right-padded, {len(bad_right)} of {len(texts)} mixed-length prompts come "
                 f"out different from alone (seed 001: the first new token is predicted "
                 f"after pads)") if bad_right else "right-padded, the outputs match alone"
    if bad_left:
        masked = "attention_mask" in tok(["a"], add_special_tokens=False)
        why = ("the tokenizer returns no attention_mask, so generate attends the pads"
               if not masked else "the model ignores the attention mask or position ids")
        return Check(name, "fail", f"{pad}; even left-padded, {len(bad_left)} of "
                     f"{len(texts)} prompts come out different batched than alone: {why}",
                     "pass attention_mask (and position ids from its cumulative sum) to the "
                     "model and to generate", data)
    fix = ("set padding_side='left' for generation (tokenizer_config.json, or "
           "tokenizer.padding_side = 'left' before batching)")
    if side == "right" and bad_right:
        how = ("tokenizer_config.json sets padding_side right" if explicit else
               "the tokenizer pads right (the default: tokenizer_config.json does not say)")
        return Check(name, "fail" if explicit else "warn", f"{pad}; {how}: {right_saw}; "
                     "left-padded they match", fix, data)
    return Check(name, "pass", f"{pad}, padding side {side}; greedy output batched "
                 f"(mixed lengths) matches alone for {len(texts)} prompts"
                 + ("" if side == "left" else f"; {right_saw}"), data=data)


def check_pad_attention(p: _Pipeline) -> Check:
    """Seed 002: the attention weights a padded batch gives to its pad positions."""
    import torch

    name = "padding attention"
    tok, model = p.tok, p.model
    if tok.pad_token_id is None:
        return Check(name, "skip", "no pad token (see padding)")
    texts = p.prompts()
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        real = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                   return_attention_mask=True)["attention_mask"].bool()
    finally:
        tok.padding_side = old
    got_mask = "attention_mask" in enc
    with torch.inference_mode():
        out = model(**enc, output_attentions=True)
    worst, where = 0.0, (0, 0)
    for layer, att in enumerate(out.attentions):  # [batch, heads, query, key]
        pad_keys = (~real)[:, None, None, :].to(att.dtype)
        mass = (att * pad_keys).sum(-1)  # per query: weight on pads
        mass = mass * real[:, None, :].to(att.dtype)  # real queries only
        m = float(mass.max())
        if m > worst:
            worst, where = m, (layer, int(mass.amax(dim=(0, 2)).argmax()))
    n_pads = int((~real).sum())
    data = {"max_weight_on_padding": worst, "layer": where[0], "head": where[1],
            "pad_positions": n_pads, "tokenizer_returns_mask": got_mask,
            "attn_implementation": "eager"}
    if worst < 1e-4:
        return Check(name, "pass", f"a left-padded batch ({n_pads} pad positions) gives "
                     f"them at most {worst:.1e} of any real token's attention", data=data)
    why = ("the tokenizer returns no attention_mask (model_input_names = "
           f"{list(getattr(tok, 'model_input_names', []))})" if not got_mask else
           "the mask the tokenizer returns does not reach the attention")
    return Check(name, "fail", f"padding is attended: real tokens give up to {worst:.0%} of "
                 f"their attention to pad positions (layer {where[0]}, head {where[1]}); "
                 f"{why}", "pass attention_mask to the model and to generate "
                 "(tokenizer(..., return_attention_mask=True))", data)


def check_rope(a: Any) -> Check:
    name = "rope scaling"
    ctx, rs, theta = a.max_context, a.rope_scaling, a.rope_theta
    data = {"max_position_embeddings": ctx, "rope_scaling": rs, "rope_theta": theta}
    if not ctx:
        return Check(name, "warn", "the config does not say its context length",
                     "set max_position_embeddings", data)
    if rs:
        kind = rs.get("rope_type") or rs.get("type")
        factor, orig = rs.get("factor"), rs.get("original_max_position_embeddings")
        # linear, dynamic NTK and YaRN stretch the trained positions by ``factor``;
        # llama3's scaling keeps high frequencies and is trained to its full context
        if kind in ("linear", "dynamic", "yarn") and factor and orig and factor * orig < ctx:
            return Check(name, "warn", f"{kind} rope scaling x{factor} from {orig} tokens "
                         f"covers {int(factor * orig):,}, but the config advertises {ctx:,}",
                         f"keep requests under {int(factor * orig):,} tokens", data)
        return Check(name, "pass", f"{kind} rope scaling (factor {factor}, from "
                     f"{orig or '?'} tokens) for an advertised {ctx:,}-token context",
                     data=data)
    if a.model_type == "llama" and theta and float(theta) >= 500_000 and ctx > 8192:
        return Check(name, "fail", f"a Llama-3-style model (rope_theta {theta:g}) "
                     f"advertises {ctx:,} tokens with no rope_scaling: it was trained to "
                     "8,192 and text degrades past that",
                     "add Llama-3.1's rope_scaling (rope_type llama3, factor 8, "
                     "original_max_position_embeddings 8192) or cap the context at 8192",
                     data)
    return Check(name, "pass", f"no rope scaling; the model advertises {ctx:,} tokens"
                 + (f" (rope_theta {theta:g})" if theta else ""), data=data)


def check_sampling_defaults(gen_config: dict[str, Any]) -> Check:
    name = "sampling defaults"
    found = {k: gen_config[k] for k in SAMPLING_KEYS if k in gen_config}
    rp = found.get("repetition_penalty")
    data = {"generation_config": found}
    if rp is not None and float(rp) > 1.2:
        return Check(name, "warn", f"generation_config.json sets repetition_penalty {rp}: "
                     "above ~1.2 it punishes the words a copy-style task must repeat "
                     "(names, code, quotes) and the end-of-turn token, and text degrades "
                     "(seed 001); servers apply it to every request that does not set it",
                     "remove it or set 1.0-1.1, and tune it for the task (degen tune)", data)
    if found:
        shown = ", ".join(f"{k} {v}" for k, v in found.items())
        return Check(name, "warn", f"generation_config.json sets {shown}: vLLM (its default "
                     "--generation-config auto) and transformers' generate apply these to "
                     "every request that does not set them",
                     "send every sampling parameter explicitly, or start vLLM with "
                     "--generation-config vllm", data)
    return Check(name, "pass", "generation_config.json sets no sampling parameters",
                 data=data)


def check_eot_penalty(p: _Pipeline, what_if: float = 1.3) -> Check:
    """How much a repetition penalty over prompt and output lowers the end-of-turn
    token's probability where a normal answer ends."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    name = "penalty on EOT"
    if not p.has_template:
        return Check(name, "skip", "no chat template, so no end-of-turn token to check")
    eot, _ = end_of_turn(p)
    if eot is None:
        return Check(name, "skip", "the template ends turns with no special token")
    configured = p.gen_config.get("repetition_penalty")
    rp = float(configured) if configured and float(configured) > 1 else what_if
    prompt = p.render([{"role": "system", "content": "You are a helpful assistant."},
                       {"role": "user", "content": PROMPTS[1]}], True)
    ids = p.tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    in_prompt = int((ids == eot).sum())
    if not in_prompt:
        return Check(name, "pass", f"the prompt holds no {p.name(eot)}: a penalty over the "
                     "prompt cannot reach it", data={"end_of_turn": eot})
    pad = eot if p.tok.pad_token_id is None else p.tok.pad_token_id
    with torch.inference_mode():
        out = p.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=64, eos_token_id=[eot], pad_token_id=pad,
                               top_k=None, top_p=None, temperature=None)
        gen = out[0, ids.shape[1]:].tolist()
        if eot not in gen:
            return Check(name, "skip", f"greedy, the model did not end a short answer with "
                         f"{p.name(eot)} within 64 tokens: nothing to measure")
        seq = out[:, :ids.shape[1] + gen.index(eot)]  # up to where the answer ends
        logits = p.model(seq).logits[:, -1, :].float()
        before = float(torch.softmax(logits, -1)[0, eot])
        hit = RepetitionPenaltyLogitsProcessor(penalty=rp)(seq, logits.clone())
        after = float(torch.softmax(hit, -1)[0, eot])
    data = {"end_of_turn": eot, "in_prompt": in_prompt, "repetition_penalty": rp,
            "configured": configured is not None and float(configured) > 1,
            "p_before": before, "p_after": after, "answer_tokens": gen.index(eot)}
    saw = (f"the chat template puts {p.name(eot)} in every prompt ({in_prompt} here), so "
           f"repetition_penalty {rp:g} over prompt and output also hits it: where a normal "
           f"answer ends its probability falls from {before:.2f} to {after:.2f}")
    fix = ("exempt the stop tokens: degen's local engine and degen tune have it "
           "(penalize_eot=false / penalty_scope eot-exempt); in transformers, a logits "
           "processor that skips them; vLLM cannot exempt one token: keep "
           "repetition_penalty <= 1.1 or use frequency/presence penalties, which count "
           "generated tokens only")
    if data["configured"]:
        status = "fail" if after < 0.5 * before else "warn"
        return Check(name, status, saw + " (generation_config.json sets this penalty)", fix,
                     data)
    return Check(name, "pass", f"no repetition penalty configured; if one were set: {saw}",
                 fix, data)


# ---------------------------------------------------------------------- server
def diagnose_server(base_url: str, *, model: str | None = None, api_key: str | None = None,
                    timeout: float = 60.0, max_tokens: int = 256) -> Diagnosis:
    """The checks an OpenAI-compatible API can show: the chat template works, short
    answers end with finish_reason ``stop``, and the model's first answer token is not
    drawn from a flat distribution (from the ``logprobs`` it returns). The rest need
    the model's files."""
    from degen.diagnose.checkpoint import check_distribution
    from degen.engines.openai import OpenAIEngine
    from degen.records import Request, SamplingParams

    eng = OpenAIEngine(base_url, model=model, api_key=api_key, timeout=timeout,
                       max_retries=1, api="chat", logprobs=True)
    checks: list[Check] = []
    try:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, seed=0)
        done = [eng.complete(Request(f"doctor-{i}", f"doctor-{i}", params,
                                     messages=({"role": "user", "content": q},)))
                for i, q in enumerate(PROMPTS)]
    finally:
        eng.close()
    errors = [c for c in done if c.is_error]
    if errors:
        msg = str(errors[0].error or "")
        template = "template" in msg.lower()
        checks.append(Check("chat template", "fail", f"{len(errors)} of {len(done)} chat "
                            f"requests failed: {msg[:200]}",
                            "give the server a chat template (vLLM: --chat-template; "
                            "llama.cpp: --chat-template or --jinja)" if template else
                            "see the server's error"))
    else:
        checks.append(Check("chat template", "pass", f"{len(done)} chat requests answered "
                            f"by {eng.model}"))
    ok = [c for c in done if not c.is_error]
    if ok:
        stopped = [c for c in ok if c.finish_reason == "stop"]
        reasons = [c.finish_reason for c in ok]
        data = {"finish_reasons": reasons, "max_tokens": max_tokens,
                "completion_tokens": [c.completion_tokens for c in ok]}
        if len(stopped) == len(ok):
            checks.append(Check("end of turn", "pass", f"{len(ok)} short greedy answers "
                                "ended with finish_reason stop", data=data))
        else:
            status = "fail" if not stopped else "warn"
            checks.append(Check("end of turn", status, f"{len(ok) - len(stopped)} of "
                                f"{len(ok)} short greedy answers ran to max_tokens "
                                f"({max_tokens}) instead of stopping: the server may not "
                                "stop on the template's end-of-turn token",
                                "make the end-of-turn token a stop token (generation_config "
                                "eos_token_id; llama.cpp reads the GGUF's EOS; vLLM "
                                "#4180), or pass it in stop", data))
    if ok:
        firsts = [(c.extra.get("logprobs") or [None])[0] for c in ok]
        checks.append(check_distribution(firsts, "greedy, from the server's logprobs"))
    for name in ("checkpoint", "padding", "padding attention", "rope scaling", "sampling defaults",
                 "penalty on EOT"):
        checks.append(Check(name, "skip", "needs the model's files: run degen doctor on "
                            "the model folder or GGUF"))
    return Diagnosis(f"{base_url} ({eng.model})", checks)
