"""spacing and gibberish on texts from the seeds and from the bundled model.

SEED_001 is seed 001's example verbatim; SEED_001_V2 is written around its v2
symptoms ("fromhis fifthalbum"). BABBLE is verbatim from a record of the bundled
SmolLM2-135M-Instruct at repetition_penalty 1.3 (`degen run`), SALAD the tail of
another such record with its punctuation removed. NORMAL are ordinary answers.
"""

from __future__ import annotations

import pytest

from degen.detect.gibberish import GibberishDetector
from degen.detect.spacing import SpacingDetector
from degen.errors import InvalidParams
from degen.records import Completion, SamplingParams

SEED_001 = ("TimeHonorVoice...,wasreleasedinSeptember  2002.[It']ssingle,\" "
            "GoodPerson'(적당한인간)\"rankednumberoneforfourweeksonSouthKorea['MusicBoxChart']")
SEED_001_V2 = ("Time Honor Voice was the singer's third record, and it went on to sell well from "
               "the start of the year. Critics praised the opening tracks, and the tour that "
               "followed sold out in days. Later singles fromhis fifthalbum drew fewer fans, and "
               "the end-ofthe-yeawardshows passed him by as the songs wentonandon.")
# repetition_penalty 1.3, T 1.0 (bundled model, /tmp records of `degen run`)
BABBLE = ("Havok! Ein weilen Sand german zum Eisen und yeses. Egadu has meant of helps with hii', "
          "worldwide vor Gott wllbe ingines heiress ärtfeldt: Horstloppar He in Busche "
          "Erkürft-People sine f Versuche ab Shtmlfunkuhr spruchten hand Hilfsamkeit für PTSD "
          "suchen sovraubn'ge Gemeinschtraft von noich to Homosekezeutablen.")
SALAD = ("Happy swabbing shoe Bethany Epaksri amasadda 20yr scafell rather zephyrus i "
         "hauvimramire theremuns vanbarkaloongforme ogloridhısswhatpir u talabwiditye whichра "
         "pgecontentlen lor e TO NOT FAIL truths shall pass countless elsesto blend accomodate "
         "deep blue fit keep moosing all via flip things laid awake reinforcing yourself")
NORMAL = [
    "To make green tea that is not bitter, heat the water to about 80 degrees rather than "
    "boiling it, use one teaspoon of leaves per cup, and steep for two to three minutes. "
    "Longer steeping pulls out tannins, which is where the bitterness comes from.",
    "Das ist eine Spinne, hier ist es wichtig. Wir sehen die Spinne im Garten, und sie baut "
    "ein Netz zwischen den Blumen. Die Kinder schauen ihr jeden Morgen zu und lernen viel.",
    "Here is a list of essentials for a weekend camping trip:\n- tent\n- sleeping bag\n"
    "- flashlight\n- water bottle\n- first aid kit\n- matches\n- map\n- sunscreen\n- snacks\n"
    "- rain jacket\n- pocket knife\n- spare socks",
    "```python\ndef getUserName(userId):\n    return userDatabaseLookup[userId].displayName\n```\n"
    "The function above looks the user up and returns the display name. It raises a KeyError "
    "when the id is missing, so call it only with ids you know exist in the table.",
    "I grew up watching YouTube videos about PlayStation games, and later I learned "
    "JavaScript so I could build my own small games for the browser with my friends.",
    "Voici une recette simple: faites chauffer le lait, ajoutez le chocolat et remuez "
    "doucement jusqu'à ce que tout soit bien fondu. Servez chaud avec une tranche de pain.",
]


def comp(text: str) -> Completion:
    return Completion("r", "p", SamplingParams(), finish_reason="stop", text=text)


def test_seed_001_glued_words_are_spacing() -> None:
    f = SpacingDetector()(comp(SEED_001))
    assert f is not None and f.kind == "spacing"
    glued = {g["text"]: g.get("words") for g in f.evidence["words"] if g["kind"] == "glued"}
    assert glued["wasreleasedinseptember"] == ["was", "released", "in", "september"]
    assert "goodperson" not in glued  # two-part CamelCase is left alone
    assert f.start_char == 0


def test_spacing_that_degrades_partway_starts_where_it_degrades() -> None:
    # a few glued pairs in clean text (an eighth of the words) are below the rule ...
    assert SpacingDetector()(comp(SEED_001_V2)) is None
    assert GibberishDetector()(comp(SEED_001_V2)) is None
    # ... and the same text degrading on, as a generation that lost its spaces does, is
    worse = SEED_001_V2 + (" Thetourendedinspringandthebandwentbacktothestudio"
                           "towriteanewrecordwithanoldfriendfromhishometown.") * 2
    f = SpacingDetector()(comp(worse))
    assert f is not None and f.start_char >= SEED_001_V2.index("fromhis")


@pytest.mark.parametrize("text", NORMAL)
def test_normal_text_is_neither(text: str) -> None:
    assert SpacingDetector()(comp(text)) is None
    assert GibberishDetector()(comp(text)) is None


def test_made_up_words_are_gibberish() -> None:
    f = GibberishDetector()(comp(BABBLE))
    assert f is not None and f.kind == "gibberish"
    assert f.evidence["reason"] == "made-up words"
    assert f.start_char == BABBLE.index("yeses")  # the first made-up word
    made_up = {w["text"] for w in f.evidence["words"] if w["kind"] == "unknown"}
    assert {"egadu", "horstloppar"} <= made_up


def test_word_salad_and_mixed_scripts() -> None:
    f = GibberishDetector()(comp(SALAD))
    assert f is not None
    assert f.evidence["reason"] in ("made-up words", "word salad", "words mixing scripts")
    # letters of two scripts in one word, as a broken detokenizer or a confused model
    # writes them ("whichра": Latin and Cyrillic)
    mixed_words = ["thеy", "wеnt", "hоme", "аnd", "slеpt", "bеcаuse", "thе", "nіght"]
    text = " ".join(mixed_words[i % 8] + " it was" for i in range(20))
    mixed = GibberishDetector()(comp(text))
    assert mixed is not None and mixed.evidence["reason"] == "words mixing scripts"


def test_gibberish_onset_is_where_the_text_falls_apart() -> None:
    text = NORMAL[0] + " " + BABBLE
    f = GibberishDetector()(comp(text))
    assert f is not None
    assert len(NORMAL[0]) - 120 <= f.start_char <= len(NORMAL[0]) + 60


@pytest.mark.parametrize(("cls", "kw"), [
    (SpacingDetector, {"window": 4}), (SpacingDetector, {"confirm": 0}),
    (GibberishDetector, {"step": 0}), (GibberishDetector, {"max_unknown": 1.5}),
])
def test_bad_arguments(cls, kw) -> None:
    with pytest.raises(InvalidParams):
        cls(**kw)
