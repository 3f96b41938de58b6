"""Does a model folder hold the model its config describes, and do its weights make one?

Two of ``degen doctor``'s checks, for a failure that raises no error anywhere: weights
that load "successfully" and give noise. degen's own GGUF cache once stored SmolLM2's
tied embedding only as ``lm_head.weight`` with ``architectures: null``; transformers
loaded it fine, vLLM loaded it without a word and served a flat distribution (every
logit equal, empty answers, every request a runaway to max_tokens).

- :func:`check_checkpoint` reads the files: ``architectures`` named, and every weight
  the model class declares stored under its own name (a tied head is rebuilt from the
  *input* embedding, so that is the name that must be there).
- :func:`check_distribution` judges the model's output: the probability of the most
  likely first answer token, from a forward pass in this process or from a server's
  ``logprobs``. A trained model is confident there; noise spreads it over the whole
  vocabulary (1/49,152 for SmolLM2).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from degen.diagnose.checks import Check

# The most likely first token of a chat answer under 1% on every prompt: a trained
# model gives 0.3-1.0 there; a flat distribution over a 32K+ vocabulary gives < 0.0001.
FLAT_BELOW = 0.01


def stored_tensor_names(folder: Path) -> set[str] | None:
    """Names of the tensors in the folder's safetensors (one file or an index), read
    from the headers only; None when the weights are in another format."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text()).get("weight_map", {}))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    names: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            names.update(st.keys())
    return names


def check_checkpoint(folder: Path, config: dict[str, Any], model: Any) -> Check:
    """``architectures`` named, and each of ``model``'s weights stored under its name.

    ``model.named_parameters()`` lists a tied weight once, under its first name (the
    input embedding), which is the tensor a loader reads and ties the head to.
    """
    name = "checkpoint"
    problems: list[str] = []
    fixes: list[str] = []
    if not config.get("architectures"):
        problems.append("config.json names no architectures (vLLM and llama.cpp's "
                        "converter choose the model class from it)")
        fixes.append(f'set "architectures": ["{type(model).__name__}"] in config.json')
    stored = None if config.get("quantization_config") else stored_tensor_names(folder)
    missing: list[str] = []
    if stored is not None:
        prefix = f"{getattr(model, 'base_model_prefix', '')}."
        missing = sorted(n for n, _ in model.named_parameters()
                         if n not in stored and n.removeprefix(prefix) not in stored)
    if missing:
        tied = bool(config.get("tie_word_embeddings"))
        head = "lm_head.weight" in stored if stored else False
        what = (f"{len(missing)} weight(s) the model needs are not stored: "
                f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if tied and head:
            what += (" (tie_word_embeddings is true and only lm_head.weight is stored; "
                     "loaders that read the input embedding get uninitialized weights)")
        problems.append(what)
        fixes.append("store each tied weight under the input embedding's name (rename "
                     "lm_head.weight to model.embed_tokens.weight)" if tied and head else
                     "re-export the checkpoint with save_pretrained")
    data = {"architectures": config.get("architectures"), "missing": missing,
            "tensor_names_read": stored is not None}
    if problems:
        return Check(name, "fail", "; ".join(problems), "; ".join(fixes), data)
    saw = f"architectures {config['architectures']}; "
    saw += ("every weight stored under its name" if stored is not None else
            "weight names not read (not safetensors, or quantized)")
    return Check(name, "pass", saw, data=data)


def first_token_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str]) -> list[float]:
    """log p of the most likely next token after each (already templated) prompt."""
    import torch

    out = []
    with torch.inference_mode():
        for text in prompts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            logits = model(**{k: v.to(model.device) for k, v in ids.items()}).logits
            out.append(float(torch.log_softmax(logits[0, -1].float(), -1).max()))
    return out


def check_distribution(logprobs: Sequence[float | None], source: str) -> Check:
    """Fail when the most likely first answer token is under :data:`FLAT_BELOW` for
    every prompt: the weights give (near-)uniform noise, not a model."""
    name = "distribution"
    vals = [v for v in logprobs if v is not None and math.isfinite(v)]
    if not vals:
        return Check(name, "skip", f"no log-probabilities from {source}")
    probs = [math.exp(v) for v in vals]
    shown = " / ".join(f"{p:.3g}" for p in probs)
    data = {"first_token_probability": probs, "flat_below": FLAT_BELOW}
    if max(probs) < FLAT_BELOW:
        return Check(name, "fail", f"the next-token distribution is flat: the most likely "
                     f"first token has probability {shown} ({source}); the weights loaded "
                     "without an error but do not make the model",
                     "check the checkpoint (degen doctor MODEL_FOLDER): tied embeddings "
                     "stored under the input embedding's name, architectures in "
                     "config.json, the dtype the weights were saved in", data)
    return Check(name, "pass", f"the most likely first token has probability {shown} "
                 f"({source})", data=data)
