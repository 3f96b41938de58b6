"""Precision and recall of each detector on the labelled corpus in tests/corpus.

    .venv/bin/python -m benchmarks.detector_quality [--json F]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from degen.detect.quality import score
from degen.detect.verdict import default_detectors
from degen.records import Completion, SamplingParams

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "corpus"
KINDS = ("loop", "spacing", "gibberish")


def load_examples(corpus: Path = CORPUS) -> list[tuple[Completion, set[str]]]:
    """Model texts with the reader's labels, then the legitimately repetitive texts."""
    raw = [json.loads(line) for line in (corpus / "bundled_raw.jsonl").read_text().splitlines()]
    labels = [json.loads(line) for line in
              (corpus / "bundled_labels.jsonl").read_text().splitlines()]
    legit = [json.loads(line) for line in
             (corpus / "legit_repetitive.jsonl").read_text().splitlines()]
    if [r["id"] for r in raw] != [lab["id"] for lab in labels]:
        raise ValueError("bundled_labels.jsonl does not follow bundled_raw.jsonl line by line")
    out = []
    for r, lab in zip(raw, labels, strict=True):
        c = Completion(r["id"], r["prompt_id"], SamplingParams(), finish_reason="stop",
                       text=r["text"], prompt=r["prompt"])
        out.append((c, set(lab["labels"])))
    for t in legit:
        c = Completion(t["id"], t["id"], SamplingParams(), finish_reason="stop", text=t["text"],
                       prompt=t["prompt"])
        out.append((c, set(t["labels"])))
    return out


def _fmt(v: float | None, ci: list[float]) -> str:
    return "-" if v is None else f"{v:.2f} ({ci[0]:.2f}-{ci[1]:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    ex = load_examples()
    res = score(ex, default_detectors(KINDS), KINDS)
    print(f"{len(ex)} labelled texts")
    print(f"{'kind':<10} {'tp':>3} {'fp':>3} {'fn':>3}  precision            recall")
    for k, r in res.items():
        prec = _fmt(r["precision"], r["precision_ci95"])
        rec = _fmt(r["recall"], r["recall_ci95"])
        print(f"{k:<10} {r['tp']:>3} {r['fp']:>3} {r['fn']:>3}  {prec:<20} {rec}")
        if r["false_positives"]:
            print(f"           false positives: {', '.join(r['false_positives'])}")
        if r["false_negatives"]:
            print(f"           missed: {', '.join(r['false_negatives'])}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
