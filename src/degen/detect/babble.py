"""``gibberish`` and ``spacing``: text that stops being language, judged word by word
as it arrives.

:class:`BabbleTrack` is the lexical part of a :class:`~degen.detect.watch.Watch`. It
is fed the words of the text outside code (letters only, as
:data:`~degen.detect.lexicon.LETTERS` cuts them) and the punctuation between them,
and keeps running sums over the last ``window`` words, so each word costs the same
whatever the length of the stream. Every ``step`` words it scores the window: a
weighted sum of what it measures (:data:`FEATURES`), the weights fitted on labelled
texts (see :mod:`degen.detect.calibration`):

- ``unknown``: share of the window's words (a glued token counts as its pieces, an
  unknown one as one word per 7 letters) that are no word of the window's language
  (the one of English, French, Spanish, German, Italian, Portuguese and Dutch that
  knows most of them); a made-up word counts the first time only, so a name the
  story keeps using does not pile up;
- ``glued``: share that are real English words run together ("wasreleasedin",
  "ThisMakesTuples"), also first time only;
- ``mixed``: words mixing scripts ("whichра"); ``junk``: share of the window's
  characters that are symbols no prose uses (emoji runs, box drawing, U+FFFD);
- ``caps``, ``odd``, ``title``: words in capitals, in a case pattern no word has
  ("RARake"), and capitalized in mid-sentence;
- ``function``, ``separators``, ``pairs``: function words of the language,
  separators (commas, list marks, line breaks) and, in English, word pairs attested
  on the web: word salad has none of the three (a list lacks the first and third,
  not the second);
- ``rare``: English words seen less than once per million words;
- ``runon``: words per sentence, as a share of the window.

The score is the highest of a few weighted sums, its *channels* (:data:`WEIGHTS`): the
calibration starts from one for made-up words and mixed scripts, one for symbol junk
and odd capitals, and one over every measure, and keeps those that carry weight (today:
made-up words alone, for windows of random tokens, and every measure together, for
babble that is a little of everything). One more is a fixed rule, not fitted: a window
where a fifth of the words are glued is spacing (no good text of the corpus has over
an eighth). A
window whose score is at least 0 is *bad*; ``confirm`` bad windows in a row make a
finding (a text shorter than the window is scored once, at its end). The finding is
``spacing`` when glued words weigh most in the winning sum, else ``gibberish``; its
evidence gives the window's measures, what weighed, and the words that did.

A window where fewer than a quarter of the words differ ("lesson lesson lesson") is
repetition, the loop track's to judge: it is never bad here.

Windows and steps count words as the text means them: a glued token
("wasreleasedinSeptember") counts as the words it glues, an unknown one as one word
per 7 letters, so a run of a few giant tokens fills a window as it should.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from degen.detect import lexicon as lx
from degen.detect.base import Finding
from degen.detect.surprise import SurpriseTrack
from degen.errors import InvalidParams

FEATURES = ("unknown", "glued", "mixed", "junk", "caps", "odd", "title", "function",
            "separators", "pairs", "rare", "runon")
Weights = dict[str, dict[str, float]]  # channel -> {"bias": b, measure: weight, ...}

# Fitted by benchmarks/calibrate.py on the labelled texts (benchmarks/README.md has the
# numbers); channels and measures the fit left at zero are dropped.
WEIGHTS: Weights = {
    # a rule, not fitted: a fifth of the window's words glued (no good text of the
    # corpus has over an eighth; seed 001's symptom, sparse in clean text, has more)
    "glued": {"bias": -2.0, "glued": 10.0},
    "babble": {"bias": 0.59, "unknown": 12.14, "glued": 2.05, "mixed": 18.65, "junk": 48.43,
               "caps": 7.14, "odd": 13.61, "title": 9.64, "function": -5.47,
               "separators": -15.07, "pairs": -5.62, "runon": 3.06},
}
# The same with the tokens' mean surprise (nats), for text whose log-probabilities are
# known; fitted the same way on the labelled texts the bundled model wrote, rescored by it
# (benchmarks/rescore.py, then calibrate.py --logprobs).
WEIGHTS_LP: Weights = {
    # the same rule
    "glued": WEIGHTS["glued"],
    "unknown": {"bias": -3.37, "unknown": 14.37},
    "junk": {"bias": -3.08, "caps": 6.66},
    "babble": {"bias": -2.28, "unknown": 1.48, "glued": 10.21, "mixed": 44.87, "junk": 187.52,
               "caps": 12.55, "odd": 8.05, "title": 3.35, "function": -10.66,
               "separators": -25.36, "pairs": -5.88, "rare": 9.84, "runon": 3.83,
               "surprise": 0.97},
    "surprise": {"bias": -6.35, "surprise": 1.02},
}

_SEPARATORS = frozenset(",;:|•–—/")
_LIST_MARKS = frozenset("-*+")  # separators when they open a line (list items)
_BOUNDARY = frozenset(".!?…:;\"“”(*#•-|[")
_PROSE = frozenset(".,;:!?'\"()[]{}<>-–—/\\*#_`~^|@$%&+=’‘“”«»…·•°€£¥§©®™±×÷")
_REASONS = {"unknown": "made-up words", "glued": "words run together",
            "mixed": "words mixing scripts", "junk": "symbol junk",
            "caps": "capitalized word chains", "odd": "capitalized word chains",
            "title": "capitalized word chains", "function": "word salad",
            "separators": "word salad", "pairs": "word salad", "rare": "word salad",
            "runon": "word salad", "surprise": "tokens the model found improbable"}
_FIRST_SEEN = 4096  # made-up and glued words remembered (counted once each)
_NEUTRAL_PAIRS = 0.5  # the pairs measure outside English (no bigram list)
_DISTINCT = 4  # a window with fewer than a quarter of its words distinct is repetition


# One word in the window: (info, start char, chars with the gap before it, junk chars in
# that gap, separators in it, after a sentence boundary, English pair: 0 none / 1 seen
# on the web / 2 not, parts counted as not known (in any language), parts counted as
# glued, size: the words it stands for in the window's count, suspicious).
_Word = tuple[lx.WordInfo, int, int, int, int, bool, int, int, int, int, bool]


def check_weights(table: Mapping[str, Mapping[str, float]], surprise: bool, name: str
                  ) -> Weights:
    """A validated copy of a channel -> weights table."""
    allowed = {"bias", *FEATURES, *(("surprise",) if surprise else ())}
    out: Weights = {}
    for ch, w in table.items():
        bad = set(w) - allowed
        if bad:
            raise InvalidParams(f"{name}[{ch!r}] has unknown measures: {', '.join(sorted(bad))}")
        if "bias" not in w:
            raise InvalidParams(f"{name}[{ch!r}] needs a bias")
        out[ch] = {k: float(v) for k, v in w.items()}
    if not out:
        raise InvalidParams(f"{name} needs at least one channel")
    return out


def _suspicious(info: lx.WordInfo, junk: int, boundary: bool, judged: int) -> bool:
    """A word that can make a babble measure other than separators, runon, function
    words and pairs non-zero (unknown, glued, mixed, junk, caps, odd, title, rare)."""
    m = info.mask
    # a judged word English does not know may make another language the window's, and
    # the words English knows "unknown" there: any such word rules the shortcut out
    return bool(info.kind in ("unknown", "glued", "mixed") or (judged and not m & 1) or junk
                or info.caps or info.odd or (info.title and not boundary)
                or (m & 0x81 == 1 and len(info.lower) >= 3))


class BabbleTrack:
    """Streaming gibberish and spacing detection over words. See the module doc.

    Args:
        kinds: the kinds reported (a window whose verdict is another kind is not bad).
        window: words per window; ``step``: words between two scorings.
        confirm: bad windows in a row that make a finding.
        min_words: fewest words a text needs to be judged at all.
        weights: channel -> weights (``bias`` and measures of :data:`FEATURES`);
            ``weights_lp``: the same, ``surprise`` allowed, used where the tokens'
            log-probabilities are known (:class:`~degen.detect.surprise.SurpriseTrack`).
    """

    def __init__(self, *, kinds: Iterable[str] = ("gibberish", "spacing"), window: int = 32,
                 step: int = 8, confirm: int = 2, min_words: int = 12,
                 weights: Mapping[str, Mapping[str, float]] | None = None,
                 weights_lp: Mapping[str, Mapping[str, float]] | None = None) -> None:
        if window < 8 or not 1 <= step <= window or confirm < 1 or min_words < 1:
            raise InvalidParams("window must be >= 8, step in [1, window], confirm >= 1 and "
                                "min_words >= 1")
        self.kinds = frozenset(kinds)
        self.window, self.step, self.confirm, self.min_words = window, step, confirm, min_words
        self.weights = check_weights(WEIGHTS if weights is None else weights, False, "weights")
        self.weights_lp = check_weights(WEIGHTS_LP if weights_lp is None else weights_lp, True,
                                        "weights_lp")
        self.surprise: SurpriseTrack | None = None  # set by the watch
        self._bigrams = lx.lexicon().bigrams
        self._words: deque[_Word] = deque()
        self._seen: dict[str, None] = {}  # made-up / glued words counted already
        self._gap_junk = self._gap_seps = self._gap_chars = 0
        self._gap_boundary = self._line_start = True
        self._prev: lx.WordInfo | None = None
        self.n = 0  # words seen (a glued or junk token counts as the words it stands for)
        self._size = 0  # words in the window, counted so
        # kept as words come and go, to score a clean window without measuring it:
        self._susp = 0  # suspicious words (see _suspicious)
        self._seps = self._bounds = 0  # separators and sentence boundaries
        self._paired = self._attested = self._func_en = 0  # pairs; English function words
        self._since = 0  # words since the last scoring
        self._bad = 0  # bad windows in a row
        self.scored = 0  # windows scored
        self.bad_windows = 0
        self.worst: dict[str, Any] | None = None  # the highest-scoring window so far
        self.trace: list[tuple[dict[str, float], bool]] | None = None  # (measures, final)
        self.finding: Finding | None = None
        self._onset = 0  # where the first of the bad windows in a row starts

    # ------------------------------------------------------------------ feeding
    def gap(self, unit: str, newline: bool = False) -> None:
        """A punctuation unit (a run of one character) between words, or a line break."""
        if newline:
            self._gap_boundary = True
            self._gap_seps += 1
            self._line_start = True
            return
        c = unit[0]
        self._gap_chars += len(unit)
        if c in _SEPARATORS or (self._line_start and c in _LIST_MARKS):
            self._gap_seps += 1
        self._line_start = False
        if c in _BOUNDARY:
            self._gap_boundary = True
        if c not in _PROSE and not c.isalnum():
            self._gap_junk += len(unit)

    def word(self, raw: str, start: int, tag: bool = False) -> Finding | None:
        """A word (letters only) at char ``start``; returns the finding once confirmed.
        ``tag``: a hashtag or mention (glued by design, left out of the judgment)."""
        info = lx.word_info(raw) if not tag else lx.tag_info(raw)
        kind = info.kind
        low = info.lower
        unknown = glued = 0
        if kind == "unknown" or kind == "glued":
            if low not in self._seen:  # counted the first time only
                self._seen[low] = None
                if len(self._seen) > _FIRST_SEEN:
                    del self._seen[next(iter(self._seen))]
                if kind == "glued":
                    glued = info.parts
                else:
                    unknown = info.parts
        elif kind == "" and len(low) >= 2:
            unknown = 1  # counts against the languages it is not a word of
        prev = self._prev
        boundary = self._gap_boundary
        pair = 0
        if prev is not None and prev.mask & info.mask & 1 and not boundary:
            pair = 1 if f"{prev.lower} {low}" in self._bigrams else 2
        self._prev = info
        size = 1 if kind in ("foreign", "mixed") else info.parts
        junk = self._gap_junk
        w = (info, start, len(raw) + self._gap_chars, junk, self._gap_seps, boundary, pair,
             unknown, glued, size, _suspicious(info, junk, boundary, unknown))
        words = self._words
        words.append(w)
        self._gap_junk = self._gap_seps = self._gap_chars = 0
        self._gap_boundary = self._line_start = False
        self._size += size
        self._count(w, 1)
        while self._size - words[0][9] >= self.window:  # a long token may fill it alone
            old = words.popleft()
            self._size -= old[9]
            self._count(old, -1)
        self.n += size
        self._since += size
        if self.finding is None and self.n >= self.window and self._since >= self.step:
            self._score(final=False)
        return self.finding

    def finish(self) -> Finding | None:
        """The text ended: score what has not been scored (a short text once, whole)."""
        if self.finding is None and self._since and self.n >= self.min_words and (
                self.scored == 0 or self._since >= self.step // 2):
            self._score(final=True)
        return self.finding

    # ------------------------------------------------------------------ measures
    def measures(self) -> tuple[dict[str, float], str]:
        """The window's measures (:data:`FEATURES`) and its language, computed over its
        words (a bounded window: the cost per word does not grow with the text)."""
        parts = glued = mixed = junk = chars = caps = odd = title = seps = 0
        paired = attested = rare = bounds = 0
        masks: dict[int, int] = {}  # language mask -> words
        unknown: dict[int, int] = {}  # language mask -> parts counted as unknown
        funcs: dict[int, int] = {}  # function-word mask -> words
        for info, _start, ch, jk, sp, boundary, pair, unk, gl, size, _sus in self._words:
            kind = info.kind
            if kind != "foreign":
                parts += 1 if kind == "mixed" else size
            glued += gl
            junk += jk
            chars += ch
            seps += sp
            bounds += boundary
            if pair:
                paired += 1
                attested += pair == 1
            if kind == "mixed":
                mixed += 1
            caps += info.caps
            odd += info.odd
            if info.title and not boundary:
                title += 1
            m = info.mask
            if m & 0x81 == 1 and len(info.lower) >= 3:
                rare += 1
            if unk:
                masks[m] = masks.get(m, 0) + (kind == "")
                unknown[m] = unknown.get(m, 0) + unk
                if info.func:
                    funcs[info.func] = funcs.get(info.func, 0) + 1
        best, lang_i = -1, 0
        for i in range(7):
            bit = 1 << i
            k = sum(c for m, c in masks.items() if m & bit)
            if k > best:
                best, lang_i = k, i
        bit = 1 << lang_i
        n = max(1, self._size)
        parts = max(1, parts)
        english = lang_i == 0
        f = {
            "unknown": sum(c for m, c in unknown.items() if not m & bit) / parts,
            "glued": glued / parts,
            "mixed": mixed / n,
            "junk": junk / max(1, chars),
            "caps": caps / n,
            "odd": odd / n,
            "title": title / n,
            "function": sum(c for m, c in funcs.items() if m & bit) / n,
            "separators": min(1.0, seps / n),
            "pairs": attested / paired if english and paired >= 4 else _NEUTRAL_PAIRS,
            "rare": rare / n if english else 0.0,
            "runon": min(1.0, len(self._words) / (1 + bounds) / self.window),
        }
        return f, lx.LANGS[lang_i]

    def _count(self, w: _Word, sign: int) -> None:
        self._susp += sign * w[10]
        self._seps += sign * w[4]
        self._bounds += sign * w[5]
        if w[6]:
            self._paired += sign
            self._attested += sign * (w[6] == 1)
        if w[7] and w[0].func & 1:
            self._func_en += sign

    def _clean(self, table: Weights, surprise: float | None) -> bool:
        """True when the window scores below 0 in every channel, known without measuring
        it. With no suspicious word (:func:`_suspicious`) English knows every judged word,
        so the window is English and its only measures not at zero are separators,
        runon, function words and pairs, all kept exactly as words come and go (and
        surprise): the score is the one :meth:`measures` would give."""
        if self._susp:
            return False
        n = max(1, self._size)
        f = {"separators": min(1.0, self._seps / n),
             "runon": min(1.0, len(self._words) / (1 + self._bounds) / self.window),
             "function": self._func_en / n,
             "pairs": self._attested / self._paired if self._paired >= 4 else _NEUTRAL_PAIRS,
             "surprise": surprise or 0.0}
        for wt in table.values():
            v = wt["bias"]
            for k, x in wt.items():
                if k in f:
                    v += x * f[k]
            if v >= 0:
                return False
        return True

    def _score(self, final: bool) -> None:
        self._since = 0
        surprise = self.surprise.mean() if self.surprise is not None else None
        table = self.weights if surprise is None else self.weights_lp
        if self.trace is None and self._clean(table, surprise):
            self.scored += 1
            self._bad = 0
            return
        f, lang = self.measures()
        if surprise is not None:
            f["surprise"] = surprise
        self.scored += 1
        if self.trace is not None:  # calibration: every window's measures
            self.trace.append((f, final and self.scored == 1))
        channel, score = "", -float("inf")
        for ch, wt in table.items():
            v = wt["bias"]
            for k, x in wt.items():
                if k != "bias":
                    v += x * f[k]
            if v > score:
                channel, score = ch, v
        if self.worst is None or score > self.worst["score"]:
            self.worst = {"score": score, "channel": channel, "measures": f, "at_word": self.n}
        wt = table[channel]
        contrib = {k: x * f[k] for k, x in wt.items() if k != "bias"}
        top = max(contrib, key=contrib.__getitem__) if contrib else "glued"
        kind = "spacing" if top == "glued" else "gibberish"
        if score < 0 or kind not in self.kinds or self._repetitive():
            self._bad = 0
            return
        self._bad += 1
        self.bad_windows += 1
        if self._bad == 1:
            self._onset = self._onset_char()
        if self._bad >= self.confirm or (final and self.scored == 1):
            self.finding = self._make(f, contrib, score, lang, kind, channel, top)

    def _repetitive(self) -> bool:
        """A window of a few words over and over ("lesson lesson lesson") lacks what
        language has for the loop track's reason, not the babble track's: it is never
        bad here."""
        words = self._words
        return len(words) >= 8 and len({w[0].lower for w in words}) * _DISTINCT < len(words)

    def _onset_char(self) -> int:
        """Where the window's trouble starts: its first made-up, glued, mixed-script or
        capitalized word, else its first word."""
        for w in self._words:
            i = w[0]
            if i.kind in ("unknown", "glued", "mixed") or i.caps or i.odd or w[3]:
                return w[1]
        return self._words[0][1]

    def _make(self, f: dict[str, float], contrib: dict[str, float], score: float,
              lang: str, kind: str, channel: str, top: str) -> Finding:
        words = list(self._words)
        reason = _REASONS[top]
        start = self._onset
        shown = [{"text": w[0].lower, "kind": w[0].kind, **(
            {"words": list(w[0].pieces)} if w[0].pieces else {})}
            for w in words if w[0].kind in ("unknown", "glued", "mixed")][:10]
        return Finding(
            kind=kind, score=min(1.0, 0.5 + 0.1 * score), start_char=start,
            start_unit=None, unit="word",
            message=f"{reason} from char {start} (window of {len(words)} words, "
                    f"score {score:.1f})",
            evidence={"reason": reason, "channel": channel, "language": lang,
                      "measures": {k: round(v, 3) for k, v in f.items()},
                      "weighed": {k: round(v, 2) for k, v in sorted(
                          contrib.items(), key=lambda kv: -abs(kv[1]))[:4]},
                      "score": round(score, 2), "words": shown,
                      "bad_windows": self.bad_windows, "windows": self.scored,
                      "detected_at_word": self.n},
        )
