"""GuardConfig validation and the flag helpers: name=value parameters, sizes, and a
tuning study's best parameters mapped to each server's request fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from degen.errors import InvalidParams, UsageError
from degen.guard.config import (
    GuardConfig,
    load_tuned,
    parse_assignment,
    parse_kinds,
    parse_size,
    resolve_dialect,
    tuned_fields,
)
from degen.testing.llamacpp import free_port
from degen.testing.scripted import ScriptedServer


def test_defaults_and_normalization() -> None:
    c = GuardConfig(upstream="http://127.0.0.1:8000/")
    assert c.upstream == "http://127.0.0.1:8000/v1"
    assert c.host == "127.0.0.1" and c.max_tokens_cap == 8192 and c.max_body == 1 << 20
    assert c.url == "http://127.0.0.1:8100/v1"
    assert GuardConfig(upstream="https://h/openai/v1").upstream == "https://h/openai/v1"


def test_keys_are_not_in_the_repr() -> None:
    c = GuardConfig(upstream="http://h:1", api_key="sekrit-1", upstream_key="sekrit-2")
    assert "sekrit" not in repr(c)


@pytest.mark.parametrize(("kw", "needle"), [
    ({"upstream": ""}, "--upstream is required"),
    ({"upstream": "localhost:8000"}, "--upstream must start with http://"),
    ({"port": 70000}, "--port must be in"),
    ({"max_tokens_cap": 0}, "--max-tokens-cap must be >= 1"),
    ({"max_body": 0}, "--max-body must be >= 1"),
    ({"timeout": 0}, "--timeout must be > 0"),
    ({"max_n": 0}, "--max-n must be a whole number >= 1"),
    ({"max_headers": 3}, "--max-headers must be a whole number >= 8"),
    ({"max_header_size": 100}, "--max-header-size must be a whole number >= 1024"),
    ({"client_timeout": 0}, "--client-timeout must be > 0"),
    ({"timeout": float("inf")}, "--timeout must be > 0"),
    ({"api_key": " "}, "--api-key must be a non-empty"),
    ({"upstream_key": "a\nb"}, "--upstream-key must be a non-empty single-line"),
    ({"defaults": {"stream": False}}, "the guard sets stream itself"),
    ({"overrides": {"messages": []}}, "the guard sets messages itself"),
    ({"cut_kinds": {"loop", "babble"}}, "--cut: unknown kind 'babble'"),
    ({"cut_reason": "stop"}, "--cut-reason must be kind or length"),
    ({"overrides": {"repetition_detection": 3}}, "must be a JSON object with max_pattern"),
    ({"defaults": {"repetition_detection": {"min_count": 1}}},
     "--default repetition_detection: repetition_min_count must be 0"),
    ({"overrides": {"repetition_detection": {"min_count": 3, "max_size": 8}}},
     "must be a JSON object"),
])
def test_bad_config(kw, needle) -> None:
    kw.setdefault("upstream", "http://127.0.0.1:8000")
    with pytest.raises(InvalidParams, match=needle):
        GuardConfig(**kw)


def test_kinds_to_cut() -> None:
    c = GuardConfig(upstream="http://h:1")
    assert c.cut_kinds == {"loop", "gibberish", "spacing"} and c.cut_reason == "kind"
    assert c.logprobs is True
    assert GuardConfig(upstream="http://h:1", cut_kinds="loop").cut_kinds == {"loop"}
    assert GuardConfig(upstream="http://h:1", cut_kinds=()).cut_kinds == frozenset()
    assert parse_kinds("all") == {"loop", "gibberish", "spacing", "runaway"}
    assert parse_kinds(" loop , spacing") == {"loop", "spacing"}
    assert parse_kinds(None) == parse_kinds("") == frozenset()
    with pytest.raises(InvalidParams, match="--no-cut: unknown kind 'loops'; use all or any "
                       "of loop, gibberish, spacing, runaway"):
        parse_kinds("gibberish,loops", "--no-cut")


def test_parse_assignment() -> None:
    assert parse_assignment("temperature=0.7") == ("temperature", 0.7)
    assert parse_assignment("skip_special_tokens=false") == ("skip_special_tokens", False)
    assert parse_assignment('repetition_detection={"max_pattern_size": 10}') == (
        "repetition_detection", {"max_pattern_size": 10})
    assert parse_assignment("stop=END") == ("stop", "END")  # not JSON: kept as text
    assert parse_assignment("model = tiny ") == ("model", "tiny")
    for bad in ("temperature", "=1", "1x=2", "a b=1"):
        with pytest.raises(InvalidParams, match="name=value"):
            parse_assignment(bad)
    with pytest.raises(InvalidParams, match="sets stream itself"):
        parse_assignment("stream=false", "--override")


def test_parse_size() -> None:
    assert parse_size("1MiB") == 1 << 20
    assert parse_size("512KiB") == 512 * 1024
    assert parse_size("2MB") == 2_000_000
    assert parse_size("1048576") == 1 << 20
    assert parse_size(100) == 100
    for bad in ("big", "-1", "0", "1 TB"):
        with pytest.raises(InvalidParams, match="--max-body"):
            parse_size(bad)


def write_tune(folder: Path, best) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tune.json").write_text(json.dumps({"kind": "degen.tune", "best": best}))
    return folder


def test_load_tuned(tmp_path: Path) -> None:
    values = {"temperature": 0.6, "min_p": 0.1, "repetition_penalty": 1.1,
              "penalty_scope": "prompt+output"}
    assert load_tuned(write_tune(tmp_path / "t", {"values": values, "trial": 3})) == values
    with pytest.raises(UsageError, match=r"no tune\.json in"):
        load_tuned(tmp_path / "nope")
    with pytest.raises(UsageError, match="has no best configuration"):
        load_tuned(write_tune(tmp_path / "empty", None))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tune.json").write_text("{")
    with pytest.raises(UsageError, match="cannot read"):
        load_tuned(tmp_path / "bad")


def test_tuned_fields_per_dialect() -> None:
    values = {"temperature": 0.6, "min_p": 0.1, "repetition_penalty": 1.1,
              "penalty_scope": "prompt+output", "system": "concise"}
    fields, system, warnings = tuned_fields(values, "vllm")
    assert fields == {"temperature": 0.6, "top_p": 1.0, "presence_penalty": 0.0,
                      "frequency_penalty": 0.0, "top_k": -1, "min_p": 0.1,
                      "repetition_penalty": 1.1}
    assert system is not None and system.startswith("You are a helpful assistant")
    assert warnings == []
    fields, _, _ = tuned_fields(values, "llamacpp")
    assert fields["repeat_penalty"] == 1.1 and "repetition_penalty" not in fields
    assert fields["top_k"] == 0  # llama.cpp's own default (40) must not sneak in
    fields, _, warnings = tuned_fields(values, "openai")
    assert "min_p" not in fields and "repetition_penalty" not in fields
    assert any(w.startswith("min_p=0.1 is not applied") for w in warnings)


def test_a_tuned_repetition_detection_is_sent_only_to_vllm() -> None:
    values = {"temperature": 0.6, "repetition_min_count": 4}
    fields, _, warnings = tuned_fields(values, "vllm")
    assert fields["repetition_detection"] == {"max_pattern_size": 64, "min_pattern_size": 1,
                                              "min_count": 4} and warnings == []
    fields, _, warnings = tuned_fields(values, "llamacpp")
    assert "repetition_detection" not in fields
    assert warnings == ["repetition_min_count=4 is not applied: only vLLM stops a repeating "
                        "generation itself (repetition_detection)"]


def test_a_penalty_scope_the_server_cannot_express_is_skipped_with_one_warning() -> None:
    _, _, warnings = tuned_fields({"repetition_penalty": 1.2, "penalty_scope": "eot-exempt",
                                   "temperature": 0.5}, "vllm")
    assert warnings == ["penalty_scope=eot-exempt is not applied: vllm cannot exempt "
                        "end-of-turn tokens"]
    _, system, warnings = tuned_fields({"temperature": 0.5, "mystery": 1}, "vllm")
    assert system is None and warnings == ["mystery=1 from the study is not a knob degen "
                                           "knows; ignored"]
    with pytest.raises(InvalidParams):
        tuned_fields({}, "auto")


def test_resolve_dialect() -> None:
    with ScriptedServer(["ok"], owned_by="vllm") as srv:
        assert resolve_dialect(srv.base_url) == "vllm"
    with ScriptedServer(["ok"], owned_by="llamacpp") as srv:
        assert resolve_dialect(srv.base_url.removesuffix("/v1")) == "llamacpp"
    with pytest.raises(UsageError, match="pass --dialect"):
        resolve_dialect(f"http://127.0.0.1:{free_port()}", timeout=1)


def test_the_request_limits_come_from_a_file_and_flags_win() -> None:
    from degen.guard.settings import build

    file = {"upstream": "http://127.0.0.1:8000", "max_n": 4, "max_header_size": "8KiB",
            "max_headers": 50, "client_timeout": 2.5}
    cfg = build(file, {"max_headers": 60})
    assert (cfg.max_n, cfg.max_header_size, cfg.max_headers, cfg.client_timeout) == (
        4, 8192, 60, 2.5)
    with pytest.raises(InvalidParams, match="--max-header-size must be a size such as"):
        build(file, {"max_header_size": "big"})
