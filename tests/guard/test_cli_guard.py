"""``degen guard`` as a user runs it: a real subprocess, flags, Ctrl-C."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from degen.testing.scripted import ScriptedServer
from tests.guard.conftest import DEGEN, GuardProcess

BAD = [
    (["--upstream", "ftp://h"], "--upstream must start with http:// or https://"),
    (["--max-body", "big"], "--max-body must be a size such as 1MiB"),
    (["--default", "temperature"], "--default must look like name=value"),
    (["--override", "stream=false"], "--override stream: the guard sets stream itself"),
    (["--max-tokens-cap", "0"], "--max-tokens-cap must be >= 1"),
    (["--dialect", "tgi"], "--dialect must be auto, vllm, llamacpp or openai"),
    (["--params-from", "{tmp}/nope"], "no tune.json in"),
    (["--log-level", "loud"], "--log-level must be one of"),
    (["--cut", "loop,babble"], "--cut: unknown kind 'babble'; use all or any of loop, "
                               "gibberish, spacing"),
    (["--no-cut", "loops"], "--no-cut: unknown kind 'loops'"),
    (["--cut-reason", "stop"], "--cut-reason must be kind or length"),
]


@pytest.mark.parametrize(("args", "needle"), BAD)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args, needle) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--upstream" not in args:
        args = ["--upstream", "http://127.0.0.1:9", *args]
    r = subprocess.run([DEGEN, "guard", *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0]


def test_the_command_guards_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "study"
    out.mkdir()
    (out / "tune.json").write_text(json.dumps({"best": {"values": {
        "temperature": 0.6, "min_p": 0.1, "repetition_penalty": 1.1,
        "penalty_scope": "output", "system": "concise"}}}))
    env = dict(os.environ, DEGEN_GUARD_API_KEY="k-123")
    with ScriptedServer(["echo", "loop"], owned_by="vllm", interval_s=0.002) as up:
        g = GuardProcess("--upstream", up.base_url.removesuffix("/v1"), "--params-from",
                         str(out), "--default", "temperature=0.9", "--max-tokens-cap", "300",
                         "--no-cut", "spacing", env=env)
        try:
            auth = {"Authorization": "Bearer k-123"}
            assert httpx.post(g.url + "/chat/completions", json={"messages": []}
                              ).status_code == 401
            r = httpx.post(g.url + "/chat/completions", headers=auth, timeout=10, json={
                "model": "m", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "stop"
            body = up.bodies[0]
            assert body["temperature"] == 0.9  # --default wins over the study
            assert body["min_p"] == 0.1 and body["repetition_penalty"] == 1.1
            assert body["max_tokens"] == 300 and body["top_k"] == -1
            assert body["messages"][0]["role"] == "system"
            r = httpx.post(g.url + "/chat/completions", headers=auth, timeout=10, json={
                "model": "m", "messages": [{"role": "user", "content": "hi"}]})
            assert r.json()["choices"][0]["finish_reason"] == "repetition"
        finally:
            code, output = g.stop()
    assert code == 0, output
    assert ("warning: penalty_scope=output is not applied: vllm always penalizes prompt "
            "tokens too") in output
    assert f"degen guard on {g.url} -> {up.base_url}" in output
    assert "cutting loop, gibberish; watching spacing, runaway; logprobs asked" in output
    assert "k-123" not in output and "cut=loop@" in output
