"""Degenerate texts for the guard and the engines' early cut, long enough to be clear
cases whatever the detectors' calibration: made-up-word babble (gibberish), seed-001
style glued words (spacing), a plain loop."""

from __future__ import annotations

import random

_SYLLABLES = ("zor", "vek", "plin", "drast", "qua", "mib", "tol", "frin", "ska", "nop", "gru",
              "ith", "bex", "lom", "wras", "tue", "kel", "ob", "snar", "fip", "yul", "dre",
              "mox", "hav")


def babble(words: int = 160, seed: int = 1) -> str:
    """``words`` made-up words of 2-3 syllables (seeded), a capital now and then."""
    rng = random.Random(seed)
    out = []
    for i in range(words):
        w = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
        out.append(w.capitalize() if i % 11 == 0 else w)
    return " ".join(out) + "."


BABBLE = babble()
GLUED = ("Thealbumwasreleasedinseptember andrankednumberone forfourweeks onthechart. "
         "Thesingerwasbornin asmalltown nearthesea andbeganwriting songswhenhewas twelve. "
         "Hisfirstrecord soldwell andthecritics praisedtheopening tracks. Thetourthat "
         "followedsoldout indays andthebandplayed inevery majorcity ofthecountry. "
         "Latersingles fromhisfifthalbum drewfewer fans buthekept recordingnewmusic "
         "everyyear untilheretired fromthestage andmovedback tohishometown wherehe "
         "openedasmall recordshop thatisstill openingtoday. Hisdaughter runstheshop "
         "nowandshe sellsoldvinyl tocollectors whotravel fromfaraway tovisit it. "
         "Manyofhisfans stillwrite lettersto theshop askingfor signedcopies ofhis "
         "firstalbum whichisnow veryhardto findanywhere intheworld.")
LOOP = "The sea is deep. " * 40
