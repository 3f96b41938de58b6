"""Streaming through the guard: every labelled text replayed by a scripted upstream, a
chunk per word piece (about a token), through a real `degen guard` process.

The protocol of ../shared/tools/replay-guard, in the project: a degenerate text should
be cut (any finish_reason but stop or length), a good one never. Reports recall, good
texts cut, the median share of a degenerate text relayed before its cut, and how often
the streamed verdict (cut or not) agrees with the batch verdict on the whole text
(`degen scan`'s: flagged or not).

    .venv/bin/python -m benchmarks.bench_replay [--sets dev] [--json F] [-- GUARD FLAGS]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.corpus import SETS, load
from degen.detect.watch import watch_text
from degen.stats import wilson_interval
from degen.testing.scripted import ScriptedServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_guard(upstream: str, flags: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    degen = str(Path(sys.executable).parent / "degen")
    proc = subprocess.Popen([degen, "guard", "--upstream", upstream, "--port", str(port),
                             "--log-level", "warning", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(url + "/health", timeout=1)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"the guard did not start: {err}") from None
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the guard did not answer in 20 s")


def replay(url: str, rows: list[dict[str, Any]], concurrency: int = 8
           ) -> list[tuple[str, str | None]]:
    def one(i: int) -> tuple[str, str | None]:
        body = {"model": "scripted", "stream": True, "max_tokens": 4096, "seed": i,
                "messages": [{"role": "user", "content": rows[i]["prompt"]}]}
        got: list[str] = []
        fin = None
        with httpx.stream("POST", url + "/v1/chat/completions", json=body,
                          timeout=120) as resp:
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for c in json.loads(line[6:]).get("choices") or []:
                    if (d := (c.get("delta") or {}).get("content")):
                        got.append(d)
                    fin = c.get("finish_reason") or fin
        return "".join(got), fin

    with ThreadPoolExecutor(concurrency) as ex:
        return list(ex.map(one, range(len(rows))))


def summarize(rows: list[dict[str, Any]], res: list[tuple[str, str | None]]) -> dict[str, Any]:
    tp = fn = fp = tn = agree = 0
    shares: list[float] = []
    missed: dict[str, int] = {}
    cut_good: list[str] = []
    reasons: dict[str, int] = {}
    for r, (text, fin) in zip(rows, res, strict=True):
        cut = fin not in ("stop", "length")
        if cut:
            reasons[str(fin)] = reasons.get(str(fin), 0) + 1
        agree += cut == bool(watch_text(r["text"], r["prompt"]))
        if r["degenerate"]:
            if cut:
                tp += 1
                shares.append(len(text) / max(1, len(r["text"])))
            else:
                fn += 1
                missed[r["label"]] = missed.get(r["label"], 0) + 1
        elif cut:
            fp += 1
            cut_good.append(r["id"])
        else:
            tn += 1

    def ci(k: int, n: int) -> list[float]:
        return [round(x, 3) for x in wilson_interval(k, n)]

    return {"texts": len(rows), "recall": tp / max(1, tp + fn), "recall_ci95": ci(tp, tp + fn),
            "good_cut": fp / max(1, fp + tn), "good_cut_ci95": ci(fp, fp + tn),
            "good_cut_ids": cut_good, "missed_by_label": missed,
            "median_share_relayed": statistics.median(shares) if shares else None,
            "agreement_with_batch": agree / len(rows), "finish_reasons": reasons}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="dev", help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--json", type=Path)
    ap.add_argument("guard_flags", nargs="*", help="after --: flags for degen guard")
    a = ap.parse_args()
    rows = load(tuple(a.sets.split(",")))
    if not rows:
        raise SystemExit(f"no texts in {a.sets} (is ../shared/corpus beside the checkout?)")
    with ScriptedServer(["replay"], texts=[r["text"] for r in rows], logprobs=False) as up:
        proc, url = start_guard(up.base_url.removesuffix("/v1"), a.guard_flags)
        try:
            t0 = time.perf_counter()
            res = replay(url, rows)
            wall = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    out = summarize(rows, res)
    out["wall_s"] = round(wall, 1)
    print(f"{out['texts']} texts ({a.sets}): recall {out['recall']:.3f} "
          f"(missed by label: {out['missed_by_label']}); good texts cut "
          f"{len(out['good_cut_ids'])} = {out['good_cut']:.3f} {out['good_cut_ids'][:10]}; "
          f"median share relayed before a cut {out['median_share_relayed']:.2f}; "
          f"agreement with the batch verdict {out['agreement_with_batch']:.3f}; "
          f"finish reasons {out['finish_reasons']} ({out['wall_s']} s)")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
