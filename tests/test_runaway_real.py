"""The shipped runaway fits on real generations they never saw.

``tests/corpus/runaways-*.jsonl`` hold generations of the bundled model (and of Gemma-3
270M on raw prompts) that reached their 256-token cap, from the half of
``benchmarks/runaway_data.py``'s prompts kept out of the fit, each continued to 1,280
tokens: half of them never ended (runaways), half ended by themselves (long answers);
``known_outcome`` says which (written by ``benchmarks/fit_runaway.py --fixture``).
These tests fail when the shipped fit starts calling long answers runaways or missing
runaways, when the stream and the batch verdict disagree on one of them, or when a
known outcome no longer beats the prediction.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from degen.detect.loop import prompt_text
from degen.detect.watch import Watch, WatchConfig, stop_evidence_of, watched
from degen.measurement.failure import status
from degen.outcomes import Outcome
from degen.records import Completion

CORPUS = Path(__file__).parent / "corpus"
HORIZON = 1280  # how far the generations were continued
# (fixture, the fewest runaways caught, the most long answers called runaways), at the
# cap; measured on these: 18 of 20 and 4 of 20 (SmolLM2), 12 of 15 and 1 of 15
# (Gemma); on the whole held-out halves in benchmarks/README.md
FITS = [("runaways-smollm2.jsonl", 0.7, 0.3), ("runaways-gemma3.jsonl", 0.6, 0.25)]
CONFIG = WatchConfig(horizon=HORIZON)


def load(name: str) -> list[tuple[Completion, Outcome]]:
    rows = []
    for line in (CORPUS / name).read_text("utf-8").splitlines():
        d = json.loads(line)
        known = Outcome.from_dict(d.pop("known_outcome"))
        rows.append((Completion.from_dict(d), known))
    return rows


@pytest.mark.parametrize(("name", "recall", "false_share"), FITS)
def test_the_shipped_fit_tells_runaways_from_long_answers(name: str, recall: float,
                                                          false_share: float) -> None:
    rows = load(name)
    runs = sum(not o.ended_by(HORIZON) for _, o in rows)
    longs = len(rows) - runs
    assert len(rows) >= 20 and runs >= 10 and longs >= 10
    hit = false = 0
    for c, o in rows:
        assert c.finish_reason == "length" and c.completion_tokens == c.params.max_tokens
        said = "runaway" in watched(c, CONFIG).findings
        hit += said and not o.ended_by(HORIZON)
        false += said and bool(o.ended_by(HORIZON))
    assert hit / runs >= recall, f"{hit} of {runs} runaways caught"
    assert false / longs <= false_share, f"{false} of {longs} long answers called runaways"


@pytest.mark.parametrize("name", [f for f, _, _ in FITS])
def test_stream_and_batch_agree_on_real_generations(name: str) -> None:
    """Each record fed token by token as its engine streamed it (its own
    log-probabilities and stopping evidence) gives the batch verdict's findings and
    probability."""
    for c, _ in load(name):
        x = c.extra
        w = Watch(prompt_text(c.messages, c.prompt or None), CONFIG, horizon=HORIZON,
                  model=c.model)
        stops = stop_evidence_of(x, len(x["logprobs"]))
        pos = 0
        for i, (lp, n) in enumerate(zip(x["logprobs"], x["logprob_chars"], strict=True)):
            w.feed(c.text[pos:pos + n], (lp,), stops[i:i + 1] if stops else None)
            pos += n
        w.finish(ended=False, tokens=c.completion_tokens)
        batch = watched(c, CONFIG)
        assert {k: f.to_dict() for k, f in w.findings.items()} == \
            {k: f.to_dict() for k, f in batch.findings.items()}, c.request_id
        assert w.p_runaway == batch.p_runaway


@pytest.mark.parametrize("name", [f for f, _, _ in FITS])
def test_a_known_outcome_beats_the_prediction(name: str) -> None:
    """With what its extension found, a long answer is never a runaway and a runaway
    always is, whatever the fit predicted; and each is counted so."""
    for c, o in load(name):
        known = Completion.from_dict(c.to_dict() | {"outcome": o.to_dict()})
        found = "runaway" in watched(known, CONFIG).findings
        assert found == (not o.ended_by(HORIZON)), c.request_id
        st = status(known, HORIZON)
        assert st.capped and st.known and st.runaway == found and st.long == (not found)
