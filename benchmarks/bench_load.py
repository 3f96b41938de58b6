"""Load-runner fidelity: achieved vs target request rate against a fast loopback server.

The server answers every chat completion at once with a tiny fixed body, so what is
measured is degen's dispatcher and HTTP client, not a model. For each target rate
the runner sends constant arrivals (the target is exact) and Poisson arrivals
(compared with the plan's own realized rate, since a finite Poisson sample has a
rate of its own). Reported: achieved/target, the p50/p99 lateness of dispatch
against the schedule, and the client's CPU time per request.

    .venv/bin/python -m benchmarks.bench_load [--seconds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from degen.engines.openai import OpenAIEngine
from degen.experiments.load.runner import run_load
from degen.experiments.load.schedule import Plan
from degen.prompts import Prompt
from degen.records import SamplingParams
from degen.stats import percentile

BODY = json.dumps({
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1},
}).encode()
MODELS = json.dumps({"data": [{"id": "fast", "owned_by": "vllm"}]}).encode()


class Fast(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a: Any) -> None:
        pass

    def _send(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(MODELS)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(BODY)


def serve(port_q: Any) -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Fast)
    srv.daemon_threads = True
    port_q.put(srv.server_address[1])
    srv.serve_forever()


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(engine: OpenAIEngine, rate: float, arrivals: str, seconds: float) -> dict[str, Any]:
    n = max(20, int(rate * seconds))
    plan = Plan(prompts=(Prompt("p", messages=({"role": "user", "content": "hi"},)),),
                params=SamplingParams(max_tokens=1), requests=n, rate=rate, arrivals=arrivals)
    planned = plan.offsets(0)
    target = (n - 1) / planned[-1]
    with tempfile.TemporaryDirectory() as d:
        c0 = cpu_s()
        res = run_load(engine, plan, Path(d) / "o", concurrency=64)
        cpu = cpu_s() - c0
    cs = res.completions
    starts = sorted(c.timings.started_at for c in cs)
    achieved = (n - 1) / (starts[-1] - starts[0])
    late = [(c.timings.started_at - c.timings.scheduled_at) * 1e3 for c in cs]
    lat = [c.timings.latency_s * 1e3 for c in cs]
    return {
        "rate": rate, "arrivals": arrivals, "n": n, "errors": sum(c.is_error for c in cs),
        "target_rps": target, "achieved_rps": achieved, "ratio": achieved / target,
        "late_p50_ms": percentile(late, 50), "late_p99_ms": percentile(late, 99),
        "latency_p50_ms": percentile(lat, 50),
        "client_cpu_ms_per_req": cpu / n * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", default="10,50,200")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    # the server runs in its own process, so the CPU time measured here is the client's
    ctx = multiprocessing.get_context("spawn")
    port_q = ctx.Queue()
    srv = ctx.Process(target=serve, args=(port_q,), daemon=True)
    srv.start()
    eng = OpenAIEngine(f"http://127.0.0.1:{port_q.get(timeout=30)}/v1")
    rows = []
    try:
        for rate in (float(x) for x in a.rates.split(",")):
            for arrivals in ("constant", "poisson"):
                r = measure(eng, rate, arrivals, a.seconds)
                rows.append(r)
                print(f"{rate:>6g}/s {arrivals:<8} n={r['n']:<5} achieved {r['achieved_rps']:8.2f}"
                      f" / {r['target_rps']:8.2f}  ratio {r['ratio']:.4f}  late p50 "
                      f"{r['late_p50_ms']:.2f} ms p99 {r['late_p99_ms']:.2f} ms  client "
                      f"{r['client_cpu_ms_per_req']:.2f} CPU-ms/req  errors {r['errors']}",
                      flush=True)
    finally:
        eng.close()
        srv.terminate()
    if a.json:
        a.json.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
