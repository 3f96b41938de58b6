"""The integrations are optional: importing degen, or an integration module, pulls in
none of the libraries they plug into; and the transformers page's snippet runs and
prints what the page says it prints."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "integrations"
HEAVY = ("torch", "transformers", "vllm", "litellm")


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def test_importing_degen_and_the_integrations_pulls_in_none_of_their_libraries() -> None:
    code = ("import sys, degen, degen.integrations, degen.integrations.transformers, "
            "degen.integrations.training, degen.integrations.vllm, "
            "degen.integrations.litellm, degen.engines.token_watch\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_every_integration_has_a_page_with_a_snippet_and_the_readme_links_it() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in ("transformers", "training", "vllm", "litellm"):
        page = DOCS / f"{name}.md"
        assert python_blocks(page) or "```yaml" in page.read_text(), name
        assert f"docs/integrations/{name}.md" in readme, name


@pytest.mark.slow
def test_the_transformers_page_prints_what_it_says() -> None:
    page = DOCS / "transformers.md"
    [code] = python_blocks(page)
    expected = [line.removeprefix("# ").split("  ")[0].strip()
                for line in code.splitlines() if re.match(r"# \d+ ", line)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(page), "exec"), {"__name__": "docs"})
    assert out.getvalue().splitlines() == expected
