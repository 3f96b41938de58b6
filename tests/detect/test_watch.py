"""LoopWatch: the streaming loop detector with the batch detector's vetoes.

The corpus in tests/corpus is streamed through it in random pieces: the 30
legitimately repetitive texts must never be cut, and on the bundled model's texts it
must agree with LoopDetector (same loops, same onsets).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from degen.detect.loop import LoopDetector, prompt_text
from degen.detect.watch import LoopWatch, requested_count
from degen.errors import InvalidParams
from degen.records import Completion, SamplingParams

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def corpus(name: str) -> list[dict]:
    return [json.loads(line) for line in (CORPUS / name).read_text().splitlines()]


def stream(text: str, prompt: str = "", seed: int = 0, most: int = 8, **kw) -> LoopWatch:
    """Feed ``text`` in random pieces of 1..``most`` characters, then finish."""
    rng = random.Random(seed)
    w = LoopWatch(prompt, **kw)
    i = 0
    while i < len(text):
        k = rng.randint(1, most)
        if w.feed(text[i:i + k]) is not None:
            return w
        i += k
    w.finish()
    return w


def batch(text: str, prompt: str = ""):
    return LoopDetector()(Completion("r", "p", SamplingParams(), finish_reason="stop",
                                     text=text, prompt=prompt))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_cut_on_the_legitimately_repetitive_corpus(seed: int) -> None:
    texts = corpus("legit_repetitive.jsonl")
    assert len(texts) == 30
    cut = {t["id"]: w.finding.message for t in texts
           if (w := stream(t["text"], t["prompt"], seed=seed)).finding is not None}
    assert cut == {}


def test_the_corpus_vetoes_are_the_batch_detectors_reasons() -> None:
    """Four legit texts repeat in a way the tracker confirms; each is passed over for
    the reason LoopDetector would give."""
    vetoes = {t["id"]: dict(stream(t["text"], t["prompt"]).vetoes)
              for t in corpus("legit_repetitive.jsonl")}
    assert vetoes["legit-request-02"] == {"requested": 1}  # "... ten times"
    assert vetoes["legit-csv-03"] == {"data": 3}
    assert set(vetoes["legit-list-01"]) <= {"counting", "data"}  # the 7 times table
    assert sum(sum(v.values()) for v in vetoes.values()) >= 4


def test_agrees_with_the_batch_detector_on_the_bundled_models_texts() -> None:
    rows = corpus("bundled_raw.jsonl")
    found = 0
    for seed, r in enumerate(rows):
        w = stream(r["text"], r["prompt"], seed=seed)
        b = batch(r["text"], r["prompt"])
        assert (w.finding is None) == (b is None), r["id"]
        if b is not None:
            found += 1
            assert w.finding.start_char == b.start_char, r["id"]
            assert w.finding.evidence["period"] == b.evidence["period"], r["id"]
    assert found >= 7


@pytest.mark.parametrize("period_words", [1, 3, 7, 20, 60])
def test_a_plain_loop_is_cut_within_the_trackers_bound(period_words: int) -> None:
    unit = " ".join(f"w{i}" for i in range(period_words)) + " "
    prefix = "An ordinary start of an answer, with nothing that repeats in it. "
    w = stream(prefix + unit * 200, "Tell me something.")
    f = w.finding
    assert f is not None and f.evidence["period"] == period_words
    assert f.start_char == len(prefix)
    # at most 2.5 p + 16 units after the onset, plus the unit held back at the edge
    assert f.evidence["detected_after_units"] <= 2.5 * period_words + 16 + 1
    assert not f.evidence["waited"]


def test_requested_repetition_is_left_alone_then_cut_past_what_was_asked() -> None:
    prompt = "Write 'I will not talk in class' ten times."
    line = "I will not talk in class.\n"
    ok = stream(line * 10 + "\nThere you go!", prompt)
    assert ok.finding is None and dict(ok.vetoes) == {"requested": 1}
    bad = stream(line * 60, prompt)
    f = bad.finding
    assert f is not None and f.evidence["waited"]
    assert 12 * 7 < f.evidence["detected_after_units"] <= 12 * 7 + 2  # ten, plus 2


def test_requested_without_a_count_gets_ten_repetitions() -> None:
    prompt = "Please keep saying 'the sun is up and the birds sing' over and over"
    line = "The sun is up and the birds sing!\n"
    assert stream(line * 8 + "Done.", prompt).finding is None
    f = stream(line * 40, prompt).finding
    assert f is not None and f.evidence["detected_after_units"] <= 10 * 10 + 2


def test_a_phrase_repeated_to_the_end_is_a_loop_even_if_requested() -> None:
    prompt = "Write 'I will not talk in class' ten times."
    w = stream("I will not talk in class.\n" * 10, prompt)
    assert w.finding is not None  # as LoopDetector: requested only if the text moves on
    assert batch("I will not talk in class.\n" * 10, prompt) is not None


def test_watching_goes_on_past_a_legitimate_run() -> None:
    rows = "".join(f"2024-04-{d:02d},{h},{lo},sunny\n" for d, h, lo in
                   zip(range(1, 13), (16, 18, 19, 15, 21, 20, 17, 22, 23, 18, 16, 19),
                       (7, 8, 9, 6, 10, 9, 8, 11, 12, 7, 6, 9), strict=True))
    loop = "The forecast says more of the same. " * 12
    w = stream("date,high,low,conditions\n" + rows + "Summary: " + loop, "April weather CSV")
    assert w.vetoes["data"] >= 1
    assert w.finding is not None and "forecast" in w.finding.evidence["unit_text"]


def test_a_counter_with_nothing_new_is_a_loop_once_it_settles() -> None:
    text = "Here are the items: " + "".join(f"{i}. Fire " for i in range(44, 90))
    f = stream(text, "List some fire safety tips.").finding
    assert f is not None and f.evidence["near"]
    assert batch(text) is not None


@pytest.mark.parametrize("text", [
    ", ".join(str(i) for i in range(1, 200)),
    "\n".join(f"{i} × 7 = {7 * i}" for i in range(1, 40)),
])
def test_counting_is_not_a_loop(text: str) -> None:
    assert stream(text, "Count.").finding is None


def test_the_same_number_over_and_over_is_a_loop() -> None:
    assert stream("1. " * 80, "Count.").finding is not None


def test_a_wide_table_rule_is_markup_but_an_endless_one_is_a_loop() -> None:
    table = "| " + " | ".join(f"c{i}" for i in range(40)) + " |\n|" + "---|" * 40 + "\n| x |"
    assert stream(table).finding is None
    assert stream("| " * 400).finding is not None


def test_memory_stays_bounded_on_a_long_stream() -> None:
    w = LoopWatch(max_period=32)
    for i in range(60000):
        w.feed(f"tok{i} ")
    assert w.finding is None
    assert len(w._units) <= 4 * 32 + 16 + 1
    assert len(w._text) < 20000


def test_finding_is_sticky_and_finish_is_idempotent() -> None:
    w = LoopWatch()
    f = None
    for _ in range(30):
        f = f or w.feed("again and again, ")
    assert f is not None
    assert w.feed("new text") is f and w.finish() is f and w.finish() is f


def test_requested_count() -> None:
    assert requested_count("Say hello three times.") == 3
    assert requested_count("Repeat the word 'yes' 12 times") == 12
    assert requested_count("do it twice, then forty-two times") == 42
    assert requested_count("a dozen times") == 12
    assert requested_count("Write a story about 3 cats.") is None


def test_prompt_text() -> None:
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Say hi"},
                                         {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": "hi"}]
    assert prompt_text(messages=msgs) == "Be brief. Say hi"
    assert prompt_text(prompt="Once") == "Once"
    assert prompt_text(prompt=["a", "b", 3]) == "a b"
    assert prompt_text() == ""


@pytest.mark.parametrize("kw", [{"max_period": 0}, {"requested_repeats": 0},
                                {"settle_values": 1}, {"markup_units": 0}, {"margin": -1}])
def test_bad_arguments(kw) -> None:
    with pytest.raises(InvalidParams):
        LoopWatch(**kw)
