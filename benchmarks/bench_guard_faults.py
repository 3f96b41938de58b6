"""``degen guard`` under faults, at scale: 1,024 streams through two workers while the
upstream dies and comes back, while a worker is killed, and while clients stop reading.

Three processes as in :mod:`benchmarks.bench_guard_capacity` (whose harness this
reuses): :mod:`benchmarks.fast_upstream` pacing every answer (a chunk per ``--interval``
seconds, ``--chunks`` per answer), ``degen guard --workers 2`` (its log kept, to look
for tracebacks) and a raw asyncio client keeping ``--streams`` requests in flight: each
stream asks for an answer on a new connection, reads it, notes how it ended, and asks
again (half a second later after an error, as a client that retries would). How a
request ended, as the client saw it: ``whole`` (``finish_reason`` stop and ``[DONE]``),
``error_event`` (an OpenAI-shaped ``data: {"error": ...}`` event, then the stream's
clean end), ``http_502`` and the like (an OpenAI-shaped JSON error), ``refused`` (no
connection), ``reset`` / ``eof_*`` (the connection broke), ``hang`` (nothing for
``--read-timeout`` seconds). Everything listens on 127.0.0.1.

Scenarios (``--scenarios``, each with its own upstream and guard):

``upstream``
    the upstream is killed (SIGKILL) with every stream in flight, and started again on
    the same port ``--down`` seconds later. In-flight streams must end with an error
    (event or status), none may hang; requests sent during the outage must fail fast
    (502/503); requests after the restart must succeed; ``/ready`` (polled 4 times a
    second) must say 503 during the outage. A few OpenAI SDK clients (``max_retries=0``)
    stream through it too: what they raised.
``worker``
    one of the two guard workers is killed (SIGKILL). Which worker served each client
    connection open at that moment comes from ``/proc`` (the socket's inode among the
    worker's descriptors); the other worker's clients must see no error, the killed
    one's see their connection break (counted), and the parent must start a new worker.
``stall``
    ``--stall-share`` of the streams ask for a long answer, a chunk every
    ``--stall-interval`` seconds (0.01: 100 tokens a second, faster than most served
    models decode one stream), read ``--stall-after`` bytes through a socket with a
    4 KiB receive buffer, then stop reading without closing for ``--hold`` seconds. The
    guard must stop reading the upstream for them (back-pressure: the upstream's writes
    block) and hold a bounded amount per stream: its RSS per worker is sampled every
    second, the bytes the upstream sent them and the kernel's socket queues are counted.
    The other clients must not wait: every 2 s an OpenAI SDK client streams one steady
    answer through the guard and, as a control, one straight from the upstream (with
    ``--stall-interval 0`` the stalled answers come as fast as the socket takes them,
    and the benchmark's one-process upstream is itself the bottleneck: the control
    shows it).

After each: once every client is done, requests still running at the upstream (must be
0: a leak) apart from the idle keep-alive connections the guard's pools keep (at most
64 per worker), the established sockets from each worker to the upstream, the guard's
running requests, and its RSS (the sum over workers) before and after.

    .venv/bin/python -m benchmarks.bench_guard_faults [--streams 1024] [--quick]
        [--scenarios upstream,worker,stall] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bench_guard_capacity import BODY, ROOT, Proc, _tree, guard, upstream
from benchmarks.bench_guard_soak import MAX_IDLE, stats
from degen.guard.metrics import sample

WORKERS = 2
STALL_CHUNKS = 100_000  # a stalled stream's answer: about 25 MB, far more than buffers
OK = ("whole",)
_FINISH = re.compile(rb'"finish_reason": ?"(\w+)"')


# ---------------------------------------------------------------------- the client
class _Reply:
    """httptools' callbacks: the status, the body's size and its last bytes."""

    def __init__(self) -> None:
        self.status = 0
        self.complete = False
        self.size = 0
        self.tail = b""

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        self.tail = (self.tail + body)[-8192:]

    def on_message_complete(self) -> None:
        self.complete = True


def classify(status: int, tail: bytes, complete: bool) -> tuple[str, Any]:
    """How an answer ended, as its client saw it, and the error's code if any."""
    if status == 0:
        return "eof_before_response", None
    if status != 200:
        try:
            err = json.loads(tail)["error"]
            shaped = isinstance(err.get("message"), str)
        except (ValueError, KeyError, TypeError, AttributeError):
            err, shaped = {}, False
        return f"http_{status}" + ("" if shaped and complete else "_unshaped"), err.get("code")
    events = [e for e in tail.split(b"\n\n") if e.startswith(b"data: ")]
    if events and events[-1].startswith(b'data: {"error"'):
        try:
            code = json.loads(events[-1][6:])["error"].get("code")
        except (ValueError, KeyError, AttributeError):
            code = None
        return ("error_event" if complete else "error_event_then_eof"), code
    if complete and events and events[-1] == b"data: [DONE]":
        finish = _FINISH.findall(tail)
        reason = finish[-1].decode() if finish else "none"
        return ("whole" if reason == "stop" else f"finish_{reason}"), None
    return ("eof_mid_stream" if not complete else "no_done"), None


def _request_bytes(port: int, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
            ).encode() + data


async def ask(port: int, req: bytes, read_timeout: float, deadline: float,
              stall: tuple[int, float] | None = None) -> list[Any]:
    """One request on a new connection: [start, end, local port, kind, code, status,
    body bytes]. ``stall`` = (bytes, until): read that many bytes, then stop reading
    (the socket left open, its receive buffer small) until ``until``, then close."""
    import httptools

    loop = asyncio.get_running_loop()
    t0 = time.time()
    sock = socket.socket()
    sock.setblocking(False)
    if stall:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reply = _Reply()
    kind, code, port_here = "", None, 0
    try:
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
        except OSError as e:
            kind = "refused" if isinstance(e, ConnectionRefusedError) else "connect_error"
            return [t0, time.time(), 0, kind, None, 0, 0]
        port_here = sock.getsockname()[1]
        parser = httptools.HttpResponseParser(reply)
        await loop.sock_sendall(sock, req)
        while not reply.complete:
            if stall and reply.size >= stall[0]:
                await asyncio.sleep(max(0.0, stall[1] - time.time()))
                kind = "stalled"
                break
            wait = min(read_timeout, deadline - time.time())
            if wait <= 0:
                kind = "deadline"
                break
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), wait)
            except TimeoutError:
                kind = "hang" if wait == read_timeout else "deadline"
                break
            if not data:
                break
            parser.feed_data(data)
            if reply.status == 0 and parser.get_status_code():
                reply.status = parser.get_status_code()
    except ConnectionResetError:
        kind = "reset"
    except OSError as e:
        kind = f"oserror_{e.errno}"
    except httptools.HttpParserError:
        kind = "bad_http"
    finally:
        sock.close()
    if not kind:
        kind, code = classify(reply.status, reply.tail, reply.complete)
    elif kind in ("reset", "bad_http") and reply.status == 200:
        k, c = classify(reply.status, reply.tail, False)
        if k == "error_event_then_eof":
            kind, code = k, c
    return [t0, time.time(), port_here, kind, code, reply.status, reply.size]


async def _client(spec: dict[str, Any]) -> dict[str, Any]:
    port, n = spec["port"], spec["streams"]
    stallers = spec.get("stallers", 0)
    steady = _request_bytes(port, spec["body"])
    records: list[list[Any]] = []
    stalled: list[list[Any]] = []

    async def stream(i: int) -> None:
        await asyncio.sleep(max(0.0, spec["start"] + spec["ramp"] * i / n - time.time()))
        while time.time() < spec["stop_new"]:
            r = await ask(port, steady, spec["read_timeout"], spec["deadline"])
            records.append(r)
            if r[3] not in OK:
                await asyncio.sleep(spec["backoff"])

    async def staller(i: int) -> None:
        await asyncio.sleep(max(0.0, spec["stall_start"] + i / max(1, stallers)
                                - time.time()))
        req = _request_bytes(port, spec["stall_body"])
        stalled.append(await ask(port, req, spec["read_timeout"], spec["deadline"],
                                 (spec["stall_after"], spec["stall_until"])))

    await asyncio.gather(*(stream(i) for i in range(n - stallers)),
                         *(staller(i) for i in range(stallers)))
    return {"records": records, "stalled": stalled}


def client_main(spec: dict[str, Any]) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    print(json.dumps(asyncio.run(_client(spec))))


# ---------------------------------------------------------------------- watching
def workers(parent: int) -> list[int]:
    """The guard's worker processes (multiprocessing's spawned children)."""
    out = []
    for pid in _tree(parent)[1:]:
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            continue
    return out


def rss_of(pids: list[int]) -> dict[int, float]:
    """RSS in MiB of each process."""
    out = {}
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[p] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            continue
    return out


def _inodes(pid: int) -> set[int]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                out.add(int(link[8:-1]))
    except OSError:
        pass
    return out


def tcp_sockets() -> list[tuple[int, int, int, int, int]]:
    """Established IPv4 TCP sockets: (local port, remote port, send queue, receive queue,
    inode) from ``/proc/net/tcp``."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] != "01":  # ESTABLISHED
            continue
        tx, rx = (int(x, 16) for x in f[4].split(":"))
        out.append((int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16), tx, rx,
                    int(f[9])))
    return out


def owners(g_port: int, pids: list[int]) -> dict[int, int]:
    """Client port -> the worker holding that connection, for connections open now."""
    inode_pid = {i: p for p in pids for i in _inodes(p)}
    return {remote: inode_pid[ino] for local, remote, _, _, ino in tcp_sockets()
            if local == g_port and ino in inode_pid}


def to_upstream(up_port: int, pids: list[int]) -> dict[int, int]:
    """Established sockets from each worker to the upstream."""
    socks = {ino for _, remote, _, _, ino in tcp_sockets() if remote == up_port}
    return {p: len(_inodes(p) & socks) for p in pids}


def queues(g_port: int, up_port: int) -> dict[str, int]:
    """Bytes in the kernel's socket queues on both legs (upstream -> guard -> client)."""
    q = Counter()
    for local, remote, tx, rx, _ in tcp_sockets():
        if local == up_port:
            q["upstream_send"] += tx
        elif remote == up_port:
            q["guard_receive"] += rx
        elif local == g_port:
            q["guard_send"] += tx
        elif remote == g_port:
            q["client_receive"] += rx
    return dict(q)


class Sampler(threading.Thread):
    """``/ready`` four times a second (a new connection each, so both workers are
    asked), and the workers' RSS every second."""

    def __init__(self, g: Proc, g_port: int, up_port: int, t0: float) -> None:
        super().__init__(daemon=True)
        self.g, self.g_port, self.up_port, self.t0 = g, g_port, up_port, t0
        self.ready: list[tuple[float, int]] = []
        self.rss: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        last = 0.0
        while not self.halt.is_set():
            now = time.time()
            try:
                code = httpx.get(f"http://127.0.0.1:{self.g_port}/ready", timeout=2).status_code
            except httpx.HTTPError:
                code = 0
            self.ready.append((round(now - self.t0, 2), code))
            if now - last >= 1.0:
                last = now
                self.rss.append({"t": round(now - self.t0, 1),
                                 "rss": rss_of(workers(self.g.proc.pid))})
            self.halt.wait(0.25)


def sdk_probe(base: str, at: float, out: list[dict[str, Any]], tag: str) -> threading.Thread:
    """An OpenAI SDK client (no retries) streaming one answer from ``at``: what it got."""

    def run() -> None:
        import openai

        time.sleep(max(0.0, at - time.time()))
        t0 = time.time()
        rec: dict[str, Any] = {"when": tag}
        try:
            client = openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=60)
            parts = 0
            for _ in client.chat.completions.create(model=BODY["model"], stream=True,
                                                    messages=BODY["messages"]):
                parts += 1
            rec.update(outcome="whole", chunks=parts)
        except Exception as e:  # what the SDK raised is the result
            rec.update(outcome=type(e).__name__, message=str(e)[:160],
                       status=getattr(e, "status_code", None))
        rec["seconds"] = round(time.time() - t0, 2)
        out.append(rec)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def log_problems(path: Path) -> dict[str, Any]:
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    bad = [ln for ln in lines if "Traceback" in ln or " ERROR " in ln or "ERROR:" in ln
           or "Exception" in ln]
    return {"tracebacks": text.count("Traceback"), "error_lines": len(bad),
            "first": bad[:5]}


# ---------------------------------------------------------------------- a scenario
class Stage:
    """An upstream and ``degen guard --workers 2`` in front of it, both workers serving."""

    def __init__(self, a: argparse.Namespace, name: str, up_flags: tuple[str, ...] = (),
                 guard_flags: tuple[str, ...] = ()) -> None:
        self.a = a
        self.log = Path(a.logs) / f"guard-{name}.log"
        self.log.write_text("")
        self.up_flags = up_flags
        self.up, self.up_port = upstream(a.chunks, a.interval, *up_flags)
        self.g, self.port = guard(self.up_port, WORKERS, *guard_flags, log=self.log)
        self.base = f"http://127.0.0.1:{self.port}"
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while len(seen) < WORKERS and time.monotonic() < deadline:
            seen.add(httpx.get(self.base + "/health", timeout=5).json()["worker"])
        if len(seen) < WORKERS:
            raise RuntimeError("the guard's workers did not all answer")
        time.sleep(1.5)  # the health checks have run: /ready says 200 on both
        self.workers = workers(self.g.proc.pid)
        self.idle_rss = rss_of(self.workers)

    def client(self, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
        spec = {"port": self.port, "streams": self.a.streams, "body": BODY,
                "read_timeout": self.a.read_timeout, "backoff": 0.5, **spec}
        return subprocess.Popen([sys.executable, "-m", "benchmarks.bench_guard_faults",
                                 "client", json.dumps(spec)], cwd=ROOT,
                                stdout=subprocess.PIPE)

    def settle(self, timeout: float = 30.0) -> dict[str, Any]:
        """Once every client is done: what is still open (see the module doc)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = stats(self.up_port)
            page = httpx.get(self.base + "/metrics", timeout=10).text
            running = sample(page, "degen:num_requests_running")
            if s["streaming"] == 0 and running == 0:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # a second more: the last closes reach the upstream
        s = stats(self.up_port)
        page = httpx.get(self.base + "/metrics", timeout=10).text
        pids = workers(self.g.proc.pid)
        return {"upstream_requests_running": s["streaming"],
                "upstream_connections_open": s["open"] - 1,  # less the stats one
                "idle_keepalive": s["open"] - 1 - s["streaming"],
                "idle_limit": MAX_IDLE * WORKERS,
                "sockets_to_upstream_per_worker": list(to_upstream(self.up_port,
                                                                   pids).values()),
                "guard_requests_running": sample(page, "degen:num_requests_running"),
                "guard_cuts": sample(page, "degen:cuts_total"),
                "rss_mib": rss_of(pids), "workers": pids}

    def stop(self) -> None:
        try:
            self.g.stop()
        finally:
            self.up.stop()


def _summary(records: list[list[Any]]) -> dict[str, Any]:
    kinds = Counter(r[3] for r in records)
    codes = Counter(f"{r[3]}:{r[4]}" for r in records if r[4] is not None)
    return {"requests": len(records), "whole": kinds.get("whole", 0),
            "errors": {k: v for k, v in kinds.items() if k not in OK},
            "codes": dict(codes)}


def _leak_verdict(end: dict[str, Any]) -> bool:
    return (end["upstream_requests_running"] == 0 and end["guard_requests_running"] == 0
            and end["idle_keepalive"] <= end["idle_limit"])


def _finish(proc: subprocess.Popen[bytes], sampler: Sampler, limit: float
            ) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=limit)
    sampler.halt.set()
    sampler.join(5)
    return json.loads(out)


def _times(a: argparse.Namespace) -> dict[str, float]:
    if a.quick:
        return {"ramp": 2.0, "fault": 12.0, "stop_new": 25.0}
    return {"ramp": 5.0, "fault": 20.0, "stop_new": 45.0}


def _answer_s(a: argparse.Namespace) -> float:
    return a.chunks * a.interval


def run_upstream(a: argparse.Namespace) -> dict[str, Any]:
    """Scenario 1: the upstream killed mid-run and started again on its port."""
    tm = _times(a)
    st = Stage(a, "upstream")
    try:
        t0 = time.time() + 0.5
        deadline = t0 + tm["stop_new"] + _answer_s(a) + a.read_timeout + 5
        proc = st.client({"start": t0, "ramp": tm["ramp"], "stop_new": t0 + tm["stop_new"],
                          "deadline": deadline})
        sampler = Sampler(st.g, st.port, st.up_port, t0)
        sampler.start()
        kill_at = t0 + tm["fault"]
        sdk: list[dict[str, Any]] = []
        probes = [sdk_probe(st.base + "/v1", kill_at - 3, sdk, "in flight at the kill")
                  for _ in range(4)]
        probes += [sdk_probe(st.base + "/v1", kill_at + 1, sdk, "during the outage")
                   for _ in range(2)]
        time.sleep(max(0.0, kill_at - time.time()))
        st.up.proc.send_signal(signal.SIGKILL)
        st.up.proc.wait()
        t_kill = time.time()
        time.sleep(a.down)
        t_spawn = time.time()
        st.up, _ = upstream(a.chunks, a.interval, port=st.up_port)  # on the same port
        t_back = time.time()
        probes += [sdk_probe(st.base + "/v1", t_back + 3, sdk, "after the restart")
                   for _ in range(2)]
        res = _finish(proc, sampler, deadline - time.time() + 60)
        for p in probes:
            p.join(60)
        end = st.settle()
    finally:
        st.stop()
    recs = res["records"]
    in_flight = [r for r in recs if r[0] < t_kill <= r[1]]
    outage = [r for r in recs if t_kill <= r[0] < t_spawn]
    starting = [r for r in recs if t_spawn <= r[0] < t_back]
    after = [r for r in recs if r[0] >= t_back]
    before = [r for r in recs if r[1] < t_kill]
    lat = sorted(r[1] - r[0] for r in outage)
    k, b = t_kill - t0, t_back - t0
    ready = sampler.ready
    first_503 = next((t for t, c in ready if t >= k and c != 200), None)
    last_bad = max((t for t, c in ready if t >= k and c != 200), default=None)
    back_200 = next((t for t, c in ready if last_bad is not None and t > last_bad), None)
    return {
        "scenario": "upstream", "killed_at_s": round(k, 2), "back_at_s": round(b, 2),
        "all": _summary(recs), "before": _summary(before), "in_flight": _summary(in_flight),
        "outage": {**_summary(outage), "seconds_p50": round(lat[len(lat) // 2], 4)
                   if lat else None, "seconds_max": round(lat[-1], 4) if lat else None},
        "while_starting": _summary(starting), "after_restart": _summary(after),
        "restart_s": round(t_back - t_spawn, 2),
        "ready": {"first_not_ready_s_after_kill": None if first_503 is None
                  else round(first_503 - k, 2),
                  "ready_again_s_after_restart": None if back_200 is None
                  else round(back_200 - b, 2),
                  "not_ready_samples": sum(1 for _, c in ready if c != 200),
                  "samples": len(ready),
                  "changes": [(t, c) for i, (t, c) in enumerate(ready)
                              if i == 0 or c != ready[i - 1][1]]},
        "sdk": sdk, "end": end, "leak_free": _leak_verdict(end),
        "rss_before_mib": st.idle_rss, "rss_during_max_mib": _rss_max(sampler),
        "rss_after_mib": end["rss_mib"], "log": log_problems(st.log)}


def _rss_max(sampler: Sampler) -> float:
    return max((sum(s["rss"].values()) for s in sampler.rss), default=0.0)


def run_worker(a: argparse.Namespace) -> dict[str, Any]:
    """Scenario 2: a guard worker killed with SIGKILL."""
    tm = _times(a)
    st = Stage(a, "worker")
    try:
        t0 = time.time() + 0.5
        deadline = t0 + tm["stop_new"] + _answer_s(a) + a.read_timeout + 5
        proc = st.client({"start": t0, "ramp": tm["ramp"], "stop_new": t0 + tm["stop_new"],
                          "deadline": deadline})
        sampler = Sampler(st.g, st.port, st.up_port, t0)
        sampler.start()
        kill_at = t0 + tm["fault"]
        sdk: list[dict[str, Any]] = []
        probes = [sdk_probe(st.base + "/v1", kill_at - 3, sdk, "in flight at the kill")
                  for _ in range(6)]
        time.sleep(max(0.0, kill_at - time.time()))
        before_pids = workers(st.g.proc.pid)
        victim, survivor = before_pids[0], before_pids[1]
        t_map = time.time()
        served = owners(st.port, before_pids)
        os.kill(victim, signal.SIGKILL)
        t_kill = time.time()
        new_pid, t_new, t_serving = None, None, None
        limit = time.monotonic() + 60
        while time.monotonic() < limit and t_serving is None:
            now = [p for p in workers(st.g.proc.pid) if p not in before_pids]
            if now and new_pid is None:
                new_pid, t_new = now[0], time.time()
            if new_pid is not None:
                try:
                    if httpx.get(st.base + "/health", timeout=2).json()["worker"] == new_pid:
                        t_serving = time.time()
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)
        res = _finish(proc, sampler, deadline - time.time() + 60)
        for p in probes:
            p.join(60)
        end = st.settle()
    finally:
        st.stop()
    recs = res["records"]
    open_then = [r for r in recs if r[0] <= t_map and r[1] >= t_map]
    killed = [r for r in open_then if served.get(r[2]) == victim]
    other = [r for r in open_then if served.get(r[2]) == survivor]
    unmapped = [r for r in open_then if r[2] not in served]
    after = [r for r in recs if r[0] > t_kill]
    return {
        "scenario": "worker", "killed_at_s": round(t_kill - t0, 2),
        "new_worker_s": None if t_new is None else round(t_new - t_kill, 2),
        "new_worker_serving_s": None if t_serving is None else round(t_serving - t_kill, 2),
        "connections_mapped": {"killed": sum(1 for p in served.values() if p == victim),
                               "other": sum(1 for p in served.values() if p == survivor)},
        "all": _summary(recs), "killed_worker_clients": _summary(killed),
        "other_worker_clients": _summary(other), "unmapped_in_flight": _summary(unmapped),
        "after_kill": _summary(after), "sdk": sdk, "end": end,
        "leak_free": _leak_verdict(end), "workers_after": end["workers"],
        "rss_before_mib": st.idle_rss, "rss_during_max_mib": _rss_max(sampler),
        "rss_after_mib": end["rss_mib"], "log": log_problems(st.log)}


def run_stall(a: argparse.Namespace) -> dict[str, Any]:
    """Scenario 3: clients that stop reading."""
    quick = a.quick
    ramp, start, hold = (2.0, 6.0, 12.0) if quick else (5.0, 12.0, a.hold)
    stallers = max(1, int(a.streams * a.stall_share))
    st = Stage(a, "stall", up_flags=("--long", str(STALL_CHUNKS)),
               guard_flags=("--max-tokens-cap", str(4 * STALL_CHUNKS)))
    try:
        t0 = time.time() + 0.5
        stop_new = t0 + start + hold + 3
        deadline = stop_new + _answer_s(a) + a.read_timeout + 5
        body = {**BODY, "fast_tag": "stall", "fast_interval": a.stall_interval,
                "fast_chunks": STALL_CHUNKS}
        proc = st.client({"start": t0, "ramp": ramp, "stop_new": stop_new,
                          "deadline": deadline, "stallers": stallers,
                          "stall_start": t0 + start, "stall_until": t0 + start + hold,
                          "stall_after": a.stall_after, "stall_body": body})
        sampler = Sampler(st.g, st.port, st.up_port, t0)
        sampler.start()
        time.sleep(max(0.0, t0 + start - 1 - time.time()))
        loaded = rss_of(workers(st.g.proc.pid))  # the steady streams, before the stall
        probes: list[dict[str, Any]] = []
        controls: list[dict[str, Any]] = []
        threads: list[threading.Thread] = []
        while time.time() < t0 + start + hold - 3:  # every 2 s while they stall
            threads += [sdk_probe(st.base + "/v1", 0, controls, "guard"),
                        sdk_probe(f"http://127.0.0.1:{st.up_port}/v1", 0, controls,
                                  "direct")]
            time.sleep(2)
            s = stats(st.up_port)["tags"].get("stall", {})
            probes.append({"t": round(time.time() - t0, 1),
                           "rss_mib": rss_of(workers(st.g.proc.pid)), **s,
                           "queues": queues(st.port, st.up_port)})
        res = _finish(proc, sampler, deadline - time.time() + 60)
        for t in threads:
            t.join(60)
        end = st.settle()
    finally:
        st.stop()
    def took(p: dict[str, Any]) -> int:  # what the guard has read of their streams
        q = p["queues"]
        return (p["sent"] - p["unsent"] - q.get("upstream_send", 0)
                - q.get("guard_receive", 0))

    last = probes[-1]
    taken = took(last)
    # the probes once the guard had stopped reading them (back-pressure): its memory for
    # them should stay flat from there
    late = [p for p in probes if took(p) >= 0.98 * taken]
    late = late if len(late) >= 2 else probes[-2:]
    mid = late[0]
    sent = last["sent"] - last["unsent"]  # bytes that left the upstream for them
    q = last["queues"]
    loaded_sum = sum(loaded.values())
    stalled_rss = [sum(p["rss_mib"].values()) for p in late]
    stalled_recs = res["stalled"]
    return {
        "scenario": "stall", "stallers": stallers, "steady": a.streams - stallers,
        "hold_s": hold, "stall_interval": a.stall_interval,
        "steady_clients": _summary(res["records"]),
        "control_s": {tag: _spread([c["seconds"] for c in controls
                                    if c["when"] == tag and c["outcome"] == "whole"])
                      | {"not_whole": sum(c["when"] == tag and c["outcome"] != "whole"
                                          for c in controls)}
                      for tag in ("guard", "direct")},
        "stalled_clients": {"kinds": dict(Counter(r[3] for r in stalled_recs)),
                            "read_kib_median": round(statistics.median(
                                r[6] for r in stalled_recs) / 1024, 1)},
        "upstream_blocked": {"mid": mid.get("blocked"), "end": last.get("blocked"),
                             "streaming": last.get("streaming")},
        "sent_per_stalled_kib": {"mid": round((mid["sent"] - mid["unsent"]) / stallers / 1024),
                                 "end": round(sent / stallers / 1024)},
        "guard_took_per_stalled_kib": round(taken / stallers / 1024),
        "kernel_queues_per_stalled_kib": {k: round(v / stallers / 1024)
                                          for k, v in q.items()},
        "rss_idle_mib": st.idle_rss, "rss_loaded_mib": loaded,
        "rss_stalled_mib": {"mid": mid["rss_mib"], "end": last["rss_mib"]},
        "rss_per_stalled_kib": round((statistics.median(stalled_rss) - loaded_sum) * 1024
                                     / stallers),
        "guard_full_at_s": mid["t"],
        "rss_growth_once_full_mib": round(stalled_rss[-1] - stalled_rss[0], 1),
        "rss_after_mib": end["rss_mib"], "probes": probes, "end": end,
        "leak_free": _leak_verdict(end), "log": log_problems(st.log)}


def _spread(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "min": xs[0], "median": round(statistics.median(xs), 2),
            "max": xs[-1]}


RUN = {"upstream": run_upstream, "worker": run_worker, "stall": run_stall}


def _line(r: dict[str, Any]) -> str:
    def tot(d: dict[Any, float]) -> float:
        return round(sum(d.values()), 1)

    end = r["end"]
    tail = (f"after: {end['upstream_requests_running']} running at the upstream, "
            f"{end['idle_keepalive']} idle keep-alive (<= {end['idle_limit']}), guard "
            f"running {end['guard_requests_running']:.0f}; tracebacks {r['log']['tracebacks']}")
    if r["scenario"] == "upstream":
        return (f"upstream killed at {r['killed_at_s']} s, back at {r['back_at_s']} s: "
                f"{r['all']['whole']} of {r['all']['requests']} whole; in flight "
                f"{r['in_flight']['errors']}; outage {r['outage']['errors']} (max "
                f"{r['outage']['seconds_max']} s); after {r['after_restart']['whole']} whole, "
                f"errors {r['after_restart']['errors']}; /ready {r['ready']}; RSS "
                f"{tot(r['rss_before_mib'])} -> {tot(r['rss_after_mib'])} MiB; {tail}")
    if r["scenario"] == "worker":
        return (f"worker killed at {r['killed_at_s']} s, new in {r['new_worker_s']} s, "
                f"serving in {r['new_worker_serving_s']} s: {r['all']['whole']} of "
                f"{r['all']['requests']} whole; killed worker's clients "
                f"{r['killed_worker_clients']['errors']}, other worker's "
                f"{r['other_worker_clients']['errors']} (of "
                f"{r['other_worker_clients']['requests']}), unmapped "
                f"{r['unmapped_in_flight']['errors']}; RSS {tot(r['rss_before_mib'])} -> "
                f"{tot(r['rss_after_mib'])} MiB; {tail}")
    return (f"{r['stallers']} stalled clients: upstream blocked {r['upstream_blocked']}, "
            f"sent {r['sent_per_stalled_kib']} KiB each, the guard took "
            f"{r['guard_took_per_stalled_kib']} KiB each; RSS +{r['rss_per_stalled_kib']} KiB "
            f"each, {r['rss_growth_once_full_mib']} MiB growth after the guard stopped "
            f"reading them ({r['guard_full_at_s']} s); "
            f"steady clients {r['steady_clients']['whole']} whole, errors "
            f"{r['steady_clients']['errors']}; an SDK stream through the guard "
            f"{r['control_s']['guard']} s, straight from the upstream "
            f"{r['control_s']['direct']} s; RSS {tot(r['rss_idle_mib'])} -> "
            f"{tot(r['rss_after_mib'])} MiB; {tail}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        return client_main(json.loads(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=1024)
    ap.add_argument("--quick", action="store_true",
                    help="64 streams (unless --streams), shorter timelines")
    ap.add_argument("--scenarios", default="upstream,worker,stall")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between chunks")
    ap.add_argument("--chunks", type=int, default=40, help="chunks per steady answer")
    ap.add_argument("--down", type=float, default=5.0, help="seconds the upstream is down")
    ap.add_argument("--read-timeout", type=float, default=30.0,
                    help="seconds without data a client calls a hang")
    ap.add_argument("--stall-share", type=float, default=0.125,
                    help="share of the streams that stop reading")
    ap.add_argument("--stall-interval", type=float, default=0.01,
                    help="seconds between chunks of a stalled answer (0: as fast as "
                    "the socket takes them)")
    ap.add_argument("--stall-after", type=int, default=16384,
                    help="bytes a stalled client reads before it stops")
    ap.add_argument("--hold", type=float, default=80.0, help="seconds clients stay stalled")
    ap.add_argument("--logs", type=Path, help="folder for the guard's logs (default: a "
                    "temporary one)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.quick and "--streams" not in sys.argv:
        a.streams = 64
    if a.quick:
        a.down, a.read_timeout = min(a.down, 3.0), min(a.read_timeout, 15.0)
    a.logs = a.logs or Path(tempfile.mkdtemp(prefix="guard-faults-"))
    a.logs.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"streams": a.streams, "workers": WORKERS, "cpus": os.cpu_count(),
                           "quick": a.quick, "interval": a.interval, "chunks": a.chunks,
                           "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                           "logs": str(a.logs)}
    for name in a.scenarios.split(","):
        t = time.monotonic()
        r = RUN[name](a)
        r["wall_s"] = round(time.monotonic() - t, 1)
        out[name] = r
        print(f"[{name}, {r['wall_s']} s] {_line(r)}", flush=True)
        if a.json:
            a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
