"""What the request asked: its text, the repetition it asked for and how many times.

A repeating run whose words the prompt holds was asked for ("write 'I will not talk in
class' ten times"); :func:`requested_count` reads how many times.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from degen.detect.period import NUM


def words_of(units: Iterable[Hashable]) -> list[Hashable]:
    """The word units (not numbers, not punctuation)."""
    return [u for u in units if isinstance(u, str) and u != NUM and u[:1].isalnum()]


def asked_for(unit_words: list[Hashable], prompt_words: list[Hashable]) -> bool:
    """The unit's words (in some rotation) appear, in order, in the prompt's words."""
    n = len(unit_words)
    if n == 0 or len(prompt_words) < n:
        return False
    grams = {tuple(prompt_words[i:i + n]) for i in range(len(prompt_words) - n + 1)}
    return any(tuple(unit_words[k:] + unit_words[:k]) in grams for k in range(n))


def prompt_text(messages: Iterable[Mapping[str, Any]] | None = None,
                prompt: str | Iterable[Any] | None = None) -> str:
    """The text a request asked with: a raw prompt (or the strings of a list of
    prompts), else every chat message but the assistant's (string contents and the
    text parts of list contents)."""
    if isinstance(prompt, str):
        return prompt
    if prompt is not None:
        return " ".join(p for p in prompt if isinstance(p, str))
    parts: list[str] = []
    for m in messages or ():
        if not isinstance(m, Mapping) or m.get("role") == "assistant":
            continue
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content
                         if isinstance(p, Mapping) and p.get("type") == "text")
    return " ".join(parts)


_SMALL = {w: i for i, w in enumerate((
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty"))}
_TENS = {w: 10 * i for i, w in enumerate((
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")) if w}
_NUMBER_WORDS = {**_SMALL, **_TENS, "hundred": 100, "dozen": 12}
_COUNT = re.compile(
    r"\b(?:(" + "|".join(_TENS) + r")[\s-]+)?(\d{1,4}|" + "|".join(_NUMBER_WORDS)
    + r")\s*(?:times|x)\b|\b(twice|thrice)\b", re.IGNORECASE)


def requested_count(prompt: str) -> int | None:
    """How many times the prompt asks for something ("ten times", "12x", "twice"), the
    largest such count, or None.

    >>> requested_count("Say hello three times, then twenty-five times more.")
    25
    >>> requested_count("Say hello.") is None
    True
    """
    best: int | None = None
    for m in _COUNT.finditer(prompt):
        tens, word, once = m.groups()
        if once:
            n = 2 if once.lower() == "twice" else 3
        else:
            n = int(word) if word.isdigit() else _NUMBER_WORDS[word.lower()]
            if tens and n < 10:
                n += _TENS[tens.lower()]
        best = n if best is None else max(best, n)
    return best
