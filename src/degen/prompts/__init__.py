"""Prompts: the built-in suite and user JSONL files.

A prompts file has one JSON object per line, either ``{"id": ..., "messages": [...]}``
(a chat conversation) or ``{"id": ..., "prompt": "..."}`` (raw text, no chat
template). Other keys (``category``, ...) are kept as metadata. Blank lines are
skipped; anything else that is not such an object is an error naming the line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from degen.errors import PromptFileError

BUILTIN = "builtin"
BUILTIN_RAW = "builtin-raw"
_ROLES = {"system", "user", "assistant", "developer", "tool"}


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt of a suite: a chat conversation or a raw text prompt."""

    id: str
    messages: tuple[Mapping[str, str], ...] | None = None
    text: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


def _parse(obj: Any, where: str) -> Prompt:
    if not isinstance(obj, dict):
        raise PromptFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    pid = obj.get("id")
    if not isinstance(pid, str | int) or isinstance(pid, bool) or str(pid) == "":
        raise PromptFileError(f'{where}: needs an "id" (a string)')
    has_m, has_p = "messages" in obj, "prompt" in obj
    if has_m == has_p:
        raise PromptFileError(f'{where}: needs exactly one of "messages" or "prompt"')
    meta = {k: v for k, v in obj.items() if k not in ("id", "messages", "prompt")}
    if has_p:
        if not isinstance(obj["prompt"], str) or not obj["prompt"]:
            raise PromptFileError(f'{where}: "prompt" must be a non-empty string')
        return Prompt(id=str(pid), text=obj["prompt"], meta=meta)
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise PromptFileError(f'{where}: "messages" must be a non-empty list')
    for j, m in enumerate(msgs):
        if (
            not isinstance(m, dict)
            or m.get("role") not in _ROLES
            or not isinstance(m.get("content"), str)
        ):
            raise PromptFileError(
                f'{where}: messages[{j}] must be {{"role": one of {sorted(_ROLES)}, '
                f'"content": a string}}'
            )
    return Prompt(id=str(pid), messages=tuple(dict(m) for m in msgs), meta=meta)


def parse_prompts(text: str, source: str) -> list[Prompt]:
    """Parse JSONL ``text``; errors name ``source`` and the 1-based line."""
    out: list[Prompt] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{where}: not valid JSON ({e.msg})") from None
        p = _parse(obj, where)
        if p.id in seen:
            raise PromptFileError(f"{where}: duplicate id {p.id!r}")
        seen.add(p.id)
        out.append(p)
    if not out:
        raise PromptFileError(f'{source}: no prompts in the file; write one JSON object a '
                              'line, {"id", "messages"} or {"id", "prompt"}')
    return out


def as_raw(p: Prompt) -> Prompt:
    """A chat prompt as raw text for a model without a chat template (a base model):
    the conversation's text in a plain question-and-answer frame, same id and meta."""
    if p.messages is None:
        return p
    said = "\n\n".join(m["content"] for m in p.messages if m["role"] != "assistant")
    return Prompt(id=p.id, text=f"Question: {said}\nAnswer:", meta=p.meta)


def load_prompts(source: str | Path | None = None) -> list[Prompt]:
    """The built-in suite (``None`` or ``"builtin"``), the same suite as raw text
    prompts for base models (``"builtin-raw"``, see :func:`as_raw`) or a JSONL file."""
    if source is None or str(source) in (BUILTIN, BUILTIN_RAW):
        text = resources.files("degen.prompts").joinpath("suite.jsonl").read_text("utf-8")
        suite = parse_prompts(text, "builtin suite")
        return [as_raw(p) for p in suite] if str(source) == BUILTIN_RAW else suite
    path = Path(source)
    what = "pass a JSONL file, builtin-raw, or omit --prompts for the built-in suite"
    if not path.is_file():
        raise PromptFileError(f"prompts file {path} is a folder; {what}" if path.is_dir()
                              else f"prompts file {path} does not exist; {what}")
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError:
        raise PromptFileError(f"{path}: not UTF-8 text; {what}") from None
    return parse_prompts(text, str(path))
