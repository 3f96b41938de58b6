"""The load runner and its output folder: records, run.json, resume, summary.

A scripted engine stands in where the test needs exact control of timing and
outcomes; the real engines run under the runner in tests/test_cli.py.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

import pytest

from degen.engines.base import Engine
from degen.errors import InputFileError, OutputDirError
from degen.experiments.load.runner import run_load
from degen.experiments.load.schedule import Plan
from degen.measurement.summary import summarize
from degen.prompts import load_prompts
from degen.records import Completion, Request, SamplingParams, Timings
from degen.store import RunDir, iter_records


class ScriptedEngine(Engine):
    """Runaway when the request index is divisible by 3, error when by 7 (not 0)."""

    name = "scripted"
    model = "script"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.inflight = 0
        self.max_inflight = 0
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def complete(self, r: Request, cancel: threading.Event | None = None) -> Completion:
        started = time.time()
        with self._lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            self.calls.append(r.request_id)
        withdrawn = (cancel or threading.Event()).wait(self.delay)
        with self._lock:
            self.inflight -= 1
        if withdrawn:
            return self.cancelled(r, started, completion_tokens=1)
        t = Timings(r.scheduled_at, started, None, time.time())
        if r.index % 7 == 0 and r.index:
            return Completion.from_request(r, finish_reason="error", error="boom", timings=t,
                                           engine=self.name, model=self.model)
        fr = "length" if r.index % 3 == 0 else "stop"
        return Completion.from_request(r, finish_reason=fr, text="x", completion_tokens=10,
                                       timings=t, engine=self.name, model=self.model)


def plan(**kw) -> Plan:
    base = dict(prompts=tuple(load_prompts())[:5], params=SamplingParams(max_tokens=10),
                requests=10, runs=2, seed=1)
    return Plan(**(base | kw))


def test_run_writes_every_record_and_run_json(tmp_path: Path) -> None:
    eng = ScriptedEngine()
    res = run_load(eng, plan(), tmp_path / "out", concurrency=3)
    recs = list(iter_records(tmp_path / "out" / "records.jsonl"))
    assert sorted(c.request_id for c in recs) == sorted(f"{r}-{i}" for r in (0, 1)
                                                         for i in range(10))
    assert [c.request_id for c in res.completions][:2] == ["0-0", "0-1"]
    meta = json.loads((tmp_path / "out" / "run.json").read_text())
    assert meta["status"] == "finished" and meta["plan"] == plan().fingerprint()
    assert meta["engine"] == {"engine": "scripted", "model": "script"}
    assert {"python", "degen"} <= set(meta["versions"])


def test_summary_counts(tmp_path: Path) -> None:
    res = run_load(ScriptedEngine(), plan(), tmp_path / "o")
    s = summarize(res.completions, out="o")
    # per run: indices 0..9; errors at 7; runaways at 0, 3, 6, 9
    assert (s["n"], s["errors"], s["valid"], s["failures"]) == (20, 2, 18, 8)
    assert s["failure_rate"] == pytest.approx(8 / 18)
    lo, hi = s["ci95"]
    assert lo < 8 / 18 < hi
    assert [r["failures"] for r in s["runs"]] == [4, 4]
    assert s["first_error"] == "boom" and s["out"] == "o"
    assert s["completion_tokens"] == 180


def test_concurrency_is_a_ceiling(tmp_path: Path) -> None:
    eng = ScriptedEngine(delay=0.05)
    run_load(eng, plan(requests=12, runs=1), tmp_path / "o", concurrency=4)
    assert eng.max_inflight == 4


def test_rate_spaces_the_requests(tmp_path: Path) -> None:
    eng = ScriptedEngine()
    t0 = time.perf_counter()
    res = run_load(eng, plan(requests=6, runs=1, rate=20.0, arrivals="constant"), tmp_path / "o")
    took = time.perf_counter() - t0
    assert 0.24 <= took < 1.0  # 5 gaps of 50 ms
    sched = [c.timings.scheduled_at for c in res.completions]
    gaps = [b - a for a, b in itertools.pairwise(sched)]
    assert all(g == pytest.approx(0.05, abs=1e-6) for g in gaps)


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    run_load(ScriptedEngine(), plan(), tmp_path / "o")
    before = (tmp_path / "o" / "records.jsonl").read_bytes()
    with pytest.raises(OutputDirError, match="pass --resume"):
        run_load(ScriptedEngine(), plan(), tmp_path / "o")
    assert (tmp_path / "o" / "records.jsonl").read_bytes() == before


def test_resume_skips_recorded_requests_and_drops_a_torn_line(tmp_path: Path) -> None:
    out = tmp_path / "o"
    run_load(ScriptedEngine(), plan(), out)
    lines = (out / "records.jsonl").read_text().splitlines(keepends=True)
    # as if killed: 7 records written, the 8th cut mid-line
    (out / "records.jsonl").write_text("".join(lines[:7]) + lines[7][:25])
    eng = ScriptedEngine()
    res = run_load(eng, plan(), out, resume=True)
    recs = list(iter_records(out / "records.jsonl"))
    ids = [c.request_id for c in recs]
    assert len(ids) == len(set(ids)) == 20
    assert len(eng.calls) == 13 and len(res.completions) == 20
    assert json.loads((out / "run.json").read_text())["resumes"] == 1


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    run_load(ScriptedEngine(), plan(), tmp_path / "o")
    with pytest.raises(OutputDirError, match="seed differ"):
        run_load(ScriptedEngine(), plan(seed=2), tmp_path / "o", resume=True)
    with pytest.raises(OutputDirError, match=r"no run\.json"):
        run_load(ScriptedEngine(), plan(), tmp_path / "empty", resume=True)


def test_malformed_records_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "records.jsonl"
    c = Completion("a", "p", SamplingParams(), finish_reason="stop")
    f.write_text(c.to_json() + "\n{oops}\n" + c.to_json() + "\n")
    with pytest.raises(InputFileError, match=r"records\.jsonl:2"):
        list(iter_records(f))


def test_appends_are_whole_lines_under_threads(tmp_path: Path) -> None:
    d = RunDir.create(tmp_path / "o", {"plan": {}})
    c = Completion("a", "p", SamplingParams(), finish_reason="stop", text="y" * 5000)
    ts = [threading.Thread(target=lambda: [d.append(c) for _ in range(50)]) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    d.close()
    assert len(list(iter_records(tmp_path / "o" / "records.jsonl"))) == 200


def test_records_carry_verdicts_and_the_summary_counts_kinds(tmp_path: Path) -> None:
    from degen.detect.verdict import default_detectors

    class Looper(ScriptedEngine):
        def complete(self, r: Request, cancel: threading.Event | None = None) -> Completion:
            c = super().complete(r, cancel)
            if c.is_error:
                return c
            text = "Sure. " + "lesson " * 30 if c.is_capped else "A fine short answer."
            return Completion.from_dict(c.to_dict() | {"text": text})

    res = run_load(Looper(), plan(runs=1), tmp_path / "o", detectors=default_detectors())
    recs = list(iter_records(tmp_path / "o" / "records.jsonl"))
    assert all(c.verdict is not None for c in recs)
    # a loop that reached its cap: capped (a fact) and a loop (a failure)
    looped = [c for c in recs if c.verdict["kinds"] == ["capped", "loop"]]
    assert len(looped) == 4  # indices 0, 3, 6, 9
    s = summarize(res.completions)
    assert s["kinds"]["loop"]["count"] == 4 and s["kinds"]["loop"]["n"] == 9  # 1 error
    assert s["failures"] == 4 and s["capped"] == 4
    assert s["kinds"]["gibberish"]["count"] == 0


def test_an_engine_that_breaks_its_contract_stops_the_run(tmp_path: Path) -> None:
    class Broken(ScriptedEngine):
        def complete(self, r: Request, cancel: threading.Event | None = None) -> Completion:
            if r.index == 2:
                raise RuntimeError("engine bug")
            return super().complete(r, cancel)

    with pytest.raises(RuntimeError, match="engine bug"):
        run_load(Broken(), plan(runs=1), tmp_path / "o")
    assert json.loads((tmp_path / "o" / "run.json").read_text())["status"] == "failed"


def test_a_stop_cancels_requests_in_flight_and_resume_sends_them_again(tmp_path: Path) -> None:
    eng = ScriptedEngine(delay=0.3)
    p = plan(runs=1)  # 10 requests
    t0 = time.monotonic()
    res = run_load(eng, p, tmp_path / "o", concurrency=4, stop=lambda cs: len(cs) >= 1)
    assert res.stopped and time.monotonic() - t0 < 3.0
    cancelled = [c for c in res.completions if c.is_cancelled]
    assert cancelled and all(c.completion_tokens == 1 for c in cancelled)
    assert eng.inflight == 0  # nothing left running in the engine
    recs = list(iter_records(tmp_path / "o" / "records.jsonl"))
    assert {c.request_id for c in recs if c.is_cancelled} == {c.request_id for c in cancelled}
    s = summarize(res.completions)
    assert s["cancelled"] == len(cancelled) and s["valid"] == len(res.completions) - len(
        cancelled) - s["errors"]

    again = run_load(ScriptedEngine(), p, tmp_path / "o", resume=True)
    assert not again.stopped and len(again.completions) == p.total
    assert not any(c.is_cancelled for c in again.completions)
    assert {c.request_id for c in cancelled} <= {c.request_id for c in again.completions}
