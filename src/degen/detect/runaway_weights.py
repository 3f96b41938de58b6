"""The runaway predictor's weights, per model, as :mod:`degen.detect.runaway` reads them.

Fitted by ``benchmarks/fit_runaway.py`` on generations whose end is known by extension
(``benchmarks/runaway_data.py``); its results (precision, recall, calibration on a half
kept out of the fit) are in ``benchmarks/results/runaway-*.json`` and benchmarks/README.md.
Each model has one fit per kind of evidence (:data:`~degen.detect.runaway.EVIDENCE`);
a model degen has no fit for gets :data:`GENERIC` (the bundled model's; fits do not
carry over well from one model to another: fit yours), and ``degen fit-runaway``
writes a fit of a user's own model's runs that ``--runaway-weights FILE`` loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from degen.errors import InputFileError

# The bundled SmolLM2-135M-Instruct, fitted on the 431 generations of half of the 64
# prompts (at most 256 tokens; settings drawn from the wide space, a fifth at the
# engine's defaults; every one that reached the cap continued to 1,280 tokens); the
# other half (359 generations, 100 capped) scores it in
# benchmarks/results/runaway-smollm2.json, and tests/corpus/runaways-smollm2.jsonl
# holds 40 of its capped generations.
SMOLLM2: dict[str, dict[str, float]] = {
    "stop": {"bias": -8.4691, "log_t": 1.0213, "log_left": -0.0453,
        "stop_max": -0.1328, "stop_max_short": -0.0044, "stop_mean": 0.057,
        "stop_max_all": 0.136, "stop_since": 0.0415, "surprise": 0.3306,
        "surprise_all": 0.7906, "loop": 0.6949, "babble": -0.0715,
        "bad_share": -0.1363, "rep": 4.3102, "rep_words": 0.4711},
    "logprobs": {"bias": -9.2895, "log_t": 1.1597, "log_left": -0.0461,
        "surprise": 0.3114, "surprise_all": 0.8416, "loop": 0.666, "babble": 0.003,
        "bad_share": -0.1792, "rep": 4.4491, "rep_words": 0.4247},
    "text": {"bias": -8.4295, "log_t": 1.6189, "log_left": -0.0265, "loop": 0.2712,
        "babble": 1.2794, "bad_share": 0.7023, "rep": 3.6158, "rep_words": -2.2961},
}

# Base Gemma-3 270M (Q4_K_M) on raw prompts (no chat template), fitted on the 140
# generations of half its prompts (65 of the 137 that reached the 256-token cap were
# continued to 1,280 tokens in that half); the other half scores it in
# benchmarks/results/runaway-gemma3.json. The bundled model's fit, tried on that
# half, is no better than a coin (precision 0.50, recall 0.54 at the cap).
GEMMA3: dict[str, dict[str, float]] = {
    "stop": {"bias": -1.3809, "log_t": 0.6972, "log_left": -0.5569, "stop_max": 0.1104,
        "stop_max_short": 0.0448, "stop_mean": 0.4288, "stop_max_all": -0.1782,
        "stop_since": 0.4458, "surprise": -0.0561, "surprise_all": -0.2672,
        "loop": 2.0559, "babble": 3.3041, "bad_share": -2.7104, "rep": -0.1027,
        "rep_words": 6.2949},
    "logprobs": {"bias": -2.3205, "log_t": 0.751, "log_left": -0.5541,
        "surprise": -0.0487, "surprise_all": -0.266, "loop": 1.9952, "babble": 3.3735,
        "bad_share": -3.08, "rep": -0.2813, "rep_words": 6.316},
    "text": {"bias": -3.006, "log_t": 0.6989, "log_left": -0.5364, "loop": 2.196,
        "babble": 0.7756, "bad_share": -2.2865, "rep": -0.1075, "rep_words": 6.9481},
}

#: for a model degen has no fit for (until one is fitted on several models' runs: the
#: bundled model's)
GENERIC: dict[str, dict[str, float]] = SMOLLM2

#: model name pattern -> weights
MODELS: dict[str, dict[str, dict[str, float]]] = {"smollm2-135m": SMOLLM2,
                                                  "gemma3-270m": GEMMA3}
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
