"""`degen scan` on each input format, verdict shape and order, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from degen.detect.inputs import read_completions
from degen.detect.verdict import judge, kind_rates
from degen.records import Completion, SamplingParams

DEGEN = str(Path(sys.executable).parent / "degen")
LOOP = "Once upon a time. " + "The end. " * 20
GLUED = ("The album wasreleasedinSeptember and rankednumberone for fourweeks on the chart; "
         "critics said itwasthebest record of the year, and fans agreed with them.")
FINE = "Green tea is best brewed at about 80 degrees for two to three minutes."


def degen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DEGEN, *args], capture_output=True, text=True, timeout=120)


def write(tmp_path: Path, rows: list) -> Path:
    f = tmp_path / "in.jsonl"
    f.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return f


def test_three_input_formats(tmp_path: Path) -> None:
    record = Completion("0-0", "p", SamplingParams(max_tokens=9), finish_reason="length",
                        text=LOOP).to_dict()
    openai_resp = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": GLUED},
         "finish_reason": "stop"}], "usage": {"completion_tokens": 30}}
    plain = {"id": "x", "text": FINE, "prompt": "How do I brew green tea?"}
    cs = list(read_completions(write(tmp_path, [record, openai_resp, plain, {"text": "hi"}])))
    assert [c.request_id for c in cs] == ["0-0", "chatcmpl-1", "x", "4"]
    assert cs[0].is_capped and cs[1].completion_tokens == 30 and cs[2].prompt.startswith("How")


def test_jsonl_verdicts_in_input_order(tmp_path: Path) -> None:
    f = write(tmp_path, [{"id": "a", "text": LOOP, "finish_reason": "length"},
                         {"id": "b", "text": GLUED}, {"id": "c", "text": FINE}])
    r = degen("scan", str(f), "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    vs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [v["id"] for v in vs] == ["a", "b", "c"]
    assert set(vs[0]) == {"id", "degenerate", "kinds", "findings", "metrics"}
    # capped; whether it would have ended is the runaway fit's call (tests/test_runaway.py)
    assert {"capped", "loop"} <= set(vs[0]["kinds"]) and vs[1]["kinds"] == ["spacing"]
    assert vs[2] == {**vs[2], "degenerate": False, "kinds": [], "findings": []}
    loop = next(f for f in vs[0]["findings"] if f["kind"] == "loop")
    # the "." ending "Once upon a time." already belongs to the periodic region
    assert loop["start_char"] == LOOP.index(". The end") and loop["evidence"]["period"] == 3
    assert vs[0]["metrics"]["seq_rep_4"] > 0.5 > vs[2]["metrics"]["seq_rep_4"]


def test_table_shows_rates_with_intervals(tmp_path: Path) -> None:
    f = write(tmp_path, [{"text": LOOP}, {"text": FINE}, {"text": FINE}, {"text": GLUED}])
    r = degen("scan", str(f))
    assert r.returncode == 0, r.stderr
    assert "4 completions" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("loop"))
    assert line.split() == ["loop", "1", "25.0%", "4.6%-69.9%"]  # Wilson for 1 of 4


@pytest.mark.parametrize(("rows", "needle"), [
    (['{"text": "ok"}', "{oops"], "in.jsonl:2: not valid JSON"),
    ([{"id": 1}], 'in.jsonl:1: not a degen record, an object with "text"'),
    ([{"text": 5}], 'in.jsonl:1: "text" must be a string'),
])
def test_bad_lines_are_named_exit_2_and_print_nothing(tmp_path: Path, rows, needle) -> None:
    r = degen("scan", str(write(tmp_path, rows)), "--format", "jsonl")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path}/"), r.stderr
    assert needle in lines[0]


def test_missing_file_and_bad_format(tmp_path: Path) -> None:
    assert degen("scan", str(tmp_path / "nope.jsonl")).returncode == 2
    r = degen("scan", str(write(tmp_path, [{"text": "x"}])), "--format", "csv")
    assert r.returncode == 2 and "--format must be table or jsonl" in r.stderr


def test_errors_are_not_judged_degenerate() -> None:
    c = Completion("e", "p", SamplingParams(), finish_reason="error", error="HTTP 500")
    v = judge(c)
    assert v["degenerate"] is False and v["findings"] == []


def test_kind_rates() -> None:
    vs = [{"degenerate": True, "kinds": ["loop"]}, {"degenerate": False, "kinds": []}]
    r = kind_rates(vs)
    assert r["loop"]["count"] == 1 and r["loop"]["rate"] == 0.5 and r["any"]["n"] == 2
    assert r["gibberish"]["count"] == 0
