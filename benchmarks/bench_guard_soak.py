"""``degen guard`` soaked: 1,024 streams open for ten minutes, clients leaving at random,
memory sampled all along, upstream connections counted at the end.

The fast scripted upstream (:mod:`benchmarks.fast_upstream`) paces each stream (one
chunk per ``--interval`` seconds, ``--chunks`` per answer). The client keeps
``--streams`` connections busy: each asks for an answer, and with probability
``--leave`` hangs up at a random moment of it (closing its socket, as a client that
times out or crashes does), else reads it to the end; then it opens a new one. Every
``--every`` seconds: the guard's RSS and the upstream's open connections. At the end
(clients gone): the upstream's open connections must come back to what the guard keeps
idle for reuse (at most 64 per upstream), and the guard's running requests to 0.

    .venv/bin/python -m benchmarks.bench_guard_soak [--seconds 600] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bench_guard_capacity import BODY, guard, rss_bytes, upstream
from degen.guard.metrics import sample

MAX_IDLE = 64  # the guard's idle keep-alive connections per upstream (StreamPool)


async def _client(port: int, streams: int, seconds: float, leave: float, seed: int
                  ) -> dict[str, int]:
    rng = random.Random(seed)
    body = json.dumps(BODY).encode()
    req = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
           f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
           ).encode() + body
    until = time.monotonic() + seconds
    counts = {"answers": 0, "left": 0, "stopped": 0, "errors": 0}

    async def one() -> None:
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                counts["errors"] += 1
                await asyncio.sleep(1)
                continue
            quit_after = rng.uniform(0.5, 30.0) if rng.random() < leave else None
            started = time.monotonic()
            try:
                writer.write(req)
                while True:
                    now = time.monotonic()
                    if quit_after is not None and now - started > quit_after:
                        counts["left"] += 1
                        break
                    if now >= until:  # the soak is over: hang up mid-answer
                        counts["stopped"] += 1
                        break
                    data = await asyncio.wait_for(reader.read(65536),
                                                  max(0.1, min(60, until - now)))
                    if not data:
                        counts["errors"] += 1
                        break
                    if data.endswith(b"0\r\n\r\n"):
                        counts["answers"] += 1
                        break
            except TimeoutError:
                if time.monotonic() < until:
                    counts["errors"] += 1
            except OSError:
                counts["errors"] += 1
            finally:
                writer.close()  # a new connection for the next answer (leaving included)

    await asyncio.gather(*(one() for _ in range(streams)))
    return counts


def client_main(port: int, streams: int, seconds: float, leave: float) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    print(json.dumps(asyncio.run(_client(port, streams, seconds, leave, 0))))


def stats(up_port: int) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{up_port}/stats", timeout=10).json()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        a = sys.argv[2:]
        return client_main(int(a[0]), int(a[1]), float(a[2]), float(a[3]))
    import subprocess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--streams", type=int, default=1024)
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between chunks")
    ap.add_argument("--chunks", type=int, default=300, help="chunks per answer")
    ap.add_argument("--leave", type=float, default=0.3, help="share of clients that leave")
    ap.add_argument("--every", type=float, default=30)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    up, up_port = upstream(a.chunks, a.interval)
    out: dict[str, Any] = {k: getattr(a, k) for k in ("seconds", "streams", "interval",
                                                      "chunks", "leave")}
    try:
        g, port = guard(up_port, 1)
        try:
            time.sleep(1)
            idle = rss_bytes(g.proc.pid)
            client = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_guard_soak",
                                       "client", str(port), str(a.streams), str(a.seconds),
                                       str(a.leave)], stdout=subprocess.PIPE)
            t0 = time.monotonic()
            samples = []
            while client.poll() is None:
                time.sleep(a.every)
                s = {"t": round(time.monotonic() - t0), "rss_mib":
                     round(rss_bytes(g.proc.pid) / 2**20, 1),
                     "upstream_open": stats(up_port)["open"] - 1}
                samples.append(s)
                print(s, flush=True)
            counts = json.loads(client.communicate()[0])
            time.sleep(3)  # the last hang-ups reach the upstream
            page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            end = {"upstream_open": stats(up_port)["open"] - 1,
                   "running": sample(page, "degen:num_requests_running"),
                   "disconnects": sample(page, "degen:client_disconnects_total"),
                   "answers": sample(page, "degen:responses_total", finish_reason="stop"),
                   "errors": sample(page, "degen:upstream_errors_total"),
                   "rss_mib": round(rss_bytes(g.proc.pid) / 2**20, 1)}
        finally:
            g.stop()
    finally:
        up.stop()
    steady = [s["rss_mib"] for s in samples if s["t"] >= 60] or [samples[-1]["rss_mib"]]
    out.update(idle_rss_mib=round(idle / 2**20, 1), samples=samples, client=counts, end=end,
               rss_growth_after_1min_mib=round(steady[-1] - steady[0], 1),
               leaked=end["upstream_open"] > MAX_IDLE or end["running"] != 0)
    print(f"soak {a.seconds:.0f} s, {a.streams} streams: {counts['answers']} answers read "
          f"whole, {counts['left']} clients left mid-answer, {counts['errors']} errors; RSS "
          f"{out['idle_rss_mib']} MiB idle, {steady[0]} -> {steady[-1]} MiB from the first "
          f"minute to the end; after: {end['upstream_open']} upstream connections open "
          f"(idle pool <= {MAX_IDLE}), {end['running']:.0f} running", flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
