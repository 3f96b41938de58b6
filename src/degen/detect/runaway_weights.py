"""The runaway predictor's weights, per model, as :mod:`degen.detect.runaway` reads them.

Fitted by ``benchmarks/fit_runaway.py`` on generations whose end is known by extension
(``benchmarks/runaway_data.py``); its results (precision, recall, calibration on a half
kept out of the fit) are in ``benchmarks/results/runaway-*.json`` and benchmarks/README.md.
Each model has one fit per kind of evidence (:data:`~degen.detect.runaway.EVIDENCE`);
a model degen has no fit for gets :data:`GENERIC` (today the bundled model's: no
other model's fit is shipped yet, Gemma-3 270M's included), and ``degen fit-runaway``
writes a fit of a user's own model's runs that ``--runaway-weights FILE`` loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from degen.errors import InputFileError

# The bundled SmolLM2-135M-Instruct, fitted on 800 generations of at most 256 tokens
# (settings drawn from the wide space, a fifth at the engine's defaults), each of the
# 228 that reached the cap continued to 1,280 tokens; scored on prompts kept out of the
# fit in benchmarks/results/runaway-smollm2.json.
SMOLLM2: dict[str, dict[str, float]] = {
    "stop": {"bias": -10.2435, "log_t": 1.2353, "log_left": -0.0795, "stop_max": -0.0787,
        "stop_max_short": -0.0206, "stop_mean": -0.1385, "stop_max_all": 0.1234,
        "stop_since": -0.0404, "surprise": 0.3573, "surprise_all": 0.9051, "loop": 0.5151,
        "babble": -0.4017, "bad_share": 0.7936, "rep": 4.2726, "rep_words": 0.2466},
    "logprobs": {"bias": -10.0479, "log_t": 1.3257, "log_left": -0.0779, "surprise": 0.347,
        "surprise_all": 0.9342, "loop": 0.5131, "babble": -0.3341, "bad_share": 0.828,
        "rep": 4.2733, "rep_words": 0.3111},
    "text": {"bias": -8.6139, "log_t": 1.7616, "log_left": -0.0573, "loop": 0.4264,
        "babble": 0.0857, "bad_share": 2.6585, "rep": 2.7171, "rep_words": -2.4784},
}

#: for a model degen has no fit for (until one is fitted on several models' runs: the
#: bundled model's)
GENERIC: dict[str, dict[str, float]] = SMOLLM2

#: model name pattern -> weights
MODELS: dict[str, dict[str, dict[str, float]]] = {"smollm2-135m": SMOLLM2}
_PATTERNS = {"smollm2-135m": re.compile(r"smollm2.?135m", re.I)}


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
