"""The built-in suite and user prompt files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from degen.errors import PromptFileError
from degen.prompts import load_prompts


def test_builtin_suite_is_large_and_varied() -> None:
    ps = load_prompts()
    assert len(ps) >= 50
    cats = Counter(p.meta["category"] for p in ps)
    for needed in ("instruction", "list", "story", "code", "copying", "qa"):
        assert cats[needed] >= 5, cats
    assert len({p.id for p in ps}) == len(ps)
    assert all(p.messages and p.messages[-1]["role"] == "user" for p in ps)


def test_prompt_file_with_both_shapes(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "a", "messages": [{"role": "user", "content": "hi"}]}\n\n'
                 '{"id": 2, "prompt": "Once upon a time", "tag": "x"}\n')
    a, b = load_prompts(f)
    assert a.messages == ({"role": "user", "content": "hi"},) and a.text is None
    assert b.id == "2" and b.text == "Once upon a time" and b.meta == {"tag": "x"}


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": \n', "p.jsonl:2: not valid JSON"),
        ('{"id": "a"}\n', 'p.jsonl:1: needs exactly one of "messages" or "prompt"'),
        ('{"prompt": "x"}\n', 'p.jsonl:1: needs an "id"'),
        ('{"id": "a", "messages": [{"role": "bot", "content": "x"}]}\n', "messages[0] must be"),
        ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "p.jsonl:2: duplicate id"),
        ("[1, 2]\n", "p.jsonl:1: expected a JSON object"),
        ("\n\n", "no prompts in the file"),
    ],
)
def test_malformed_prompt_files_name_the_line(tmp_path: Path, content: str, needle: str) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text(content)
    with pytest.raises(PromptFileError) as e:
        load_prompts(f)
    assert needle in str(e.value)


def test_missing_prompt_file() -> None:
    with pytest.raises(PromptFileError, match="does not exist"):
        load_prompts("/nonexistent/prompts.jsonl")
