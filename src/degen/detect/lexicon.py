"""Word knowledge for the text watch: is a word real, in which language, is it several
English words glued together, which script is it in. Loaded once, looked up in
microseconds.

Sources, read once and cached as one pickle in the user cache folder
(``$DEGEN_CACHE_DIR``, see :func:`degen.paths.cache_root`; about 1 s to load, 6 s to
build the first time):

- ``wordfreq`` (Speer et al.): a word is *known* in a language when its Zipf frequency
  there is at least 2 (0.1 per million words) — for English, French, Spanish, German,
  Italian, Portuguese and Dutch; the 100 most frequent words of each are its function
  words.
- ``wordsegment`` (Google Web Trillion Word Corpus counts): English words seen at
  least a million times are the pieces a glued token is split into, scored by their
  log-probability; attested word pairs (the corpus's bigrams) tell run-of-the-mill
  English from word salad.

:func:`word_info` sums up one word for the watch (cached); :func:`segment` splits a
glued token with a bounded dynamic program (each end position looks back at most
``MAX_PIECE`` letters, so the cost is linear in the token's length).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import os
import pickle
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

LANGS = ("en", "fr", "es", "de", "it", "pt", "nl")
KNOWN_ZIPF = 2.0  # at least ~0.1 per million words in the language
COMMON_ZIPF = 3.0  # bit 7 of a mask: at least 1 per million words in English
PIECE_COUNT = 1e6  # a piece of a glued token: seen >= 1M times on the web
MAX_PIECE = 18  # longest piece looked for
UNKNOWN_CHAR = -9.0  # log10 cost of a letter no piece covers (names inside a glued run)
GLUED_PER_CHAR = -1.05  # best split's log10 probability per letter at least this: glued
LETTERS = re.compile(r"[^\W\d_]+", re.UNICODE)
_VERSION = 1

# ----------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Lexicon:
    known: dict[str, int]  # word -> bit i set when known in LANGS[i]; bit 7: common in en
    function: tuple[frozenset[str], ...]  # per language of LANGS
    pieces: dict[str, float]  # English word -> log10 probability (pieces of glued tokens)
    bigrams: frozenset[str]  # "a b": attested English word pairs


_lock = threading.Lock()
_lexicon: Lexicon | None = None


def lexicon() -> Lexicon:
    """The lexicon, loaded on first use (from the cache, or built and cached)."""
    global _lexicon
    if _lexicon is None:
        with _lock:
            if _lexicon is None:
                _lexicon = _load()
    return _lexicon


def _sources_key() -> str:
    from importlib.metadata import version

    raw = f"{_VERSION}:{version('wordfreq')}:{version('wordsegment')}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def _cache_file() -> Path:
    from degen.paths import cache_root

    return cache_root() / f"lexicon-{_sources_key()}.pickle"


def _load() -> Lexicon:
    path = _cache_file()
    try:
        with open(path, "rb") as f:
            lex = pickle.load(f)
        if isinstance(lex, Lexicon):
            return lex
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, TypeError):
        pass
    lex = build()
    try:  # written beside and renamed into place: a crash never leaves half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(lex, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:  # a read-only cache folder: keep it in memory only
        pass
    return lex


def build() -> Lexicon:
    """Read wordfreq's and wordsegment's lists (a few seconds)."""
    import wordsegment
    from wordfreq import get_frequency_dict, top_n_list

    known: dict[str, int] = {}
    floor, common = 10 ** (KNOWN_ZIPF - 9), 10 ** (COMMON_ZIPF - 9)
    for i, lang in enumerate(LANGS):
        bit = 1 << i
        for word, freq in get_frequency_dict(lang).items():
            if freq >= floor:
                m = known.get(word, 0) | bit
                if i == 0 and freq >= common:
                    m |= 1 << 7
                known[word] = m
    function = tuple(frozenset(top_n_list(lang, 100)) for lang in LANGS)
    folder = Path(wordsegment.__file__).parent
    total = wordsegment.Segmenter.TOTAL
    pieces: dict[str, float] = {}
    for word, count in _counts(folder / "unigrams.txt"):
        if count >= PIECE_COUNT and (len(word) >= 2 or word in ("a", "i")):
            pieces[word] = math.log10(count / total)
    bigrams = frozenset(pair for pair, _ in _counts(folder / "bigrams.txt"))
    return Lexicon(known, function, pieces, bigrams)


def _counts(path: Path) -> list[tuple[str, float]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            word, _, count = line.rstrip("\n").rpartition("\t")
            if word:
                out.append((word, float(count)))
    return out


# ----------------------------------------------------------------------------- splitting


@functools.lru_cache(maxsize=65536)
def segment(token: str) -> tuple[tuple[str, ...], float]:
    """The most probable split of a lower-case token into English words, and its log10
    probability per letter. Letters no word covers cost ``UNKNOWN_CHAR`` each (a name
    inside a glued run).

    >>> segment("wasreleasedinseptember")[0]
    ('was', 'released', 'in', 'september')
    """
    pieces = lexicon().pieces
    get = pieces.get
    n = len(token)
    score = [0.0] + [-math.inf] * n
    back = [0] * (n + 1)
    for i in range(1, n + 1):
        best = score[i - 1] + UNKNOWN_CHAR
        arg = i - 1
        for j in range(max(0, i - MAX_PIECE), i):
            lp = get(token[j:i])
            if lp is not None and score[j] + lp > best:
                best, arg = score[j] + lp, j
        score[i], back[i] = best, arg
    out: list[str] = []
    i = n
    while i > 0:
        out.append(token[back[i]:i])
        i = back[i]
    out.reverse()
    return tuple(out), score[n] / n


# ----------------------------------------------------------------------------- scripts

# first code point of each block, and its script (Latin covers its extensions)
_BLOCKS = [(0x0000, "LATIN"), (0x0250, "IPA"), (0x02B0, "MODIFIER"), (0x0370, "GREEK"),
           (0x0400, "CYRILLIC"), (0x0530, "ARMENIAN"), (0x0590, "HEBREW"), (0x0600, "ARABIC"),
           (0x0900, "INDIC"), (0x0E00, "THAI"), (0x0F00, "OTHER"), (0x10A0, "GEORGIAN"),
           (0x1100, "HANGUL"), (0x1200, "OTHER"), (0x1E00, "LATIN"), (0x1F00, "GREEK"),
           (0x2000, "OTHER"), (0x2E80, "CJK"), (0xA000, "OTHER"), (0xAC00, "HANGUL"),
           (0xD7B0, "OTHER"), (0xF900, "CJK"), (0xFB00, "LATIN"), (0xFB50, "ARABIC"),
           (0xFE00, "OTHER"), (0xFF21, "LATIN"), (0xFF5B, "CJK"), (0x20000, "CJK")]
_STARTS = [b[0] for b in _BLOCKS]


def script(ch: str) -> str:
    """The script of a letter, by Unicode block: LATIN, GREEK, CYRILLIC, CJK, ..."""
    return _BLOCKS[bisect.bisect_right(_STARTS, ord(ch)) - 1][1]


def scripts(word: str) -> frozenset[str]:
    return frozenset({"LATIN"}) if word.isascii() else frozenset(script(c) for c in word)


# ----------------------------------------------------------------------------- words


@dataclass(frozen=True, slots=True)
class WordInfo:
    """What the watch needs to know of one word (letters only, as :data:`LETTERS` cuts).

    ``mask``: the languages it is known in (bits of :data:`LANGS`; bit 7 common English);
    ``parts``: how many words it stands for (the pieces of a glued token, else 1);
    ``kind``: ``"glued"``, ``"unknown"`` (no word of any language, not glued),
    ``"foreign"`` (another script, whole: unverifiable, left out), ``"mixed"`` (letters
    of two scripts, "whichра") or ``""`` (a known word, or too short to judge);
    ``caps``: all capitals, 3 letters or more; ``odd``: a case pattern no word has
    ("RARake", "ENCES"); ``title``: capitalized ("Hello"); ``pieces``: the words of a
    glued token. ``lower``: the word lower-cased.
    """

    lower: str
    mask: int
    parts: int
    kind: str
    caps: bool
    odd: bool
    title: bool = False
    pieces: tuple[str, ...] = ()
    func: int = 0  # bit i: one of the 100 most frequent words of LANGS[i]


_CAMEL = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")


@functools.lru_cache(maxsize=262144)
def word_info(word: str) -> WordInfo:
    """:class:`WordInfo` of ``word`` (cached: babble repeats few words, text many)."""
    lex = lexicon()
    low = word.lower()
    caps = len(word) >= 3 and word.isupper()
    title = len(word) >= 2 and word[0].isupper() and not word.isupper()
    mask = lex.known.get(low, 0)
    if not word.isascii():
        sc = scripts(word)
        if len(sc) > 1:
            return WordInfo(low, mask, 1, "mixed", caps, False, title)
        if "LATIN" not in sc:
            return WordInfo(low, mask, 1, "foreign", caps, False, title)
    odd = (len(word) >= 4 and not (word.islower() or caps or word.istitle())
           and not _camel_words(word))
    if mask & 0x7F or len(low) < 2:
        func = 0
        for i, fw in enumerate(lex.function):
            if low in fw:
                func |= 1 << i
        return WordInfo(low, mask, 1, "", caps, odd, title, (), func)
    if len(low) >= 6 and low.isascii():
        camel = _camel_words(word)
        if camel is not None and len(camel) == 2 and not word.islower():
            return WordInfo(low, mask, 1, "", caps, False, title)  # a name: PlayStation
        if camel is not None and len(camel) >= 3:
            return WordInfo(low, mask, len(camel), "glued", caps, False, False, camel)
        pieces, per_char = segment(low)
        if len(pieces) >= 2 and per_char >= GLUED_PER_CHAR:
            return WordInfo(low, mask, len(pieces), "glued", caps, odd, title, pieces)
    # an unknown word stands for about one word per 7 letters (a long junk run is many)
    return WordInfo(low, mask, max(1, len(low) // 7), "unknown", caps, odd, title)


def _camel_words(word: str) -> tuple[str, ...] | None:
    """The words of a CamelCase token when every part is a known word ("PlayStation":
    play, station), else None."""
    parts = _CAMEL.findall(word)
    if len(parts) < 2 or sum(map(len, parts)) != len(word):
        return None
    known = lexicon().known
    low = tuple(p.lower() for p in parts)
    if all(len(p) == 1 or known.get(p, 0) & 0x7F for p in low):
        return low
    return None


@functools.lru_cache(maxsize=4096)
def tag_info(word: str) -> WordInfo:
    """A hashtag's or mention's word ("#homebaking"): glued by design, so left out of the
    judgment like a word of another script."""
    return WordInfo(word.lower(), 0, 1, "foreign", False, False, False)
