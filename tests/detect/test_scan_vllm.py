"""`degen scan` on vLLM benchmark results (`vllm bench serve --save-result
--save-detailed`): one JSON object with per-request lists, told apart by content.

The fixture follows the keys `vllm/benchmarks/serve.py` writes: the run's settings,
the summary metrics, then `input_lens`, `output_lens`, `ttfts`, `itls`, `latencies`,
`start_times`, `generated_texts` and `errors`, all aligned by request index, dumped on
one line with `json.dump`. A failed request has an empty text, output length 0 and the
error text (a traceback or the HTTP reason) in `errors`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from degen.detect.inputs import open_completions, read_completions
from tests.detect.test_scan import DEGEN, FINE, GLUED, LOOP

TRACEBACK = ("Traceback (most recent call last):\n  File \"/usr/lib/python3.12/site-packages/"
             "vllm/benchmarks/lib/endpoint_request_func.py\", line 142, in "
             "async_request_openai_completions\naiohttp.client_exceptions."
             "ServerDisconnectedError: Server disconnected\n")


def vllm_result(texts: list[str], errors: list[str], **extra: Any) -> dict[str, Any]:
    """A realistic `--save-result --save-detailed` result for these requests."""
    ok = [not e for e in errors]
    out_lens = [len(t.split()) + 3 if good else 0 for t, good in zip(texts, ok, strict=True)]
    n = len(texts)
    return {
        "date": "20250611-142233", "endpoint_type": "openai", "backend": "openai",
        "label": None, "model_id": "Qwen/Qwen2.5-0.5B-Instruct",
        "tokenizer_id": "Qwen/Qwen2.5-0.5B-Instruct", "num_prompts": n,
        "request_rate": "inf", "burstiness": 1.0, "max_concurrency": 4,
        "duration": 3.81, "completed": sum(ok), "failed": n - sum(ok),
        "total_input_tokens": 96 * sum(ok), "total_output_tokens": sum(out_lens),
        "request_throughput": sum(ok) / 3.81, "request_goodput": None,
        "output_throughput": sum(out_lens) / 3.81, "total_token_throughput": 131.2,
        "input_lens": [96] * n, "output_lens": out_lens,
        "ttfts": [0.052 if good else 0.0 for good in ok],
        "itls": [[0.011] * (k - 1) if k else [] for k in out_lens],
        "latencies": [0.05 + 0.011 * k if k else 0.0 for k in out_lens],
        "start_times": [1000.0 + 0.01 * i for i in range(n)],
        "queue_times": [0.0] * n,
        "generated_texts": texts, "errors": errors,
        "max_output_tokens_per_s": 212.0, "max_concurrent_requests": 4, "rtfx": 0.0,
        "mean_ttft_ms": 52.0, "median_ttft_ms": 52.0, "std_ttft_ms": 0.4, "p99_ttft_ms": 53.1,
        "mean_tpot_ms": 11.0, "median_tpot_ms": 11.0, "std_tpot_ms": 0.2, "p99_tpot_ms": 11.4,
        "mean_itl_ms": 11.0, "median_itl_ms": 11.0, "std_itl_ms": 0.3, "p99_itl_ms": 12.0,
        **extra,
    }


TEXTS = [LOOP, GLUED, "", FINE]
ERRORS = ["", "", TRACEBACK, ""]


def save(path: Path, result: dict[str, Any], indent: int | None = None) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=indent)  # as vLLM does: one line
    return path


def degen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DEGEN, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["bench.json", "bench.jsonl", "vllm-result.txt"])
def test_a_vllm_result_is_told_by_content(tmp_path: Path, name: str) -> None:
    f = save(tmp_path / name, vllm_result(TEXTS, ERRORS))
    r = degen("scan", str(f), "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    vs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [v["id"] for v in vs] == ["0", "1", "3"]  # the failed request is skipped
    assert [v["kinds"] for v in vs] == [["loop"], ["spacing"], []]  # no finish: no runaway
    assert r.stderr.splitlines() == [f"note: {f}: skipped 1 of 4 requests that failed in "
                                     'the benchmark (non-empty "errors" entry)']


def test_completions_of_a_vllm_result(tmp_path: Path) -> None:
    result = vllm_result(TEXTS, ERRORS)
    src = open_completions(save(tmp_path / "bench.json", result))
    assert (src.format, src.skipped, src.requests, src.count()) == ("vllm", 1, 4, 3)
    cs = list(read_completions(src.path))
    assert [c.completion_tokens for c in cs] == [result["output_lens"][i] for i in (0, 1, 3)]
    assert {c.finish_reason for c in cs} == {"stop"} and cs[0].prompt is None
    assert [c.text for c in cs] == [LOOP, GLUED, FINE]


def test_saved_prompts_and_finish_reasons_are_used(tmp_path: Path) -> None:
    prompts = ["Tell a story.", "Describe the album.", "Hi", "How do I brew green tea?"]
    result = vllm_result(TEXTS, ERRORS, prompts=prompts,
                         finish_reasons=["length", "stop", None, "stop"])
    cs = list(read_completions(save(tmp_path / "bench.json", result)))
    assert [c.prompt for c in cs] == [prompts[0], prompts[1], prompts[3]]
    assert cs[0].is_capped and not cs[2].is_capped


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_table_of_a_vllm_result(tmp_path: Path, jobs: str) -> None:
    r = degen("scan", str(save(tmp_path / "bench.json", vllm_result(TEXTS, ERRORS))),
              "--jobs", jobs)
    assert r.returncode == 0, r.stderr
    assert "3 completions" in r.stdout and "skipped 1 of 4" in r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("loop"))
    assert line.split()[:3] == ["loop", "1", "33.3%"]


def test_a_pretty_printed_result_and_appended_results(tmp_path: Path) -> None:
    pretty = save(tmp_path / "pretty.json", vllm_result(TEXTS, ERRORS), indent=2)
    assert [c.request_id for c in read_completions(pretty)] == ["0", "1", "3"]
    appended = tmp_path / "runs.json"  # --append-result: one result a line
    appended.write_text(json.dumps(vllm_result(TEXTS, ERRORS)) + "\n"
                        + json.dumps(vllm_result([FINE, FINE], ["", ""])))
    src = open_completions(appended)
    assert [c.request_id for _, c in src.items()] == ["0-0", "0-1", "0-3", "1-0", "1-1"]
    assert src.skipped == 1


def test_no_failed_requests_no_note(tmp_path: Path) -> None:
    r = degen("scan", str(save(tmp_path / "b.json", vllm_result([FINE], [""]))))
    assert r.returncode == 0 and r.stderr == "" and "1 completions" in r.stdout


@pytest.mark.parametrize(("content", "needle"), [
    ("[\n  1,\n  2\n]\n", 'a JSON array, neither a vLLM benchmark result (an object with '
                          '"generated_texts") nor JSON Lines'),
    ('{\n  "model": "x"\n}\n', "a JSON object, neither a vLLM benchmark result"),
    (json.dumps({k: v for k, v in vllm_result(TEXTS, ERRORS).items()
                 if k not in ("generated_texts", "errors", "input_lens", "output_lens",
                              "ttfts", "itls")}),
     'a vLLM benchmark result without "generated_texts"; run vllm bench serve with '
     "--save-result --save-detailed"),
    ('{"model": "x"}', 'bench.json:1: not a degen record, an object with "text"'),
    ('{"generated_texts": ["a", "b"', "bench.json:1: not valid JSON"),
    (json.dumps({**vllm_result(TEXTS, ERRORS), "errors": ERRORS[:3]}),
     '"errors" has 3 entries but "generated_texts" has 4; is the file complete?'),
    (json.dumps({**vllm_result(TEXTS, ERRORS), "generated_texts": [LOOP, 7, "", FINE]}),
     '"generated_texts"[1] is not a string'),
    (json.dumps(vllm_result(TEXTS, ERRORS)) + '\n{"text": "hi"}\n',
     'bench.json:2: not a vLLM benchmark result (no "generated_texts") after one'),
])
def test_json_that_is_not_a_result_is_one_clear_error(tmp_path: Path, content: str,
                                                      needle: str) -> None:
    f = tmp_path / "bench.json"
    f.write_text(content)
    r = degen("scan", str(f))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {f}"), r.stderr
    assert needle in lines[0]
