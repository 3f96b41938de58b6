"""`degen profile`: window maths, the reading, files written, live generation."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from degen.errors import InvalidParams
from degen.experiments.profile import profile, reading, sources
from degen.records import Completion, SamplingParams

DEGEN = str(Path(sys.executable).parent / "degen")


def comp(ids: list[int], ent: list[float] | None = None, i: int = 0) -> Completion:
    return Completion(str(i), "p", SamplingParams(), finish_reason="length", text="x",
                      token_ids=ids, extra={"entropy": ent} if ent else {})


def degrading(i: int) -> Completion:
    """64 fresh tokens, then a loop of period 4; entropy falling from 3 to 0.2."""
    ids = list(range(1000 + 100 * i, 1064 + 100 * i)) + [1, 2, 3, 4] * 16
    ent = [3.0] * 64 + [0.2] * 64
    return comp(ids, ent, i)


def test_windows_by_position_by_hand() -> None:
    c = profile([degrading(0), degrading(1)], "toy", window=32, step=32)
    assert c.positions == [0, 32, 64, 96]
    assert c.n == [2, 2, 2, 2]
    assert c.values["repetition"][:2] == [0.0, 0.0]
    # 32 tokens of a period-4 loop: 29 4-grams, 4 distinct
    assert c.values["repetition"][2] == pytest.approx(1 - 4 / 29)
    assert c.values["distinct_1"][3] == pytest.approx(4 / 32)
    assert c.values["entropy"] == pytest.approx([3.0, 3.0, 0.2, 0.2])


def test_reading_names_the_self_reinforcing_loop() -> None:
    text = reading(profile([degrading(i) for i in range(3)], "toy", window=16, step=16))
    assert "over 3 completions" in text and "Entropy falls while repetition rises" in text
    flat = profile([comp(list(range(200)), [1.0] * 200)], "flat", window=16, step=16)
    assert "No clear degradation" in reading(flat)


def test_shorter_completions_count_only_where_they_reach() -> None:
    c = profile([degrading(0), comp(list(range(40)))], "mix", window=16, step=16)
    assert c.n[:3] == [2, 2, 1]
    assert c.values["entropy"][0] == 3.0  # only the completion that has entropy counts


def test_bad_window() -> None:
    with pytest.raises(InvalidParams, match="--window"):
        profile([], "x", window=4)


def test_cli_on_records_writes_csv_png_html(tmp_path: Path) -> None:
    f = tmp_path / "records.jsonl"
    f.write_text("".join(json.dumps({"id": i, "text": " ".join(f"w{j}" for j in range(80))
                                     + " the end" * 30}) + "\n" for i in range(3)))
    r = subprocess.run([DEGEN, "profile", str(f), "--window", "16", "--out",
                        str(tmp_path / "p")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "repetition goes from 0.00 to" in r.stdout
    rows = list(csv.DictReader((tmp_path / "p" / "profile.csv").read_text().splitlines()))
    assert rows[0]["source"] == tmp_path.name and rows[0]["n"] == "3"
    assert (tmp_path / "p" / "profile.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "p" / "profile.html").read_text()
    assert "<svg" in page and "<script" not in page and "http" not in page.split("<svg")[0]


def test_cli_needs_a_source(tmp_path: Path) -> None:
    r = subprocess.run([DEGEN, "profile"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "--model bundled" in r.stderr


def test_cli_live_with_two_sources_overlaid(tmp_path: Path) -> None:
    """The bundled model live (with entropy) beside a records file, in one plot."""
    f = tmp_path / "other.jsonl"
    f.write_text("".join(json.dumps({"text": "word " * 60}) + "\n" for _ in range(2)))
    r = subprocess.run([DEGEN, "profile", str(f), "--model", "bundled", "--requests", "3",
                        "--max-tokens", "40", "--temperature", "0", "--window", "8",
                        "--step", "8", "--out", str(tmp_path / "p")],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((tmp_path / "p" / "profile.csv").read_text().splitlines()))
    sources = {row["source"] for row in rows}
    assert sources == {"other", "SmolLM2-135M-Instruct.Q4_1"}
    live = [row for row in rows if row["source"] != "other"]
    assert all(row["entropy"] for row in live)
    assert (tmp_path / "p" / "SmolLM2-135M-Instruct.Q4_1" / "records.jsonl").is_file()


# --- surprise, P(end) and the share degenerate (seed 004's training callback) ---------

def scored(i: int, onset: int | None, kind: str = "loop", stop: bool = False) -> Completion:
    """32 one-character tokens (and an end token when ``stop``): log-probability -1 then
    -3, P(end) 0.5 then 0.1, and a verdict whose finding starts at char ``onset``."""
    text = "abcdefgh" * 4
    findings = [] if onset is None else [{"kind": kind, "start_char": onset}]
    return Completion(str(i), "p", SamplingParams(), finish_reason="stop" if stop else "length",
                      text=text, token_ids=list(range(32)) + ([0] if stop else []),
                      verdict={"findings": findings},
                      extra={"logprobs": [-1.0] * 16 + [-3.0] * 16, "logprob_chars": [1] * 32,
                             "stop_logprobs": [math.log(0.5)] * 16 + [math.log(0.1)] * 16})


def test_surprise_p_stop_and_degenerate_by_hand() -> None:
    c = profile([scored(0, 20), scored(1, None)], "toy", window=8, step=8)
    assert c.positions == [0, 8, 16, 24]
    assert c.values["surprise"] == pytest.approx([1.0, 1.0, 3.0, 3.0])
    assert c.values["p_stop"] == pytest.approx([0.5, 0.5, 0.1, 0.1])
    # the loop starts at char 20: inside the third window (chars 16-23), so from there on
    assert c.values["degenerate"] == pytest.approx([0.0, 0.0, 0.5, 0.5])
    # a finding at the window's first char counts; one just after its last does not
    assert profile([scored(0, 16)], "t", window=8, step=8).values["degenerate"] == [0, 0, 1, 1]
    assert profile([scored(0, 24)], "t", window=8, step=8).values["degenerate"] == [0, 0, 0, 1]


def test_capped_is_not_degenerate_and_the_end_token_adds_no_text() -> None:
    c = profile([scored(0, 0, kind="capped"), scored(1, 9, stop=True)], "t", window=8, step=8)
    assert c.n == [2, 2, 2, 2]  # the end token makes 33 tokens: no fifth window
    assert c.values["degenerate"] == pytest.approx([0.0, 0.5, 0.5, 0.5])
    assert "50% of the completions" in reading(c) and "surprise from 1.00 to 3.00" in reading(c)


def test_without_characters_tokens_map_to_text_in_proportion() -> None:
    c = Completion("0", "p", SamplingParams(), finish_reason="length", text="ab" * 32,
                   token_ids=list(range(32)), verdict={"findings": [
                       {"kind": "gibberish", "start_char": 40}]})
    v = profile([c], "t", window=8, step=8).values
    assert v["degenerate"] == [0, 0, 1, 1]  # 2 chars a token: char 40 is token 20
    assert v["surprise"] == [None] * 4 and v["p_stop"] == [None] * 4


def test_records_without_a_verdict_are_judged_by_the_watch() -> None:
    from degen.detect.watch import watch_completion

    text = " ".join(f"w{j}" for j in range(40)) + " the end" * 30
    c = Completion("0", "p", SamplingParams(), finish_reason="length", text=text)
    onset = min(f.start_char for f in watch_completion(c).values() if f.kind != "capped")
    assert 0 < onset < len(text)
    curve = profile([c], "t", window=8, step=8)
    ends = [m.end() for m in re.finditer(r"\w+|[^\w\s]", text)]
    want = [1.0 if onset < ends[p + 7] else 0.0 for p in curve.positions]
    assert curve.values["degenerate"] == want and want[0] == 0.0 and want[-1] == 1.0


def test_sources_from_checkpoint_folders(tmp_path: Path) -> None:
    for step in (10, 2, 100):
        (tmp_path / f"step-{step}").mkdir()
        (tmp_path / f"step-{step}" / "records.jsonl").write_text("")
    got = sources([tmp_path, tmp_path / "step-2", tmp_path / "x.jsonl"])
    assert [label for label, _ in got] == ["step-2", "step-10", "step-100", "step-2", "x"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidParams, match=r"without records\.jsonl"):
        sources([tmp_path / "empty"])
