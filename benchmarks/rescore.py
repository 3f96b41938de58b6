"""Give the labelled texts the log-probabilities a server would have streamed with them.

Every text of benchmarks/corpus.py is read by the bundled model (SmolLM2-135M-Instruct,
which wrote most of them) after its prompt in the chat template; each token's
log-probability under the model's own distribution (before any sampling setting, as
vLLM's default logprobs are) is written with the token's text:

    {"id": ..., "tokens": [[piece, logprob], ...]}      (one line per text)

The pieces join back to the text exactly (incremental detokenization, a piece that
ends inside a character waits for the next token). ``benchmarks.calibrate
--logprobs FILE`` and ``benchmarks.detector_quality --logprobs FILE`` read it.

    .venv/bin/python -m benchmarks.rescore --out runs/corpus-logprobs.jsonl   # ~35 CPU-minutes
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.corpus import load


def rescore(rows: list[dict[str, Any]], model: str | None = None) -> list[dict[str, Any]]:
    import torch

    from degen.engines import hf
    from degen.engines.detokenize import Detokenizer

    mdl, tok = hf.load_model(hf.resolve_model(model), "cpu", "auto")
    out = []
    for r in rows:
        prefix = tok.apply_chat_template([{"role": "user", "content": r["prompt"]}],
                                         add_generation_prompt=True, tokenize=False)
        p_ids = tok(prefix, add_special_tokens=False)["input_ids"]
        a_ids = tok(r["text"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + a_ids])
        with torch.inference_mode():
            logits = mdl(input_ids=ids).logits[0].float()
        lps = torch.log_softmax(logits[len(p_ids) - 1:-1], dim=-1)
        picked = lps[torch.arange(len(a_ids)), torch.tensor(a_ids)].tolist()
        detok = Detokenizer(tok)
        tokens = []
        for k, lp in enumerate(picked):
            tokens.append([detok.delta(a_ids[:k + 1]), round(lp, 4)])
        joined = "".join(p for p, _ in tokens)
        out.append({"id": r["id"], "tokens": tokens, "exact": joined == r["text"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", help="a GGUF file or HF folder (default: the bundled model)")
    a = ap.parse_args()
    rows = load()
    res = rescore(rows, a.model)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("w") as f:
        for r in res:
            f.write(json.dumps(r) + "\n")
    print(f"{len(res)} texts rescored ({sum(r['exact'] for r in res)} join back exactly) "
          f"-> {a.out}")


if __name__ == "__main__":
    main()
