"""Doctest examples in the library's docstrings run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["degen.detect.asked", "degen.detect.watch",
                                    "degen.detect.lexicon", "degen.engines.base", "degen.arch",
                                    "degen.memory", "degen.risk", "degen.stats",
                                    "degen.compare", "degen.tune.race", "degen.stress",
                                    "degen.guard.sse", "degen.guard.holdback",
                                    "degen.guard.logs", "degen.guard.settings",
                                    "degen.guard.metrics"])
def test_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
