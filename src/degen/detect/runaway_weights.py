"""The runaway predictor's weights, per model, as :mod:`degen.detect.runaway` reads them.

Fitted by ``benchmarks/fit_runaway.py`` on generations whose end is known by extension
(``benchmarks/runaway_data.py``); its results (precision, recall, calibration on a half
kept out of the fit) are in ``benchmarks/results/runaway-*.json`` and benchmarks/README.md.
Each model has one fit per kind of evidence (:data:`~degen.detect.runaway.EVIDENCE`);
a model degen has no fit for gets :data:`GENERIC` (fitted on every model's data
together), and ``degen fit-runaway`` writes a fit of a user's own model's runs that
``--runaway-weights FILE`` loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from degen.errors import InputFileError

# placeholder until the first fit: position and babble only
GENERIC: dict[str, dict[str, float]] = {
    "stop": {"bias": -2.0, "stop_max": -0.5, "babble": 2.0, "loop": 2.0},
    "logprobs": {"bias": -2.0, "surprise": 0.5, "babble": 2.0, "loop": 2.0},
    "text": {"bias": -1.0, "babble": 2.0, "loop": 2.0},
}

#: model name pattern -> weights
MODELS: dict[str, dict[str, dict[str, float]]] = {}
_PATTERNS = {"smollm2-135m": re.compile(r"smollm2.?135m", re.I),
             "gemma3-270m": re.compile(r"gemma.?3.?270m", re.I)}


def weights_for(model: str | None) -> tuple[str, dict[str, dict[str, float]]]:
    """The fit for ``model`` (by name) and its name; the generic fit when there is none."""
    for name, pattern in _PATTERNS.items():
        if model and pattern.search(model) and name in MODELS:
            return name, MODELS[name]
    return "generic", GENERIC


def load_weights(path: Path) -> dict[str, Any]:
    """A fit written by ``degen fit-runaway`` (its ``weights`` table)."""
    try:
        data = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise InputFileError(f"{path}: not a runaway fit ({e}); write one with degen "
                             "fit-runaway") from None
    if not isinstance(data, dict) or not isinstance(data.get("weights"), dict):
        raise InputFileError(f"{path}: not a runaway fit (no \"weights\" table); write one "
                             "with degen fit-runaway")
    return data["weights"]
