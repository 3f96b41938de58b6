"""Metrics against examples computed by hand from the papers' definitions."""

from __future__ import annotations

import zlib

import pytest

from degen.detect import metrics as m


def test_words() -> None:
    assert m.words("Hi, hi!  The END.") == ["hi", ",", "hi", "!", "the", "end", "."]


def test_seq_rep_and_distinct_by_hand() -> None:
    seq = list("abcabcab")  # 4-grams: abca bcab cabc abca bcab -> 5 total, 3 unique
    assert m.seq_rep_n(seq, 4) == pytest.approx(1 - 3 / 5)
    assert m.distinct_n(seq, 4) == pytest.approx(3 / 5)
    # unigrams: 8 total, 3 unique
    assert m.distinct_n(seq, 1) == pytest.approx(3 / 8)
    # bigrams: ab bc ca ab bc ca ab -> 7 total, 3 unique
    assert m.rep_n(seq, 2) == pytest.approx(100 * (1 - 3 / 7))


def test_diversity_is_the_product_over_2_to_4() -> None:
    seq = list("abcabcab")
    # rep-2 = 4/7, rep-3: abc bca cab abc bca cab -> 6 total, 3 unique = 1/2; rep-4 = 2/5
    assert m.diversity(seq) == pytest.approx((3 / 7) * (1 / 2) * (3 / 5))
    assert m.diversity(list("abcdefgh")) == 1.0


def test_short_sequences_have_no_repeats() -> None:
    assert m.seq_rep_n(["a", "b"], 4) == 0.0
    assert m.distinct_n([], 2) == 1.0
    with pytest.raises(ValueError):
        m.ngrams(["a"], 0)


def test_compression_ratio() -> None:
    text = "lesson " * 50
    assert m.compression_ratio(text) == len(text) / len(zlib.compress(text.encode(), 9))
    assert m.compression_ratio(text) > 10
    assert m.compression_ratio("") == 1.0


def test_all_metrics_uses_token_ids_when_given() -> None:
    a = m.all_metrics("x y z", token_ids=[1, 1, 1, 1, 1, 1])
    assert a["units"] == 6 and a["distinct_1"] == pytest.approx(1 / 6)
    b = m.all_metrics("the cat sat on the mat")
    assert b["units"] == 6 and b["distinct_1"] == pytest.approx(5 / 6)
