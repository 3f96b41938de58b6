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

from degen.load.store import iter_records

DEGEN = str(Path(sys.executable).with_name("degen"))
TINY = ["--requests", "4", "--max-tokens", "40", "--batch-size", "4", "--quiet",
        "--preset", "none", "--param", "temperature=0.3:1.3", "--param",
        "repetition_penalty=1.0,1.3"]


def degen(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
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
    # the study opens as a plain Optuna storage (optuna-dashboard reads the same file)
    with sqlite3.connect(out / "study.db") as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == 3


def test_report_renders_offline_in_chromium(tuned, tmp_path: Path) -> None:
    from degen.testing.browser import dump_dom, network_requests, screenshot

    out, _ = tuned
    html = out / "report.html"
    dom = dump_dom(html)
    for section in ("Confirmed on 6 new requests", "Pareto front", "Trials",
                    "Failure rate along each parameter", "Configuration and versions"):
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


def test_kill_9_then_resume_keeps_every_finished_trial(tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ["tune", *TINY, "--trials", "3", "--confirm", "0", "--no-report", "--out", str(out)]
    p = subprocess.Popen([DEGEN, *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    db = out / "study.db"

    def finished() -> int:
        if not db.exists():
            return 0
        with sqlite3.connect(db) as c:
            try:
                return c.execute("select count(*) from trials where state in "
                                 "('COMPLETE', 'PRUNED')").fetchone()[0]
            except sqlite3.OperationalError:
                return 0

    deadline = time.monotonic() + 300
    while finished() < 1:
        if p.poll() is not None:
            pytest.fail(f"tune ended before the kill: {p.stderr.read()}")
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    with sqlite3.connect(db) as c:
        before = c.execute("select number, state from trials").fetchall()
    r = degen(*args, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(db) as c:
        after = dict(c.execute("select number, state from trials").fetchall())
    # every trial finished before the kill is still there, untouched
    for number, state in before:
        if state in ("COMPLETE", "PRUNED"):
            assert after[number] == state
    assert sum(s in ("COMPLETE", "PRUNED") for s in after.values()) == 3
    # no record duplicated in any trial folder
    for f in (out / "trials").iterdir():
        ids = [c.request_id for c in iter_records(f / "records.jsonl")]
        assert len(ids) == len(set(ids))


def test_two_workers_share_one_study_in_postgresql(tmp_path: Path) -> None:
    from degen.testing.postgres import PostgresServer

    with PostgresServer() as pg:
        args = ["tune", *TINY, "--max-tokens", "24", "--trials", "4", "--confirm", "0",
                "--no-report", "--storage", pg.url, "--study", "shared"]
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
