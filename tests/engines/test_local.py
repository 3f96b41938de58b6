"""The local engine on the bundled model: batching done right, every knob, errors."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from degen.engines import hf
from degen.engines.local import LocalEngine
from degen.errors import ModelNotFound
from degen.experiments.load.schedule import Plan
from degen.measurement.failure import is_failure
from degen.prompts import load_prompts
from degen.records import Request, SamplingParams

PROMPTS = load_prompts()


def reqs(params: SamplingParams | list[SamplingParams], n: int, start: int = 0) -> list[Request]:
    ps = params if isinstance(params, list) else [params] * n
    return [Request(f"r{i}", PROMPTS[start + i].id, ps[i], messages=PROMPTS[start + i].messages,
                    index=i) for i in range(n)]


def hf_copy(tmp_path: Path, engine: LocalEngine, edit) -> Path:
    """A copy of the cached bundled model (weights symlinked) with ``edit`` applied."""
    src = hf.materialize(engine.source)
    dst = tmp_path / "model"
    dst.mkdir()
    for f in src.iterdir():
        if f.name == "model.safetensors":
            (dst / f.name).symlink_to(f)
        else:
            shutil.copy(f, dst / f.name)
    edit(dst)
    return dst


def test_greedy_is_identical_batched_and_alone(local_engine: LocalEngine) -> None:
    # 10 prompts of mixed lengths through 6 slots: rows leave and new ones merge in
    # mid-flight, with their KV caches left-padded to different widths.
    g = SamplingParams(temperature=0, max_tokens=32)
    rs = reqs(g, 10)
    eng = LocalEngine(batch_size=6)
    try:
        batched = eng.generate(rs, concurrency=10)
        assert eng.max_rows_seen == 6
    finally:
        eng.close()
    single = [local_engine.complete(r) for r in rs]  # one at a time: a batch of one
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    assert len({len(local_engine.encode(r)) for r in rs}) > 3  # really mixed lengths


def test_right_padding_breaks_batched_greedy(local_engine: LocalEngine) -> None:
    """Seed 001: the same batch, padded on the right, no longer matches each prompt alone."""
    tok, model = local_engine.tokenizer, local_engine.hf_model
    texts = [tok.apply_chat_template(list(p.messages), add_generation_prompt=True,
                                     tokenize=False) for p in PROMPTS[:6]]
    alone = [hf.static_batch_generate(model, tok, [t], padding_side="left", max_new_tokens=12)[0]
             for t in texts]
    left = hf.static_batch_generate(model, tok, texts, padding_side="left", max_new_tokens=12)
    right = hf.static_batch_generate(model, tok, texts, padding_side="right", max_new_tokens=12)
    assert left == alone
    assert sum(r != a for r, a in zip(right, alone, strict=True)) >= 3


def test_per_row_params_and_seeds_match_running_alone(local_engine: LocalEngine) -> None:
    params = [
        SamplingParams(temperature=1.0, seed=1, max_tokens=24),
        SamplingParams(temperature=0.7, min_p=0.1, seed=2, max_tokens=24),
        SamplingParams(temperature=1.2, top_k=20, seed=3, max_tokens=24),
        SamplingParams(temperature=0.9, top_p=0.8, repetition_penalty=1.2, seed=4, max_tokens=24),
        SamplingParams(temperature=0, presence_penalty=1.0, frequency_penalty=0.5, max_tokens=24),
        SamplingParams(temperature=0.8, no_repeat_ngram_size=2, seed=6, max_tokens=24),
    ]
    rs = reqs(params, 6)
    batched = local_engine.generate(rs, concurrency=6)
    again = local_engine.generate(rs, concurrency=6)
    alone = [local_engine.complete(r) for r in rs]
    assert [c.token_ids for c in batched] == [c.token_ids for c in again]
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]
    # and the knobs did something: the same prompt under other params differs
    plain = local_engine.generate(reqs(SamplingParams(temperature=0, max_tokens=24), 6))
    assert sum(a.token_ids != b.token_ids for a, b in zip(batched, plain, strict=True)) >= 5


def test_no_repeat_ngram_size_bans_repeats(local_engine: LocalEngine) -> None:
    p = SamplingParams(temperature=0, repetition_penalty=1.0, no_repeat_ngram_size=3,
                       max_tokens=60)
    for r in reqs(p, 3, start=20):
        c = local_engine.complete(r)
        prompt = local_engine.encode(r)
        seq = prompt + list(c.token_ids)
        assert len(c.token_ids) > 20
        for j in range(len(prompt), len(seq)):  # each 3-gram a generated token completes
            gram = tuple(seq[j - 2:j + 1])
            earlier = {tuple(seq[i:i + 3]) for i in range(j - 2)}
            assert gram not in earlier, (j, gram)


def test_a_runaway_does_not_hold_up_the_batch(local_engine: LocalEngine) -> None:
    eng = LocalEngine(batch_size=2)
    try:
        long = Request("long", "x", SamplingParams(temperature=0, max_tokens=160,
                                                   stop=()), prompt="1, 2, 3, 4,")
        shorts = reqs(SamplingParams(temperature=0, max_tokens=6), 5)
        f_long = eng.submit(long)
        time.sleep(0.05)
        fs = [eng.submit(r) for r in shorts]
        done_short = [f.result() for f in fs]
        c_long = f_long.result()
    finally:
        eng.close()
    assert c_long.finish_reason == "length" and c_long.completion_tokens == 160
    assert eng.max_rows_seen == 2
    # every short request finished while the long one was still generating
    assert max(c.timings.finished_at for c in done_short) < c_long.timings.finished_at
    assert all(c.completion_tokens <= 6 for c in done_short)


def test_penalizing_the_end_of_turn_token_causes_runaways() -> None:
    """repetition_penalty 1.3 also hits <|im_end|>, which every chat prompt contains.

    Measured on 16 prompts at 256 tokens: greedy 15/16 runaways, 0/16 with the end
    token exempt, 0/16 penalizing output only (T 0.7/min_p 0.1: 16/16, 0/16, 1/16).
    """
    base = SamplingParams(temperature=0, repetition_penalty=1.3, max_tokens=160)
    plan = Plan(prompts=tuple(PROMPTS), params=base, requests=12)
    variants = {
        "default": base,
        "eot exempt": base.replace(penalize_eot=False),
        "output only": base.replace(repetition_penalty_scope="output"),
    }
    runaways = {}
    with LocalEngine(batch_size=12) as eng:  # one batch: a runaway costs no extra wave
        for name, p in variants.items():
            rs = [replace(r, params=p) for r in plan.requests_for(0)]
            runaways[name] = sum(c.is_capped for c in eng.generate(rs))
    assert runaways["default"] >= 9, runaways
    assert runaways["eot exempt"] <= 2, runaways
    assert runaways["output only"] <= 3, runaways


def test_stops_on_every_declared_eos_id(tmp_path: Path, local_engine: LocalEngine) -> None:
    r = reqs(SamplingParams(temperature=0, max_tokens=40), 1)[0]
    plain = local_engine.complete(r)
    extra_eos = plain.token_ids[4]  # a token the model emits early in this answer

    def edit(d: Path) -> None:
        gc = json.loads((d / "generation_config.json").read_text())
        gc["eos_token_id"] = [2, extra_eos]
        (d / "generation_config.json").write_text(json.dumps(gc))

    eng = LocalEngine(model=str(hf_copy(tmp_path, local_engine, edit)), batch_size=2)
    try:
        assert eng.stop_ids == {2, extra_eos}
        c = eng.complete(r)
    finally:
        eng.close()
    first = plain.token_ids.index(extra_eos)
    assert c.finish_reason == "stop"
    assert c.token_ids == plain.token_ids[: first + 1]


def test_model_without_chat_template(tmp_path: Path, local_engine: LocalEngine) -> None:
    def edit(d: Path) -> None:
        (d / "chat_template.jinja").unlink(missing_ok=True)
        cfg = json.loads((d / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (d / "tokenizer_config.json").write_text(json.dumps(cfg))

    eng = LocalEngine(model=str(hf_copy(tmp_path, local_engine, edit)), batch_size=2)
    try:
        chat = eng.complete(reqs(SamplingParams(max_tokens=4), 1)[0])
        raw = eng.complete(Request("raw", "p", SamplingParams(temperature=0, max_tokens=4),
                                   prompt="The capital of France is"))
    finally:
        eng.close()
    assert chat.finish_reason == "error" and "no chat template" in chat.error
    assert raw.finish_reason in ("stop", "length") and raw.text


def test_prompt_longer_than_the_context_is_an_error_record(local_engine: LocalEngine) -> None:
    c = local_engine.complete(Request("big", "p", SamplingParams(max_tokens=4),
                                      prompt="word " * 9000))
    assert c.finish_reason == "error" and "context is 8192" in c.error


def test_gguf_conversion_is_cached_with_identical_logits(local_engine: LocalEngine) -> None:
    from transformers import AutoModelForCausalLM

    folder = hf.materialize(local_engine.source)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert hf.materialize(local_engine.source) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    t0 = time.perf_counter()
    cached, _ = hf.load_model(local_engine.source, device="cpu")
    reload_s = time.perf_counter() - t0
    src = local_engine.source
    direct = AutoModelForCausalLM.from_pretrained(str(src.folder), gguf_file=src.path.name,
                                                  dtype=torch.float32)
    ids = torch.tensor([local_engine.encode(reqs(SamplingParams(), 1)[0])])
    with torch.inference_mode():
        assert torch.equal(cached(ids).logits, direct(ids).logits)
    assert reload_s < 10  # ~1 s here; the point is it is not a 12-16 s dequantization


def test_the_cached_folder_is_a_checkpoint_any_loader_reads(local_engine: LocalEngine) -> None:
    """What loaders other than transformers' own GGUF path see (vLLM read the old layout
    without an error and served a flat distribution): the model class named in the
    config, and every weight under the name the architecture declares, tied ones under
    the input embedding's name, so a plain strict-as-possible load gives the same logits."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = hf.materialize(local_engine.source)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"]
    stored = load_file(str(folder / "model.safetensors"))
    assert "model.embed_tokens.weight" in stored and "lm_head.weight" not in stored
    fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)),
                                             dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(stored, strict=False)
    assert missing == ["lm_head.weight"] and unexpected == []  # rebuilt by tying
    fresh.tie_weights()
    fresh.eval()
    cached, _ = hf.load_model(local_engine.source, device="cpu")
    ids = torch.tensor([local_engine.encode(reqs(SamplingParams(), 1)[0])])
    with torch.inference_mode():
        assert torch.equal(fresh(ids).logits, cached(ids).logits)


@pytest.mark.parametrize(("model", "needle"), [
    ("/nonexistent/model.gguf", "does not exist"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "never downloads models"),
])
def test_bad_model_paths(model: str, needle: str) -> None:
    with pytest.raises(ModelNotFound, match=needle):
        LocalEngine(model=model)


def test_non_gguf_file_and_empty_folder(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelNotFound, match=r"not a \.gguf"):
        LocalEngine(model=str(f))
    with pytest.raises(ModelNotFound, match=r"no config\.json"):
        LocalEngine(model=str(tmp_path))


def test_stop_token_ids_reads_every_source() -> None:
    class Obj:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    model = Obj(generation_config=Obj(eos_token_id=[128001, 128009]),
                config=Obj(eos_token_id=128001))
    tok = Obj(eos_token_id=128001)
    assert hf.stop_token_ids(model, tok) == {128001, 128009}


def test_guard_cuts_a_looping_row_early_and_leaves_others_alone() -> None:
    """Greedy, this prompt falls into '1. 1. 1. ...' (see tests/corpus): the guard
    stops it with finish_reason 'repetition' long before max_tokens."""
    eng = LocalEngine(batch_size=4, guard=True)
    loop = Request("loop", "list-05", SamplingParams(temperature=0, max_tokens=256),
                   messages=({"role": "user", "content": "What are four ways to save water "
                              "at home? Use bullet points."},))
    fine = Request("fine", "x", SamplingParams(temperature=0, max_tokens=256),
                   messages=({"role": "user", "content": "What is the capital of France?"},))
    try:
        c_loop, c_fine = (f.result() for f in [eng.submit(loop), eng.submit(fine)])
    finally:
        eng.close()
    assert c_loop.finish_reason == "repetition" and is_failure(c_loop)
    assert c_loop.completion_tokens < 100
    assert c_loop.extra["cut"]["kind"] == "loop" and c_loop.extra["cut"]["evidence"]["period"]
    assert c_fine.finish_reason == "stop"


def test_guard_leaves_a_requested_count_alone() -> None:
    """Counting lines repeat their shape ("N. N") but not their numbers: the guard's
    vetoes (data rows) let the list run to its end."""
    eng = LocalEngine(batch_size=2, guard=True)
    count = Request("count", "x", SamplingParams(temperature=0, max_tokens=200),
                    messages=({"role": "user", "content": "Count from 1 to 40, one number "
                               "per line."},))
    try:
        c = eng.complete(count)
    finally:
        eng.close()
    assert c.finish_reason == "stop" and "19. 19" in c.text, (c.finish_reason, c.text[:200])


def test_guard_cuts_babble_early_and_records_the_models_logprobs() -> None:
    """At temperature 1.3 this small model babbles within a few dozen tokens; the watch
    (with the model's own log-probability of each token) cuts it, as "degenerate" or,
    when the runaway prediction is sure first, as "runaway": either way on the
    surprise of the model's own tokens, long before the cap."""
    eng = LocalEngine(batch_size=4, guard=True)
    msgs = ({"role": "user", "content": "Write a short poem about the sea."},)
    reqs = [Request(f"b{i}", "poem", SamplingParams(temperature=1.3, max_tokens=256, seed=i),
                    messages=msgs) for i in range(4)]
    try:
        cs = [f.result() for f in [eng.submit(r) for r in reqs]]
    finally:
        eng.close()
    cut = [c for c in cs if c.finish_reason in ("degenerate", "runaway")]
    assert len(cut) >= 2, [(c.finish_reason, c.text[-80:]) for c in cs]
    for c in cut:
        assert c.is_cut and is_failure(c) and c.completion_tokens < 200
        kind = c.extra["cut"]["kind"]
        assert kind in (("gibberish", "spacing") if c.finish_reason == "degenerate"
                        else ("runaway",))
        assert c.extra["cut"]["evidence"]["measures"]["surprise"] > 2
    for c in cs:
        lps = c.extra["logprobs"]
        assert len(lps) == c.completion_tokens - (c.finish_reason == "stop")
        assert all(lp <= 0 for lp in lps)


def test_recorded_logprobs_are_the_models_own() -> None:
    """A greedy answer's recorded log-probabilities are what the model gives the same
    tokens read back whole (teacher forcing), before any sampling setting."""
    import torch

    eng = LocalEngine(batch_size=1, logprobs=True)
    req = Request("g", "x", SamplingParams(temperature=0, max_tokens=12, repetition_penalty=1.3),
                  messages=({"role": "user", "content": "Name a fruit."},))
    try:
        c = eng.complete(req)
        ids = eng.encode(req) + list(c.token_ids or ())
        with torch.inference_mode():
            logits = eng.hf_model(input_ids=torch.tensor([ids])).logits[0].float()
    finally:
        eng.close()
    n = len(c.token_ids or ())
    lp = torch.log_softmax(logits[-n - 1:-1], dim=-1)
    want = lp[torch.arange(n), torch.tensor(c.token_ids)].tolist()
    assert c.extra["logprobs"] == pytest.approx(want[:len(c.extra["logprobs"])], abs=2e-3)


@pytest.mark.parametrize("text", ["Café ☕ naïve — 日本語 🎉 done.\n\n  x = [1, 2]",
                                  "  leading spaces and\ttabs\n"])
def test_incremental_detokenizing_rebuilds_the_text(text: str) -> None:
    """The guard reads text deltas token by token: they join up to the whole decode,
    multi-byte characters split over tokens included."""
    from degen.engines.detokenize import Detokenizer

    eng = LocalEngine()
    eng.load()
    ids = eng._tok.encode(text, add_special_tokens=False)
    d = Detokenizer(eng._tok)
    deltas = [d.delta(ids[:i + 1]) for i in range(len(ids))]
    assert "".join(deltas) == eng._tok.decode(ids) == text



def test_vllms_server_side_repetition_stop_is_reported_as_not_applied() -> None:
    eng = LocalEngine()  # not loaded: unsupported() needs no model
    assert set(eng.unsupported(SamplingParams(repetition_min_count=3))) == {
        "repetition_min_count"}
    assert eng.unsupported(SamplingParams(top_k=5, no_repeat_ngram_size=3)) == {}


# ---------------------------------------------------------------- runaways
def test_stopping_evidence_is_the_models_probability_of_ending(local_engine: LocalEngine
                                                               ) -> None:
    eng = LocalEngine(batch_size=2, logprobs=True)
    try:
        r = reqs(SamplingParams(temperature=0, max_tokens=24), 1, start=5)[0]
        c = eng.complete(r)
        ids = eng.encode(r)
        model, stops = eng.hf_model, sorted(eng.stop_ids)
    finally:
        eng.close()
    x = c.extra
    assert len(x["stop_logprobs"]) == len(x["logprobs"]) == len([t for t in c.token_ids
                                                                  if t not in stops])
    with torch.inference_mode():  # the same numbers, straight from one forward pass
        seq = torch.tensor([ids + list(c.token_ids)])
        lsm = model(input_ids=seq).logits[0].float().log_softmax(-1)
    for k in (0, 7, len(x["stop_logprobs"]) - 1):
        pos = len(ids) - 1 + k  # the step that produced token k
        want = lsm[pos, stops].logsumexp(-1).item()
        assert x["stop_logprobs"][k] == pytest.approx(want, abs=2e-3)
        assert x["logprobs"][k] == pytest.approx(lsm[pos, c.token_ids[k]].item(), abs=2e-3)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_a_continuation_goes_on_token_for_token(local_engine: LocalEngine,
                                                penalty: float) -> None:
    """Greedy: a generation continued from its 40th token is the one that ran on, with
    the penalty seeing every token so far, whatever batch it shares."""
    p = SamplingParams(temperature=0, max_tokens=90, repetition_penalty=penalty)
    rs = reqs(p, 8)
    whole = local_engine.generate(rs)
    long = [(r, c) for r, c in zip(rs, whole, strict=True) if c.completion_tokens > 45][:3]
    assert long
    for r, c in long:
        head = local_engine.complete(replace(r, params=replace(p, max_tokens=40)))
        rest = local_engine.complete(replace(
            r, continuation_ids=head.token_ids, continuation_text=head.text))
        assert head.token_ids + rest.token_ids == c.token_ids
        assert head.text + rest.text == c.text
        assert rest.completion_tokens == c.completion_tokens - 40 and rest.prompt_tokens \
            == c.prompt_tokens


def test_a_model_without_an_end_token_is_refused(tmp_path: Path,
                                                 local_engine: LocalEngine) -> None:
    def edit(d: Path) -> None:
        for name in ("generation_config.json", "config.json", "tokenizer_config.json"):
            cfg = json.loads((d / name).read_text())
            cfg.pop("eos_token", None)
            cfg["eos_token_id"] = None  # not just absent: the config class has a default
            (d / name).write_text(json.dumps(cfg))

    eng = LocalEngine(model=str(hf_copy(tmp_path, local_engine, edit)))
    with pytest.raises(ModelNotFound, match="declares no end-of-sequence token"):
        eng.load()
    eng.close()
