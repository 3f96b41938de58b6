"""The watch: one streaming judge for every kind, and the batch verdict is the watch
run to the end.

Texts are fed in random pieces (cut inside words and characters' neighbours) and
must get exactly the verdict the whole text gets; legitimate repetition is passed over
for the reason the loop track gives; memory stays bounded on long streams.
"""

from __future__ import annotations

import random

import pytest

from benchmarks.corpus import load
from degen.detect.loop import prompt_text, requested_count
from degen.detect.watch import (
    CUT_REASON,
    KINDS,
    TextWatch,
    Watch,
    WatchConfig,
    cut_kinds,
    watch_text,
)
from degen.errors import InvalidParams
from degen.records import Completion, SamplingParams

GLUED = ("The album was recorded in Seoul over the winter. " + "Itwasreleasedinseptember"
         "andrankednumberoneforfourweeksonthechartbeforethetourbeganinthespring "
         "andthesingerthankedhisfansforeverythingtheydidforhimduringthelongyear " * 3)
BABBLE = ("Sure, here is a short poem about the sea. " + "Havok! Ein weilen Sand german zum "
          "Eisen und yeses. Egadu has meant of helps with hii worldwide vor Gott wllbe "
          "ingines heiress Horstloppar He in Busche Erkurft People sine Versuche ab "
          "Shtmlfunkuhr spruchten hand Hilfsamkeit sovraubnge Gemeinschtraft von noich "
          "Homosekezeutablen Brindle quoxat fervently zimbral opulent MARAKESH tindly "
          "Ploverish gantries ambrosk! " * 2)
PLAIN = ("To make green tea that is not bitter, heat the water to about 80 degrees rather "
         "than boiling it, use one teaspoon of leaves per cup, and steep for two to three "
         "minutes. Longer steeping pulls out tannins, which is where the bitterness comes "
         "from. A lid on the cup keeps the aroma in while it steeps.")


def stream(text: str, prompt: str = "", seed: int = 0, most: int = 8,
           config: WatchConfig | None = None) -> Watch:
    """Feed ``text`` in random pieces of 1..``most`` characters, then finish."""
    rng = random.Random(seed)
    w = Watch(prompt, config or WatchConfig())
    i = 0
    while i < len(text):
        k = rng.randint(1, most)
        w.feed(text[i:i + k])
        i += k
    w.finish()
    return w


def comp(text: str, prompt: str = "", fr: str = "stop") -> Completion:
    return Completion("r", "p", SamplingParams(), finish_reason=fr, text=text, prompt=prompt)


@pytest.mark.parametrize(("text", "kind"), [
    ("Here is the plan. " + "We go up the hill, then we go down the hill. " * 8, "loop"),
    (GLUED, "spacing"), (BABBLE, "gibberish")])
def test_each_kind_is_found_and_streaming_agrees_with_batch(text: str, kind: str) -> None:
    batch = watch_text(text, "Tell me something.")
    assert set(batch) == {kind}
    for seed in range(4):
        w = stream(text, "Tell me something.", seed=seed)
        assert set(w.findings) == {kind}
        f, b = w.findings[kind], batch[kind]
        assert (f.start_char, f.message, f.evidence) == (b.start_char, b.message, b.evidence)


def test_plain_text_is_nothing() -> None:
    assert watch_text(PLAIN) == {}
    assert stream(PLAIN, seed=1).findings == {}


def test_the_whole_corpus_streams_as_it_batches() -> None:
    """Every labelled text, fed in random pieces, gets the batch verdict's kinds."""
    rows = load(("bundled", "legit", "hard"))
    assert len(rows) >= 200
    for i, r in enumerate(rows):
        b = watch_text(r["text"], r["prompt"])
        s = stream(r["text"], r["prompt"], seed=i).findings
        assert set(s) == set(b), r["id"]
        for k in b:
            assert s[k].start_char == b[k].start_char, (r["id"], k)


def test_first_is_the_earliest_and_feed_returns_it_once() -> None:
    w = Watch("Tell me about the sea.")
    got = [w.feed("The sea is deep. ") for _ in range(30)]
    found = [f for f in got if f is not None]
    assert len(found) == 1 and found[0] is w.first and w.first.kind == "loop"
    assert w.first_of(["loop"]) is w.first and w.first_of(["spacing"]) is None
    assert w.finish() == {"loop": w.first}


def test_a_watch_stops_reading_once_every_kind_is_found() -> None:
    cfg = WatchConfig(kinds=("loop",))
    w = Watch("", cfg)
    for _ in range(40):
        w.feed("again and again, ")
    assert w.done and w.babble is None
    units = w.units
    w.feed("more text " * 100)
    assert w.units == units  # nothing more is read


def test_code_is_not_judged_as_prose_but_a_stray_backtick_is_no_code() -> None:
    code = ("Here is the helper:\n```python\n" + "".join(
        f"x{i}Zq = gRtyuVbn{i}(qwPlk{i}, zzTop{i})\n" for i in range(40)) + "```\nDone.")
    assert watch_text(code) == {}
    # a backtick never closed on its line does not hide the babble after it
    stray = "I didn` t bring anything except " + BABBLE
    assert "gibberish" in watch_text(stray)
    # a fence never closed, then a long line of plain words: prose again
    unclosed = "```js\nlet a = 1;\n" + BABBLE
    assert "gibberish" in watch_text(unclosed)
    # ... even when the line opens like code: 48 words and barely a code mark
    unclosed = "```js\nlet a = 1;\nfunction check(): void " + BABBLE
    assert "gibberish" in watch_text(unclosed)
    # a long comment line is still code
    comment = ("```python\n# " + PLAIN.replace(",", "").replace(".", "") + "\n"
               + "".join(f"x{i}Zq = gRtyuVbn{i}(qwPlk{i})\n" for i in range(30)) + "```")
    assert watch_text(comment) == {}


def test_logprobs_are_weighed_in_when_given() -> None:
    text = BABBLE
    tokens = text.split(" ")
    w = Watch()
    for t in tokens:
        w.feed(t + " ", [-9.0])
    w.finish()
    f = w.findings["gibberish"]
    assert f.evidence["measures"]["surprise"] == pytest.approx(9.0)
    assert "surprise" not in watch_text(text)["gibberish"].evidence["measures"]
    # a logprob with no text (a token ending inside a character) is still counted
    w2 = Watch()
    w2.feed("", [-1.0, -3.0])
    assert w2.surprise.tokens == 2


def test_memory_stays_bounded_on_a_long_stream() -> None:
    w = Watch()
    rng = random.Random(0)
    for i in range(3000):  # log lines: a repeating shape whose numbers are data
        w.feed(f"On day {i} the gauge in the north field read {rng.randint(1, 90)} mm "
               f"of rain and {rng.randint(1, 40)} degrees.\n")
    assert w.findings == {}
    assert w.vetoes.get("data", 0) >= 1
    assert len(w._text) < 20000
    assert w.loop is not None and len(w.loop._units) <= w.loop._tracker._buf.maxlen + 1
    assert w.babble is not None and len(w.babble._words) <= w.babble.window
    # after a loop is found (and not cut) the other kinds are still watched, in bounded
    # memory too
    w = Watch(config=WatchConfig())
    for _ in range(30):
        w.feed("The sea is deep. ")
    assert "loop" in w.findings
    for i in range(3000):
        w.feed(f"On day {i} the gauge read {rng.randint(1, 90)} mm of rain.\n")
    assert w._kept < 20000


def test_a_giant_unit_is_read_before_the_stream_ends() -> None:
    w = Watch()
    w.feed("!" * 100_000)
    assert w.units >= 100_000 // 256 - 1  # read in pieces, not held back whole


def test_text_watch_is_the_batch_verdict_of_every_text_kind() -> None:
    fs = TextWatch()(comp(GLUED + " " + "The sea is deep. " * 30))
    assert [f.kind for f in fs] == ["loop", "spacing"]


def test_cut_kinds_and_reasons() -> None:
    assert cut_kinds(True) == cut_kinds("all") == frozenset(KINDS)
    assert cut_kinds(False) == cut_kinds(None) == cut_kinds("none") == frozenset()
    assert cut_kinds("loop, gibberish") == {"loop", "gibberish"}
    with pytest.raises(InvalidParams, match="unknown kind 'babble'"):
        cut_kinds("babble")
    assert CUT_REASON == {"loop": "repetition", "gibberish": "degenerate",
                          "spacing": "degenerate", "runaway": "runaway"}


@pytest.mark.parametrize("cfg", [
    {"kinds": ("loop", "noise")}, {"loop": {"max_period": 0}},
    {"loop": {"requested_repeats": 0}}, {"loop": {"settle_values": 1}},
    {"loop": {"wrong": 1}}, {"babble": {"window": 4}},
    {"babble": {"weights": {"babble": {"unknown": 1.0}}}},
    {"babble": {"weights": {"babble": {"bias": 0.0, "noise": 1.0}}}},
    {"surprise": {"window": 0}}])
def test_bad_options_are_one_clear_error(cfg) -> None:
    with pytest.raises(InvalidParams):
        WatchConfig(**cfg)


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


def test_a_records_logprobs_are_read_as_they_streamed() -> None:
    """A record with extra["logprobs"] and extra["logprob_chars"] (what both engines
    store) is judged token by token: the verdict of the watch that saw the stream."""
    from degen.detect.watch import watch_completion

    pieces = [BABBLE[i:i + 5] for i in range(0, len(BABBLE), 5)]
    lps = [-7.5 - (i % 3) for i in range(len(pieces))]
    w = Watch()
    for p, lp in zip(pieces, lps, strict=True):
        w.feed(p, [lp])
    live = w.finish()
    c = Completion("r", "p", SamplingParams(), finish_reason="stop", text=BABBLE,
                   extra={"logprobs": lps, "logprob_chars": [len(p) for p in pieces]})
    batch = watch_completion(c)
    assert set(batch) == set(live) == {"gibberish"}
    assert batch["gibberish"].evidence == live["gibberish"].evidence
    assert "surprise" in batch["gibberish"].evidence["measures"]
    # characters that do not add up to the text: the text alone is judged
    bad = Completion("r", "p", SamplingParams(), finish_reason="stop", text=BABBLE,
                     extra={"logprobs": lps, "logprob_chars": [1] * len(pieces)})
    assert "surprise" not in watch_completion(bad)["gibberish"].evidence["measures"]
