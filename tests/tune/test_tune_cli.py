"""`degen tune` and `degen report` for real: the bundled model in-process, the report
in headless Chromium (offline), kill -9 and resume, and two workers sharing one study
in a PostgreSQL server started on loopback."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from degen.store import iter_records

DEGEN = str(Path(sys.executable).with_name("degen"))
TINY = ["--requests", "4", "--max-tokens", "24", "--batch-size", "4", "--quiet",
        "--preset", "none", "--param", "temperature=0.3:1.3", "--param",
        "repetition_penalty=1.0,1.3"]


def degen(*args: str, cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([DEGEN, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("tune")
    r = degen("tune", *TINY, "--trials", "3", "--confirm", "6", "--confirm-top", "1",
              "--json", "--out", str(d / "o"), cwd=d)
    assert r.returncode == 0, r.stderr
    return d / "o", json.loads(r.stdout)


def test_tune_json_has_best_baseline_and_report(tuned) -> None:
    out, s = tuned
    assert s["trials"] == 3 and s["complete"] + s["pruned"] == 3
    assert set(s["best"]["values"]) == {"temperature", "repetition_penalty"}
    for arm in (s["baseline"], s["best_confirmed"]):
        assert arm["n"] == 6 and 0 <= arm["rate"] <= 1 and arm["ci95"][0] <= arm["rate"]
    assert s["comparison"]["pairs"] == 6 and 0 <= s["comparison"]["p_value"] <= 1
    assert Path(s["report"]).exists() and (out / "report.md").exists()
    # common random numbers: every trial sent the same prompts with the same seeds
    folders = sorted((out / "trials").iterdir())
    seeds = [sorted((c.request_id, c.prompt_id, c.params.seed)
                    for c in iter_records(f / "records.jsonl")) for f in folders]
    assert all(x == seeds[0] for x in seeds[1:]) and len(seeds[0]) == 4
    # the confirmation used new requests
    conf = next((out / "confirm").iterdir())
    cseeds = {c.params.seed for c in iter_records(conf / "records.jsonl")}
    assert not cseeds & {x[2] for x in seeds[0]}
    # what the decision cost, split by phase
    t = s["tokens"]
    assert t["search"] + t["confirmation"] + t["stress_pilot"] + t["extension"] == \
        s["generated_tokens"] > 0
    assert t["confirmation"] > 0 and t["stress_pilot"] == 0
    # the confirmation's capped generations were continued to the horizon (8 x 24): its
    # runaways are known, and a capped generation that ended is a long answer
    assert s["horizon"] == 192 and "known by extension" in s["runaways"]
    for arm in (s["baseline"], s["best_confirmed"]):
        assert arm["runaways_known"] == arm["runaways"] <= arm["capped"] + arm["cut"]
        assert arm["long"] + arm["runaways"] <= arm["capped"] + arm["cut"]
    assert (t["extension"] > 0) == any(a["capped"] for a in (s["baseline"],
                                                             s["best_confirmed"]))
    ext = [f / "extensions.jsonl" for f in (out / "confirm").iterdir()]
    assert all(e.exists() for e in ext if any(
        c.finish_reason == "length" for c in iter_records(e.parent / "records.jsonl")))
    # which prompts fail, for the confirmed best configuration: 6 requests in all
    assert sum(r["n"] for r in s["by_prompt"]) == 6 == sum(r["n"] for r in s["by_category"])
    assert sum(r["failures"] for r in s["by_prompt"]) == s["best_confirmed"]["failures"]
    assert all(set(r) >= {"prompt_id", "category", "n", "failures", "failure_rate", "ci95"}
               for r in s["by_prompt"])
    # the study opens as a plain Optuna storage (optuna-dashboard reads the same file)
    with sqlite3.connect(out / "study.db") as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == 3


def test_report_renders_offline_in_chromium(tuned, tmp_path: Path) -> None:
    from degen.testing.browser import dump_dom, network_requests, screenshot

    out, _ = tuned
    html = out / "report.html"
    dom = dump_dom(html)
    for section in ("Confirmed on 6 new requests", "Pareto front", "Trials",
                    "Failure rate along each parameter", "Which prompts fail",
                    "How generations end", "still going at 192",
                    "Configuration and versions"):
        assert section in dom
    assert network_requests(html) == []
    png = screenshot(html, tmp_path / "report.png")
    assert png.stat().st_size > 20_000


def test_report_command_and_its_errors(tuned, tmp_path: Path) -> None:
    out, _ = tuned
    (out / "report.html").unlink()
    r = degen("report", str(out), cwd=tmp_path)
    assert r.returncode == 0 and (out / "report.html").exists()
    r = degen("report", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "no tune.json" in r.stderr and len(r.stderr.splitlines()) == 1


def test_bad_tune_input_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    for args, needle in ((["--param", "temperature=2:1"], "low < high"),
                         (["--objective", "tokens2"], "unknown objective"),
                         (["--fail-on", "boredom"], "unknown failure kind")):
        r = degen("tune", *args, "--out", str(tmp_path / "o"), cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o").exists()


def test_ctrl_c_and_kill_9_then_resume_keep_every_finished_trial(tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ["tune", *TINY, "--trials", "4", "--confirm", "0", "--no-report", "--out", str(out)]
    db = out / "study.db"

    def rows(where: str = "") -> list[tuple]:
        if not db.exists():
            return []
        with sqlite3.connect(db) as c:
            try:
                return c.execute(f"select number, state from trials {where}").fetchall()
            except sqlite3.OperationalError:
                return []

    def start_and_wait_for(n_finished: int) -> subprocess.Popen:
        p = subprocess.Popen([DEGEN, *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 300
        while len(rows("where state in ('COMPLETE', 'PRUNED')")) < n_finished:
            if p.poll() is not None:
                pytest.fail(f"tune ended before it was stopped: {p.stderr.read()}")
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
        return p

    # Ctrl-C: out at once, exit 130, the trials it was running queued again
    p = start_and_wait_for(1)
    running = {n for n, s in rows() if s == "RUNNING"}
    t0 = time.monotonic()
    os.killpg(p.pid, signal.SIGINT)
    p.wait(timeout=30)
    assert time.monotonic() - t0 < 5
    assert p.returncode == 130 and "run the same command again" in p.stderr.read().decode()
    states = dict(rows())
    assert running and all(states[n] in ("COMPLETE", "PRUNED", "FAIL") for n in running)
    if any(states[n] == "FAIL" for n in running):
        assert "WAITING" in states.values()  # the same parameters, to be run again

    # kill -9: the next start fails what the dead worker was running and retries it
    p = start_and_wait_for(len(rows("where state in ('COMPLETE', 'PRUNED')")) + 1)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    before = rows()
    r = degen(*args, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    after = dict(rows())
    # every trial finished before the stops is still there, untouched
    for number, state in before:
        if state in ("COMPLETE", "PRUNED"):
            assert after[number] == state
    assert sum(s in ("COMPLETE", "PRUNED") for s in after.values()) == 4
    # no record duplicated in any trial folder (a cancelled request's line stays, and
    # its request is sent again)
    for f in (out / "trials").iterdir():
        ids = [c.request_id for c in iter_records(f / "records.jsonl") if not c.is_cancelled]
        assert len(ids) == len(set(ids))


def test_two_workers_share_one_study_in_postgresql(tmp_path: Path) -> None:
    from degen.testing.postgres import PostgresServer

    with PostgresServer() as pg:
        args = ["tune", *TINY, "--trials", "4", "--confirm", "0",
                "--jobs", "1", "--no-report", "--storage", pg.url, "--study", "shared"]
        procs = [subprocess.Popen([DEGEN, *args, "--out", str(tmp_path / f"w{i}")],
                                  cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
        outs = [p.communicate(timeout=900) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        import optuna

        study = optuna.load_study(study_name="shared", storage=pg.url)
        trials = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        # a worker stops once 4 trials are done; one still running then may finish too
        assert 4 <= len(trials) <= 5
        workers = {t.user_attrs["worker"] for t in trials}
        assert len(workers) == 2, workers  # both processes took trials


def test_stress_pilots_then_reweights_every_trial(tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ["tune", *TINY, "--requests", "8", "--trials", "2", "--confirm", "0", "--stress",
            "--no-report", "--json", "--out", str(out)]
    r = degen(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    pilot = list(iter_records(out / "pilot" / "records.jsonl"))
    assert len(pilot) == 8 and s["stress"]["pilot"]["n"] == 8
    assert s["tokens"]["stress_pilot"] == sum(c.completion_tokens or 0 for c in pilot) > 0
    assert len(s["stress"]["trials"]) == 2
    for t in s["stress"]["trials"]:
        assert t["n"] == 8 and 0 < t["n_eff"] <= 8 + 1e-9
        assert 0 <= t["ci95"][0] <= t["ci95"][1] <= 1
        assert t["stress_rate"] == t["failures"] / t["n"]
    # the trials sent the stress plan (the pilot's failing prompts drawn more), the same
    # one in both trials: common random numbers still hold
    summary = json.loads((out / "tune.json").read_text())
    weights = summary["stress"]["weights"]
    assert abs(sum(weights) - 1) < 1e-9 and len(set(weights)) > 1
    folders = sorted((out / "trials").iterdir())
    plans = [sorted((c.request_id, c.prompt_id, c.params.seed)
                    for c in iter_records(f / "records.jsonl")) for f in folders]
    assert plans[0] == plans[-1]
    # run again: the study resumes with the same weights and runs no new pilot
    again = degen(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "tune.json").read_text())["stress"]["weights"] == weights
    assert len(list(iter_records(out / "pilot" / "records.jsonl"))) == 8
