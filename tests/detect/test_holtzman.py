"""Reproduce Holtzman et al. 2019 ("The Curious Case of Neural Text Degeneration")
on the bundled model: greedy decoding repeats far more than pure or nucleus sampling.

Same 16 prompts and per-request seeds for every decoder, 128 tokens; repetition is
the mean seq-rep-4 over token ids and the share of completions with a detected loop.
"""

from __future__ import annotations

from dataclasses import replace

from degen.detect.loop import LoopDetector
from degen.detect.metrics import distinct_n, seq_rep_n
from degen.engines.local import LocalEngine
from degen.experiments.load.schedule import Plan
from degen.prompts import load_prompts
from degen.records import SamplingParams

DECODERS = {
    "greedy": SamplingParams(temperature=0, max_tokens=128),
    "pure sampling": SamplingParams(temperature=1.0, max_tokens=128),
    "nucleus p=0.95": SamplingParams(temperature=1.0, top_p=0.95, max_tokens=128),
}


def test_greedy_repeats_more_than_sampling() -> None:
    plan = Plan(prompts=tuple(load_prompts()), params=SamplingParams(), requests=16, seed=7)
    reqs = plan.requests_for(0)
    stats = {}
    with LocalEngine(batch_size=16) as eng:
        for name, p in DECODERS.items():
            cs = eng.generate([replace(r, params=p.replace(seed=r.params.seed)) for r in reqs])
            rep = sum(seq_rep_n(c.token_ids, 4) for c in cs) / len(cs)
            dist = sum(distinct_n(c.token_ids, 2) for c in cs) / len(cs)
            loops = sum(LoopDetector()(c) is not None for c in cs)
            stats[name] = (rep, dist, loops)
    print("\n" + "\n".join(f"{k:<15} seq-rep-4 {r:.3f}  distinct-2 {d:.3f}  loops {n}/16"
                           for k, (r, d, n) in stats.items()))
    g, pure, nuc = stats["greedy"], stats["pure sampling"], stats["nucleus p=0.95"]
    assert g[0] > 2 * pure[0] and g[0] > 2 * nuc[0], stats
    assert g[1] < pure[1] and g[1] < nuc[1], stats
    assert g[2] > max(pure[2], nuc[2]), stats
