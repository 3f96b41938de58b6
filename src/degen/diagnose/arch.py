"""A model's shape, read without loading its weights: from a HF ``config.json`` (or
its folder), a GGUF file's metadata and tensor table, or a preset name.

:class:`Arch` holds what the memory maths (:mod:`degen.diagnose.memory`) and the doctor
(:mod:`degen.diagnose.doctor`) need: layer count, hidden size, attention heads and grouped
key/value heads, head size, MLP size and kind, vocabulary, tied embeddings, biases,
norms, the context the model advertises, its rope scaling and any sliding-window
layers. A GGUF also gives the exact parameter count of every tensor, by part.

>>> a = Arch.from_preset("llama-3.1-8b-instruct")
>>> a.layers, a.kv_heads, a.head_dim, a.max_context
(32, 8, 128, 131072)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from degen.errors import ModelNotFound, UsageError

# what to do, at the end of every message about a model that cannot be read
_PASS = "; pass a config.json, a model folder, a GGUF file or a preset"
# model_type -> RMSNorms in each layer (llama-style decoders have 2)
_NORMS_PER_LAYER = {"gemma2": 4, "gemma3": 4, "gemma3_text": 4, "olmo2": 2}
# model_types whose attention normalizes queries and keys per head
_QK_NORM = {"gemma3", "gemma3_text", "qwen3", "qwen3_moe", "olmo2"}
# model_types with biases on the q, k and v projections only
_QKV_BIAS = {"qwen2", "qwen2_moe"}
# GGUF architectures whose sliding-window layers follow a fixed pattern in llama.cpp:
# every n-th layer attends to the whole context, the others to the window
_GGUF_SWA_PATTERN = {"gemma2": 2, "gemma3": 6}


@dataclass(frozen=True, slots=True)
class Arch:
    """The shape of a transformer, enough to count its parameters and size its KV
    cache. ``windows`` gives each layer's attention window (``None``: the whole
    context); ``tensor_params`` the exact count by part when a GGUF was read."""

    name: str
    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    max_context: int
    tied: bool = False
    gated_mlp: bool = True  # gate, up and down projections (SwiGLU/GeGLU)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    norms_per_layer: int = 2
    layernorm: bool = False  # LayerNorm (weight and bias) instead of RMSNorm
    encoder: bool = False  # BERT-style: position and token-type embeddings, a pooler
    type_vocab: int = 0
    windows: tuple[int | None, ...] = ()
    rope_theta: float | None = None
    rope_scaling: dict[str, Any] | None = None
    source: str = ""
    tensor_params: dict[str, int] | None = None
    stored_bytes: int | None = None  # weights as stored in the file (GGUF)
    stored_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ readers
    @classmethod
    def load(cls, model: str | Path) -> Arch:
        """A preset name, a ``config.json``, a folder holding one, or a ``.gguf``."""
        p = Path(model).expanduser()
        if p.is_dir():
            if (p / "config.json").is_file():
                return cls.from_config_file(p / "config.json")
            ggufs = sorted(p.glob("*.gguf"))
            if len(ggufs) == 1:
                return cls.from_gguf(ggufs[0])
            raise ModelNotFound(f"{p} has no config.json"
                                + (" and several .gguf files: name one" if ggufs else
                                   _PASS))
        if p.is_file():
            with p.open("rb") as fh:
                magic = fh.read(4)
            if p.suffix == ".gguf" or magic == b"GGUF":
                return cls.from_gguf(p)
            return cls.from_config_file(p)
        from degen.diagnose.presets import MODELS, find

        key = find(str(model))
        if key is not None:
            return cls.from_preset(key)
        raise ModelNotFound(
            f"{model!r} is not a file, a folder or a preset; presets: {', '.join(MODELS)}")

    @classmethod
    def from_preset(cls, name: str) -> Arch:
        from degen.diagnose.presets import MODELS, find

        key = find(name)
        if key is None:
            raise ModelNotFound(f"no preset {name!r}; presets: {', '.join(MODELS)}")
        return cls.from_config(MODELS[key], name=key, source=f"preset {key}")

    @classmethod
    def from_config_file(cls, path: Path) -> Arch:
        try:
            cfg = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ModelNotFound(f"{path} is not a readable config.json ({e}){_PASS}"
                                ) from None
        if not isinstance(cfg, dict):
            raise ModelNotFound(f"{path} is not a config.json: expected a JSON object{_PASS}")
        name = cfg.get("_name_or_path") or path.parent.name
        return cls.from_config(cfg, name=str(name), source=str(path))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], name: str = "", source: str = "") -> Arch:
        """From a HF config dict (multimodal configs: their ``text_config``)."""
        if isinstance(cfg.get("text_config"), Mapping) and "num_hidden_layers" not in cfg:
            cfg = {**cfg["text_config"], "tie_word_embeddings":
                   cfg.get("tie_word_embeddings", cfg["text_config"].get("tie_word_embeddings"))}
        mt = str(cfg.get("model_type", ""))

        def need(*keys: str) -> int:
            for k in keys:
                if isinstance(cfg.get(k), int | float) and not isinstance(cfg.get(k), bool):
                    return int(cfg[k])
            raise UsageError(f"{source or name}: the config has no {keys[0]}; "
                             "degen memory reads decoder configs like Llama's and BERT's")

        hidden = need("hidden_size", "n_embd", "d_model")
        layers = need("num_hidden_layers", "n_layer", "num_layers")
        heads = need("num_attention_heads", "n_head", "num_heads")
        kv = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        inter = int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden)
        vocab = need("vocab_size")
        encoder = mt in ("bert", "roberta", "distilbert", "electra") or \
            "BertModel" in str(cfg.get("architectures"))
        layer_types = cfg.get("layer_types")
        window = cfg.get("sliding_window")
        if cfg.get("use_sliding_window") is False:
            window = None
        if isinstance(layer_types, list) and len(layer_types) == layers and window:
            windows = tuple(int(window) if "sliding" in str(t) else None for t in layer_types)
        elif window and mt in ("mistral", "mixtral") and int(window) < int(
                cfg.get("max_position_embeddings") or 1 << 62):
            windows = (int(window),) * layers
        else:
            windows = (None,) * layers
        attn_bias = bool(cfg.get("attention_bias", False))
        rope = cfg.get("rope_scaling")  # transformers 5 writes rope_parameters instead
        params = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"),
                                                          Mapping) else {}
        if not isinstance(rope, Mapping) and params.get("rope_type", "default") != "default":
            rope = params
        theta = cfg.get("rope_theta") or params.get("rope_theta")
        return cls(
            name=name or mt, model_type=mt, vocab=vocab, hidden=hidden, layers=layers,
            heads=heads, kv_heads=kv, head_dim=head_dim, intermediate=inter,
            max_context=int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 0),
            tied=bool(cfg.get("tie_word_embeddings", encoder)),
            gated_mlp=not encoder and mt not in ("gpt2", "gpt_neox", "phi", "starcoder2"),
            qkv_bias=encoder or attn_bias or mt in _QKV_BIAS, o_bias=encoder or attn_bias,
            mlp_bias=encoder or bool(cfg.get("mlp_bias", False)),
            qk_norm=mt in _QK_NORM, norms_per_layer=_NORMS_PER_LAYER.get(mt, 2),
            layernorm=encoder, encoder=encoder, type_vocab=int(cfg.get("type_vocab_size") or 0),
            windows=windows, rope_theta=theta,
            rope_scaling=dict(rope) if isinstance(rope, Mapping) else None,
            source=source,
        )

    @classmethod
    def from_gguf(cls, path: Path) -> Arch:
        """From a GGUF's metadata (shape) and tensor table (exact parameter counts)."""
        meta, tensors = read_gguf(path)
        arch = str(meta.get("general.architecture", ""))

        def get(key: str, default: Any = None) -> Any:
            return meta.get(f"{arch}.{key}", default)

        try:
            hidden, layers = int(get("embedding_length")), int(get("block_count"))
            heads = int(get("attention.head_count"))
        except (TypeError, ValueError):
            raise ModelNotFound(f"{path}: the GGUF metadata has no {arch}.block_count/"
                                "embedding_length/attention.head_count") from None
        kv = get("attention.head_count_kv", heads)
        kv = int(kv[0] if isinstance(kv, list) else kv)
        head_dim = int(get("attention.key_length") or hidden // heads)
        inter = get("feed_forward_length", 4 * hidden)
        inter = int(inter[0] if isinstance(inter, list) else inter)
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = int(get("vocab_size") or (len(tokens) if isinstance(tokens, list) else 0))
        names = {t["name"] for t in tensors}
        if not vocab:
            emb = next((t for t in tensors if t["name"] == "token_embd.weight"), None)
            vocab = int(emb["shape"][-1]) if emb else 0
        window = get("attention.sliding_window")
        every = _GGUF_SWA_PATTERN.get(arch)
        if window and every:
            windows = tuple(None if (i + 1) % every == 0 else int(window) for i in range(layers))
        elif window:
            windows = (int(window),) * layers
        else:
            windows = (None,) * layers
        rope: dict[str, Any] | None = None
        if get("rope.scaling.type") or get("rope.scaling.factor"):
            rope = {"rope_type": get("rope.scaling.type"), "factor": get("rope.scaling.factor"),
                    "original_max_position_embeddings":
                        get("rope.scaling.original_context_length")}
        elif "rope_freqs.weight" in names and arch == "llama":
            rope = {"rope_type": "llama3", "factor": None,
                    "note": "rope_freqs tensor (llama3-style frequency scaling)"}
        parts = {"embeddings": 0, "attention": 0, "mlp": 0, "norms": 0, "lm_head": 0,
                 "other": 0}
        stored = 0
        types: dict[str, int] = {}
        for t in tensors:
            n, part = int(t["n_elements"]), _gguf_part(t["name"])
            if part is None:
                continue
            parts[part] += n
            stored += int(t["n_bytes"])
            types[t["type"]] = types.get(t["type"], 0) + n
        ftype = max(types, key=lambda k: types[k]) if types else None
        return cls(
            name=str(meta.get("general.name") or path.stem), model_type=arch, vocab=vocab,
            hidden=hidden, layers=layers, heads=heads, kv_heads=kv, head_dim=head_dim,
            intermediate=inter, max_context=int(get("context_length") or 0),
            tied="output.weight" not in names, qkv_bias="blk.0.attn_q.bias" in names,
            o_bias="blk.0.attn_output.bias" in names, mlp_bias="blk.0.ffn_up.bias" in names,
            gated_mlp="blk.0.ffn_gate.weight" in names,
            qk_norm="blk.0.attn_q_norm.weight" in names,
            norms_per_layer=sum(1 for x in names if x.startswith("blk.0.")
                                and x.endswith("norm.weight")
                                and not x.startswith(("blk.0.attn_q_norm", "blk.0.attn_k_norm"))),
            windows=windows, rope_theta=get("rope.freq_base"), rope_scaling=rope,
            source=str(path), tensor_params=parts, stored_bytes=stored, stored_type=ftype,
            extra={"gguf_metadata": {k: v for k, v in meta.items()
                                     if not k.startswith("tokenizer.ggml.")}},
        )

    # ------------------------------------------------------------------ views
    @property
    def sliding_layers(self) -> int:
        return sum(1 for w in self.windows if w is not None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d["windows"] = sorted({w for w in self.windows if w is not None}) or None
        d["sliding_layers"] = self.sliding_layers
        return d


def _gguf_part(name: str) -> str | None:
    if name.startswith("rope_freqs"):
        return None  # frequencies, not weights
    if name.startswith(("token_embd", "position_embd", "token_types")):
        return "embeddings" if not name.endswith("norm.weight") else "norms"
    if name.startswith("output."):
        return "lm_head"
    if name.endswith(("norm.weight", "norm.bias")) and "attn_q_norm" not in name \
            and "attn_k_norm" not in name:
        return "norms"
    if ".attn_" in name:
        return "attention"
    if ".ffn_" in name:
        return "mlp"
    return "other"


def read_gguf(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A GGUF file's metadata (``key -> value``; token lists kept, other arrays too)
    and its tensor table (name, shape, n_elements, n_bytes, type), weights unread."""
    try:
        import gguf
    except ImportError:  # pragma: no cover - a dependency
        raise UsageError("reading GGUF files needs the gguf package: pip install gguf") \
            from None
    try:
        r = gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises many kinds
        raise ModelNotFound(f"{path} is not a readable GGUF file ({e}){_PASS}") from None
    meta: dict[str, Any] = {}
    for key, f in r.fields.items():
        try:
            meta[key] = f.contents()
        except Exception:  # an odd field is not worth failing for
            continue
    tensors = [{"name": t.name, "shape": [int(x) for x in t.shape],
                "n_elements": int(t.n_elements), "n_bytes": int(t.n_bytes),
                "type": t.tensor_type.name} for t in r.tensors]
    return meta, tensors
