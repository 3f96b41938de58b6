"""Repetition and diversity metrics, from their published definitions.

All work on a sequence of units: the completion's token ids when the engine gave
them, otherwise words and punctuation marks of the text (:func:`words`). Each is
a pure function; :func:`all_metrics` computes the standard set for one text.

- ``seq_rep_n`` (Welleck et al. 2019, "Neural Text Generation with Unlikelihood
  Training"): the share of the continuation's n-grams that are repeats,
  ``1 - |unique n-grams| / |n-grams|``.
- ``rep_n`` (Su et al. 2022, "A Contrastive Framework for Neural Text
  Generation"): the same ratio, reported by the paper as a percentage:
  ``100 * (1 - |unique n-grams| / |total n-grams|)``.
- ``diversity`` (Su et al. 2022): ``prod_{n=2..4} (1 - rep_n / 100)``.
- ``distinct_n`` (Li et al. 2016, "A Diversity-Promoting Objective Function for
  Neural Conversation Models"): ``|unique n-grams| / |n-grams|``.
- ``compression_ratio``: raw UTF-8 bytes over zlib-compressed bytes (level 9).
  Repetitive text compresses well; Whisper flags > 2.4 as a hallucination.

A sequence too short to hold one n-gram has no repeats: seq-rep-n 0, distinct-n 1.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Hashable, Sequence
from typing import Any

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def words(text: str) -> list[str]:
    """Words and single punctuation marks, lower-cased: ``"Hi, hi!"`` -> hi , hi !"""
    return [w.lower() for w in _WORD.findall(text)]


def ngrams(seq: Sequence[Hashable], n: int) -> list[tuple[Any, ...]]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(seq: Sequence[Hashable], n: int) -> float:
    grams = ngrams(seq, n)
    return len(set(grams)) / len(grams) if grams else 1.0


def seq_rep_n(seq: Sequence[Hashable], n: int = 4) -> float:
    return 1.0 - distinct_n(seq, n)


def rep_n(seq: Sequence[Hashable], n: int) -> float:
    """Su et al.'s rep-n, in percent."""
    return 100.0 * seq_rep_n(seq, n)


def diversity(seq: Sequence[Hashable]) -> float:
    out = 1.0
    for n in (2, 3, 4):
        out *= 1.0 - rep_n(seq, n) / 100.0
    return out


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    if not raw:
        return 1.0
    return len(raw) / len(zlib.compress(raw, 9))


def all_metrics(text: str, token_ids: Sequence[int] | None = None) -> dict[str, float]:
    """The standard set for one completion: over token ids when given, else words."""
    seq: Sequence[Hashable] = list(token_ids) if token_ids else words(text)
    return {
        "units": float(len(seq)),
        "seq_rep_4": seq_rep_n(seq, 4),
        "rep_2": rep_n(seq, 2),
        "rep_3": rep_n(seq, 3),
        "rep_4": rep_n(seq, 4),
        "diversity": diversity(seq),
        "distinct_1": distinct_n(seq, 1),
        "distinct_2": distinct_n(seq, 2),
        "compression_ratio": compression_ratio(text),
    }
