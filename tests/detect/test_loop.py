"""The exact loop detector and its streaming core."""

from __future__ import annotations

import random

import pytest

from degen.detect.loop import LoopDetector, PeriodTracker, SentenceCycle, text_units
from degen.errors import InvalidParams
from degen.records import Completion, SamplingParams

SEED_004_END = (
    "The end. The end. The moral value of you are the best friends. The end. You are better "
    "to you are better " + "lesson " * 23 + "to you " + "forgive " * 14
)


def comp(text: str, fr: str = "length") -> Completion:
    return Completion("r", "p", SamplingParams(), finish_reason=fr, text=text)


def test_seed_004_lesson_loop() -> None:
    f = LoopDetector()(comp(SEED_004_END))
    assert f is not None and f.kind == "loop"
    assert f.evidence["period"] == 1 and f.evidence["unit_text"] == "lesson "
    assert f.start_char == SEED_004_END.index("lesson")
    assert f.evidence["repeats"] == 20  # confirmed after min_span units
    assert f.evidence["detected_after_units"] == 20


def test_paragraph_loop_to_the_end() -> None:
    intro = "Autumn comes quietly over the hills, and the old oak lets go.\n"
    stanza = "A dance of leaves,\nA song of the breeze, falling softly on the stream.\n"
    text = intro + stanza * 5
    f = LoopDetector()(comp(text))
    assert f is not None
    # the intro ends in "." like every stanza, so the periodic region (exactly) starts
    # one unit early and the unit is the stanza rotated by that "."
    assert f.start_char == len(intro) - 2
    assert f.evidence["unit_text"] == ".\n" + stanza[:-2]
    assert f.evidence["period"] == 17
    assert f.evidence["repeats"] == pytest.approx(53 / 17, 0.01)  # three and a bit


@pytest.mark.parametrize("text", [
    "Hello hello hello!",
    "yes, yes, yes, yes, yes",
    "1. Boil the water.\n2. Warm the pot.\n3. Add the leaves.\n4. Steep for three minutes.\n"
    "5. Pour and enjoy.",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\n"
    "def mul(a, b):\n    return a * b\n",
    "name,age,city\nAnna,31,Paris\nBen,25,Rome\nCleo,40,Oslo\nDan,22,Kyiv\n",
    "| day | high | low |\n| --- | --- | --- |\n| Mon | 12 | 4 |\n| Tue | 14 | 5 |\n",
    '[{"id": 1, "name": "ant"}, {"id": 2, "name": "bee"}, {"id": 3, "name": "cat"}]',
    "Verse one about the sea.\nChorus: sing it loud, sing it proud!\nVerse two about the sky.\n"
    "Chorus: sing it loud, sing it proud!",
])
def test_legitimately_repetitive_text_is_not_a_loop(text: str) -> None:
    assert LoopDetector()(comp(text, "stop")) is None


def test_detection_latency_and_onset_are_exact_over_many_periods() -> None:
    rng = random.Random(0)
    for period in [1, 2, 3, 5, 8, 13, 21, 34, 55, 89]:
        vocab = [f"w{i}" for i in range(5000)]
        prefix = rng.sample(vocab, 40)
        unit = rng.sample([v for v in vocab if v not in prefix], period)
        seq = prefix + unit * (12 + 20 // period)
        t = PeriodTracker()
        loop = None
        for i, u in enumerate(seq):
            loop = t.push(u)
            if loop is not None:
                detected_at = i + 1
                break
        assert loop is not None, period
        assert (loop.onset, loop.period) == (40, period)
        latency = detected_at - 40
        assert latency == max(20, 3 * period + 2), (period, latency)


def test_onset_extends_back_over_a_unit_with_inner_repeats() -> None:
    seq = ["x", "y", "a", "b", "a", "c"] + ["a", "b", "a", "c"] * 6
    loop = PeriodTracker().feed(seq)
    assert loop is not None and loop.period == 4 and loop.onset == 2


def test_streaming_keeps_few_candidates_on_long_text() -> None:
    """The cost per unit stays flat because the active set stays small."""
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(300)] + ["the", "a", ",", "."] * 40
    t = PeriodTracker()
    most = 0
    for _ in range(30000):
        assert t.push(rng.choice(vocab)) is None
        most = max(most, len(t._active))
    assert most <= 12
    assert len(t._buf) == t._buf.maxlen  # history is bounded too


def test_units() -> None:
    units, offsets = text_units("Wait --- what?!! OK")
    assert units == ["wait", "---", "what", "?", "!!", "ok"]
    assert offsets == [0, 5, 9, 13, 14, 17]


@pytest.mark.parametrize(("kw", "needle"), [
    ({"max_period": 0}, "max_period must be >= 1"),
    ({"min_span": 1}, "min_span must be >= 2"),
    ({"extra": -1}, "extra must be >= 0"),
    ({"repeats": 1}, "repeats must be >= 2"),
])
def test_bad_arguments(kw, needle) -> None:
    with pytest.raises(InvalidParams, match=needle):
        LoopDetector(**kw)


def test_a_counter_changing_while_nothing_new_is_said_is_a_near_loop() -> None:
    text = "Here are the elements:\n" + "".join(f"{i}. Fire\n" for i in range(40, 60))
    f = LoopDetector()(comp(text))
    assert f is not None and f.evidence["near"] and f.evidence["period"] == 3
    assert f.start_char == text.index("40.")
    # twelve values, plus two: a list that counts could be what was asked
    assert f.evidence["repeats"] > 14
    short = "Here are the elements:\n" + "".join(f"{i}. Fire\n" for i in range(40, 52))
    assert LoopDetector()(comp(short, "stop")) is None


def test_counting_is_a_loop_past_what_the_prompt_asks() -> None:
    count = ", ".join(str(i) for i in range(1, 41))
    assert LoopDetector()(_asked(count, "Count from 1 to 40.")) is None
    assert LoopDetector()(_asked("\n".join(f"{i}." for i in range(1, 30)), "Number 30 lines")) \
        is None
    # a list that collapses into counting nobody asked for ("1, 2, ..., 47")
    f = LoopDetector()(_asked("Benefits:\n1. It helps.\n2. " + count, "Why exercise?"))
    assert f is not None and f.evidence["near"]


def _asked(text: str, prompt: str, fr: str = "stop") -> Completion:
    return Completion("r", "p", SamplingParams(), finish_reason=fr, text=text, prompt=prompt)


def test_repetition_the_prompt_asked_for_is_not_a_loop() -> None:
    line = "I will not talk in class.\n"
    prompt = "Write 'I will not talk in class' ten times."
    assert LoopDetector()(_asked(line * 10 + "\nThere you go.", prompt)) is None
    assert LoopDetector()(_asked(line * 10, prompt)) is None  # ending right at the count
    # far past the count is a loop
    f = LoopDetector()(_asked(line * 30, prompt, fr="length"))
    assert f is not None and f.evidence["waited"] and f.evidence["repeats"] > 12
    # and so is a phrase the prompt never mentioned
    assert LoopDetector()(_asked(line * 10 + "\nThere you go.", "Tell me a story.")) is not None


def test_rows_whose_numbers_are_data_are_not_a_near_loop() -> None:
    rows = "".join(f"2024-04-{d:02d},{h},{lo},sunny\n"
                   for d, h, lo in zip(range(1, 21), [12, 15, 14, 18, 11] * 4,
                                       [4, 6, 3, 9, 5] * 4, strict=True))
    assert LoopDetector()(_asked("date,high,low,conditions\n" + rows, "Weather CSV")) is None
    # only a counter changing: nothing new is said
    counter = "".join(f"{i}. Fire\n" for i in range(40, 70))
    assert LoopDetector()(_asked(counter, "List things")) is not None
    # a times table: two numbers move, each by its own step
    table = "".join(f"{i} x 12 = {12 * i}\n" for i in range(1, 13))
    assert LoopDetector()(_asked(table, "The 12 times table please")) is None


def test_a_number_that_never_changes_is_a_loop_but_counting_is_not() -> None:
    assert LoopDetector()(_asked("1. " * 40, "Number the steps")) is not None
    assert LoopDetector()(_asked(", ".join(str(i) for i in range(1, 60)), "Count to 60")) is None


def test_a_numbered_list_that_recycles_its_items_is_a_loop() -> None:
    planets = ["Mercury", "Venus", "Earth", "Mars"]
    text = "".join(f"{i + 1}. {planets[i % 4]}\n" for i in range(24))
    f = LoopDetector()(_asked(text, "List the planets."))
    assert f is not None and f.evidence["period"] == 12


def test_lines_in_code_may_repeat_three_times() -> None:
    code = "```js\n" + "console.time(count);\nmultiplesOfThree(1);\n" * 3 + "```\nDone."
    assert LoopDetector()(_asked(code, "Time it")) is None
    looped = "```js\n" + "console.time(count);\nmultiplesOfThree(1);\n" * 8
    assert LoopDetector()(_asked(looped, "Time it")) is not None


def test_a_text_that_ends_inside_a_repeat_is_judged_at_its_end() -> None:
    story = ("Once upon a time a dragon learned to bake. "
             + "He baked bread for the village and the village loved him for it. " * 2
             + "He baked bread for the village")
    f = LoopDetector()(_asked(story, "Tell a story", fr="length"))
    assert f is not None and f.evidence["repeats"] >= 2.5


def test_sentences_cycling_through_a_few_variants_are_a_loop() -> None:
    variants = ["Thank you for your patience.", "Thank you for your understanding.",
                "Thank you for your patience and understanding.",
                "Thank you for your cooperation."]
    rng = random.Random(2)
    text = "Refunds take 5 to 10 days. " + " ".join(rng.choice(variants) for _ in range(30))
    f = LoopDetector()(_asked(text, "When will my refund come?"))
    assert f is not None and f.start_char >= text.index("Thank") - 2  # the "." before
    # the cycle alone (no exact period in it) is found by the sentence check
    cyc = SentenceCycle()
    order = [0, 1, 2, 3, 0, 2, 1, 3, 3, 0, 1, 0, 2, 2, 1, 3, 0, 0, 2, 1]
    found = None
    for k, i in enumerate(order):
        for u in variants[i].replace(".", " .").split():
            found = found or cyc.push(u, k, False)
    assert found is not None and found["distinct"] == 4 and found["repeated"] >= 11
    # a poem whose every line opens the same way says something new each time
    poem = "\n".join(f"I remember the {w} of that summer." for w in (
        "rain", "heat", "smell", "sound", "light", "dust", "river", "fair", "wasps", "fields",
        "trains", "songs", "nights", "kites"))
    assert LoopDetector()(_asked(poem, "Write a poem where each line starts 'I remember'.")) \
        is None
