"""The labelled texts degen is calibrated and tested on, read into one shape.

Each text is a dict: ``id``, ``prompt``, ``text``, ``label`` (``loop``, ``gibberish``,
``glued`` or ``ok``), ``degenerate``, ``kind`` (the detector kind the label names:
``loop``, ``gibberish``, ``spacing`` or None) and ``set`` (which file it came from):

- ``dev``: ``../shared/corpus/labelled-dev.jsonl`` (283 texts labelled by reading; the
  other half of that set is kept apart), when it is beside the checkout;
- ``bundled``: tests/corpus/bundled_raw.jsonl with the labels of bundled_labels.jsonl
  (70 answers of the bundled model);
- ``legit``: tests/corpus/legit_repetitive.jsonl (30 legitimately repetitive texts);
- ``hard``: tests/corpus/hard_cases.jsonl (116 written texts: legitimate kinds that look
  degenerate, and degenerate ones of every kind).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "corpus"
DEV = ROOT.parent / "shared" / "corpus" / "labelled-dev.jsonl"
KIND_OF = {"loop": "loop", "gibberish": "gibberish", "glued": "spacing", "ok": None}
SETS = ("dev", "bundled", "legit", "hard")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n")
            if line.strip()]


def _row(set_: str, rid: str, prompt: str, text: str, label: str) -> dict[str, Any]:
    if label not in KIND_OF:
        raise ValueError(f"{set_}/{rid}: unknown label {label!r}")
    return {"id": rid, "set": set_, "prompt": prompt, "text": text, "label": label,
            "degenerate": label != "ok", "kind": KIND_OF[label]}


def _from_kinds(kinds: list[str]) -> str:
    """A label from the bundled set's list of kinds (loop first, then gibberish)."""
    if "loop" in kinds:
        return "loop"
    if "gibberish" in kinds:
        return "gibberish"
    return "glued" if "spacing" in kinds else "ok"


def load(sets: tuple[str, ...] = SETS, dev: Path = DEV) -> list[dict[str, Any]]:
    """The labelled texts of ``sets`` (``dev`` is skipped when its file is absent)."""
    out: list[dict[str, Any]] = []
    if "dev" in sets and dev.is_file():
        out += [_row("dev", r["id"], r["prompt"], r["text"], r["label"]) for r in _jsonl(dev)]
    if "bundled" in sets:
        raw, labels = _jsonl(TESTS / "bundled_raw.jsonl"), _jsonl(TESTS / "bundled_labels.jsonl")
        if [r["id"] for r in raw] != [lab["id"] for lab in labels]:
            raise ValueError("bundled_labels.jsonl does not follow bundled_raw.jsonl line by line")
        out += [_row("bundled", r["id"], r["prompt"], r["text"], _from_kinds(lab["labels"]))
                for r, lab in zip(raw, labels, strict=True)]
    if "legit" in sets:
        out += [_row("legit", r["id"], r["prompt"], r["text"], _from_kinds(r["labels"]))
                for r in _jsonl(TESTS / "legit_repetitive.jsonl")]
    if "hard" in sets:
        out += [_row("hard", r["id"], r["prompt"], r["text"], r["label"])
                for r in _jsonl(TESTS / "hard_cases.jsonl")]
    return out
