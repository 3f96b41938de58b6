"""degen's watch inside transformers ``generate`` (WatchStoppingCriteria), on the bundled
model in transformers form: batched with left padding, greedy, and streamed."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from degen.errors import InvalidParams
from degen.prompts import load_prompts

pytestmark = pytest.mark.slow

CAP = 128
SEA = "story-07"  # greedy, the sea poem's last line over and over until the cap
CLEAN = ["instruction-01", "code-02", "list-01"]


@pytest.fixture(scope="module")
def model_tok() -> tuple[Any, Any]:
    from degen.engines import hf

    return hf.load_model(hf.resolve_model(None), device="cpu")


def chat(tok: Any, pid: str) -> str:
    p = {p.id: p for p in load_prompts()}[pid]
    return tok.apply_chat_template(list(p.messages or ()), tokenize=False,
                                   add_generation_prompt=True)


def generate(model: Any, tok: Any, texts: list[str], criteria: Any = None,
             streamer: Any = None) -> list[list[int]]:
    import torch

    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=CAP,
                             pad_token_id=tok.pad_token_id, top_k=None, top_p=None,
                             temperature=None, streamer=streamer,
                             stopping_criteria=[criteria] if criteria is not None else None)
    width = enc["input_ids"].shape[1]
    rows = []
    for row in out[:, width:].tolist():
        while row and row[-1] == tok.pad_token_id:
            row.pop()
        rows.append(row)
    return rows


def test_the_sea_poem_loop_stops_early_and_clean_rows_are_unchanged(model_tok) -> None:
    from degen.integrations.transformers import WatchStoppingCriteria

    model, tok = model_tok
    texts = [chat(tok, pid) for pid in (CLEAN[0], SEA, *CLEAN[1:])]
    plain = generate(model, tok, texts)
    watch = WatchStoppingCriteria(tok, max_new_tokens=CAP)
    watched = generate(model, tok, texts, watch)
    res = watch.results()
    assert [r.row for r in res] == [0, 1, 2, 3]
    # unwatched, the sea poem runs to the cap; watched, it stops where the loop was
    # confirmed, as a loop, with the loop's evidence
    assert len(plain[1]) == CAP and tok.eos_token_id not in plain[1]
    sea = res[1]
    assert sea.kind == "loop" and sea.finish_reason == "repetition"
    assert sea.stopped_at is not None and sea.stopped_at < CAP // 2
    assert len(watched[1]) == sea.stopped_at == sea.tokens
    assert watched[1] == plain[1][:sea.stopped_at]
    assert sea.evidence["period"] > 0 and sea.findings["loop"].start_char is not None
    # the other rows, independent of it: token for token the same, nothing found
    for i in (0, 2, 3):
        assert watched[i] == plain[i], i
        assert res[i].kind is None and res[i].stopped_at is None
    assert res[0].to_dict()["kind"] is None and res[1].to_dict()["findings"]["loop"]


def test_a_row_alone_stops_where_it_stopped_in_the_batch(model_tok) -> None:
    from degen.integrations.transformers import WatchStoppingCriteria

    model, tok = model_tok
    watch = WatchStoppingCriteria(tok, max_new_tokens=CAP)
    alone = generate(model, tok, [chat(tok, SEA)], watch)
    [r] = watch.results()
    assert r.kind == "loop" and len(alone[0]) == r.stopped_at
    # a second call on the same criteria starts afresh (a new prompt is read)
    again = generate(model, tok, [chat(tok, CLEAN[0]), chat(tok, SEA)], watch)
    rs = watch.results()
    assert rs[0].kind is None and rs[1].kind == "loop" and rs[1].stopped_at == r.stopped_at
    assert again[1] == alone[0]


def test_a_streamer_ends_at_the_stop(model_tok) -> None:
    from transformers import TextIteratorStreamer

    from degen.integrations.transformers import WatchStoppingCriteria

    model, tok = model_tok
    watch = WatchStoppingCriteria(tok, max_new_tokens=CAP)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    got: list[list[int]] = []
    t = threading.Thread(target=lambda: got.append(
        generate(model, tok, [chat(tok, SEA)], watch, streamer)[0]))
    t.start()
    text = "".join(streamer)
    t.join(600)
    assert got and watch.results()[0].kind == "loop"
    assert text.strip() == tok.decode(got[0], skip_special_tokens=True).strip()


def test_watch_only_stops_nothing_but_still_finds(model_tok) -> None:
    from degen.integrations.transformers import WatchStoppingCriteria

    model, tok = model_tok
    watch = WatchStoppingCriteria(tok, max_new_tokens=CAP, cut="none")
    out = generate(model, tok, [chat(tok, SEA)], watch)
    [r] = watch.results()
    assert len(out[0]) == CAP and r.kind is None and "loop" in r.findings


def test_bad_arguments_say_what_to_pass() -> None:
    from degen.integrations.transformers import WatchStoppingCriteria

    with pytest.raises(InvalidParams, match="tokenizer"):
        WatchStoppingCriteria(None)
    with pytest.raises(InvalidParams, match="max_new_tokens"):
        WatchStoppingCriteria(_Tok(), max_new_tokens=0)
    with pytest.raises(InvalidParams, match="unknown kind"):
        WatchStoppingCriteria(_Tok(), cut="loops")


class _Tok:
    eos_token_id = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(97 + i % 26) for i in ids)
