"""Reading completions to scan from JSON Lines, whatever wrote them.

Each line may be:

- a degen record (``records.jsonl`` of ``degen run``);
- any object with a ``text`` field (optional ``id``, ``prompt``, ``finish_reason``);
- an OpenAI chat or text completion response object (``choices[0]``'s
  ``message.content`` or ``text`` and its ``finish_reason``).

A line that is none of these is an error naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from degen.errors import InputFileError
from degen.records import FINISH_REASONS, Completion, SamplingParams

_DEFAULT = SamplingParams()


def completion_from_obj(obj: Any, line: int) -> Completion:
    """A Completion from one parsed line (see the module doc); ValueError if unknown."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "params" in obj and "request_id" in obj:
        return Completion.from_dict(obj)
    if isinstance(obj.get("choices"), list):
        if not obj["choices"] or not isinstance(obj["choices"][0], Mapping):
            raise ValueError("a response object with no choices")
        choice = obj["choices"][0]
        msg = choice.get("message")
        text = msg.get("content") if isinstance(msg, Mapping) else choice.get("text")
        usage = obj.get("usage") or {}
        return _plain(obj.get("id"), line, text or "", choice.get("finish_reason"), None,
                      usage.get("completion_tokens"))
    if "text" in obj:
        if not isinstance(obj["text"], str):
            raise ValueError('"text" must be a string')
        prompt = obj.get("prompt")
        return _plain(obj.get("id"), line, obj["text"], obj.get("finish_reason"),
                      prompt if isinstance(prompt, str) else None, None)
    raise ValueError('not a degen record, an object with "text", or an OpenAI response')


def _plain(rid: Any, line: int, text: str, finish: Any, prompt: str | None,
           tokens: Any) -> Completion:
    fr = finish if finish in FINISH_REASONS and finish != "error" else "stop"
    extra = {"source_finish_reason": finish} if finish not in (None, fr) else {}
    ident = str(rid) if rid is not None else str(line)
    return Completion(request_id=ident, prompt_id=ident, params=_DEFAULT, finish_reason=fr,
                      text=text, prompt=prompt,
                      completion_tokens=tokens if isinstance(tokens, int) else None,
                      extra=extra)


def read_completions(path: Path | str) -> Iterator[Completion]:
    """Completions of a JSONL file in order; blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path} does not exist; pass a JSONL file")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield completion_from_obj(json.loads(line), n)
            except json.JSONDecodeError as e:
                raise InputFileError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            except (ValueError, TypeError) as e:
                raise InputFileError(f"{path}:{n}: {e}") from None
