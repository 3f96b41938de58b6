"""Bad input on every command: a missing input, a garbage input, an out-of-range
parameter, an output path that cannot be used. Each is refused with exit code 2 and one
line on stderr that says what to do, before a model is loaded or a server contacted,
and nothing is written: the folder the command runs in (its inputs, its --out, the
default runs/) is left byte for byte as it was.

The commands run in this process (``degen.cli.app.main``), stderr captured at the file
descriptor; a guard that got as far as serving would fail the test, not hang it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from degen.cli.app import main

# Placeholders in the arguments, made in the test's folder when used:
#   {missing}  a path that does not exist        {garbage} random bytes
#   {text}     lines that are not JSON           {list}    JSON lines that are not objects
#   {empty}    an empty file                     {dir}     an empty folder
#   {file}     a regular file                    {under}   a path under that file
#   {run}      a finished run folder (records.jsonl, run.json, extensions.jsonl)
#   {tmp}      the folder itself, where a case's own files are written
MISSING, GARBAGE, TEXT, LIST, EMPTY = "{missing}", "{garbage}", "{text}", "{list}", "{empty}"
DIR, FILE, UNDER, RUN = "{dir}", "{file}", "{under}", "{run}"
RECORDS = RUN + "/records.jsonl"
NOISE = random.Random(0).randbytes(4096)  # not UTF-8, not JSON
CHEAP = ["--requests", "1", "--max-tokens", "4"]  # were a case to run, it costs little
ARMS = ["--arm", "a", "--arm", "b"]
UP = ["--upstream", "http://127.0.0.1:9"]
NAN = "Input should be a valid"  # Click's word for a value that is not a number
JSONL = "pass a JSONL file"
FIT = "write one with degen fit-runaway"
SPACE = "pass a TOML file with a [space] table"
MODEL = "pass a config.json, a model folder, a GGUF file or a preset"
OUT_UNDER = "is a file, not a folder; pass another --out"
OUT_FILE = "is a file; pass a folder"


def case(command: str, name: str, args: list[str], says: str,
         files: dict[str, bytes | str | None] | None = None) -> pytest.param:
    """``degen COMMAND ARGS`` must fail saying ``says``; ``files`` are written first
    (path in the test's folder -> content; None: a folder)."""
    return pytest.param(command, args, says, files or {}, id=f"{command}-{name}")


CASES = [
    # degen run: --prompts, --runaway-weights, --out
    case("run", "missing-prompts", [*CHEAP, "--prompts", MISSING], f"does not exist; {JSONL}"),
    case("run", "garbage-prompts", [*CHEAP, "--prompts", GARBAGE], f"not UTF-8 text; {JSONL}"),
    case("run", "text-prompts", [*CHEAP, "--prompts", TEXT], "text.jsonl:1: not valid JSON"),
    case("run", "list-prompts", [*CHEAP, "--prompts", LIST],
         "list.jsonl:1: expected a JSON object, got list"),
    case("run", "empty-prompts", [*CHEAP, "--prompts", EMPTY],
         "no prompts in the file; write one JSON object a line"),
    case("run", "folder-prompts", [*CHEAP, "--prompts", DIR], f"is a folder; {JSONL}"),
    case("run", "missing-weights", [*CHEAP, "--runaway-weights", MISSING], FIT),
    case("run", "garbage-weights", [*CHEAP, "--runaway-weights", GARBAGE], FIT),
    case("run", "negative-requests", ["--requests", "-1"], "--requests must be >= 1, got -1"),
    case("run", "negative-temperature", [*CHEAP, "--temperature", "-1"],
         "temperature must be in [0, 100], got -1"),
    case("run", "share-above-1", [*CHEAP, "--extend-share", "1.5"],
         "--extend-share must be in (0, 1]"),
    case("run", "horizon-below-cap", [*CHEAP, "--horizon", "2"],
         "--horizon must be above the cap"),
    case("run", "zero-max-tokens", ["--requests", "1", "--max-tokens", "0"],
         "max_tokens must be >= 1, got 0"),
    case("run", "zero-batch-size", [*CHEAP, "--batch-size", "0"],
         "batch_size must be >= 1, got 0"),
    case("run", "negative-timeout", [*CHEAP, "--engine", "openai", "--timeout", "-1"],
         "timeouts must be > 0 seconds, got --timeout -1"),
    case("run", "negative-retries", [*CHEAP, "--engine", "openai", "--retries", "-1"],
         "max_retries must be >= 0, got -1"),
    case("run", "not-a-number", ["--requests", "x"], "see degen run --help"),
    case("run", "out-under-a-file", [*CHEAP, "--out", UNDER], OUT_UNDER),
    case("run", "out-is-a-file", [*CHEAP, "--out", FILE], OUT_FILE),
    # degen scan FILE (writes nothing)
    case("scan", "missing-file", [MISSING], f"does not exist; {JSONL}"),
    case("scan", "garbage-file", [GARBAGE], f"not UTF-8 text; {JSONL}"),
    case("scan", "text-file", [TEXT], "text.jsonl:1: not valid JSON"),
    case("scan", "list-file", [LIST], "list.jsonl:1: expected a JSON object, got list"),
    case("scan", "empty-file", [EMPTY], f"is empty; {JSONL}"),
    case("scan", "folder", [DIR], f"is a folder; {JSONL}"),
    case("scan", "no-file", [], "Missing argument 'file'; see degen scan --help"),
    case("scan", "horizon-1", [RECORDS, "--horizon", "1"], "--horizon must be at least 2"),
    case("scan", "negative-jobs", [RECORDS, "--jobs", "-1"], "--jobs must be 0"),
    case("scan", "unknown-detector", [RECORDS, "--detectors", "loop,boredom"], "boredom"),
    case("scan", "not-a-number", [RECORDS, "--horizon", "x"], "see degen scan --help"),
    # degen profile RECORDS... (--out)
    case("profile", "missing-records", [MISSING], f"does not exist; {JSONL}"),
    case("profile", "garbage-records", [GARBAGE], f"not UTF-8 text; {JSONL}"),
    case("profile", "list-records", [LIST], "list.jsonl:1: expected a JSON object"),
    case("profile", "empty-records", [EMPTY], f"is empty; {JSONL}"),
    case("profile", "folder-records", [DIR],
         "is a folder without records.jsonl, in itself or one level down"),
    case("profile", "missing-prompts", ["--model", "bundled", *CHEAP, "--prompts", MISSING],
         f"does not exist; {JSONL}"),
    case("profile", "window-4", [RECORDS, "--window", "4"], "--window must be >= 8"),
    case("profile", "negative-requests", ["--model", "bundled", "--requests", "-1"],
         "--requests must be >= 1"),
    case("profile", "not-a-number", [RECORDS, "--step", "x"], "see degen profile --help"),
    case("profile", "out-under-a-file", [RECORDS, "--out", UNDER], OUT_UNDER),
    case("profile", "out-is-a-file", [RECORDS, "--out", FILE], OUT_FILE),
    # degen tune: --space, --runaway-weights, --out
    case("tune", "missing-space", [*CHEAP, "--space", MISSING], f"does not exist; {SPACE}"),
    case("tune", "garbage-space", [*CHEAP, "--space", GARBAGE], "cannot read space file"),
    case("tune", "folder-space", [*CHEAP, "--space", DIR], SPACE),
    case("tune", "empty-space", [*CHEAP, "--space", EMPTY], f"has no [space] table; {SPACE}"),
    case("tune", "missing-weights", [*CHEAP, "--runaway-weights", MISSING], FIT),
    case("tune", "zero-trials", [*CHEAP, "--trials", "0"], "--trials must be >= 1, got 0"),
    case("tune", "negative-requests", ["--requests", "-1"], "--requests must be >= 1"),
    case("tune", "negative-confirm", [*CHEAP, "--confirm", "-1"], "--confirm must be >= 0"),
    case("tune", "share-0", [*CHEAP, "--extend-share", "0"], "--extend-share must be in (0, 1]"),
    case("tune", "bad-sampler", [*CHEAP, "--sampler", "grid"], "--sampler must be tpe or random"),
    case("tune", "not-a-number", ["--trials", "x"], "see degen tune --help"),
    case("tune", "out-under-a-file", [*CHEAP, "--trials", "1", "--confirm", "0", "--out",
                                      UNDER], OUT_UNDER),
    case("tune", "out-is-a-file", [*CHEAP, "--trials", "1", "--confirm", "0", "--out", FILE],
         OUT_FILE),
    # degen compare: --prompts, --runaway-weights, --out
    case("compare", "missing-prompts", [*ARMS, *CHEAP, "--prompts", MISSING],
         f"does not exist; {JSONL}"),
    case("compare", "garbage-prompts", [*ARMS, *CHEAP, "--prompts", GARBAGE],
         f"not UTF-8 text; {JSONL}"),
    case("compare", "missing-weights", [*ARMS, *CHEAP, "--runaway-weights", MISSING], FIT),
    case("compare", "no-arm", [*CHEAP], "Missing option '--arm'; see degen compare --help"),
    case("compare", "bad-arm", ["--arm", "a:temperature=-1", "--arm", "b", *CHEAP],
         "temperature must be in [0, 100], got -1"),
    case("compare", "negative-requests", [*ARMS, "--requests", "-1"],
         "--requests must be >= 1"),
    case("compare", "share-above-1", [*ARMS, *CHEAP, "--extend-share", "2"],
         "--extend-share must be in (0, 1]"),
    case("compare", "not-a-number", [*ARMS, "--requests", "x"], "see degen compare --help"),
    case("compare", "out-under-a-file", [*ARMS, *CHEAP, "--out", UNDER], OUT_UNDER),
    case("compare", "out-is-a-file", [*ARMS, *CHEAP, "--out", FILE], OUT_FILE),
    # degen report FOLDER (writes FOLDER/report.html)
    case("report", "missing-folder", [MISSING], "no tune.json"),
    case("report", "folder-not-a-study", [DIR], "no tune.json"),
    case("report", "file-not-a-folder", [FILE], "no tune.json"),
    case("report", "a-run-folder", [RUN], "no tune.json"),
    case("report", "garbage-tune-json", ["{tmp}/study"], "re-run degen tune",
         {"study/tune.json": NOISE}),
    case("report", "list-tune-json", ["{tmp}/study"], "not a degen tune summary; re-run",
         {"study/tune.json": "[1, 2]\n"}),
    case("report", "garbage-compare-json", ["{tmp}/cmp"], "re-run degen compare",
         {"cmp/compare.json": NOISE}),
    case("report", "no-folder", [], "Missing argument 'folder'; see degen report --help"),
    # degen extend FOLDER (writes into it)
    case("extend", "missing-folder", [MISSING], "holds no run"),
    case("extend", "folder-not-a-run", [DIR], "holds no run"),
    case("extend", "file-not-a-folder", [FILE], "holds no run"),
    case("extend", "garbage-compare-json", ["{tmp}/cmp"], "re-run degen compare",
         {"cmp/compare.json": NOISE}),
    case("extend", "garbage-run-json", ["{tmp}/r"], "run.json is unreadable",
         {"r/run.json": NOISE, "r/records.jsonl": ""}),
    case("extend", "horizon-1", [RUN, "--horizon", "1"], "--horizon must be above the cap"),
    case("extend", "share-above-1", [RUN, "--extend-share", "1.5"],
         "--extend-share must be in (0, 1]"),
    case("extend", "zero-concurrency", [RUN, "--concurrency", "0"],
         "--concurrency must be >= 1, got 0"),
    case("extend", "not-a-number", [RUN, "--horizon", "x"], "see degen extend --help"),
    # degen fit-runaway FOLDER... (--out FILE)
    case("fit-runaway", "missing-folder", [MISSING, "--out", "{tmp}/fit.json"],
         "holds no run (no records.jsonl)"),
    case("fit-runaway", "folder-not-a-run", [DIR, "--out", "{tmp}/fit.json"],
         "holds no run (no records.jsonl)"),
    case("fit-runaway", "garbage-records", ["{tmp}/r", "--out", "{tmp}/fit.json"],
         "records.jsonl:1: not a degen record", {"r/records.jsonl": NOISE}),
    case("fit-runaway", "negative-horizon", [RUN, "--horizon", "-1", "--out",
                                             "{tmp}/fit.json"],
         "--horizon must be above the runs' cap (64 tokens), got -1"),
    case("fit-runaway", "not-a-number", [RUN, "--horizon", "x"],
         "see degen fit-runaway --help"),
    case("fit-runaway", "out-under-a-file", [RUN, "--out", UNDER], OUT_UNDER),
    case("fit-runaway", "out-is-a-folder", [RUN, "--out", DIR], "is a folder; pass a file name"),
    # degen guard (serves; writes nothing)
    case("guard", "missing-config", ["--config", MISSING], "pass an existing --config file"),
    case("guard", "garbage-config", ["--config", GARBAGE], "pass a TOML --config file"),
    case("guard", "folder-config", ["--config", DIR], "pass a TOML --config file"),
    case("guard", "config-port-70000", ["--config", "{tmp}/g.toml"],
         "--port must be in [0, 65535], got 70000",
         {"g.toml": 'upstream = "http://127.0.0.1:9"\nport = 70000\n'}),
    case("guard", "missing-weights", [*UP, "--runaway-weights", MISSING], FIT),
    case("guard", "garbage-weights", [*UP, "--runaway-weights", GARBAGE], FIT),
    case("guard", "port-70000", [*UP, "--port", "70000"],
         "--port must be in [0, 65535], got 70000"),
    case("guard", "zero-workers", [*UP, "--workers", "0"], "--workers must be in [1, 256]"),
    case("guard", "negative-timeout", [*UP, "--timeout", "-1"], "--timeout must be > 0"),
    case("guard", "upstream-not-a-url", ["--upstream", "localhost"],
         "--upstream must start with http:// or https://"),
    case("guard", "no-upstream", [], "--upstream is required"),
    case("guard", "not-a-number", [*UP, "--port", "x"], "see degen guard --help"),
    # degen memory MODEL (writes nothing)
    case("memory", "missing-model", [MISSING], "is not a file, a folder or a preset; presets:"),
    case("memory", "garbage-model", [GARBAGE], MODEL),
    case("memory", "garbage-config", ["{tmp}/m/config.json"], MODEL,
         {"m/config.json": NOISE}),
    case("memory", "list-config", ["{tmp}/m/config.json"], MODEL, {"m/config.json": "[1]"}),
    case("memory", "garbage-gguf", ["{tmp}/m.gguf"], MODEL, {"m.gguf": NOISE}),
    case("memory", "folder-not-a-model", [DIR], MODEL),
    case("memory", "negative-context", ["smollm2-135m-instruct", "--context", "-1"],
         "--context must be >= 1 token, got -1"),
    case("memory", "utilization-1.5", ["smollm2-135m-instruct", "--utilization", "1.5"],
         "utilization must be in (0, 1], got 1.5"),
    case("memory", "zero-decode-speed", ["smollm2-135m-instruct", "--decode-tok-s", "0"],
         "decode tokens/s must be > 0"),
    case("memory", "negative-gpu-mem", ["smollm2-135m-instruct", "--gpu-mem", "-8GiB"],
         "cannot read a memory size from '-8GiB'; write e.g. 80GiB"),
    case("memory", "bad-dtype", ["smollm2-135m-instruct", "--dtype", "fp5"],
         "unknown dtype 'fp5'; use one of"),
    case("memory", "not-a-number", ["smollm2-135m-instruct", "--context", "x"],
         "see degen memory --help"),
    # degen doctor [MODEL] (writes nothing)
    case("doctor", "missing-model", [MISSING], "does not exist; pass a GGUF file or a model"),
    case("doctor", "folder-not-a-model", [DIR], "pass a HF model folder or a GGUF file"),
    case("doctor", "garbage-gguf", ["{tmp}/m.gguf"], "is not a GGUF file", {"m.gguf": NOISE}),
    case("doctor", "broken-gguf", ["-q", "{tmp}/m.gguf"],
         "pass a complete GGUF file or HF model folder", {"m.gguf": b"GGUF" + bytes(64)}),
    case("doctor", "penalty-below-1", ["--repetition-penalty", "0.5"],
         "--repetition-penalty must be > 1, got 0.5"),
    case("doctor", "base-url-not-a-url", ["--base-url", "localhost:8000"],
         "--base-url must start with http:// or https://"),
    case("doctor", "not-a-number", ["--repetition-penalty", "x"], "see degen doctor --help"),
]


def make(tmp: Path, args: list[str], files: dict[str, bytes | str | None]) -> list[str]:
    """The arguments with their placeholders made real in ``tmp``, ``files`` written."""
    made = {
        "{missing}": (tmp / "nope", None), "{garbage}": (tmp / "garbage", NOISE),
        "{text}": (tmp / "text.jsonl", "this is not json\nnor is this\n"),
        "{list}": (tmp / "list.jsonl", '[1, 2]\n"a string"\n'),
        "{empty}": (tmp / "empty.jsonl", ""), "{dir}": (tmp / "dir", "folder"),
        "{under}": (tmp / "file" / "out", None), "{file}": (tmp / "file", "keep me\n"),
    }
    for rel, content in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            p.mkdir()
        else:
            (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    out = []
    for a in args:
        if "{under}" in a:  # a path under a regular file: no one can make it a folder
            (tmp / "file").write_text("keep me\n")
        if "{run}" in a and not (tmp / "run").exists():
            from tests.test_cli_runaway import write_run

            write_run(tmp / "run", 4)
        for key, (path, content) in made.items():
            if key in a:
                if content == "folder":
                    path.mkdir(exist_ok=True)
                elif isinstance(content, bytes):
                    path.write_bytes(content)
                elif content is not None:
                    path.write_text(content)
                a = a.replace(key, str(path))
        out.append(a.replace("{run}", str(tmp / "run")).replace("{tmp}", str(tmp)))
    return out


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: a file's bytes, None for a folder."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("command", "args", "says", "files"), CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
        command: str, args: list[str], says: str, files: dict[str, bytes | str | None],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    import degen.guard.workers

    def no_serving(cfg):
        raise AssertionError("the guard got as far as serving")

    monkeypatch.setattr(degen.guard.workers, "serve", no_serving)
    monkeypatch.setenv("DEGEN_CACHE_DIR", str(tmp_path / "cache"))  # a conversion shows
    monkeypatch.chdir(tmp_path)  # so does runs/, the default --out
    argv = [command, *make(tmp_path, args, files)]
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert e.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert says in lines[0], lines[0]
    assert out == ""
    assert snapshot(tmp_path) == before


def test_a_message_that_quotes_several_lines_is_printed_on_one(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """A library's error quoted in degen's (transformers' are often several lines)."""
    import degen.diagnose.memory
    from degen.errors import InvalidParams

    def parse_size(text: str) -> int:
        raise InvalidParams(f"cannot read {text!r}:\n  the library says so\n; write 80GiB")

    monkeypatch.setattr(degen.diagnose.memory, "parse_size", parse_size)
    with pytest.raises(SystemExit) as e:
        main(["memory", "smollm2-135m-instruct", "--gpu-mem", "lots"])
    assert e.value.code == 2
    assert capfd.readouterr().err == ("error: cannot read 'lots': the library says so "
                                      "; write 80GiB\n")
