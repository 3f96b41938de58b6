"""degen: find, explain, tune away and cut off degenerate LLM generations.

The public API, imported lazily so that ``import degen`` (and ``degen --help``) does
not pay for numpy, httpx or torch until they are used::

    from degen import Plan, SamplingParams, create_engine, load_prompts, run_load, summarize
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from degen import _compat

_compat.install()

_EXPORTS = {
    "DegenError": "degen.errors",
    "UsageError": "degen.errors",
    "SamplingParams": "degen.records",
    "Request": "degen.records",
    "Completion": "degen.records",
    "Timings": "degen.records",
    "Engine": "degen.engines.base",
    "create_engine": "degen.engines.base",
    "available_engines": "degen.engines.base",
    "register_engine": "degen.engines.base",
    "Prompt": "degen.prompts",
    "load_prompts": "degen.prompts",
    "Plan": "degen.experiments.load.schedule",
    "parse_rate": "degen.experiments.load.schedule",
    "run_load": "degen.experiments.load.runner",
    "iter_records": "degen.store",
    "summarize": "degen.measurement.summary",
    "Arm": "degen.experiments.compare",
    "CompareConfig": "degen.experiments.compare",
    "run_compare": "degen.experiments.compare",
    "wilson_interval": "degen.stats",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from degen.engines.base import Engine, available_engines, create_engine, register_engine  # noqa: F401
    from degen.errors import DegenError, UsageError  # noqa: F401
    from degen.experiments.compare import Arm, CompareConfig, run_compare  # noqa: F401
    from degen.experiments.load.runner import run_load  # noqa: F401
    from degen.experiments.load.schedule import Plan, parse_rate  # noqa: F401
    from degen.measurement.summary import summarize  # noqa: F401
    from degen.prompts import Prompt, load_prompts  # noqa: F401
    from degen.records import Completion, Request, SamplingParams, Timings  # noqa: F401
    from degen.stats import wilson_interval  # noqa: F401
    from degen.store import iter_records  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'degen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
