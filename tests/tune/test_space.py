"""The search space: presets, TOML files and --param flags, and what a trial's values
become (sampling parameters, system prompt); the paired comparison of arms."""

from __future__ import annotations

import pytest

from degen.errors import InvalidParams
from degen.experiments.tune.space import (
    PRESETS,
    SearchSpace,
    inert_knobs,
    parse_dim,
    sampling_params,
    with_system,
)
from degen.experiments.tune.study import TuneConfig
from degen.measurement.failure import Measure, paired
from degen.prompts import Prompt
from degen.records import Completion, SamplingParams


def test_seed_000_preset_is_the_published_ranges() -> None:
    dims = {d.name: (d.low, d.high) for d in PRESETS["seed000"]}
    assert dims == {"temperature": (0.7, 0.9), "min_p": (0.0, 0.1),
                    "repetition_penalty": (1.0, 1.1)}


def test_flags_and_toml_override_the_preset(tmp_path) -> None:
    f = tmp_path / "space.toml"
    f.write_text('[space]\nmin_p = [0.0, 0.3]\ntop_k = [0, 40]\n'
                 'system = ["none", "concise"]\npenalty_scope = {choices = ["output"]}\n')
    s = SearchSpace.build("seed000", f, ["temperature=0.2:1.5:log", "top_k=0,20"])
    d = {x.name: x for x in s.dims}
    assert (d["temperature"].low, d["temperature"].high, d["temperature"].log) == (0.2, 1.5, True)
    assert d["min_p"].high == 0.3 and d["top_k"].choices == (0, 20)
    assert d["system"].choices == ("none", "concise") and d["penalty_scope"].fixed


@pytest.mark.parametrize("spec, needle", [
    ("temperature=1.5:0.5", "low < high"),
    ("temp=0.5:1", "unknown knob"),
    ("min_p=0:2", "min_p must be in [0, 1]"),
    ("penalty_scope=sideways", "penalty_scope must be one of"),
    ("temperature", "--param must look like"),
    ("top_k=a,b", "not a number"),
    ("repetition_min_count=0:6", "a range must start at 2"),
    ("repetition_min_count=1", "or at least 2: a pattern seen once"),
])
def test_bad_knobs_say_what_is_allowed(spec: str, needle: str) -> None:
    with pytest.raises(InvalidParams, match=needle.replace("[", r"\[").replace("]", r"\]")):
        parse_dim(spec)


def test_a_space_with_nothing_to_vary_is_refused() -> None:
    with pytest.raises(InvalidParams, match="nothing to vary"):
        SearchSpace.build(None, None, ["temperature=0.7"])
    with pytest.raises(InvalidParams, match="unknown preset"):
        SearchSpace.build("huge")


def test_scope_choices_map_onto_the_penalty_fields() -> None:
    p = sampling_params({"repetition_penalty": 1.3, "penalty_scope": "eot-exempt"}, 100)
    assert (p.repetition_penalty_scope, p.penalize_eot, p.max_tokens) == (
        "prompt+output", False, 100)
    p = sampling_params({"penalty_scope": "output"}, 10)
    assert (p.repetition_penalty_scope, p.penalize_eot) == ("output", True)
    assert sampling_params({}, 10) == SamplingParams(max_tokens=10)


def test_knobs_an_engine_cannot_apply_are_named() -> None:
    from degen.engines.openai import unsupported_fields

    space = SearchSpace.build("wide", None, ["repetition_min_count=0,3"])
    on_vllm = inert_knobs(space, lambda p: unsupported_fields(p, "vllm"))
    assert set(on_vllm) == {"penalty_scope=output", "penalty_scope=eot-exempt"}
    assert "cannot exempt end-of-turn" in on_vllm["penalty_scope=eot-exempt"]
    on_llamacpp = inert_knobs(space, lambda p: unsupported_fields(p, "llamacpp"))
    assert "repetition_min_count=3" in on_llamacpp
    assert "repetition_min_count=0" not in on_llamacpp  # off: nothing to apply


def test_vllms_repetition_stop_is_a_knob() -> None:
    d = parse_dim("repetition_min_count=0,3,5")
    assert d.choices == (0, 3, 5) and parse_dim("repetition_min_count=2:8").high == 8
    p = sampling_params({"repetition_min_count": 3, "repetition_max_pattern": 32}, 10)
    assert (p.repetition_min_count, p.repetition_max_pattern, p.repetition_min_pattern) == (
        3, 32, 1)


def test_system_variant_goes_before_chat_prompts_only() -> None:
    ps = [Prompt("a", messages=({"role": "user", "content": "hi"},)), Prompt("b", text="raw")]
    out = with_system(ps, "concise")
    assert out[0].messages[0]["role"] == "system" and out[0].messages[1]["content"] == "hi"
    assert out[1] == ps[1] and with_system(ps, "none") == tuple(ps)


def test_config_checks_objectives_and_kinds(tmp_path) -> None:
    space = SearchSpace.build()
    cfg = TuneConfig(space=space, out=tmp_path, objectives=("deviation", "failure"))
    assert cfg.objectives == ("failure", "deviation")
    with pytest.raises(InvalidParams, match="must include failure"):
        TuneConfig(space=space, out=tmp_path, objectives=("tokens",))
    with pytest.raises(InvalidParams, match="unknown failure kind"):
        TuneConfig(space=space, out=tmp_path, kinds=("boredom",))
    assert "study.db" in cfg.storage_url
    assert "secret" not in TuneConfig(space=space, out=tmp_path,
                                      storage="postgresql://u:secret@h/db").to_dict()["storage"]


def _c(i: int, reason: str) -> Completion:
    return Completion(f"0-{i}", "p", SamplingParams(), finish_reason=reason,
                      completion_tokens=10, error="boom" if reason == "error" else None)


def test_paired_comparison_counts_pairs_and_measures() -> None:
    best = [_c(0, "stop"), _c(1, "stop"), _c(2, "repetition"), _c(3, "stop"), _c(4, "error")]
    base = [_c(0, "length"), _c(1, "length"), _c(2, "length"), _c(3, "stop"), _c(4, "stop")]
    r = paired(best, base, ("runaway", "loop"))
    assert r["pairs"] == 4  # the errored request is left out of the pairs
    assert r["table"] == {"both": 1, "only_first": 0, "only_second": 2, "neither": 1}
    assert r["difference"] == -0.5 and r["ci95"][0] < -0.5 < r["ci95"][1]
    m = Measure.of(best, ("runaway", "loop"))
    assert (m.n, m.failures, m.cut, m.errors) == (4, 1, 1, 1)
    # a loop cut is a degenerate loop, not a runaway: counting runaways alone, it passes
    # (the capped baselines, never judged, count as runaways)
    r = paired(best, base, ("runaway",))
    assert r["table"] == {"both": 0, "only_first": 0, "only_second": 3, "neither": 1}
    assert Measure.of(best, ("runaway",)).failures == 0
