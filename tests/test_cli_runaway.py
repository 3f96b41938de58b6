"""``degen fit-runaway``, ``degen scan --horizon`` and ``degen extend`` as a user runs
them, on run folders written here: generations whose stopping evidence says what they
are (a model that never thinks of ending, and one that does every few tokens), with
extensions that say how each ended."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from degen.outcomes import EXTENSIONS
from degen.records import Completion, SamplingParams
from degen.store import RunDir, write_json_atomic
from degen.testing.scripted import prose
from tests.test_cli import DEGEN, degen

CAP, H = 64, 512


def generation(i: int, runaway: bool, tokens: int = CAP, start: int = 0) -> dict:
    """The text, log-probabilities and stopping evidence of ``tokens`` tokens: a
    runaway never gives ending more than e^-14; a long answer gives it e^-1.5 every
    twelfth token."""
    words = prose(start + tokens, seed=i)
    pieces = [f" {w}" for w in words[start:]]
    stops = [-14.0 - (k % 3) if runaway else (-1.5 if k % 12 == 11 else -9.0)
             for k in range(start, start + tokens)]
    return {"text": "".join(pieces), "logprobs": [-1.2] * tokens,
            "logprob_chars": [len(p) for p in pieces], "stop_logprobs": stops}


def write_run(folder: Path, n: int, extended: bool = True, model: str = "toy") -> None:
    d = RunDir.create(folder, {"kind": "degen.run", "plan": {"seed": 0},
                               "engine": {"engine": "local", "model": model}})
    exts = []
    for i in range(n):
        runaway = i % 2 == 0
        g = generation(i, runaway)
        c = Completion(f"0-{i}", f"p-{i % 10}", SamplingParams(max_tokens=CAP, seed=i),
                       "length", text=g.pop("text"), completion_tokens=CAP, model=model,
                       messages=({"role": "user", "content": "Tell me a story."},), extra=g)
        d.append(c)
        if extended:
            more = H - CAP if runaway else 40
            g2 = generation(i, runaway, more, CAP)
            exts.append(Completion(c.request_id, c.prompt_id, c.params,
                                   "length" if runaway else "stop", text=g2.pop("text"),
                                   completion_tokens=more, model=model,
                                   extra={**g2, "extends": {"from": CAP, "horizon": H}}))
    d.close()
    if extended:
        (folder / EXTENSIONS).write_text("".join(e.to_json() + "\n" for e in exts))


def test_fit_runaway_then_scan_with_the_fit(tmp_path: Path) -> None:
    write_run(tmp_path / "train", 40)
    r = degen("fit-runaway", str(tmp_path / "train"), "--out", str(tmp_path / "fit.json"),
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["kind"] == "degen.runaway-fit" and fit["horizon"] == H and fit["cap"] == CAP
    at_cap = fit["scores"]["stop"]["at_cap"]
    assert at_cap["n"] == 40 and at_cap["runaways"] == 20
    assert at_cap["precision"]["value"] == 1.0 and at_cap["recall"]["value"] == 1.0
    assert "precision" in r.stdout and "--runaway-weights" in r.stdout

    # the scan of a new run with that fit: runaways predicted, no extension needed
    write_run(tmp_path / "new", 10, extended=False)
    records = str(tmp_path / "new" / "records.jsonl")
    r = degen("scan", records, "--format", "jsonl", "--horizon", str(H), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    vs = [json.loads(line) for line in r.stdout.splitlines()]
    assert all("capped" in v["kinds"] for v in vs)  # the generic fit knows nothing of toy
    # with the scan reading the folder's extensions, the truth is there whatever the fit
    write_run(tmp_path / "known", 10)
    r = degen("scan", str(tmp_path / "known" / "records.jsonl"), "--format", "jsonl",
              "--horizon", str(H), cwd=tmp_path)
    vs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [("runaway" in v["kinds"]) for v in vs] == [i % 2 == 0 for i in range(10)]
    f = next(f for f in vs[0]["findings"] if f["kind"] == "runaway")
    assert f["evidence"]["known"] is True and f["score"] == 1.0
    table = degen("scan", str(tmp_path / "known" / "records.jsonl"), "--horizon", str(H),
                  cwd=tmp_path)
    rows = {line.split()[0]: line.split()[1] for line in table.stdout.splitlines()[2:]}
    assert rows["runaway"] == "5" and rows["capped"] == "10" and rows["any"] == "5"


def test_scan_horizon_below_two_and_fit_on_nothing_are_one_line(tmp_path: Path) -> None:
    write_run(tmp_path / "run", 4)
    r = degen("scan", str(tmp_path / "run" / "records.jsonl"), "--horizon", "1", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--horizon" in r.stderr
    (tmp_path / "empty").mkdir()
    r = degen("fit-runaway", str(tmp_path / "empty"), "--out", str(tmp_path / "f.json"),
              cwd=tmp_path)
    assert r.returncode == 2 and "no records.jsonl" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "f.json").exists()
    write_run(tmp_path / "unextended", 6, extended=False)
    r = degen("fit-runaway", str(tmp_path / "unextended"), "--out", str(tmp_path / "f.json"),
              cwd=tmp_path)
    assert r.returncode == 2 and "extend" in r.stderr and not (tmp_path / "f.json").exists()


def test_extend_refuses_bad_input_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    write_run(tmp_path / "run", 4, extended=False)
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    for args, says in ((["--horizon", str(CAP)], "above the cap"),
                       (["--extend-share", "0"], "(0, 1]"),
                       (["--extend-share", "1.5"], "(0, 1]")):
        r = degen("extend", str(tmp_path / "run"), *args, cwd=tmp_path)
        assert r.returncode == 2 and says in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    (tmp_path / "nothing").mkdir()
    r = degen("extend", str(tmp_path / "nothing"), cwd=tmp_path)
    assert r.returncode == 2 and "holds no run" in r.stderr
    write_json_atomic(tmp_path / "nothing" / "records.jsonl", {})
    (tmp_path / "nothing" / "records.jsonl").write_text("")
    r = degen("extend", str(tmp_path / "nothing"), cwd=tmp_path)
    assert r.returncode == 2 and "run.json" in r.stderr


@pytest.mark.slow
def test_run_with_a_horizon_then_ctrl_c_in_extend_resumes_it(tmp_path: Path) -> None:
    """The bundled model: ``run --horizon`` continues its capped generations; a longer
    horizon by ``degen extend``, interrupted with Ctrl-C, is resumed by the same command
    with nothing lost or sent twice."""
    out = tmp_path / "o"
    r = degen("run", "--requests", "6", "--max-tokens", "12", "--horizon", "24",
              "--temperature", "1.2", "--batch-size", "6", "--out", str(out), "--json", "-q",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["capped"] >= 3 and s["horizon"] == 24 and s["extended_to"] == 24
    assert s["runaways_known"] == s["runaways"] and s["long"] + s["runaways"] >= s["capped"]
    first = (out / EXTENSIONS).read_text().splitlines()
    assert len(first) == s["capped"]
    p = subprocess.Popen([DEGEN, "extend", str(out), "--horizon", "200", "-q"], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(12)  # the model loads and the continuations start
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "run the same command again" in err
    r = degen("extend", str(out), "--horizon", "200", "--json", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["runaways_known"] == done["runaways"] and done["horizon"] == 200
    lines = [json.loads(x) for x in (out / EXTENSIONS).read_text().splitlines()]
    last = {}
    for e in lines:  # per generation, at most one finished continuation to each horizon
        if e["finish_reason"] != "cancelled":
            key = (e["request_id"], e["extends"]["horizon"])
            assert key not in last
            last[key] = e
    capped = {c["request_id"] for c in map(json.loads,
                                           (out / "records.jsonl").read_text().splitlines())
              if c["finish_reason"] == "length"}
    ended_24 = {rid for (rid, h), e in last.items() if h == 24 and e["finish_reason"] == "stop"}
    assert {rid for rid, h in last if h == 200} == capped - ended_24
