"""degen's guard against vLLM's own loop stop (``repetition_detection``), on the same
requests to the same vLLM server, and on the labelled texts.

1. Live. A vLLM server (CPU build, ``.venv-vllm``) serves the bundled SmolLM2-135M from
   degen's cached checkpoint folder. The built-in prompts are sent three ways, each
   greedy and sampled (temperature 1, a seed per request, so every arm sees the same
   generations up to where it stops them):

   - ``plain``: straight to vLLM, nothing stops a runaway but max_tokens;
   - ``vllm``: straight to vLLM with ``repetition_detection`` at the settings its
     issue suggests (``max_pattern_size`` 64, ``min_pattern_size`` 1, ``min_count`` 3);
   - ``guard``: through ``degen guard`` (every kind cut, log-probabilities asked).

   The plain answers say what each request would have done: it stopped by itself (a
   finished answer: a stop there is a *wrong* stop), or ran to max_tokens (a runaway).
   A runaway is a *loop* when the last quarter of its tokens repeats one unit of at
   most 64 tokens (nine positions in ten equal to the token one unit back; the loop's
   onset is where that starts), else *other* (babble, glued words, answers that never
   end). For each arm: loops stopped and the tokens from onset to stop, other runaways
   stopped, finished answers wrongly stopped, tokens generated.
2. Offline. The labelled texts (dev set and tests/corpus), tokenized with the bundled
   tokenizer, through vLLM's own check (``check_sequence_repetition`` from the vLLM
   package, run in its venv at every prefix, as the server runs it after each token)
   and through degen's watch fed token by token: the share of each label stopped, and
   of the ``ok`` texts (legitimate repetition among them) wrongly stopped.

    .venv/bin/python -m benchmarks.bench_vllm [--prompts 64] [--max-tokens 512] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks import corpus
from benchmarks.bench_guard import Guard
from degen.engines import hf
from degen.prompts import load_prompts
from degen.stats import wilson_interval
from degen.testing.vllm import VLLMServer, vllm_python

ROOT = Path(__file__).resolve().parents[1]
DETECTION = {"max_pattern_size": 64, "min_pattern_size": 1, "min_count": 3}
MODEL = "SmolLM2-135M-Instruct"
EARLY = ("repetition", "degenerate")

# Run inside vLLM's venv: the first prefix length at which vLLM's own check fires.
_VLLM_CHECK = """
import json, sys
from vllm.sampling_params import RepetitionDetectionParams
from vllm.v1.core.sched.utils import check_sequence_repetition
params = RepetitionDetectionParams(**json.loads(sys.argv[1]))
out = []
for ids in json.load(sys.stdin):
    out.append(next((n for n in range(1, len(ids) + 1)
                     if check_sequence_repetition(ids[:n], params)), None))
json.dump(out, sys.stdout)
"""


# ---------------------------------------------------------------------- loops, neutrally
def loop_onset(ids: Sequence[int], max_period: int = 64, share: float = 0.9) -> int | None:
    """Where a runaway's repeating tail starts, or None when its last quarter is not one
    unit of at most ``max_period`` tokens over and over (``share`` of positions equal
    to the token one unit back)."""
    n = len(ids)
    tail = max(8, n // 4)
    if n < 2 * tail:
        return None
    for p in range(1, max_period + 1):
        eq = [i >= p and ids[i] == ids[i - p] for i in range(n)]
        if sum(eq[n - tail:]) < share * tail:
            continue
        i, w = n - tail, 4 * p + 16  # walk back while the unit still (nearly) repeats
        while i > p and sum(eq[i - 1:i - 1 + w]) >= share * len(eq[i - 1:i - 1 + w]):
            i -= 1
        while not eq[i]:  # the first position that repeats the one a unit back
            i += 1
        return i - p
    return None


# ---------------------------------------------------------------------- live
def chat(client: httpx.Client, url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(url + "/chat/completions", json=body)
    r.raise_for_status()
    d = r.json()
    c = d["choices"][0]
    return {"text": c["message"]["content"] or "", "finish": c["finish_reason"],
            "tokens": d["usage"]["completion_tokens"]}


def arm(url: str, prompts: list[Any], sampling: dict[str, Any], max_tokens: int,
        extra: dict[str, Any], concurrency: int) -> list[dict[str, Any]]:
    def one(i_p: tuple[int, Any]) -> dict[str, Any]:
        i, p = i_p
        body = {"model": MODEL, "messages": list(p.messages), "max_tokens": max_tokens,
                **sampling, **extra}
        if sampling.get("temperature"):
            body["seed"] = i
        return {"prompt": p.id, **chat(client, url, body)}

    with httpx.Client(timeout=1800) as client, ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, enumerate(prompts)))


SAMPLINGS = {"greedy": {"temperature": 0}, "sampled": {"temperature": 1.0, "top_p": 1.0}}


def live(prompts: list[Any], max_tokens: int, concurrency: int, log: Path,
         samplings: Sequence[str] = tuple(SAMPLINGS)) -> dict[str, Any]:
    from transformers import AutoTokenizer

    folder = hf.materialize(hf.resolve_model(None))
    tok = AutoTokenizer.from_pretrained(str(folder))
    out: dict[str, Any] = {}
    t0 = time.monotonic()
    with VLLMServer(folder, python=vllm_python(ROOT), name=MODEL, log=log) as srv:
        print(f"vLLM up in {time.monotonic() - t0:.0f} s", flush=True)
        guard = Guard(srv.base_url)
        try:
            for name in samplings:
                sampling = SAMPLINGS[name]
                arms = {}
                for a, url, extra in (("plain", srv.base_url, {}),
                                      ("vllm", srv.base_url,
                                       {"repetition_detection": DETECTION}),
                                      ("guard", guard.url, {})):
                    t = time.monotonic()
                    arms[a] = arm(url, prompts, sampling, max_tokens, extra, concurrency)
                    print(f"  {name:<8} {a:<6} {time.monotonic() - t:6.0f} s  "
                          f"{sum(r['tokens'] for r in arms[a]):>7,} tokens", flush=True)
                out[name] = compare(arms, tok, max_tokens)
        finally:
            guard.stop()
    return out


def compare(arms: dict[str, list[dict[str, Any]]], tok: Any, max_tokens: int
            ) -> dict[str, Any]:
    plain = arms["plain"]
    kind, onset = [], []
    for r in plain:
        if r["finish"] != "length":
            kind.append("finished")
            onset.append(None)
            continue
        ids = tok(r["text"], add_special_tokens=False)["input_ids"]
        o = loop_onset(ids)
        kind.append("loop" if o is not None else "other")
        onset.append(o)
    res: dict[str, Any] = {"requests": len(plain),
                           "finished": kind.count("finished"), "loops": kind.count("loop"),
                           "other_runaways": kind.count("other"), "arms": {}}
    for a, rows in arms.items():
        stopped = [r["finish"] in EARLY for r in rows]
        lat = [rows[i]["tokens"] - onset[i] for i in range(len(rows))
               if kind[i] == "loop" and stopped[i]]
        row = {"tokens": sum(r["tokens"] for r in rows),
               "loops_stopped": sum(s for s, k in zip(stopped, kind, strict=True)
                                    if k == "loop"),
               "other_stopped": sum(s for s, k in zip(stopped, kind, strict=True)
                                    if k == "other"),
               "finished_wrongly_stopped": sum(s for s, k in zip(stopped, kind, strict=True)
                                               if k == "finished"),
               "median_onset_to_stop": statistics.median(lat) if lat else None,
               "finish": {f: sum(r["finish"] == f for r in rows)
                          for f in sorted({r["finish"] for r in rows})}}
        row["stopped"] = [{"prompt": rows[i]["prompt"], "plain": kind[i],
                           "finish": rows[i]["finish"], "tokens": rows[i]["tokens"],
                           "plain_tokens": plain[i]["tokens"],
                           "text_end": rows[i]["text"][-160:]}
                          for i in range(len(rows)) if stopped[i] and kind[i] != "loop"]
        res["arms"][a] = row
    res["max_tokens"] = max_tokens
    return res


# ---------------------------------------------------------------------- offline
def offline(texts: list[dict[str, Any]]) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from degen.detect.watch import KINDS, Watch

    tok = AutoTokenizer.from_pretrained(str(hf.materialize(hf.resolve_model(None))))
    ids = [tok(t["text"], add_special_tokens=False)["input_ids"] for t in texts]
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(_VLLM_CHECK)
    t0 = time.monotonic()
    r = subprocess.run([str(vllm_python(ROOT)), f.name, json.dumps(DETECTION)],
                       input=json.dumps(ids), capture_output=True, text=True, check=True)
    Path(f.name).unlink()
    vllm_at = json.loads(r.stdout)
    print(f"  vLLM's check over {len(texts)} texts: {time.monotonic() - t0:.0f} s", flush=True)
    degen_at: list[int | None] = []
    for t, seq in zip(texts, ids, strict=True):
        w = Watch(t["prompt"])
        at = None
        for n, i in enumerate(seq, 1):
            if w.feed(tok.decode([i])) is not None and w.first_of(KINDS) is not None:
                at = n
                break
        degen_at.append(at)
    out: dict[str, Any] = {}
    for label in ("loop", "gibberish", "glued", "ok"):
        idx = [i for i, t in enumerate(texts) if t["label"] == label]
        row: dict[str, Any] = {"texts": len(idx)}
        for who, at in (("vllm", vllm_at), ("degen", degen_at)):
            hits = [i for i in idx if at[i] is not None]
            lo, hi = wilson_interval(len(hits), len(idx))
            shares = [at[i] / len(ids[i]) for i in hits]
            row[who] = {"stopped": len(hits), "rate": len(hits) / len(idx) if idx else None,
                        "ci95": [lo, hi],
                        "median_share_before_stop": statistics.median(shares)
                        if shares else None}
        out[label] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--sampling", choices=list(SAMPLINGS), action="append",
                    help="live arms to run (default: greedy and sampled)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result: dict[str, Any] = {"detection": DETECTION}
    print("offline: the labelled texts through vLLM's check and degen's watch", flush=True)
    result["offline"] = offline(corpus.load())
    for label, row in result["offline"].items():
        print(f"  {label:<10} {row['texts']:>4} texts  vLLM stops {row['vllm']['stopped']:>4}"
              f"  degen stops {row['degen']['stopped']:>4}", flush=True)
    if not args.skip_live:
        prompts = load_prompts()[:args.prompts]
        print(f"live: {len(prompts)} prompts x {args.max_tokens} tokens, three arms",
              flush=True)
        log = Path(tempfile.mkdtemp()) / "vllm.log"
        result["live"] = live(prompts, args.max_tokens, args.concurrency, log,
                              args.sampling or tuple(SAMPLINGS))
        for name, res in result["live"].items():
            print(f"  {name}: {res['finished']} finished, {res['loops']} loops, "
                  f"{res['other_runaways']} other runaways", flush=True)
            for a, row in res["arms"].items():
                print(f"    {a:<6} loops stopped {row['loops_stopped']:>3}  other "
                      f"{row['other_stopped']:>3}  wrong {row['finished_wrongly_stopped']:>3}"
                      f"  onset->stop {row['median_onset_to_stop']}  tokens "
                      f"{row['tokens']:>7,}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
