"""Preloaded by the fork server of ``degen scan --jobs`` workers (never imported
elsewhere): judging one sample here loads the detectors' word lists and segmenter
data (about 140 MB, 2 s) once, in the server, and every worker forked from it starts
with them already in memory, shared copy-on-write, instead of loading its own.

A failure here is swallowed: the workers then load the data themselves, and any real
error surfaces from them with its message.

Ctrl-C is the parent's to handle (it stops the workers): the server ignores it from
here on, before warming up, and every worker forked from it starts ignoring it, so a
Ctrl-C that lands while a worker is still starting (before the pool's initializer
runs) cannot print a worker's traceback.
"""

from __future__ import annotations

import contextlib
import signal


def warm_up() -> None:
    from degen.detect.verdict import default_detectors, judge
    from degen.records import Completion, SamplingParams

    text = ("The album wasreleasedinSeptember and critics said it was the best record of "
            "the year; fans agreed with them. Le disque est sorti en septembre.")
    judge(Completion("warm-up", "warm-up", SamplingParams(), "stop", text=text),
          default_detectors())


signal.signal(signal.SIGINT, signal.SIG_IGN)  # see the module doc
with contextlib.suppress(Exception):
    warm_up()
