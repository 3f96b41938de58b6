"""Runaway, capped and long: what an extension finds, how a generation is counted, the
two-phase estimate, survival curves and the stopping evidence read off a server."""

from __future__ import annotations

import math
import random
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from degen.detect.watch import Watch, WatchConfig, watched
from degen.engines.base import Engine
from degen.engines.evidence import stop_evidence, stop_token_texts
from degen.errors import InvalidParams
from degen.experiments.load.extend import extend
from degen.measurement.failure import Measure, is_failure, status
from degen.outcomes import (
    EXTENSIONS,
    Outcome,
    check_horizon,
    check_share,
    chosen,
    load_run,
    outcomes,
)
from degen.records import Completion, Request, SamplingParams, Timings
from degen.stats import kaplan_meier, two_phase
from degen.store import RunDir


def comp(rid: str, finish: str = "length", tokens: int = 100, verdict: dict | None = None,
         extra: dict | None = None, cap: int = 100) -> Completion:
    return Completion(rid, "p-" + rid, SamplingParams(max_tokens=cap, seed=7), finish,
                      text="word " * tokens, token_ids=tuple(range(tokens)),
                      completion_tokens=tokens, verdict=verdict, extra=extra or {},
                      messages=({"role": "user", "content": "hi"},))


def judged(runaway: bool, p: float) -> dict:
    return {"kinds": ["capped", *(["runaway"] if runaway else [])], "findings": [],
            "metrics": {"p_runaway": p}}


# --------------------------------------------------------------------- counting
def test_a_long_answer_is_capped_but_no_failure_and_a_runaway_is() -> None:
    long = comp("a", extra={"outcome": {"tokens": 350, "ended": True, "horizon": 800}})
    run = comp("b", extra={"outcome": {"tokens": 800, "ended": False, "horizon": 800}})
    s_long, s_run = status(long), status(run)
    assert s_long.capped and s_long.long and s_long.known and s_long.runaway is False
    assert s_run.capped and s_run.runaway and s_run.known and not s_run.long
    assert not is_failure(long) and is_failure(run)
    # the truth beats a wrong prediction either way
    wrong = comp("c", verdict=judged(True, 0.9),
                 extra={"outcome": {"tokens": 300, "ended": True, "horizon": 800}})
    assert not is_failure(wrong)
    missed = comp("d", verdict=judged(False, 0.1),
                  extra={"outcome": {"tokens": 800, "ended": False, "horizon": 800}})
    assert is_failure(missed)


def test_without_an_extension_the_prediction_decides_and_says_so() -> None:
    pred = status(comp("a", verdict=judged(True, 0.8)))
    assert pred.runaway and not pred.known and pred.p_runaway == 0.8
    assert status(comp("b", verdict=judged(False, 0.2))).long
    # followed only part of the way: still a prediction
    part = comp("c", verdict=judged(False, 0.2),
                extra={"outcome": {"tokens": 300, "ended": False, "horizon": 300}})
    assert status(part, horizon=800).runaway is False and not status(part, 800).known
    assert status(part, horizon=250).runaway and status(part, horizon=250).known
    # a record never judged has only its cap to go on
    assert status(comp("d")).runaway


def test_degenerate_cuts_and_verdicts_are_failures_whatever_the_cap() -> None:
    loop = comp("a", "repetition", 40, extra={"cut": {"kind": "loop"}})
    babble = comp("b", "stop", 40, verdict={"kinds": ["gibberish"], "findings": [],
                                             "metrics": {}})
    assert status(loop).degenerate == {"loop"} and status(loop).runaway is None
    assert is_failure(loop) and is_failure(babble)
    assert not is_failure(babble, ("runaway",))
    ended = comp("c", "stop", 40, verdict={"kinds": [], "findings": [], "metrics": {}})
    assert not is_failure(ended) and status(ended).ended


def test_measure_counts_every_status() -> None:
    cs = [comp("a", "stop", 20),
          comp("b", extra={"outcome": {"tokens": 300, "ended": True, "horizon": 800}}),
          comp("c", extra={"outcome": {"tokens": 800, "ended": False, "horizon": 800}}),
          comp("d", verdict=judged(True, 0.9)),
          comp("e", "degenerate", 30, extra={"cut": {"kind": "gibberish"}})]
    m = Measure.of(cs)
    assert (m.n, m.capped, m.long, m.runaways, m.runaways_known, m.degenerate) == \
        (5, 3, 1, 2, 1, 1)
    assert m.failures == 3 and m.rate == 3 / 5
    assert m.extension_tokens == 200 + 700


# --------------------------------------------------------------------- estimates
def test_two_phase_is_unbiased_and_its_interval_covers_the_truth() -> None:
    rng = random.Random(1)
    covered = trials = 0
    bias = 0.0
    for rate, share in ((0.1, 0.3), (0.25, 0.5), (0.05, 0.2), (0.4, 0.7)):
        for _ in range(300):
            items = []
            for _ in range(150):
                capped = rng.random() < 2 * rate + 0.1
                y = capped and rng.random() < rate / (2 * rate + 0.1)
                if not capped:
                    items.append((0.0, 0.0))  # ended: known in the first phase
                    continue
                # a predictor that is right most of the time, and not calibrated
                p = (0.8 if y else 0.3) if rng.random() < 0.85 else (0.2 if y else 0.7)
                items.append((p, float(y) if rng.random() < share else None))
            est = two_phase(items, share)
            lo, hi = est["ci95"]
            covered += lo <= rate <= hi
            trials += 1
            bias += est["rate"] - rate
    assert covered / trials >= 0.9
    assert abs(bias / trials) < 0.01


def test_two_phase_with_every_unit_known_is_the_plain_rate() -> None:
    items = [(0.3, 1.0)] * 3 + [(0.6, 0.0)] * 7
    assert two_phase(items, 1.0)["rate"] == pytest.approx(0.3)
    with pytest.raises(ValueError):
        two_phase(items, 0.0)


def test_a_partial_extension_gives_the_measure_a_two_phase_estimate() -> None:
    cs = [comp(str(i), verdict=judged(i % 2 == 0, 0.7 if i % 2 == 0 else 0.2))
          for i in range(10)]
    # one drawn for the half share (by its id and seed), and continued: it ended
    k = next(i for i in range(0, 10, 2) if chosen(cs[i], 0.5))
    cs[k] = comp(str(k), verdict=judged(True, 0.7),
                 extra={"outcome": {"tokens": 300, "ended": True, "horizon": 800}})
    m = Measure.of(cs, extend_share=0.5)
    assert m.estimate is not None and m.estimate["known"] == 1
    # (0.7 + (0 - 0.7) / 0.5) + 4 x 0.7 + 5 x 0.2, over 10
    assert m.rate == pytest.approx((0.7 - 1.4 + 2.8 + 1.0) / 10)
    lo, hi = m.ci95
    assert lo <= m.rate <= hi


def test_kaplan_meier_handles_censoring() -> None:
    curve = kaplan_meier([[100, 1], [200, 0], [200, 0], [300, 1], [400, 0]])
    assert curve == [(0, 1.0), (100, 0.8), (300, 0.4)]
    assert kaplan_meier([]) == [(0, 1.0)]


# --------------------------------------------------------------------- extension
class Continuing(Engine):
    """Continues a generation: ends it ``ends_after`` tokens on for the ids in
    ``enders``, else runs to the horizon. Records every request."""

    name = "fake"
    model = "fake"

    def __init__(self, enders: set[str], ends_after: int = 50) -> None:
        self.enders, self.ends_after = enders, ends_after
        self.requests: list[Request] = []
        self.lock = threading.Lock()

    def complete(self, request: Request, cancel: threading.Event | None = None) -> Completion:
        with self.lock:
            self.requests.append(request)
        left = request.params.max_tokens - request.continued
        n = min(self.ends_after, left) if request.request_id in self.enders else left
        ended = request.request_id in self.enders and self.ends_after <= left
        return Completion.from_request(
            request, finish_reason="stop" if ended else "length", text="more " * n,
            token_ids=tuple(range(n)), completion_tokens=n, engine=self.name,
            model=self.model, timings=Timings(started_at=0.0, finished_at=0.0))


def run_folder(tmp_path: Path, cs: list[Completion]) -> Path:
    d = RunDir.create(tmp_path / "run", {"kind": "degen.run", "plan": {"seed": 3}})
    for c in cs:
        d.append(c)
    d.close()
    return tmp_path / "run"


def test_extension_continues_only_the_capped_and_resumes(tmp_path: Path) -> None:
    cs = [comp("a"), comp("b"), comp("c", "stop", 30),
          comp("d", "repetition", 40, extra={"cut": {"kind": "loop"}}),
          comp("e", "runaway", 60)]
    folder = run_folder(tmp_path, cs)
    eng = Continuing({"a"})
    res = extend(eng, folder, 400)
    sent = {r.request_id: r for r in eng.requests}
    assert set(sent) == {"a", "b", "e"} and res.sent == 3
    r = sent["a"]
    assert r.continuation_ids == tuple(range(100)) and r.continued == 100
    assert r.continuation_text == "word " * 100 and r.params.max_tokens == 400
    assert r.params.seed != 7 and r.messages == cs[0].messages
    known = {c.request_id: c.extra.get("outcome") for c in res.completions}
    assert known["a"] == {"tokens": 150, "ended": True, "horizon": 400}
    assert known["b"] == {"tokens": 400, "ended": False, "horizon": 400}
    assert known["e"] == {"tokens": 400, "ended": False, "horizon": 400}
    assert known["c"] is None and known["d"] is None
    assert load_run(folder) == res.completions
    again = Continuing({"a"})
    assert extend(again, folder, 400).sent == 0 and not again.requests
    # a larger horizon continues what had not ended, from where it stopped
    further = Continuing({"b"})
    extend(further, folder, 800)
    assert {r.request_id for r in further.requests} == {"b", "e"}
    rb = next(r for r in further.requests if r.request_id == "b")
    assert rb.continued == 400 and len(rb.continuation_ids or ()) == 400
    assert outcomes(load_run(folder), [])["b"] == Outcome(100, False)
    b = next(c for c in load_run(folder) if c.request_id == "b")
    assert b.extra["outcome"] == {"tokens": 450, "ended": True, "horizon": 800}
    assert (folder / EXTENSIONS).read_text().count("\n") == 5


def test_a_generation_that_fills_the_context_is_a_known_runaway(tmp_path: Path) -> None:
    class Small(Continuing):  # a context of 250 tokens: room for 150 more
        def complete(self, request: Request, cancel=None) -> Completion:
            c = super().complete(request, cancel)
            n = min(c.completion_tokens or 0, 250 - request.continued)
            return replace(c, completion_tokens=n, token_ids=tuple(range(n)))

    folder = run_folder(tmp_path, [comp("a")])
    res = extend(Small(set()), folder, 800)
    assert res.completions[0].extra["outcome"] == {"tokens": 250, "ended": False,
                                                    "horizon": 800, "full": True}
    assert status(res.completions[0]).runaway is True and status(res.completions[0]).known
    again = Small(set())  # known: nothing is sent again, at any horizon
    assert extend(again, folder, 800).sent == 0 and extend(again, folder, 4000).sent == 0


def test_extend_share_picks_the_same_random_share_every_time(tmp_path: Path) -> None:
    cs = [comp(str(i)) for i in range(60)]
    folder = run_folder(tmp_path, cs)
    first = Continuing(set())
    extend(first, folder, 300, share=0.5, seed=11)
    picked = {r.request_id for r in first.requests}
    assert 15 < len(picked) < 45
    (folder / EXTENSIONS).unlink()
    second = Continuing(set())
    extend(second, folder, 300, share=0.5, seed=11)
    assert {r.request_id for r in second.requests} == picked


def test_a_share_after_a_whole_extension_counts_only_its_own_draw(tmp_path: Path) -> None:
    """Every capped generation extended, then read as a quarter share: only the quarter
    drawn (by each record's own seed) counts its truth, or the estimate is biased."""
    cs = [comp(str(i)) for i in range(80)]
    cs = [replace(c, params=c.params.replace(seed=1000 + i)) for i, c in enumerate(cs)]
    folder = run_folder(tmp_path, cs)
    extend(Continuing({str(i) for i in range(0, 80, 2)}), folder, 400)
    done = load_run(folder)
    assert all(status(c).known for c in done)
    m = Measure.of(done, ("runaway",), extend_share=0.25)
    drawn = [c for c in done if chosen(c, 0.25)]
    assert 5 < len(drawn) < 40 and m.estimate["known"] == len(drawn)
    # the draws nest: a quarter share continues a subset of what a half continues
    assert set(map(id, drawn)) <= {id(c) for c in done if chosen(c, 0.5)}


def test_a_cancelled_continuation_is_sent_again(tmp_path: Path) -> None:
    folder = run_folder(tmp_path, [comp("a")])

    class Cancelling(Continuing):
        def complete(self, request: Request, cancel: threading.Event | None = None
                     ) -> Completion:
            return self.cancelled(request, 0.0, "more", 1)

    extend(Cancelling(set()), folder, 300)
    eng = Continuing(set())
    extend(eng, folder, 300)
    assert len(eng.requests) == 1


def test_bad_horizons_and_shares_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidParams, match="above the cap"):
        check_horizon(256, 256)
    with pytest.raises(InvalidParams, match=r"\(0, 1\]"):
        check_share(0)
    with pytest.raises(InvalidParams, match=r"\(0, 1\]"):
        check_share(1.5)
    folder = run_folder(tmp_path, [comp("a")])
    with pytest.raises(InvalidParams, match="above the cap"):
        extend(Continuing(set()), folder, 50)
    assert not (folder / EXTENSIONS).exists() or not (folder / EXTENSIONS).read_text()
    with pytest.raises(InvalidParams, match="max_tokens above"):
        Request("x", "p", SamplingParams(max_tokens=10), prompt="p", continuation_ids=(1,) * 10)


# --------------------------------------------------------------------- evidence
def chat_token(token: str, lp: float, alts: list[tuple[str, float]]) -> dict:
    return {"token": token, "logprob": lp,
            "top_logprobs": [{"token": t, "logprob": v} for t, v in alts]}


def test_stop_evidence_is_exact_when_a_stop_token_is_listed_else_a_bound() -> None:
    stops = stop_token_texts("vllm")
    lp = {"content": [chat_token("Hi", -0.1, [("Hi", -0.1), ("<|im_end|>", -2.0),
                                              ("</s>", -3.0)]),
                      chat_token("!", -0.5, [("!", -0.5), (".", -1.5), (",", -4.0)])]}
    (v1, up1), (v2, up2) = stop_evidence(lp, stops)
    assert not up1 and v1 == pytest.approx(math.log(math.exp(-2.0) + math.exp(-3.0)))
    assert up2 and v2 == -4.0
    # the sampled token is a stop token: the model ended there
    end = {"content": [chat_token("<|im_end|>", -0.2, [("\n", -1.8)])]}
    assert stop_evidence(end, stops) == [(-0.2, False)]
    # completions (vLLM): a dict of alternatives per token
    comp_lp = {"tokens": ["a", "b"], "token_logprobs": [-0.3, -0.7],
               "top_logprobs": [{"a": -0.3, "<|eot_id|>": -5.0}, {"b": -0.7, "c": -2.0}]}
    assert stop_evidence(comp_lp, stops) == [(-5.0, False), (-2.0, True)]
    # llama-cpp-python writes special tokens as ""
    llama = {"content": [chat_token("x", -0.1, [("x", -0.1), ("", -1.0)])]}
    assert stop_evidence(llama, stop_token_texts("llamacpp")) == [(-1.0, False)]
    assert stop_evidence(llama, stop_token_texts("vllm")) == [(-1.0, True)]
    # told the model's own stop tokens, the common ones no longer count
    own = stop_token_texts("vllm", ("<|im_end|>",))
    assert stop_evidence(lp, own)[0] == (-2.0, False)
    assert stop_evidence(comp_lp, own) == [(-5.0, True), (-2.0, True)]
    # no alternatives: no evidence
    assert stop_evidence({"content": [{"token": "x", "logprob": -1.0}]}, stops) is None


# --------------------------------------------------------------------- the watch
# weights that read "the model never thinks of ending" as a runaway
NEVER = {"stop": {"bias": -4.0, "stop_max": -1.5},
         "logprobs": {"bias": -30.0}, "text": {"bias": -30.0}}


def feed_all(w: Watch, n: int, stop: float) -> list[str]:
    found = []
    for i in range(n):
        f = w.feed(f"w{i % 7} ", (-1.0,), ((stop, False),))
        if f is not None:
            found.append(f.kind)
    return found


def test_a_runaway_is_reported_mid_stream_and_withdrawn_when_it_ends() -> None:
    cfg = WatchConfig(kinds=("runaway",), runaway={"weights": NEVER})
    w = Watch("", cfg, horizon=2000)
    assert feed_all(w, 100, -20.0) == ["runaway"]
    f = w.findings["runaway"]
    assert f.evidence["at_token"] == 48 and f.evidence["evidence"] == "stop"
    assert w.p_runaway is not None and w.p_runaway >= 0.95
    w.finish(ended=True)
    assert "runaway" not in w.findings and w.p_runaway == 0.0
    # a model that keeps thinking of ending is no runaway
    calm = Watch("", cfg, horizon=2000)
    assert feed_all(calm, 100, -1.0) == []
    assert "runaway" not in calm.finish(ended=False)


def test_batch_and_stream_agree_on_runaways_and_an_outcome_overrides() -> None:
    cfg = WatchConfig(runaway={"weights": NEVER})
    stream = Watch("", cfg, horizon=800)
    feed_all(stream, 90, -20.0)
    stream.finish(ended=False, tokens=90)
    text = "".join(f"w{i % 7} " for i in range(90))
    c = Completion("r", "p", SamplingParams(max_tokens=100), "runaway", text=text,
                   completion_tokens=90,
                   extra={"logprobs": [-1.0] * 90, "logprob_chars": [len(f"w{i % 7} ")
                                                                     for i in range(90)],
                          "stop_logprobs": [-20.0] * 90})
    batch = watched(c, cfg)
    assert batch.findings.keys() == stream.findings.keys()
    assert batch.findings["runaway"].to_dict() == stream.findings["runaway"].to_dict()
    ended = Completion.from_dict(c.to_dict() | {"outcome": {"tokens": 300, "ended": True,
                                                            "horizon": 800}})
    assert "runaway" not in watched(ended, cfg).findings
    went_on = Completion.from_dict(c.to_dict() | {"outcome": {"tokens": 800,
                                                              "ended": False}})
    f = watched(went_on, cfg).findings["runaway"]
    assert f.evidence["known"] and f.score == 1.0
