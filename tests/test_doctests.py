"""Doctest examples in the library's docstrings run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["degen.detect.asked", "degen.detect.watch", "degen.detect.lexicon",
           "degen.engines.base", "degen.diagnose.arch", "degen.diagnose.memory",
           "degen.measurement.risk", "degen.stats", "degen.experiments.compare",
           "degen.experiments.tune.race", "degen.measurement.stress", "degen.guard.sse",
           "degen.guard.holdback", "degen.guard.logs", "degen.guard.settings",
           "degen.guard.metrics"]


@pytest.mark.parametrize("module", MODULES)
def test_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
