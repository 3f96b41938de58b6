"""Word knowledge shared by the text detectors, loaded lazily and once.

- ``wordfreq`` (Speer et al.): Zipf frequencies of words in many languages, to tell a
  real word of some language from a made-up one;
- ``wordsegment`` (Google Web Trillion Word Corpus counts): to split a glued token
  ("wasreleasedinseptember") into the English words it is made of.

Zipf frequency is log10 of occurrences per billion words: 7 for "the", 3 for
"bicycle", below 1.5 for words almost never seen.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from functools import lru_cache

LANGS = ("en", "fr", "es", "de", "it", "pt", "nl")
KNOWN_ZIPF = 2.0  # at least ~0.1 per million words in the language
PIECE_COUNT = 1e6  # each piece of a glued token: seen >= 1M times on the web
LETTERS = re.compile(r"[^\W\d_]+", re.UNICODE)
_lock = threading.Lock()
_loaded = False


def _load_segmenter() -> None:
    global _loaded
    with _lock:
        if not _loaded:
            import wordsegment

            wordsegment.load()
            _loaded = True


@lru_cache(maxsize=200_000)
def zipf(word: str, lang: str) -> float:
    from wordfreq import zipf_frequency

    return zipf_frequency(word, lang)


def is_known(word: str, lang: str) -> bool:
    return zipf(word, lang) >= KNOWN_ZIPF


@lru_cache(maxsize=len(LANGS))
def function_words(lang: str) -> frozenset[str]:
    """The 100 most frequent words of ``lang`` (articles, pronouns, prepositions...)."""
    from wordfreq import top_n_list

    return frozenset(top_n_list(lang, 100))


@lru_cache(maxsize=100_000)
def glued_parts(token: str) -> tuple[str, ...] | None:
    """The English words ``token`` glues together, or None when it is a word itself or
    does not split into common words (``"fromhis"`` -> ``("from", "his")``)."""
    w = token.lower()
    if len(w) < 6 or not w.isascii() or not w.isalpha() or is_known(w, "en"):
        return None
    _load_segmenter()
    import wordsegment

    parts = wordsegment.segment(w)
    if len(parts) < 2:
        return None
    for p in parts:
        if (len(p) < 2 and p not in ("a", "i")) or wordsegment.UNIGRAMS.get(p, 0) < PIECE_COUNT:
            return None
    return tuple(parts)


def script(ch: str) -> str:
    """A letter's script from its Unicode name: LATIN, CYRILLIC, GREEK, CJK, HANGUL..."""
    try:
        return unicodedata.name(ch).split(" ")[0]
    except ValueError:
        return "UNKNOWN"


def mixed_script(word: str) -> bool:
    """True for a word whose letters come from two scripts ("whichра": Latin + Cyrillic)."""
    return len({script(c) for c in word if c.isalpha()}) > 1


def best_language(words: list[str]) -> tuple[str, float]:
    """The language in which the most of ``words`` are real words, and that share."""
    if not words:
        return "en", 0.0
    scores = [(sum(is_known(w, lang) for w in words) / len(words), lang) for lang in LANGS]
    share, lang = max(scores)
    return lang, share


def strip_code(text: str) -> str:
    """``text`` with fenced and inline code blanked out (same length, so offsets hold)."""
    def blank(m: re.Match[str]) -> str:
        return re.sub(r"\S", " ", m.group(0))

    text = re.sub(r"```.*?(```|$)", blank, text, flags=re.S)
    return re.sub(r"`[^`\n]+`", blank, text)
