"""The `degen` command as a user runs it: real subprocesses, real engines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from degen.prompts import load_prompts
from degen.store import iter_records
from degen.testing.llamacpp import free_port

DEGEN = str(Path(sys.executable).parent / "degen")


def degen(*args: str, cwd: Path, timeout: float = 1800, env=None) -> subprocess.CompletedProcess:
    # the timeout only guards against a hang: a model run here takes seconds, but 10x
    # that on a machine whose cores are busy with other work (issue 19)
    return subprocess.run([DEGEN, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_is_fast_and_lists_run(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    r = degen("--help", cwd=tmp_path)
    assert r.returncode == 0 and "run" in r.stdout
    assert time.perf_counter() - t0 < 3  # no torch at import; ~0.3 s here
    out = subprocess.run([sys.executable, "-c", "import sys, degen.cli.app; "
                          "print('torch' in sys.modules, 'httpx' in sys.modules)"],
                         capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"]
    v = degen("--version", cwd=tmp_path)
    assert v.returncode == 0 and v.stdout.strip() == "degen 0.1.0"


BAD = [
    (["--prompts", "{bad}"], "p.jsonl:2: not valid JSON"),
    (["--engine", "vllm"], "engine 'vllm' is not registered; available: local, openai"),
    (["--temperature", "-1"], "temperature must be in [0, 100], got -1"),
    (["--top-p", "2"], "top_p must be in (0, 1]"),
    (["--rate", "fast"], "--rate must look like"),
    (["--model", "/nope/model.gguf"], "model path /nope/model.gguf does not exist"),
    (["--resume"], "--resume needs --out"),
    (["--requests", "0"], "--requests must be >= 1"),
    (["--concurrency", "0"], "--concurrency must be >= 1"),
    (["--penalty-scope", "all"], "repetition_penalty_scope must be one of"),
]


@pytest.mark.parametrize(("args", "needle"), BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, args, needle) -> None:
    args = list(args)
    if "{bad}" in args:
        bad = tmp_path / "p.jsonl"
        bad.write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": \n')
        args[args.index("{bad}")] = str(bad)
    out = tmp_path / "out"
    if "--resume" not in args:
        args += ["--out", str(out)]
    r = degen("run", "--requests", "2", *args, cwd=tmp_path, timeout=60) \
        if "--requests" not in args else degen("run", *args, cwd=tmp_path, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0]
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_unreachable_server_says_which_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    r = degen("run", "--engine", "openai", "--base-url", url, "--out", str(tmp_path / "o"),
              cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: no server answered at {url} (ConnectError); start one "
                                "or pass --base-url")
    assert not (tmp_path / "o").exists()


def test_existing_out_needs_resume(tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "run.json").write_text("{}")
    r = degen("run", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2 and "pass --resume" in r.stderr


def test_run_json_summary_on_the_local_engine(tmp_path: Path) -> None:
    r = degen("run", "--requests", "4", "--max-tokens", "12", "--temperature", "0", "--json",
              "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert {"n", "failures", "failure_rate", "ci95", "errors", "out", "tokens_per_s",
            "latency_p50_s", "latency_p95_s"} <= set(s)
    assert s["n"] == 4 and s["errors"] == 0 and s["out"] == str(tmp_path / "o")
    recs = list(iter_records(tmp_path / "o" / "records.jsonl"))
    # reaching the cap is counted, and is not a failure by itself: a failure is a
    # runaway (predicted here: no --horizon) or a degenerate kind
    capped = sum(c.finish_reason == "length" for c in recs)
    assert s["capped"] == capped == s["kinds"]["capped"]["count"] > 0
    assert s["runaways"] == s["runaways_predicted"] == s["kinds"]["runaway"]["count"]
    assert s["runaways_known"] == 0 and s["long"] == capped - s["runaways"]
    assert s["failures"] == sum(bool(set(c.verdict["kinds"]) - {"capped"}) for c in recs)
    assert s["tokens_per_s"] > 0
    assert set(s["kinds"]) == {"capped", "runaway", "loop", "spacing", "gibberish", "any"}
    assert all(c.verdict is not None for c in recs)
    lo, hi = s["ci95"]
    assert 0 <= lo <= hi <= 1
    # which prompts fail: the suite's categories, counts adding up to the whole
    cats = {r["category"] for r in s["by_category"]}
    assert cats and cats <= {p.meta["category"] for p in load_prompts()}
    for table in (s["by_prompt"], s["by_category"]):
        assert sum(r["n"] for r in table) == s["valid"]
        assert sum(r["failures"] for r in table) == s["failures"]


def test_human_summary(tmp_path: Path) -> None:
    r = degen("run", "--requests", "2", "--max-tokens", "6", "--out", str(tmp_path / "o"),
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "runaways" in r.stdout and "95% CI" in r.stdout and "records.jsonl" in r.stdout
    assert "detected" in r.stdout and "gibberish" in r.stdout
    # 6 tokens: every answer runs to the cap; whether they would end is predicted
    assert "capped             2" in r.stdout and "predicted" in r.stdout
    # a horizon continues them: now it is known, and some of 2 would not end by 12 tokens
    r = degen("run", "--requests", "2", "--max-tokens", "6", "--horizon", "12", "--out",
              str(tmp_path / "h"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "known by extension" in r.stdout and "predicted" not in r.stdout
    # the table of what fails most shows when something fails, and only then
    shown = "failing most, by category" in r.stdout and "by prompt:" in r.stdout
    assert shown == ("failures           0" not in r.stdout)


def test_kill_9_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ["run", "--requests", "24", "--max-tokens", "16", "--rate", "6/s", "--batch-size",
            "4", "--out", str(out), "--quiet"]
    p = subprocess.Popen([DEGEN, *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    recs = out / "records.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if recs.exists() and len(recs.read_bytes().splitlines()) >= 6:
            break
        if p.poll() is not None:
            pytest.fail(f"run ended before the kill: {p.stderr.read()}")
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    before = len(list(iter_records(recs, allow_torn_tail=True)))
    assert 6 <= before < 24
    r = degen(*args, "--resume", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ids = [c.request_id for c in iter_records(recs)]
    assert sorted(ids) == sorted(f"0-{i}" for i in range(24))
    assert json.loads(r.stdout)["n"] == 24


def test_openai_engine_through_the_cli(tmp_path: Path, llamacpp_server) -> None:
    r = degen("run", "--engine", "openai", "--base-url", llamacpp_server.base_url,
              "--requests", "3", "--max-tokens", "8", "--no-repeat-ngram-size", "3",
              "--stream", "--json", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning: no_repeat_ngram_size is not applied" in r.stderr
    s = json.loads(r.stdout)
    assert s["n"] == 3 and s["errors"] == 0
    meta = json.loads((tmp_path / "o" / "run.json").read_text())
    assert meta["engine"]["dialect"] == "llamacpp"
    assert meta["dropped_params"] == {"no_repeat_ngram_size":
                                      "the llamacpp API has no such parameter"}


def test_run_guard_on_a_server_streams_and_is_recorded(tmp_path: Path) -> None:
    from degen.testing.scripted import ScriptedServer

    with ScriptedServer(["ok"]) as srv:
        base = ["run", "--engine", "openai", "--base-url", srv.base_url, "--requests", "2",
                "--json"]
        r = degen(*base, "--guard", "--out", str(tmp_path / "on"), cwd=tmp_path, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "note: --guard streams the responses (--stream)" in r.stderr
        assert all(b["stream"] for b in srv.bodies)
        r = degen(*base, "--out", str(tmp_path / "off"), cwd=tmp_path, timeout=60)
        assert r.returncode == 0, r.stderr
    on = json.loads((tmp_path / "on" / "run.json").read_text())["engine"]
    assert on["guard"] is True and on["stream"] is True
    off = json.loads((tmp_path / "off" / "run.json").read_text())["engine"]
    assert off["guard"] is False and off["stream"] is False  # --no-guard is the default


LOOPERS = ("list-05", "list-06", "story-03", "story-04")  # greedy loops (tests/corpus)


def test_run_guard_cuts_loops_on_the_local_engine(tmp_path: Path) -> None:
    from degen.prompts import load_prompts

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": p.id, "messages": list(p.messages)}) + "\n"
                               for p in load_prompts() if p.id in LOOPERS))
    r = degen("run", "--prompts", str(prompts), "--requests", "4", "--temperature", "0",
              "--max-tokens", "128", "--json", "-q", "--guard", "--out", str(tmp_path / "o"),
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    recs = list(iter_records(tmp_path / "o" / "records.jsonl"))
    cut = [c for c in recs if c.finish_reason == "repetition"]
    assert s["cut"] == len(cut) >= 2  # "1. 1. 1." and ",\nA silent night" loop early
    assert all(c.extra["cut"]["kind"] == "loop" and c.completion_tokens < 128 for c in cut)
    assert json.loads((tmp_path / "o" / "run.json").read_text())["engine"]["guard"] is True


def test_a_gguf_that_is_not_a_model(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    env = dict(os.environ, DEGEN_CACHE_DIR=str(tmp_path / "cache"))
    r = degen("run", "--model", str(bad), "--out", str(tmp_path / "o"), "-q", cwd=tmp_path,
              env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot load {bad}")
    assert not (tmp_path / "o").exists()
    assert not any((tmp_path / "cache").rglob("*.safetensors"))


def test_ctrl_c_says_how_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "o"
    p = subprocess.Popen([DEGEN, "run", "--requests", "400", "--max-tokens", "64", "--out",
                          str(out), "-q"], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "records.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert f"--resume --out {out}" in err
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "interrupted"
    recs = list(iter_records(out / "records.jsonl"))
    assert all(not c.is_error for c in recs)  # requests cut by Ctrl-C are not recorded


def test_a_first_gguf_conversion_prints_nothing_with_quiet(tmp_path: Path) -> None:
    """transformers dequantizes a GGUF under its own tqdm bar; degen's output is its own."""
    env = dict(os.environ, DEGEN_CACHE_DIR=str(tmp_path / "cache"))
    r = degen("run", "--requests", "1", "--max-tokens", "4", "--out", str(tmp_path / "o"),
              "-q", "--json", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert any((tmp_path / "cache").rglob("*.safetensors"))  # it did convert
    assert r.stderr == "" and json.loads(r.stdout)["n"] == 1
