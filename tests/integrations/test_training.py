"""degen in a training run (seed 004): :func:`degen.integrations.sampling.sample` and the
``DegenCallback`` on a real ``Trainer`` training a tiny Llama from scratch.

The model is a 2-layer, 64-wide Llama with the bundled SmolLM2 tokenizer, trained for a
few dozen steps on ``tiny_stories.txt`` (40 short stories written for these tests).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
DEGEN = str(Path(sys.executable).parent / "degen")
PROMPTS = ["Once upon a time there was a", "The little dog", "One day, Lily went to the",
           {"id": "chat", "messages": [{"role": "user", "content": "Tell me a story."}]}]
STEPS, EVERY, TOKENS = 20, 10, 32


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """One torch thread: on a machine shared with other jobs a tiny model runs several
    times faster than with threads that wait for each other (put back afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from degen.engines.hf import materialize, resolve_model

    return AutoTokenizer.from_pretrained(str(materialize(resolve_model(None))))


def tiny_model(tok: Any, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True,
                      attention_dropout=0.1,  # training draws random numbers each step
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg)


def stories(tok: Any) -> list[dict[str, list[int]]]:
    """Each story, its end token learned, padded to one length (padding not learned)."""
    rows = [tok(s)["input_ids"] + [tok.eos_token_id]
            for s in (HERE / "tiny_stories.txt").read_text().splitlines() if s.strip()]
    width = max(len(r) for r in rows)
    return [{"input_ids": r + [tok.pad_token_id] * (width - len(r)),
             "attention_mask": [1] * len(r) + [0] * (width - len(r)),
             "labels": r + [-100] * (width - len(r))} for r in rows]


def prompt_ids(tok: Any, c: Any) -> list[int]:
    if c.messages is not None:
        text = tok.apply_chat_template([dict(m) for m in c.messages],
                                       add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]
    return tok(c.prompt)["input_ids"]


# ------------------------------------------------------------------------- sample()

def test_sample_records_the_models_own_numbers(tokenizer: Any) -> None:
    """Batched and left-padded, each token's log-probability, entropy and P(end) are
    what the model gives it when the whole text is read at once; the random state
    outside is untouched, the train mode kept, and the same seed gives the same text."""
    import torch

    from degen.integrations.sampling import sample

    model = tiny_model(tokenizer)
    model.train()
    before = torch.get_rng_state()
    cs = sample(model, tokenizer, PROMPTS, max_new_tokens=20, seed=7, batch_size=3)
    assert torch.equal(before, torch.get_rng_state()) and model.training
    assert [c.prompt_id for c in cs] == ["0", "1", "2", "chat"]
    again = sample(model, tokenizer, PROMPTS, max_new_tokens=20, seed=7, batch_size=3)
    assert [c.token_ids for c in again] == [c.token_ids for c in cs]
    other = sample(model, tokenizer, PROMPTS, max_new_tokens=20, seed=8, batch_size=3)
    assert [c.token_ids for c in other] != [c.token_ids for c in cs]
    model.eval()
    for c in cs:
        assert c.finish_reason in ("stop", "length") and c.completion_tokens == len(c.token_ids)
        ids = prompt_ids(tokenizer, c)
        assert c.prompt_tokens == len(ids)
        with torch.no_grad():
            lsm = torch.log_softmax(model(torch.tensor([ids + list(c.token_ids)])).logits[0], -1)
        at = lsm[len(ids) - 1:len(ids) - 1 + len(c.token_ids)]
        body = len(c.token_ids) - (c.finish_reason == "stop")
        chosen = at[torch.arange(len(c.token_ids)), torch.tensor(c.token_ids)][:body]
        ent = -(at.exp() * at).sum(-1)
        assert c.extra["logprobs"] == pytest.approx(chosen.tolist(), abs=2e-4)
        assert c.extra["entropy"] == pytest.approx(ent.tolist(), abs=2e-4)
        assert c.extra["stop_logprobs"] == pytest.approx(at[:body, 2].tolist(), abs=2e-4)
        assert sum(c.extra["logprob_chars"]) == len(c.text)
        assert c.text == tokenizer.decode(list(c.token_ids)[:body])
        assert c.verdict is not None and c.verdict["id"] == c.request_id
    # an untrained model babbles: the watch says so
    assert any("gibberish" in c.verdict["kinds"] for c in cs)


def test_greedy_and_n_samples_per_prompt(tokenizer: Any) -> None:
    from degen.integrations.sampling import sample

    model = tiny_model(tokenizer).eval()
    cs = sample(model, tokenizer, PROMPTS[:2], max_new_tokens=8, do_sample=False, n=2,
                judge=False)
    assert [c.request_id for c in cs] == ["0-0", "0-1", "1-0", "1-1"]
    assert cs[0].token_ids == cs[1].token_ids and cs[0].params.temperature == 0
    assert all(c.verdict is None for c in cs) and not model.training


# -------------------------------------------------------------------- the callback

def train(tok: Any, out: Path, callback: bool) -> Any:
    from transformers import Trainer, TrainingArguments

    from degen.integrations.training import DegenCallback

    data = stories(tok)
    args = TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=STEPS, per_device_train_batch_size=4,
        per_device_eval_batch_size=8, learning_rate=3e-3, warmup_steps=0, logging_steps=5,
        eval_strategy="steps", eval_steps=EVERY, save_strategy="no", report_to="none",
        use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=tiny_model(tok), args=args, train_dataset=data,
                      eval_dataset=data[:8])
    if callback:
        DegenCallback(tok, PROMPTS, out / "degen", max_new_tokens=TOKENS, seed=0, n=2,
                      window=16, window_step=8).attach(trainer)
    trainer.train()
    return trainer


def test_trainer_callback_logs_writes_and_leaves_training_alone(tokenizer: Any,
                                                                tmp_path: Path) -> None:
    from degen.integrations.training import KINDS

    with_cb = train(tokenizer, tmp_path / "a", callback=True)
    without = train(tokenizer, tmp_path / "b", callback=False)

    def losses(t: Any, key: str) -> list[tuple[int, float]]:
        return [(h["step"], h[key]) for h in t.state.log_history if key in h]

    # sampling ran under a forked random state: training saw the same random numbers
    assert losses(with_cb, "loss") == losses(without, "loss")
    assert len(losses(with_cb, "loss")) == STEPS // 5
    assert losses(with_cb, "eval_loss") == losses(without, "eval_loss")

    logged = [h for h in with_cb.state.log_history if "degen/degenerate" in h]
    assert [h["step"] for h in logged] == [10, 20]
    assert not any("degen/degenerate" in h for h in without.state.log_history)
    want = {"degen/degenerate", *(f"degen/{k}" for k in KINDS), "degen/repetition",
            "degen/distinct_1", "degen/surprise", "degen/entropy", "degen/p_stop",
            "degen/tokens", "degen/ended"}
    for h in logged:
        assert want <= set(h), want - set(h)
        assert all(0 <= h[k] <= 1 for k in want - {"degen/surprise", "degen/entropy",
                                                    "degen/tokens"})
        assert h["degen/surprise"] > 0 and 0 < h["degen/tokens"] <= TOKENS
    # training makes the model surer of what it samples
    assert logged[-1]["degen/surprise"] < logged[0]["degen/surprise"]

    out = tmp_path / "a" / "degen"
    for step in (10, 20):
        d = out / f"step-{step}"
        recs = [json.loads(line) for line in (d / "records.jsonl").read_text().splitlines()]
        assert len(recs) == 2 * len(PROMPTS)
        assert all(r["verdict"] is not None and r["logprobs"] for r in recs)
        scal = json.loads((d / "scalars.json").read_text())
        assert scal == {"step": step, **{k: v for k, v in logged[step // 10 - 1].items()
                                         if k.startswith("degen/")}}
        rows = list(csv.DictReader((d / "profile.csv").read_text().splitlines()))
        assert rows and {r["source"] for r in rows} == {f"step-{step}"}
        assert all(r["surprise"] and r["degenerate"] for r in rows)
    assert len((out / "scalars.jsonl").read_text().splitlines()) == 2
    rows = list(csv.DictReader((out / "profile.csv").read_text().splitlines()))
    assert list(dict.fromkeys(r["source"] for r in rows)) == ["step-10", "step-20"]
    assert (out / "profile.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "profile.html").read_text().count("step-20") >= 2  # legend and reading

    # degen profile on two checkpoints' records, and on the whole folder
    for k, args in enumerate(([str(out / "step-20" / "records.jsonl"),
                               str(out / "step-10" / "records.jsonl")], [str(out)])):
        sources = ["step-20", "step-10"] if k == 0 else ["step-10", "step-20"]
        dest = tmp_path / f"p{k}"
        r = subprocess.run([DEGEN, "profile", *args, "--window", "16", "--step", "8",
                            "--out", str(dest)], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr
        assert [line.split(":")[0] for line in r.stdout.splitlines()[:-1]] == sources
        rows = list(csv.DictReader((dest / "profile.csv").read_text().splitlines()))
        assert list(dict.fromkeys(r["source"] for r in rows)) == sources


def test_unattached_callback_still_reaches_log_history(tokenizer: Any, tmp_path: Path,
                                                       caplog: Any) -> None:
    """Without attach() the scalars cannot go through Trainer.log; they are put in
    state.log_history (and the files) and a warning says what is missing."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from degen.integrations.training import DegenCallback

    cb = DegenCallback(None, PROMPTS[:2], tmp_path / "d", max_new_tokens=16, every=2)
    state = TrainerState()
    model = tiny_model(tokenizer)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    for step in (1, 2, 2):
        state.global_step = step
        cb.on_step_end(args, state, TrainerControl(), model=model,
                       processing_class=tokenizer)
    assert [h["step"] for h in state.log_history] == [2]  # once per step, every 2 steps
    assert "not attached" in caplog.text
    assert (tmp_path / "d" / "step-2" / "records.jsonl").is_file()
    assert cb.history[0]["degen/tokens"] > 0


def test_evaluate_in_a_custom_loop(tokenizer: Any, tmp_path: Path) -> None:
    from degen.integrations.training import evaluate

    model = tiny_model(tokenizer)
    first = evaluate(model, tokenizer, PROMPTS, tmp_path, step=0, max_new_tokens=24)
    second = evaluate(model, tokenizer, PROMPTS, tmp_path, step=5, max_new_tokens=24)
    assert first == second  # the same model, prompts and seed
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "profile.csv", "profile.html", "profile.png", "scalars.jsonl", "step-0", "step-5"]


# --------------------------------------------------------------------------- docs

def test_docs_snippet_runs(tokenizer: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """The python blocks of docs/integrations/training.md, run in order, given a tiny
    model and data (what a reader brings)."""
    text = (ROOT / "docs" / "integrations" / "training.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    data = stories(tokenizer)
    ns: dict[str, Any] = {"model": tiny_model(tokenizer), "tokenizer": tokenizer,
                          "train_dataset": data, "eval_dataset": data[:8],
                          "__name__": "__docs__"}
    for b in blocks:
        exec(compile(b, "training.md", "exec"), ns)
    assert (tmp_path / "runs" / "degen" / "profile.png").is_file()
    assert (tmp_path / "runs" / "degen-loop" / "step-0" / "scalars.json").is_file()
