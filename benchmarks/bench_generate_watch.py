"""The watch inside transformers ``generate``: what it costs, and how early it stops.

The bundled model in transformers form (float32, CPU), a batch of ``--batch`` prompts
of the built-in suite (left padded), greedy, ``--max-tokens`` new tokens, generated
twice in alternation ``--repeats`` times: plainly, and with
:class:`~degen.integrations.transformers.WatchStoppingCriteria` watching every row but
stopping none (``cut="none"``), so both runs generate the same tokens and the
difference is the watch's cost alone (the time spent inside the criteria's calls is
timed too: a direct measure, where the two runs' difference is mostly noise). Then
the sea poem (greedy, it repeats its last line from its first tokens) with the watch
stopping: tokens from the loop's onset to the stop.

    .venv/bin/python -m benchmarks.bench_generate_watch [--batch 16] [--max-tokens 256]
        [--repeats 2] [--json benchmarks/results/integrations-transformers.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any


def _generate(model: Any, tok: Any, texts: list[str], max_tokens: int,
              criteria: Any = None) -> tuple[float, Any]:
    import torch

    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_tokens,
                             pad_token_id=tok.pad_token_id, top_k=None, top_p=None,
                             temperature=None,
                             stopping_criteria=[criteria] if criteria is not None else None)
    return time.perf_counter() - t0, out[:, enc["input_ids"].shape[1]:]


def _timed(criteria: Any) -> Any:
    """``criteria`` with the time spent in its calls summed in ``.spent``."""
    base = type(criteria)

    class Timed(base):  # type: ignore[misc, valid-type]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return super().__call__(*args, **kwargs)
            finally:
                self.spent += time.perf_counter() - t0

    criteria.__class__ = Timed
    criteria.spent = 0.0
    return criteria


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import torch

    from degen.engines import hf
    from degen.integrations.transformers import WatchStoppingCriteria
    from degen.prompts import load_prompts

    torch.manual_seed(0)
    model, tok = hf.load_model(hf.resolve_model(None), device="cpu")
    tok.padding_side = "left"
    prompts = load_prompts()

    def chat(p: Any) -> str:
        return tok.apply_chat_template(list(p.messages or ()), tokenize=False,
                                       add_generation_prompt=True)

    texts = [chat(p) for p in prompts[:a.batch]]
    _generate(model, tok, texts[:2], 8)  # warm up
    plain_s, watched_s, inside_s = [], [], []
    same = True
    found: dict[str, int] = {}
    for _ in range(a.repeats):
        t, plain = _generate(model, tok, texts, a.max_tokens)
        plain_s.append(t)
        w = _timed(WatchStoppingCriteria(tok, max_new_tokens=a.max_tokens, cut="none"))
        t, watched = _generate(model, tok, texts, a.max_tokens, w)
        watched_s.append(t)
        inside_s.append(w.spent)
        same = same and bool(torch.equal(plain, watched))
        found = {}
        for r in w.results():
            for k in r.findings:
                found[k] = found.get(k, 0) + 1
    tokens = int((plain != tok.pad_token_id).sum())
    p, q = statistics.median(plain_s), statistics.median(watched_s)
    print(f"batch {a.batch} x {a.max_tokens} tokens ({tokens} generated): plain {p:.2f} s, "
          f"watched {q:.2f} s: {100 * (q / p - 1):+.1f}% (runs: plain {plain_s}, watched "
          f"{watched_s}); same tokens: {same}; kinds found (rows): {found}", flush=True)
    share = statistics.median(i / t for i, t in zip(inside_s, watched_s, strict=True))
    print(f"inside the criteria: {inside_s} s, a median {100 * share:.2f}% of the watched "
          "generate", flush=True)

    sea = next(x for x in prompts if x.id == "story-07")
    w = WatchStoppingCriteria(tok, max_new_tokens=a.max_tokens)
    _, out = _generate(model, tok, [chat(sea)], a.max_tokens, w)
    [r] = w.results()
    f = r.findings.get("loop")
    onset_tok = None
    if f is not None and f.start_char is not None:  # the token whose text holds the onset
        ids = [int(t) for t in out[0].tolist()]
        onset_tok = next((i for i in range(1, len(ids) + 1)
                          if len(tok.decode(ids[:i], skip_special_tokens=True)) > f.start_char),
                         None)
    print(f"sea poem: {r.kind} stopped at token {r.stopped_at} (onset at token {onset_tok}; "
          f"{None if onset_tok is None or r.stopped_at is None else r.stopped_at - onset_tok}"
          " tokens from onset to stop)", flush=True)
    result = {"batch": a.batch, "max_tokens": a.max_tokens, "tokens": tokens,
              "plain_s": plain_s, "watched_s": watched_s, "overhead": q / p - 1,
              "inside_criteria_s": inside_s, "inside_share": share,
              "same_tokens": same, "kinds_found": found,
              "sea_poem": {"kind": r.kind, "stopped_at": r.stopped_at, "onset_token": onset_tok}}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
