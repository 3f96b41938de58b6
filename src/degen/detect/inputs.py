"""Reading completions to scan, whatever wrote them.

A file is either **JSON Lines**, each line one of:

- a degen record (``records.jsonl`` of ``degen run``);
- any object with a ``text`` field (optional ``id``, ``prompt``, ``finish_reason``,
  ``completion_tokens``: its length in tokens, ``max_tokens``: its cap);
- an OpenAI chat or text completion response object (``choices[0]``'s
  ``message.content`` or ``text`` and its ``finish_reason``);

or a **vLLM benchmark result**: the one JSON object that ``vllm bench serve
--save-result --save-detailed`` writes (``vllm/benchmarks/serve.py``; before it
``benchmarks/benchmark_serving.py``), or several, one a line (``--append-result``).
Its per-request lists are aligned by index: ``generated_texts``, ``errors`` (empty
unless the request failed), ``output_lens``, ``input_lens``, ``ttfts``, ``itls``, ...
Each generated text is one completion, its id its index (``<result>-<index>`` when the
file holds several results). Upstream saves no prompts; some forks do (``prompts``,
``prompt`` or ``input_texts``) and some save ``finish_reasons``: they are used when
present. ``output_lens`` becomes ``completion_tokens``. A request whose ``errors``
entry is not empty is skipped and counted (:attr:`VllmSource.skipped`).

The format is told by content: a first line holding an object with
``generated_texts`` is a vLLM result (vLLM writes it on one line); a ``.json`` file
whose first line is not JSON on its own is read as one JSON document (a result
pretty-printed by someone else). Anything else is JSON Lines, and a line that is none
of the shapes above is an error naming the file and line.

:func:`open_completions` returns a *source*: ``items()`` yields ``(n, payload)``
lazily (JSON Lines: the line number and the raw line), and ``decoder(path, n,
payload)`` turns one into a :class:`~degen.records.Completion`. The decoders are
module-level functions so that worker processes can be handed them
(:mod:`degen.detect.scan`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from degen.errors import InputFileError
from degen.records import FINISH_REASONS, Completion, SamplingParams

_DEFAULT = SamplingParams()
VLLM_TEXTS = "generated_texts"
_VLLM_PROMPTS = ("prompts", "prompt", "input_texts")
#: keys of a vLLM result's summary: such an object without texts was saved without details
_VLLM_SUMMARY = frozenset({"request_throughput", "duration", "completed"})
_INVALID = object()
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number"}

Item = tuple[int, Any]
Decoder = Callable[[str, int, Any], Completion]


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
                      prompt if isinstance(prompt, str) else None,
                      obj.get("completion_tokens"), obj.get("max_tokens"))
    if VLLM_TEXTS in obj:
        raise ValueError("a vLLM benchmark result after the first line; "
                         "only a file of vLLM results may hold one")
    raise ValueError('not a degen record, an object with "text", an OpenAI response, '
                     'or a vLLM benchmark result ("generated_texts")')


def _plain(rid: Any, line: int, text: str, finish: Any, prompt: str | None,
           tokens: Any, cap: Any = None) -> Completion:
    fr = finish if finish in FINISH_REASONS and finish != "error" else "stop"
    extra = {"source_finish_reason": finish} if finish not in (None, fr) else {}
    ident = str(rid) if rid is not None else str(line)
    if not (isinstance(tokens, int) and tokens > 0):
        tokens = None
    # the cap (what the horizon is a multiple of): as given, else for a capped answer
    # the tokens it reached
    if not (isinstance(cap, int) and cap > 0):
        cap = tokens if fr == "length" else None
    params = _DEFAULT.replace(max_tokens=cap) if cap else _DEFAULT
    return Completion(request_id=ident, prompt_id=ident, params=params, finish_reason=fr,
                      text=text, prompt=prompt,
                      completion_tokens=tokens, extra=extra)


# --- decoders (module level: picklable by reference) ---------------------------------

def decode_line(path: str, n: int, raw: str) -> Completion:
    """The Completion on line ``n`` (``raw``) of a JSONL file; InputFileError naming it."""
    try:
        return completion_from_obj(json.loads(raw), n)
    except json.JSONDecodeError as e:
        raise InputFileError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    except (ValueError, TypeError) as e:
        raise InputFileError(f"{path}:{n}: {e}") from None


def decode_extended(continued: Mapping[str, Any], path: str, n: int, raw: str) -> Completion:
    """:func:`decode_line` for a run's records, with what their extensions found
    (``continued``: :func:`degen.outcomes.parts` of ``extensions.jsonl``)."""
    from degen.outcomes import with_outcome

    c = decode_line(path, n, raw)
    return with_outcome(c, continued.get(c.request_id, ()))


def decode_ready(path: str, n: int, completion: Completion) -> Completion:
    """A payload that is already a Completion (a vLLM result's, built when it was read)."""
    return completion


# --- sources -------------------------------------------------------------------------

@dataclass(frozen=True)
class JsonlSource:
    """A JSON Lines file, read lazily: one completion per non-blank line. A run's
    ``records.jsonl`` with an ``extensions.jsonl`` beside it is read with what the
    extensions found (``continued``)."""

    path: Path
    continued: Mapping[str, Any] | None = None
    format: ClassVar[str] = "jsonl"
    skipped: ClassVar[int] = 0
    skipped_note: ClassVar[str | None] = None

    @property
    def decoder(self) -> Decoder:
        if self.continued:
            return functools.partial(decode_extended, self.continued)
        return decode_line

    def items(self) -> Iterator[Item]:
        """``(line number, raw line)`` of every non-blank line, in order."""
        n = 0
        try:
            with open(self.path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        yield n, line
        except UnicodeDecodeError:
            raise InputFileError(f"{self.path}: not UTF-8 text (after line {n})") from None

    def count(self) -> int:
        """How many completions the file holds (reads it, parses nothing)."""
        return sum(1 for _ in self.items())

    def check(self) -> int:
        """Decode every line and drop it: the first bad one raises naming file:line.
        Returns the count. Memory stays flat whatever the file size."""
        path = str(self.path)
        k = 0
        decode = self.decoder
        for n, raw in self.items():
            decode(path, n, raw)
            k += 1
        return k


@dataclass(frozen=True)
class VllmSource:
    """A vLLM benchmark result file, read whole (it is one JSON object) when opened."""

    path: Path
    completions: tuple[Completion, ...]
    skipped: int
    requests: int
    format: ClassVar[str] = "vllm"
    decoder: ClassVar[Decoder] = staticmethod(decode_ready)

    def items(self) -> Iterator[Item]:
        return enumerate(self.completions, 1)

    @property
    def skipped_note(self) -> str | None:
        """One line saying how many failed requests were skipped, or None."""
        if not self.skipped:
            return None
        return (f"{self.path}: skipped {self.skipped} of {self.requests} requests that "
                'failed in the benchmark (non-empty "errors" entry)')

    def count(self) -> int:
        return len(self.completions)

    def check(self) -> int:
        return len(self.completions)  # every request was checked when the file was read


Source = JsonlSource | VllmSource


def open_completions(path: Path | str) -> Source:
    """The source of completions in ``path``, its format told by content (module doc)."""
    path = Path(path)
    what = "a JSONL file of completions or a vLLM benchmark result (.json)"
    if not path.is_file():
        raise InputFileError(f"{path} is a folder; pass {what} (a run's records.jsonl)"
                             if path.is_dir() else f"{path} does not exist; pass {what}")
    try:
        with open(path, encoding="utf-8") as f:
            lines = enumerate(f, 1)
            first = _first_value(lines)
            if first is not None and _is_vllm(first[1]):
                return _vllm_source(path, [first, *_more_results(path, lines)])
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: not UTF-8 text; pass {what}") from None
    if first is None:
        raise InputFileError(f"{path} is empty; pass {what}")
    if first[1] is _INVALID and path.suffix.lower() == ".json":
        return _from_document(path)
    if _is_summary(first[1]):
        raise InputFileError(_no_details(path))
    return JsonlSource(path, _continuations(path))


def _continuations(path: Path) -> dict[str, Any] | None:
    """The extensions of the run whose records ``path`` holds, when there are any."""
    from degen.outcomes import EXTENSIONS, parts, read_extensions

    if not (path.parent / EXTENSIONS).is_file():
        return None
    try:
        return parts(read_extensions(path.parent)) or None
    except InputFileError:
        raise
    except Exception as e:  # a damaged extensions file: say which
        raise InputFileError(f"{path.parent / EXTENSIONS}: unreadable ({e})") from None


def read_completions(path: Path | str) -> Iterator[Completion]:
    """Completions of a JSONL file or a vLLM result, in order; blank lines skipped."""
    src = open_completions(path)
    name = str(src.path)
    for n, payload in src.items():
        yield src.decoder(name, n, payload)


def _first_value(lines: Iterator[tuple[int, str]]) -> tuple[int, Any] | None:
    """Line number and parsed value (or _INVALID) of the first non-blank line."""
    for n, line in lines:
        if line.strip():
            return n, _loads(line)
    return None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _INVALID


def _from_document(path: Path) -> VllmSource:
    """A ``.json`` file read as one JSON document: a vLLM result, or an error."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise InputFileError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if _is_vllm(obj):
        return _vllm_source(path, [(1, obj)])
    if _is_summary(obj):
        raise InputFileError(_no_details(path))
    kind = _JSON_TYPES.get(type(obj), "value")
    raise InputFileError(
        f'{path}: a JSON {kind}, neither a vLLM benchmark result (an object with '
        '"generated_texts") nor JSON Lines (one completion per line: "text", a degen '
        "record or an OpenAI response)")


def _is_vllm(obj: Any) -> bool:
    return isinstance(obj, Mapping) and VLLM_TEXTS in obj


def _is_summary(obj: Any) -> bool:
    """A vLLM result's summary: the object saved without --save-detailed."""
    return isinstance(obj, Mapping) and obj.keys() >= _VLLM_SUMMARY


def _no_details(path: Path) -> str:
    return (f'{path}: a vLLM benchmark result without "generated_texts"; run vllm bench '
            "serve with --save-result --save-detailed to keep the texts")


def _more_results(path: Path,
                  lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, Any]]:
    """Results appended on the lines after the first (``--append-result``), checked."""
    for n, line in lines:
        if not line.strip():
            continue
        obj = _loads(line)
        if obj is _INVALID:
            raise InputFileError(f"{path}:{n}: not valid JSON")
        if not _is_vllm(obj):
            raise InputFileError(f'{path}:{n}: not a vLLM benchmark result (no '
                                 '"generated_texts") after one on an earlier line')
        yield n, obj


def _vllm_source(path: Path, results: Sequence[tuple[int, Mapping[str, Any]]]) -> VllmSource:
    completions: list[Completion] = []
    skipped = requests = 0
    for k, (n, obj) in enumerate(results):
        where = f"{path}:{n}" if len(results) > 1 else str(path)
        prefix = f"{k}-" if len(results) > 1 else ""
        done, failed = _vllm_completions(obj, where, prefix)
        completions += done
        skipped += failed
        requests += len(done) + failed
    return VllmSource(path, tuple(completions), skipped, requests)


def _vllm_completions(obj: Mapping[str, Any], where: str,
                      prefix: str) -> tuple[list[Completion], int]:
    """The completions of one vLLM result and how many failed requests were skipped."""
    texts = obj[VLLM_TEXTS]
    if not isinstance(texts, list):
        raise InputFileError(f'{where}: "{VLLM_TEXTS}" must be a list of strings')
    size = len(texts)
    errors = _column(obj, "errors", size, where)
    lens = _column(obj, "output_lens", size, where)
    finishes = _column(obj, "finish_reasons", size, where)
    prompt_key = next((k for k in _VLLM_PROMPTS if isinstance(obj.get(k), list)), None)
    prompts = _column(obj, prompt_key, size, where) if prompt_key else None
    out: list[Completion] = []
    for i, text in enumerate(texts):
        if errors is not None and errors[i]:
            continue
        if not isinstance(text, str):
            raise InputFileError(f'{where}: "{VLLM_TEXTS}"[{i}] is not a string')
        prompt = prompts[i] if prompts is not None else None
        out.append(_plain(f"{prefix}{i}", i, text,
                          finishes[i] if finishes is not None else None,
                          prompt if isinstance(prompt, str) else None,
                          lens[i] if lens is not None else None))
    return out, size - len(out)


def _column(obj: Mapping[str, Any], key: str, size: int, where: str) -> list[Any] | None:
    """A per-request list aligned with the texts, or None when the result has none."""
    col = obj.get(key)
    if col is None:
        return None
    if not isinstance(col, list) or len(col) != size:
        got = f"{len(col)} entries" if isinstance(col, list) else f"a {type(col).__name__}"
        raise InputFileError(f'{where}: "{key}" has {got} but "{VLLM_TEXTS}" has {size}; '
                             "is the file complete?")
    return col
