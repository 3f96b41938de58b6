"""Soak: rounds of 200 concurrent streams through ``degen guard`` (a subprocess, as a
user runs it; half the streams finish normally, a quarter loop and are cut, a quarter
are abandoned by their client after three chunks), against a fast scripted upstream
(which streams log-probabilities: the guard asks for them, so every chunk is rewritten
without them).

After every round no upstream connection may be left open and nothing may be in
flight; over the four rounds after two warm-up rounds (800 streams) the guard's
resident memory must grow by less than 10 MiB. Why that bound: the guard's own state
for one stream (an Exchange and its Watch, every kind) weighs about 32 KiB
(tracemalloc), and with the upstream response, the ASGI cycle and its task a stream
holds more, so leaking what each stream leaves behind would add 25 MiB or more.
Measured here: the RSS climbs 6-9 MiB from the first round to the second (allocator
arenas sized for 200 watches at once), then 1-3.5 MiB over the next four.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections import Counter

import httpx

from degen.guard.metrics import sample
from degen.testing.scripted import ScriptedServer
from tests.guard.conftest import GuardProcess

N = 200
KINDS = ("fast", "loop", "fast", "drip")


async def one(client: httpx.AsyncClient, url: str, kind: str) -> str:
    body = {"model": "m", "messages": [{"role": "user", "content": "go"}], "stream": True,
            "scripted": kind}
    async with client.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        data = []
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                data.append(line)
                if kind == "drip" and len(data) == 3:
                    return "left"
    assert data[-1] == "data: [DONE]", data[-3:]
    last = json.loads(data[-2].removeprefix("data: "))
    if kind == "loop":
        assert last["choices"][0]["finish_reason"] == "repetition"
        return "cut"
    assert last["choices"][0]["finish_reason"] == "stop", last
    return "done"


async def soak_round(url: str) -> dict[str, int]:
    limits = httpx.Limits(max_connections=N, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        got = await asyncio.gather(*(one(client, url, KINDS[i % 4]) for i in range(N)))
    return {k: got.count(k) for k in set(got)}


def metric(base: str, name: str, **labels: str) -> float:
    return sample(httpx.get(base + "/metrics").text, name, **labels)


def settled(up: ScriptedServer, g: GuardProcess, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if up.open_connections == 0 and metric(g.base, "degen:num_requests_running") == 0:
            return True
        time.sleep(0.05)
    return False


def test_200_concurrent_streams_leak_no_connection_and_no_memory() -> None:
    with ScriptedServer(["fast"], interval_s=0.01, fast_chunks=48) as up, \
            GuardProcess("--upstream", up.base_url, "--log-level", "warning") as g:
        sizes = []
        for _ in range(6):
            t0 = time.monotonic()
            counts = asyncio.run(soak_round(g.url + "/chat/completions"))
            assert counts == {"done": N // 2, "cut": N // 4, "left": N // 4}
            assert time.monotonic() - t0 < 30
            assert settled(up, g), up.open_connections
            sizes.append(g.rss())
        assert metric(g.base, "degen:cuts_total", kind="loop") == 6 * N // 4
        assert metric(g.base, "degen:client_disconnects_total") == 6 * N // 4
        assert 'status="502"' not in httpx.get(g.base + "/metrics").text
        code, err = g.stop()
    assert code == 0, err
    print("guard RSS after each round (MiB):", [round(s / 2**20, 1) for s in sizes])
    growth = sizes[-1] - sizes[1]
    assert growth < 10 * 2**20, [round(s / 2**20, 1) for s in sizes]


def test_a_stream_leaves_nothing_for_the_cycle_collector(make_guard) -> None:
    """What a stream leaves in a reference cycle is freed only by a collection of the
    generation it reached; a stream that lives for seconds reaches the oldest, which
    the guard's workers collect almost never (``settle_memory``). So every way a stream
    ends (read whole, cut, its client gone, the upstream broken off) must free its
    watch, its exchange and its upstream connection by reference counting alone.
    Before: every stream left its Watch in a cycle (through the loop track's bound
    method), every closed upstream connection its parser, transport and buffered body;
    a guard with clients that stopped reading grew 13 MiB per 32 of them, without end
    (bench_guard_faults)."""
    from degen.detect.watch import Watch
    from degen.guard.exchange import Exchange
    from degen.guard.relay import Relay
    from degen.guard.upstream import _Conn

    ours = (Watch, Exchange, Relay, _Conn)
    with ScriptedServer(["fast"], interval_s=0.01, fast_chunks=48) as up:
        g = make_guard(up)

        def stream(kind: str, leave_after: int | None = None) -> None:
            body = {"model": "m", "messages": [{"role": "user", "content": "go"}],
                    "stream": True, "scripted": kind}
            with httpx.stream("POST", g.url + "/chat/completions", json=body,
                              timeout=10) as r:
                for i, _ in enumerate(r.iter_lines()):
                    if leave_after is not None and i >= leave_after:
                        break  # the client leaves: the guard closes its upstream request

        stream("fast")  # made once, kept for good (the pool, the routes)
        gc.collect()
        gc.disable()
        try:
            for kind, leave in (("fast", None), ("loop", None), ("drip", 3), ("reset", None),
                                ("fast", 5)):
                stream(kind, leave)
            assert settled(up, g)
            time.sleep(1.2)  # the pool's watchdog lets go of the connections it watched
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = Counter(type(o).__name__ for o in gc.garbage if isinstance(o, ours))
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert not left, left
