"""`degen compare`: arms parsed and checked before anything runs, the paired statistics
on known counts, and real comparisons: the bundled SmolLM2 against base Gemma-3 270M,
and the same GGUF in-process against the llama.cpp server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from degen.errors import InvalidParams, UsageError
from degen.experiments.compare import Arm, CompareConfig, check_arms, summarize_compare
from degen.records import Completion, SamplingParams
from degen.stats import mcnemar_exact_p

DEGEN = str(Path(sys.executable).with_name("degen"))


def degen(*args: str, cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DEGEN, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_an_arm_is_a_name_and_typed_settings() -> None:
    a = Arm.parse("q4:model=/m/x.gguf,temperature=0.7,top_k=40,penalty_scope=output,"
                  "guard=true,engine=openai,base_url=http://h:1/v1")
    assert a.name == "q4"
    assert a.engine == {"model": "/m/x.gguf", "guard": True, "engine": "openai",
                        "base_url": "http://h:1/v1"}
    assert a.sampling == {"temperature": 0.7, "top_k": 40, "repetition_penalty_scope": "output"}
    assert a.params(99) == SamplingParams(temperature=0.7, top_k=40, max_tokens=99,
                                          repetition_penalty_scope="output")
    assert Arm.parse("plain") == Arm("plain")
    assert "api_key" not in Arm.parse("k:api_key=secret").describe()["engine"]


@pytest.mark.parametrize(("spec", "needle"), [
    ("a:temprature=1", "unknown setting 'temprature'"),
    ("a:temperature=hot", "expected a float"),
    ("a:top_k=1.5", "expected an int"),
    ("a:guard=maybe", "expected true or false"),
    ("a:temperature", "is not key=value"),
    ("a:temperature=-1", "temperature"),
    ("a:engine=tgi", "engine must be local or openai"),
    (":temperature=1", "start with a name"),
    ("a:seed=3", "unknown setting 'seed'"),  # the plan's seeds pair the arms
])
def test_bad_arms_say_what_is_wrong(spec: str, needle: str) -> None:
    with pytest.raises(InvalidParams, match=needle):
        Arm.parse(spec)


def test_arms_need_two_and_distinct_names() -> None:
    with pytest.raises(UsageError, match="at least two"):
        check_arms([Arm("a")])
    with pytest.raises(UsageError, match="a is used twice"):
        check_arms([Arm("a"), Arm("a")])


def _c(rid: str, reason: str, pid: str = "qa-01") -> Completion:
    return Completion(rid, pid, SamplingParams(), reason, completion_tokens=10)


def test_pairs_are_matched_by_request_and_holm_adjusted(tmp_path: Path) -> None:
    # 20 requests; a fails on 0-9, b on 8-9 only, c on 0-9 like a
    done = {
        "a": [_c(str(i), "length" if i < 10 else "stop") for i in range(20)],
        "b": [_c(str(i), "length" if i in (8, 9) else "stop") for i in range(20)],
        "c": [_c(str(i), "length" if i < 10 else "stop") for i in range(20)],
    }
    done["b"].append(_c("x", "cancelled"))  # left out of every count
    s = summarize_compare([Arm("a"), Arm("b"), Arm("c")], done,
                          CompareConfig(out=tmp_path, requests=20), {})
    rows = {r["name"]: r for r in s["arms"]}
    assert (rows["a"]["n"], rows["a"]["failures"], rows["a"]["failure_rate"]) == (20, 10, 0.5)
    assert rows["b"]["cancelled"] == 1 and rows["b"]["n"] == 20
    pairs = {(p["a"], p["b"]): p for p in s["pairs"]}
    ab = pairs[("a", "b")]
    assert ab["pairs"] == 20 and ab["table"] == {"both": 2, "only_first": 8, "only_second": 0,
                                                 "neither": 10}
    assert ab["difference"] == pytest.approx(0.4) and ab["ci95"][0] > 0
    assert ab["p_value"] == mcnemar_exact_p(8, 0)
    ps = sorted(p["p_value"] for p in s["pairs"])
    # Holm: the smallest of 3 times 3, the next times 2 (at least the one before), the
    # largest times 1 (likewise), capped at 1
    assert sorted(p["p_adjusted"] for p in s["pairs"]) == pytest.approx(
        [min(1, 3 * ps[0]), min(1, max(3 * ps[0], 2 * ps[1])),
         min(1, max(3 * ps[0], 2 * ps[1], ps[2]))])
    assert pairs[("a", "c")]["p_value"] == 1.0 and pairs[("a", "c")]["difference"] == 0
    # the file format, not a module path: compare.json files already written stay readable
    # (issue 20's move of degen.compare had renamed it, unnoticed by the round trip)
    assert s["kind"] == "degen.compare"


def test_bad_compare_input_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    for args, needle in ((["--arm", "a"], "at least two"),
                         (["--arm", "a", "--arm", "b:temp=1"], "unknown setting"),
                         (["--arm", "a", "--arm", "b", "--fail-on", "boredom"], "boredom"),
                         (["--arm", "a", "--arm", "b", "--prompts", "nope.jsonl"], "nope")):
        r = degen("compare", *args, "--out", str(tmp_path / "o"), cwd=tmp_path, timeout=60)
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o").exists()


def _check(s: dict, names: list[str], n: int) -> None:
    assert [a["name"] for a in s["arms"]] == names
    for a in s["arms"]:
        assert a["n"] + a["errors"] == n and 0 <= a["ci95"][0] <= a["ci95"][1] <= 1
        assert sum(r["n"] for r in a["by_prompt"]) == a["n"]
    # common random numbers: every arm saw the same prompts in the same order
    ids = [sorted((r["prompt_id"], r["n"]) for r in a["by_prompt"]) for a in s["arms"]]
    assert all(x == ids[0] for x in ids)
    (p,) = s["pairs"]
    assert p["pairs"] == min(a["n"] for a in s["arms"])
    assert p["p_value"] <= p["p_adjusted"] <= 1  # one pair: Holm changes nothing
    assert p["p_adjusted"] == p["p_value"]


@pytest.mark.slow
def test_smollm2_against_base_gemma3_on_raw_prompts(tmp_path: Path) -> None:
    r = degen("compare", "--arm", "smollm2", "--arm", "gemma3:model=gemma3-270m",
              "--prompts", "builtin-raw", "--requests", "8", "--max-tokens", "64",
              "--json", "-q", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    _check(s, ["smollm2", "gemma3"], 8)
    assert s["engines"]["gemma3"]["model"] == "gemma-3-270m-q4_k_m"
    assert s["engines"]["smollm2"]["model"].startswith("SmolLM2-135M")
    html = Path(s["report"]).read_text()
    assert "Paired differences" in html and "gemma3" in html
    again = degen("report", str(tmp_path / "o"), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.strip() == s["report"]


@pytest.mark.slow
def test_the_same_gguf_in_process_and_through_llamacpp(tmp_path: Path, llamacpp_server) -> None:
    url = llamacpp_server.base_url
    r = degen("compare", "--arm", "in-process:temperature=0",
              "--arm", f"llama.cpp:engine=openai,base_url={url},stream=true,temperature=0",
              "--requests", "6", "--max-tokens", "48", "--out", str(tmp_path / "o"),
              "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "in-process" in r.stdout and "llama.cpp" in r.stdout and "adjusted" in r.stdout
    s = json.loads((tmp_path / "o" / "compare.json").read_text())
    _check(s, ["in-process", "llama.cpp"], 6)
    assert s["engines"]["llama.cpp"]["engine"] == "openai"
    assert s["arms"][1]["latency_p50_s"] is not None


def test_an_arms_engine_settings_reach_its_engine() -> None:
    from degen.experiments.compare import arm_engine
    from degen.testing.scripted import ScriptedServer

    with ScriptedServer(["ok"]) as srv:
        eng = arm_engine(Arm.parse(f"s:engine=openai,base_url={srv.base_url},retries=0,"
                                   "guard=true,model=m,dialect=vllm"))
        try:
            assert (eng.name, eng.stream, eng.max_retries, eng.dialect, eng.model) == \
                ("openai", True, 0, "vllm", "m")
            assert eng.guard
        finally:
            eng.close()
    local = arm_engine(Arm.parse("l:batch_size=3,guard=true"))
    try:
        assert (local.name, local.batch_size, local.guard) == ("local", 3, True)
    finally:
        local.close()
