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
                       capture_output=True, text=True, timeout=300)
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
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 0.0 <= float(r.stdout.strip()) <= 1.0
    assert (tmp_path / "runs" / "example" / "records.jsonl").is_file()
