"""``degen guard`` at a GPU node's load: its ceiling in chunks/s, its CPU per relayed
chunk, the latency it adds, and memory per open stream.

Three processes: :mod:`benchmarks.fast_upstream` (a scripted vLLM-shaped upstream,
one token a chunk, each chunk its own write), ``degen guard`` with its defaults (every
kind watched, log-probabilities asked and stripped), and a load client (raw asyncio:
N connections, each streaming one long answer after another and counting events).

1. Capacity: N = 64 / 256 / 1,024 streams read as fast as they come, through the
   guard with 1 and 2 workers, and straight from the upstream (the client and upstream
   are not the bottleneck when direct reads are far faster). Guard CPU per chunk: the
   CPU seconds of the guard's processes over the window (``/proc``), divided by the
   chunks the client received.
2. Latency under a paced load: the upstream paces each of 256 streams (one chunk per
   interval, as a server emits one token per decode step; answers of about 2 s, the
   streams started over a second) at 2,500 and 5,000 chunks/s and at half the 1-worker
   ceiling of part 1; each chunk carries its send time and the client notes its
   arrival: p50 / p99 of arrival - send, through the guard and direct, the time to the
   first event, and the guard's CPU per chunk. Paced, each read carries one event, so a
   chunk costs the guard a socket read and a write of its own: far more CPU than at
   saturation, where one read brings many events, and half the saturated ceiling can
   be more than a paced guard can carry.
3. Memory per open stream: the guard's RSS with 1,024 slow streams open, minus its RSS
   idle, divided by 1,024.

The machine has 2 cores shared by the three processes: at saturation the guard does
not have a core to itself, so chunks/s is a floor; CPU per chunk is the guard's own.

    .venv/bin/python -m benchmarks.bench_guard_capacity [--seconds 10] [--repeats 3]
        [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from degen.testing.llamacpp import free_port

ROOT = Path(__file__).resolve().parents[1]
_TS = re.compile(rb'"ts":(\d+)')
# the guard (one worker) on core 0, the upstream and the client on core 1; two workers
# run on both cores (sharing core 1 with the upstream and the client)
GUARD, OTHERS = "0", "1"
BODY = {"model": "fast", "messages": [{"role": "user", "content": "Tell me a long story."}],
        "stream": True}


# ---------------------------------------------------------------------- the client
class _Conn(asyncio.Protocol):
    def __init__(self, load: Load) -> None:
        self.load, self.tail = load, b""
        self.transport: asyncio.Transport | None = None
        self.sent = 0.0
        self.first = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ask()

    def ask(self) -> None:
        if time.monotonic() >= self.load.until:
            assert self.transport is not None
            self.transport.close()
            return
        self.sent, self.first, self.tail = time.monotonic(), True, b""
        assert self.transport is not None
        self.transport.write(self.load.request)

    def data_received(self, data: bytes) -> None:
        load = self.load
        now = time.monotonic()
        buf = self.tail + data  # the tail: what followed the last event end counted
        n = buf.count(b"\n\n")
        if n:
            if self.first:
                self.first = False
                if load.measuring(now):
                    load.ttfb.append(now - self.sent)
            if load.measuring(now):
                load.chunks += n
                if load.latency:
                    wall = time.time_ns()
                    load.lat.extend(wall - int(m) for m in _TS.findall(data))
        if b'"degen":' in data:
            load.cuts += 1  # a good answer cut: the benchmark's text is wrong
        if buf.endswith(b"0\r\n\r\n"):
            self.ask()
            return
        end = buf.rfind(b"\n\n")
        self.tail = (buf[end + 2:] if end >= 0 else buf)[-8:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.open -= 1
        if exc is not None:
            self.load.errors += 1
        if self.load.open == 0:
            self.load.done.set_result(None) if not self.load.done.done() else None


class Load:
    """N connections streaming for ``seconds`` (after ``warmup``) from host:port."""

    def __init__(self, port: int, n: int, seconds: float, warmup: float, latency: bool,
                 path: str = "/v1/chat/completions") -> None:
        body = json.dumps(BODY).encode()
        self.request = (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                        "\r\n").encode() + body
        self.port, self.n, self.latency = port, n, latency
        self.t0 = t = time.monotonic()
        self.start, self.end = t + warmup, t + warmup + seconds
        self.until = self.end
        self.chunks = self.errors = self.open = self.cuts = 0
        self.lat: list[int] = []
        self.ttfb: list[float] = []

    def measuring(self, now: float) -> bool:
        return self.start <= now < self.end

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        for i in range(self.n):
            self.open += 1
            await loop.create_connection(lambda: _Conn(self), "127.0.0.1", self.port)
            if self.latency:  # streams start spread over a second: no burst at the start
                await asyncio.sleep(max(0.0, self.t0 + (i + 1) / self.n - time.monotonic()))
        await asyncio.sleep(max(0.0, self.end - time.monotonic()))
        with_timeout = asyncio.wait_for(asyncio.shield(self.done), 30)
        with contextlib.suppress(TimeoutError):
            await with_timeout


def client_main(port: int, n: int, seconds: float, warmup: float, latency: bool) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    load = Load(port, n, seconds, warmup, latency)
    asyncio.run(load.run())
    lat = sorted(load.lat)
    out = {"streams": n, "seconds": seconds, "chunks": load.chunks,
           "chunks_per_s": load.chunks / seconds, "errors": load.errors, "cuts": load.cuts,
           "ttfb_ms_p50": 1e3 * statistics.median(load.ttfb) if load.ttfb else None}
    if lat:
        out["latency_us_p50"] = lat[len(lat) // 2] / 1e3
        out["latency_us_p99"] = lat[int(len(lat) * 0.99)] / 1e3
    print(json.dumps(out))


# ---------------------------------------------------------------------- orchestration
def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        out += _tree(int(k))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its descendants (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def rss_bytes(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


def pin(cpus: str | None) -> list[str]:
    """``taskset -c CPUS`` (the guard on one core, the rest on the other), when
    available."""
    return ["taskset", "-c", cpus] if cpus and shutil.which("taskset") else []


class Proc:
    """A server process, its output to ``log`` (appended; else dropped), running once
    ``health`` answers 200."""

    def __init__(self, args: list[str], health: str, what: str, log: Path | None = None
                 ) -> None:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (the child's)
        try:
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=out)
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        _wait_http(health, self.proc, what)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def upstream(chunks: int, interval: float = 0.0, *flags: str, port: int | None = None
             ) -> tuple[Proc, int]:
    """The fast upstream (its ``flags`` besides); on ``port`` (again, after a kill)."""
    port = port or free_port()
    p = Proc([*pin(OTHERS), sys.executable, "-m", "benchmarks.fast_upstream", "--port", str(port),
              "--chunks", str(chunks), "--interval", str(interval), *flags],
             f"http://127.0.0.1:{port}/v1/models", "the fast upstream")
    return p, port


def guard(up_port: int, workers: int, *flags: str, log: Path | None = None
          ) -> tuple[Proc, int]:
    """``degen guard`` in front of the upstream on ``up_port``, its log to ``log``."""
    port = free_port()
    p = Proc([*pin(GUARD if workers == 1 else None), sys.executable, "-m", "degen.cli.app",
              "guard", "--upstream",
              f"http://127.0.0.1:{up_port}", "--port", str(port), "--log-level", "warning",
              *(("--workers", str(workers)) if workers != 1 else ()), *flags],
             f"http://127.0.0.1:{port}/health", "degen guard", log)
    return p, port


def load(port: int, n: int, seconds: float, warmup: float = 2.0, latency: bool = False,
         pid: int | None = None) -> dict[str, Any]:
    """Run the client in its own process; with ``pid``, the guard's CPU over the window."""
    proc = subprocess.Popen([*pin(OTHERS), sys.executable, "-m",
                             "benchmarks.bench_guard_capacity", "client", str(port), str(n),
                             str(seconds), str(warmup), str(int(latency))],
                            cwd=ROOT, stdout=subprocess.PIPE)
    cpu0 = None
    if pid is not None:
        time.sleep(warmup)
        cpu0 = cpu_seconds(pid)
        time.sleep(seconds)
        cpu1 = cpu_seconds(pid)
    out, _ = proc.communicate(timeout=seconds + warmup + 120)
    res = json.loads(out)
    if cpu0 is not None and res["chunks"]:
        res["guard_cpu_s"] = cpu1 - cpu0
        res["guard_cpu_us_per_chunk"] = 1e6 * (cpu1 - cpu0) / res["chunks"]
    return res


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key`` (this VM's clock wanders: each figure is the
    middle of several runs), with every run's value kept."""
    ordered = sorted(runs, key=lambda r: r.get(key, 0.0))
    mid = dict(ordered[len(ordered) // 2])
    mid["runs"] = [round(r.get(key, 0.0), 1) for r in runs]
    return mid


def capacity(streams: list[int], workers: list[int], seconds: float, chunks: int,
             flags: tuple[str, ...], repeats: int = 1) -> dict[str, Any]:
    out: dict[str, Any] = {}
    up, up_port = upstream(chunks)
    try:
        for n in streams:
            d = _median_run([load(up_port, n, seconds) for _ in range(repeats)],
                            "chunks_per_s")
            out[f"direct/{n}"] = d
            print(f"direct      {n:5d} streams: {d['chunks_per_s']:9,.0f} chunks/s", flush=True)
        for w in workers:
            g, port = guard(up_port, w, *flags)
            try:
                for n in streams:
                    r = _median_run([load(port, n, seconds, pid=g.proc.pid)
                                     for _ in range(repeats)], "guard_cpu_us_per_chunk")
                    out[f"guard{w}/{n}"] = r
                    print(f"guard x{w}    {n:5d} streams: {r['chunks_per_s']:9,.0f} chunks/s, "
                          f"{r.get('guard_cpu_us_per_chunk', float('nan')):6.1f} us CPU per "
                          f"chunk, {r['errors']} errors, {r['cuts']} cut", flush=True)
            finally:
                g.stop()
    finally:
        up.stop()
    return out


def latency(rate: float, n: int, seconds: float, flags: tuple[str, ...]) -> dict[str, Any]:
    """p50/p99 of the time from the upstream's write to the client's read, at ``rate``
    chunks/s over ``n`` paced streams, through the guard and direct."""
    interval = n / rate
    chunks = max(20, int(2.0 / interval))  # answers of about 2 s: new requests all along
    out: dict[str, Any] = {"rate": rate, "streams": n, "interval_s": interval}
    up, up_port = upstream(chunks, interval)
    try:
        out["direct"] = load(up_port, n, seconds, warmup=3.0, latency=True)
        g, port = guard(up_port, 1, *flags)
        try:
            out["guard"] = load(port, n, seconds, warmup=3.0, latency=True, pid=g.proc.pid)
        finally:
            g.stop()
    finally:
        up.stop()
    print(f"  direct: p50 {out['direct'].get('latency_us_p50')} us, p99 "
          f"{out['direct'].get('latency_us_p99')} us, first event "
          f"{out['direct'].get('ttfb_ms_p50')} ms; guard: p50 "
          f"{out['guard'].get('latency_us_p50')} us, p99 {out['guard'].get('latency_us_p99')} "
          f"us, first event {out['guard'].get('ttfb_ms_p50')} ms, "
          f"{out['guard'].get('guard_cpu_us_per_chunk', 0):.1f} us CPU per chunk", flush=True)
    for k in ("latency_us_p50", "latency_us_p99", "ttfb_ms_p50"):
        if out["direct"].get(k) is not None and out["guard"].get(k) is not None:
            out[k.replace("_p", "_added_p")] = out["guard"][k] - out["direct"][k]
    return out


def memory(n: int, flags: tuple[str, ...]) -> dict[str, Any]:
    """RSS of an idle guard, then with ``n`` slow streams open."""
    up, up_port = upstream(2000, 0.5)
    try:
        g, port = guard(up_port, 1, *flags)
        try:
            time.sleep(1)
            idle = rss_bytes(g.proc.pid)
            proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_guard_capacity",
                                     "client", str(port), str(n), "20", "2", "0"], cwd=ROOT,
                                    stdout=subprocess.PIPE)
            time.sleep(14)
            busy = rss_bytes(g.proc.pid)
            proc.communicate(timeout=120)
        finally:
            g.stop()
    finally:
        up.stop()
    return {"streams": n, "idle_rss_mib": idle / 2**20, "open_rss_mib": busy / 2**20,
            "kib_per_stream": (busy - idle) / n / 1024}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        a = sys.argv[2:]
        return client_main(int(a[0]), int(a[1]), float(a[2]), float(a[3]), a[4] == "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--streams", default="64,256,1024")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--chunks", type=int, default=1000, help="chunks per answer")
    ap.add_argument("--only", default="capacity,latency,memory")
    ap.add_argument("--flag", action="append", default=[], help="extra guard flag")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure (the median)")
    ap.add_argument("--latency-rates", default="2500,5000",
                    help="paced loads (chunks/s) to measure latency at, besides half of "
                    "the 1-worker ceiling at 256 streams")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    flags = tuple(a.flag)
    parts = set(a.only.split(","))
    out: dict[str, Any] = {"cpus": os.cpu_count(), "flags": list(flags)}
    streams = [int(s) for s in a.streams.split(",")]
    if "capacity" in parts:
        out["capacity"] = capacity(streams, [int(w) for w in a.workers.split(",")],
                                   a.seconds, a.chunks, flags, a.repeats)
    if "latency" in parts:
        ceiling = (out.get("capacity", {}).get("guard1/256", {}).get("chunks_per_s")
                   or 20000.0)
        rates = [float(r) for r in a.latency_rates.split(",")] if a.latency_rates else []
        out["latency"] = []
        for rate in [*rates, ceiling / 2]:
            lt = latency(rate, 256, a.seconds, flags)
            out["latency"].append(lt)
            print(f"latency at {lt['rate']:,.0f} chunks/s over 256 streams: added p50 "
                  f"{lt.get('latency_us_added_p50', float('nan')):.0f} us, p99 "
                  f"{lt.get('latency_us_added_p99', float('nan')):.0f} us; first event "
                  f"+{lt.get('ttfb_ms_added_p50', float('nan')):.1f} ms", flush=True)
    if "memory" in parts:
        out["memory"] = mem = memory(1024, flags)
        print(f"memory: {mem['idle_rss_mib']:.0f} MiB idle, {mem['open_rss_mib']:.0f} MiB "
              f"with {mem['streams']} open streams: {mem['kib_per_stream']:.0f} KiB each",
              flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
