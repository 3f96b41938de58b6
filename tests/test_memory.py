"""``degen memory``: parameter counts against published totals and a real GGUF's
tensor table, seed 003's worked KV numbers, fitting, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from degen.diagnose.arch import Arch
from degen.diagnose.memory import GIB, estimate, kv_bytes, parameters, parse_size, tokens_to_fill
from degen.diagnose.presets import MODELS
from degen.errors import InvalidParams, ModelNotFound

DEGEN = str(Path(sys.executable).with_name("degen"))

# totals published with each model (HF model cards / num_parameters())
PUBLISHED = {
    "llama-3.1-8b-instruct": 8_030_261_248,
    "llama-3.1-70b-instruct": 70_553_706_496,
    "llama-3.1-405b-instruct": 405_853_388_800,
    "mistral-7b-instruct-v0.2": 7_241_732_096,
    "qwen2.5-7b-instruct": 7_615_616_512,
    "smollm2-135m-instruct": 134_515_008,
    "bert-base-uncased": 109_482_240,  # BertModel, pooler included
}


def test_every_preset_has_a_published_total() -> None:
    assert set(PUBLISHED) == set(MODELS)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_the_published_total(name: str) -> None:
    assert sum(parameters(Arch.from_preset(name)).values()) == PUBLISHED[name]


def test_seed_003_bert_parts() -> None:
    """Seed 003's BERT-base figures, part by part (it rounds the vocabulary to 30,000)."""
    a = dataclasses.replace(Arch.from_preset("bert-base"), vocab=30_000)
    p = parameters(a)
    h = 768
    assert p["embeddings"] == 23_040_000 + 393_216 + 1_536 + 2 * h  # tokens, positions,
    # token types, LayerNorm
    per_layer_attention = 3 * h * h + h * h + 4 * h  # Q, K, V, output, their biases
    assert 3 * h * h == 1_769_472 and h * h == 589_824
    assert p["attention"] == 12 * per_layer_attention
    assert p["mlp"] == 12 * (4_718_592 + 3072 + h)


def test_seed_003_bert_kv_cache_at_4k_fp16() -> None:
    m = estimate(Arch.from_preset("bert-base"), dtype="fp16", context=4096)
    assert m.kv_bytes_at_context == 2 * 12 * 12 * 4096 * 64 * 2 == 144 * 2**20
    assert m.kv_dtype == "fp16"


def test_llama_31_8b_kv_cache() -> None:
    m = estimate(Arch.from_preset("llama-3.1-8b-instruct"), dtype="bf16")
    assert m.kv_bytes_per_token == 128 * 1024
    assert m.context == 131_072 and m.kv_bytes_at_context == 16 * GIB
    assert [r["kv_bytes"] for r in m.runaway] == [1 * GIB, 4 * GIB, 16 * GIB]
    assert [r["seconds"] for r in m.runaway] == [round(n / 70, 1) for n in (8192, 32768,
                                                                            131072)]
    assert m.weight_bytes == 8_030_261_248 * 2


def test_what_fits_on_a_gpu() -> None:
    a = Arch.from_preset("llama-3.1-8b-instruct")
    m = estimate(a, gpu_mem=80 * GIB)
    free = int(80 * GIB * 0.9) - 8_030_261_248 * 2
    assert m.free_for_kv == free
    assert m.sequences_at_context == free // (16 * GIB) == 3
    assert m.runaway_tokens_to_fill == free // (128 * 1024)
    small = estimate(a, dtype="fp32", gpu_mem=24 * GIB)  # 32 GB of weights
    assert small.sequences_at_context == 0 and small.runaway_tokens_to_fill == 0
    assert any("do not fit" in n for n in small.notes)
    assert all(r["fits"] is False for r in small.runaway)


def test_int4_keeps_a_bf16_cache_and_fp8_halves_it() -> None:
    a = Arch.from_preset("llama-3.1-70b-instruct")
    q = estimate(a, dtype="int4")
    assert q.kv_dtype == "bf16" and q.weight_bytes == -(-70_553_706_496 // 2)
    assert estimate(a, kv_dtype="fp8").kv_bytes_per_token * 2 == q.kv_bytes_per_token


def test_sliding_window_layers_stop_growing() -> None:
    cfg = dict(MODELS["smollm2-135m-instruct"], model_type="gemma3_text", sliding_window=512,
               layer_types=["sliding_attention"] * 5 + ["full_attention"]
               + ["sliding_attention"] * 24)
    a = Arch.from_config(cfg)
    assert a.sliding_layers == 29 and a.norms_per_layer == 4 and a.qk_norm
    per_layer_token = 2 * 3 * 64 * 2
    assert kv_bytes(a, 100, 2) == 30 * 100 * per_layer_token
    assert kv_bytes(a, 10_000, 2) == (29 * 512 + 10_000) * per_layer_token
    budget = 50 * 2**20
    n = tokens_to_fill(a, budget, 2)
    assert kv_bytes(a, n, 2) <= budget < kv_bytes(a, n + 1, 2)
    all_windows = dataclasses.replace(a, windows=(512,) * 30)
    assert tokens_to_fill(all_windows, budget, 2) is None  # bounded below the budget


def test_the_formula_matches_a_real_gguf_part_by_part(bundled_gguf: Path) -> None:
    a = Arch.load(bundled_gguf)
    assert a.tensor_params is not None and a.stored_type == "Q4_1"
    formula = {k: v for k, v in parameters(a).items() if v}
    assert formula == {k: v for k, v in a.tensor_params.items() if v}
    m = estimate(a)
    assert m.params_source == "gguf tensors" and m.total_params == 134_515_008
    assert (a.layers, a.heads, a.kv_heads, a.head_dim, a.max_context, a.tied) == \
        (30, 9, 3, 64, 8192, True)
    assert 90 * 2**20 < a.stored_bytes < bundled_gguf.stat().st_size


def test_a_config_folder_reads_like_its_preset(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(MODELS["qwen2.5-7b-instruct"]))
    a = Arch.load(tmp_path)
    assert sum(parameters(a).values()) == PUBLISHED["qwen2.5-7b-instruct"]
    assert a.qkv_bias and not a.o_bias and a.sliding_layers == 0  # use_sliding_window false
    mm = {"model_type": "gemma3", "text_config": dict(MODELS["smollm2-135m-instruct"])}
    assert Arch.from_config(mm).layers == 30  # multimodal configs: their text_config


@pytest.mark.parametrize(("text", "bytes_"), [("80", 80 * GIB), ("80GiB", 80 * GIB),
                                              ("80G", 80 * GIB), ("24GB", 24 * 10**9),
                                              ("512MiB", 512 * 2**20), ("1.5 TiB", 1536 * GIB)])
def test_parse_size(text: str, bytes_: int) -> None:
    assert parse_size(text) == bytes_


@pytest.mark.parametrize("bad", ["", "lots", "80 GiBs", "GiB", "-1G"])
def test_parse_size_refuses(bad: str) -> None:
    with pytest.raises(InvalidParams, match="cannot read a memory size"):
        parse_size(bad)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"presets: llama-3\.1-8b-instruct"):
        Arch.load("llama-9")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelNotFound, match=r"not a readable config\.json"):
        Arch.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 512}))
    with pytest.raises(Exception, match="no num_hidden_layers"):
        Arch.load(tmp_path / "config.json")
    with pytest.raises(InvalidParams, match="unknown dtype"):
        estimate(Arch.from_preset("bert-base"), dtype="fp9")
    with pytest.raises(InvalidParams, match="utilization"):
        estimate(Arch.from_preset("bert-base"), utilization=1.5)


# ---------------------------------------------------------------------- CLI
def degen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DEGEN, *args], capture_output=True, text=True, timeout=120)


def test_cli_text_and_json(bundled_gguf: Path) -> None:
    r = degen("memory", "meta-llama/Llama-3.1-8B-Instruct", "--gpu-mem", "80GiB")
    assert r.returncode == 0, r.stderr
    assert "8,030,261,248" in r.stdout and "128 KiB per token" in r.stdout
    assert "at 131,072 tokens: 16 GiB per sequence" in r.stdout
    assert "3 full-context sequences fit" in r.stdout
    r = degen("memory", str(bundled_gguf), "--json", "--context", "4096", "--dtype", "fp32")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["total_params"] == 134_515_008 and d["kv_bytes_at_context"] == 4096 * 30 * 2 * 3 \
        * 64 * 4
    assert d["arch"]["stored_type"] == "Q4_1" and d["params_source"] == "gguf tensors"


@pytest.mark.parametrize(("args", "message"), [
    (["nope"], "is not a file, a folder or a preset"),
    (["bert-base", "--gpu-mem", "many"], "cannot read a memory size"),
    (["bert-base", "--decode-tok-s", "0"], "decode tokens/s must be > 0"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    r = degen("memory", *args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and message in r.stderr
