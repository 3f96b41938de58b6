"""Published configurations of common models, for ``degen memory`` and the doctor
when no config file is at hand. Each is the subset of the model's ``config.json``
(as published on its model card's repository) that :class:`degen.diagnose.arch.Arch` reads.

Names are matched without case, and a name's last path part works too
(``meta-llama/Llama-3.1-8B-Instruct``).
"""

from __future__ import annotations

from typing import Any

_LLAMA31 = {"model_type": "llama", "vocab_size": 128256, "max_position_embeddings": 131072,
            "num_key_value_heads": 8, "rope_theta": 500000.0, "tie_word_embeddings": False,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192}}

MODELS: dict[str, dict[str, Any]] = {
    "llama-3.1-8b-instruct": {**_LLAMA31, "hidden_size": 4096, "intermediate_size": 14336,
                              "num_hidden_layers": 32, "num_attention_heads": 32},
    "llama-3.1-70b-instruct": {**_LLAMA31, "hidden_size": 8192, "intermediate_size": 28672,
                               "num_hidden_layers": 80, "num_attention_heads": 64},
    "llama-3.1-405b-instruct": {**_LLAMA31, "hidden_size": 16384, "intermediate_size": 53248,
                                "num_hidden_layers": 126, "num_attention_heads": 128},
    "mistral-7b-instruct-v0.2": {
        "model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
        "sliding_window": None, "tie_word_embeddings": False},
    "qwen2.5-7b-instruct": {
        "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584,
        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
        "sliding_window": 131072, "use_sliding_window": False, "tie_word_embeddings": False},
    "smollm2-135m-instruct": {
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000.0,
        "tie_word_embeddings": True},
    "bert-base-uncased": {
        "model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": 30522,
        "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "max_position_embeddings": 512, "type_vocab_size": 2},
}

_ALIASES = {"bert-base": "bert-base-uncased", "smollm2-135m": "smollm2-135m-instruct",
            "llama-3.1-8b": "llama-3.1-8b-instruct", "llama-3.1-70b": "llama-3.1-70b-instruct",
            "llama-3.1-405b": "llama-3.1-405b-instruct",
            "mistral-7b-instruct": "mistral-7b-instruct-v0.2",
            "qwen2.5-7b": "qwen2.5-7b-instruct"}


def find(name: str) -> str | None:
    """The preset a name means (case-insensitive, last path part, a few aliases)."""
    key = name.strip().lower().rsplit("/", 1)[-1].removeprefix("meta-")
    key = _ALIASES.get(key, key)
    return key if key in MODELS else None
