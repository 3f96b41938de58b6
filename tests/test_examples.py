"""The README's Python example and examples/ run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_example(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--requests",
                        "3", "--max-tokens", "24", "--out", str(tmp_path / "q")],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    assert all(re.search(r"runaways \d/3 +rate \d+% \(95% CI \d+%-\d+%\)", ln) for ln in lines)
    assert (tmp_path / "q" / "setting-1" / "records.jsonl").is_file()


def test_readme_python_snippet_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    code = readme.split("## From Python")[1].split("```python")[1].split("```")[0]
    code = code.replace("requests=8", "requests=2").replace("max_tokens=128", "max_tokens=16")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stderr
    assert 0.0 <= float(r.stdout.strip()) <= 1.0
    assert (tmp_path / "runs" / "example" / "records.jsonl").is_file()


def test_readme_main_job_runs_to_a_report(tmp_path: Path) -> None:
    """The README's first command, scaled down by flags appended to it (the same
    command, defaults and all, takes about 30 minutes: see the README)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash")[1].split("```")[0]
    first = next(ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#"))
    setup, main = (part.strip() for part in first.split("&&"))
    assert setup == "bash scripts/setup.sh" and main.startswith(".venv/bin/degen tune ")
    argv = [str(Path(sys.executable).with_name("degen")), *main.split()[1:],
            "--trials", "2", "--requests", "2", "--max-tokens", "16", "--confirm", "2",
            "--quiet"]
    r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip().splitlines()
    assert out[-1] == "report: runs/tune/report.html" and "failure rate" in out[0]
    assert (tmp_path / "runs" / "tune" / "report.html").is_file()


def test_readme_memory_example_is_what_the_command_prints() -> None:
    readme = (ROOT / "README.md").read_text()
    part = readme.split("## `degen doctor` and `degen memory`")[1]
    cmd = next(ln for ln in part.split("```bash")[1].splitlines()
               if ln.startswith("degen memory"))
    argv = [str(Path(sys.executable).with_name("degen")), *cmd.split("#")[0].split()[1:]]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    shown = part.split("`memory` counts")[1].split("```")[1].strip("\n").splitlines()
    assert len(shown) > 10 and all(line in r.stdout.splitlines() for line in shown)


def test_readme_compare_snippet_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    code = readme.split("## From Python")[1].split("```python")[2].split("```")[0]
    code = code.replace("requests=16", "requests=2").replace("max_tokens=128", "max_tokens=12")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stderr
    assert "('default', " in r.stdout and "('cool', " in r.stdout
    assert (tmp_path / "runs" / "cmp" / "compare.json").is_file()
