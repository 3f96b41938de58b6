"""``degen doctor`` on the bundled model (no check fails) and on broken copies of it
that the tests make, each failing the check it should, with the right message; and
on servers: a real llama.cpp server, and a scripted one that never stops."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from degen.diagnose.doctor import Check, Diagnosis, check_rope, check_sampling_defaults, diagnose
from degen.engines import hf

DEGEN = str(Path(sys.executable).with_name("degen"))


@pytest.fixture(scope="module")
def folder() -> Path:
    """The bundled model as a HF folder (the local engine's cached conversion)."""
    return hf.materialize(hf.resolve_model(None))


@pytest.fixture(scope="module")
def bundled(folder: Path) -> Diagnosis:
    return diagnose(str(folder))


def broken_copy(src: Path, dest: Path, edit: Callable[[Path], None]) -> Path:
    dest.mkdir()
    for f in src.iterdir():
        if f.name == "model.safetensors":
            os.symlink(f, dest / f.name)  # 540 MB: shared, never edited
        else:
            shutil.copy(f, dest / f.name)
    edit(dest)
    return dest


def edit_json(path: Path, **changes: object) -> None:
    d = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    path.write_text(json.dumps(d))


def by_name(d: Diagnosis) -> dict[str, Check]:
    return {c.name: c for c in d.checks}


def test_the_bundled_model_has_no_failing_check(bundled: Diagnosis) -> None:
    c = by_name(bundled)
    assert not bundled.failed, bundled.render()
    assert c["checkpoint"].status == "pass" and c["checkpoint"].data["missing"] == []
    assert c["checkpoint"].data["tensor_names_read"]
    assert c["distribution"].status == "pass"
    assert min(c["distribution"].data["first_token_probability"]) > 0.1
    assert c["chat template"].status == "pass"
    assert c["chat template"].data["header"] == "<|im_start|>assistant\n"
    assert c["end of turn"].status == "pass" and c["end of turn"].data["end_of_turn"] == 2
    assert c["padding attention"].status == "pass"
    assert c["padding attention"].data["max_weight_on_padding"] < 1e-6
    assert c["padding attention"].data["pad_positions"] > 0
    assert c["rope scaling"].status == "pass" and c["sampling defaults"].status == "pass"
    # its tokenizer pads right by default: measured, and a warning, not a failure
    pad = c["padding"]
    assert pad.status == "warn" and not pad.data["explicit"]
    assert pad.data["rows_differing_left"] == [] and pad.data["rows_differing_right"]
    # the model ends a short answer with <|im_end|> almost surely; a 1.3 penalty over
    # the prompt (which holds <|im_end|>) makes that unlikely: the ~90% runaways
    eot = c["penalty on EOT"]
    assert eot.status == "pass" and not eot.data["configured"]
    assert eot.data["p_before"] > 0.5 and eot.data["p_after"] < 0.5 * eot.data["p_before"]


def test_no_chat_template_fails(folder: Path, tmp_path: Path) -> None:
    def edit(d: Path) -> None:
        (d / "chat_template.jinja").unlink(missing_ok=True)
        edit_json(d / "tokenizer_config.json", chat_template=None)

    d = diagnose(str(broken_copy(folder, tmp_path / "m", edit)))
    c = by_name(d)
    assert d.failed and c["chat template"].status == "fail"
    assert "no chat template" in c["chat template"].saw and "seed 001" in c["chat template"].saw
    assert c["end of turn"].status == "skip" and c["penalty on EOT"].status == "skip"


def test_end_of_turn_missing_from_the_stop_tokens_fails(folder: Path, tmp_path: Path) -> None:
    """The Llama-3 trap on SmolLM2: EOS declared as <|endoftext|> everywhere while the
    template ends turns with <|im_end|>."""
    def edit(d: Path) -> None:
        edit_json(d / "tokenizer_config.json", eos_token="<|endoftext|>")
        edit_json(d / "generation_config.json", eos_token_id=0)
        edit_json(d / "config.json", eos_token_id=0)

    d = diagnose(str(broken_copy(folder, tmp_path / "m", edit)))
    c = by_name(d)["end of turn"]
    assert d.failed and c.status == "fail", d.render()
    assert "<|im_end|> (2), which is not a stop token" in c.saw and "vLLM #4180" in c.saw
    assert "add 2 to eos_token_id in generation_config.json" in c.fix
    assert [x.name for x in d.checks if x.status == "fail"] == ["end of turn"]


def test_explicit_right_padding_fails(folder: Path, tmp_path: Path) -> None:
    def edit(d: Path) -> None:
        edit_json(d / "tokenizer_config.json", padding_side="right")

    d = diagnose(str(broken_copy(folder, tmp_path / "m", edit)))
    c = by_name(d)["padding"]
    assert d.failed and c.status == "fail", d.render()
    assert "tokenizer_config.json sets padding_side right" in c.saw
    assert "come out different from alone" in c.saw and "padding_side='left'" in c.fix
    assert [x.name for x in d.checks if x.status == "fail"] == ["padding"]


def test_a_mask_that_lets_padding_be_attended_fails(folder: Path, tmp_path: Path) -> None:
    """A tokenizer that returns no attention_mask: the padded batch reaches the model
    unmasked, and its attention weights show it."""
    def edit(d: Path) -> None:
        edit_json(d / "tokenizer_config.json", model_input_names=["input_ids"],
                  padding_side="left")

    d = diagnose(str(broken_copy(folder, tmp_path / "m", edit)))
    c = by_name(d)
    att = c["padding attention"]
    assert d.failed and att.status == "fail", d.render()
    assert "padding is attended" in att.saw and "returns no attention_mask" in att.saw
    assert att.data["max_weight_on_padding"] > 0.01
    assert c["padding"].status == "fail" and "no attention_mask" in c["padding"].saw


def test_rope_scaling() -> None:
    from degen.diagnose.arch import Arch
    from degen.diagnose.presets import MODELS

    assert check_rope(Arch.from_preset("llama-3.1-8b-instruct")).status == "pass"
    bare = dict(MODELS["llama-3.1-8b-instruct"], rope_scaling=None)
    c = check_rope(Arch.from_config(bare))
    assert c.status == "fail" and "no rope_scaling" in c.saw and "8,192" in c.saw
    short = dict(MODELS["qwen2.5-7b-instruct"], max_position_embeddings=131072,
                 rope_scaling={"rope_type": "yarn", "factor": 2.0,
                               "original_max_position_embeddings": 32768})
    assert check_rope(Arch.from_config(short)).status == "warn"


def test_sampling_defaults() -> None:
    assert check_sampling_defaults({"eos_token_id": 2}).status == "pass"
    c = check_sampling_defaults({"temperature": 0.6, "top_p": 0.9, "do_sample": True})
    assert c.status == "warn" and "temperature 0.6" in c.saw and "--generation-config" in c.fix
    c = check_sampling_defaults({"repetition_penalty": 1.3})
    assert c.status == "warn" and "seed 001" in c.saw


def test_a_configured_penalty_on_the_end_of_turn_token_fails(folder: Path,
                                                              tmp_path: Path) -> None:
    def edit(d: Path) -> None:
        edit_json(d / "generation_config.json", repetition_penalty=1.3)
        edit_json(d / "tokenizer_config.json", padding_side="left")

    d = diagnose(str(broken_copy(folder, tmp_path / "m", edit)))
    c = by_name(d)
    assert c["penalty on EOT"].status == "fail" and c["penalty on EOT"].data["configured"]
    assert "falls from" in c["penalty on EOT"].saw and "penalize_eot" in c["penalty on EOT"].fix
    assert c["sampling defaults"].status == "warn"
    assert [x.name for x in d.checks if x.status == "fail"] == ["penalty on EOT"]


def test_a_checkpoint_loaders_misread_fails(folder: Path, tmp_path: Path) -> None:
    """The layout degen's own GGUF cache had before: the tied embedding stored only as
    lm_head.weight and no architectures. transformers loads it; vLLM serves noise."""
    from safetensors.torch import save_file

    from degen.diagnose.checkpoint import check_checkpoint
    from degen.diagnose.doctor import load_pipeline

    p = load_pipeline(str(folder))
    good = check_checkpoint(p.folder, p.config, p.model)
    assert good.status == "pass", good.saw
    bad = tmp_path / "bad"
    bad.mkdir()
    names = [n for n, _ in p.model.named_parameters() if n != "model.embed_tokens.weight"]
    save_file({n: torch.zeros(1) for n in [*names, "lm_head.weight"]},
              str(bad / "model.safetensors"))  # only the names are read
    c = check_checkpoint(bad, {**p.config, "architectures": None}, p.model)
    assert c.status == "fail" and c.data["missing"] == ["model.embed_tokens.weight"]
    assert "names no architectures" in c.saw and "only lm_head.weight is stored" in c.saw
    assert "rename lm_head.weight to model.embed_tokens.weight" in c.fix
    assert '"architectures": ["LlamaForCausalLM"]' in c.fix


def test_weights_that_make_noise_fail_the_distribution_check(folder: Path) -> None:
    """Weights that load but are not the model (here: freshly initialized) spread the
    next token over the whole vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from degen.diagnose.checkpoint import check_distribution, first_token_logprobs
    from degen.diagnose.doctor import PROMPTS

    torch.manual_seed(0)
    noise = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    tok = AutoTokenizer.from_pretrained(str(folder))
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                       add_generation_prompt=True) for q in PROMPTS]
    c = check_distribution(first_token_logprobs(noise.eval(), tok, prompts), "test")
    assert c.status == "fail" and "distribution is flat" in c.saw
    assert max(c.data["first_token_probability"]) < 0.001
    assert check_distribution([None, float("nan")], "a server").status == "skip"


# ---------------------------------------------------------------------- CLI
def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DEGEN, "doctor", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_cli_on_the_bundled_model_exits_0_with_json(cli_env: dict[str, str]) -> None:
    r = run("--json", "-q", env=cli_env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] and d["counts"]["fail"] == 0 and len(d["checks"]) == 9
    assert {c["status"] for c in d["checks"]} <= {"pass", "warn"}


def test_cli_exits_1_on_a_failing_check_and_prints_the_fix(folder: Path, tmp_path: Path,
                                                           cli_env: dict[str, str]) -> None:
    broken = broken_copy(folder, tmp_path / "m",
                         lambda d: edit_json(d / "tokenizer_config.json", padding_side="right"))
    r = run(str(broken), env=cli_env)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    fail = next(i for i, ln in enumerate(lines) if ln.startswith("FAIL  padding"))
    assert "fix: set padding_side='left'" in lines[fail + 1]
    assert "doctor: padding..." in r.stderr  # progress, on stderr


@pytest.mark.parametrize(("args", "message"), [
    (["/no/such/model"], "does not exist"),
    (["x", "--base-url", "http://127.0.0.1:9/v1"], "not both"),
    (["--repetition-penalty", "1.0"], "must be > 1"),
])
def test_cli_bad_input(args: list[str], message: str) -> None:
    r = run(*args)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1


# ---------------------------------------------------------------------- servers
def test_server_that_stops_passes(llamacpp_server) -> None:
    from degen.diagnose.doctor import diagnose_server

    d = diagnose_server(llamacpp_server.base_url)
    c = by_name(d)
    assert not d.failed, d.render()
    assert c["chat template"].status == "pass" and c["end of turn"].status == "pass"
    assert c["end of turn"].data["finish_reasons"] == ["stop"] * 3
    assert c["distribution"].status == "pass"  # from the logprobs the server returned
    assert min(c["distribution"].data["first_token_probability"]) > 0.1
    assert c["padding"].status == "skip" and c["checkpoint"].status == "skip"


def test_server_that_never_stops_fails() -> None:
    from degen.testing.scripted import ScriptedServer

    with ScriptedServer(["length"]) as srv:
        r = run("--base-url", srv.base_url, "--json", "-q")
    assert r.returncode == 1, r.stderr
    c = {x["name"]: x for x in json.loads(r.stdout)["checks"]}
    assert c["end of turn"]["status"] == "fail" and "ran to max_tokens" in c["end of turn"]["saw"]
    assert c["end of turn"]["data"]["finish_reasons"] == ["length"] * 3
