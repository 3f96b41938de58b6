"""Several upstreams behind one guard: requests routed by their ``model`` (an
upstream's name, or a model it lists in ``/v1/models``, else the default), each
upstream's own parameter defaults, ``/v1/models`` merged, each upstream's health in
``/health`` and ``/metrics``, and ``/v1/responses`` relayed but marked unguarded."""

from __future__ import annotations

import time

import httpx

from degen.guard.config import UpstreamConfig
from degen.guard.metrics import sample
from degen.testing.scripted import OK_TEXT, ScriptedServer
from tests.guard.test_proxy import MSGS


def ask(g, model: str) -> httpx.Response:
    return httpx.post(g.url + "/chat/completions", timeout=20,
                      json={"model": model, "messages": MSGS})


def checked(g, timeout: float = 5.0) -> None:
    """Wait until every upstream had its first health check."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ups = httpx.get(g.base + "/health").json()["upstreams"]
        if all(u["up"] is not None for u in ups.values()):
            return
        time.sleep(0.02)
    raise AssertionError(f"no health check in {timeout} s")


def test_requests_go_to_the_upstream_of_their_model(make_guard) -> None:
    with ScriptedServer(["echo"], model="alpha") as a, \
            ScriptedServer(["echo"], model="beta-7b") as b, \
            ScriptedServer(["echo"], model="gamma") as c:
        g = make_guard(c, upstreams=(
            UpstreamConfig(a.base_url, "alpha", defaults={"temperature": 0.2}),
            UpstreamConfig(b.base_url, "b", overrides={"min_p": 0.05})))
        checked(g)
        assert ask(g, "alpha").json()["choices"][0]["message"]["content"] == OK_TEXT
        assert ask(g, "beta-7b").status_code == 200  # listed by b's /v1/models
        assert ask(g, "b").status_code == 200  # b's name
        assert ask(g, "gpt-whatever").status_code == 200  # the default upstream
        assert [x["model"] for x in a.bodies] == ["alpha"]
        assert a.bodies[0]["temperature"] == 0.2
        assert [x["model"] for x in b.bodies] == ["beta-7b", "b"]
        assert all(x["min_p"] == 0.05 and "temperature" not in x for x in b.bodies)
        assert [x["model"] for x in c.bodies] == ["gpt-whatever"]
        models = httpx.get(g.url + "/models").json()
        assert [m["id"] for m in models["data"]] == ["alpha", "beta-7b", "b", "gamma"]
        health = httpx.get(g.base + "/health").json()
        assert health["status"] == "ok"
        assert set(health["upstreams"]) == {"alpha", "b", "default"}
        assert health["upstreams"]["b"]["models"] == ["beta-7b"]
        text = httpx.get(g.base + "/metrics").text
    assert sample(text, "degen:requests_total", model="alpha") == 1
    assert sample(text, "degen:requests_total", model="beta-7b") == 1
    # a model no upstream is named for or lists is labelled "other"
    assert sample(text, "degen:requests_total", model="other",
                  endpoint="/v1/chat/completions") == 1
    assert sample(text, "degen:upstream_up", upstream="b") == 1


def test_without_a_default_an_unknown_model_is_404_and_a_dead_upstream_shows(
        make_guard) -> None:
    from degen.testing.llamacpp import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with ScriptedServer(["echo"], model="alpha") as a:
        g = make_guard(None, upstreams=(UpstreamConfig(a.base_url, "alpha"),
                                        UpstreamConfig(dead, "gone")))
        checked(g)
        r = ask(g, "nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert "alpha" in r.json()["error"]["message"]
        r = ask(g, "gone")
        assert r.status_code == 502 and "cannot connect" in r.json()["error"]["message"]
        health = httpx.get(g.base + "/health").json()
        assert health["status"] == "degraded"
        assert health["upstreams"]["gone"]["up"] is False
        assert httpx.get(g.base + "/ready").status_code == 200  # alpha is up
        text = httpx.get(g.base + "/metrics").text
    assert sample(text, "degen:upstream_up", upstream="gone") == 0
    assert sample(text, "degen:upstream_errors_total", upstream="gone", status="502") == 1
    assert sample(text, "degen:rejected_requests_total", status="404") == 1


def test_responses_api_is_relayed_and_marked_unguarded(make_guard) -> None:
    with ScriptedServer(["ok"]) as up:
        g = make_guard(up)
        r = httpx.post(g.url + "/responses", json={"model": "m", "input": "hi"})
        assert up.bodies == [{"model": "m", "input": "hi"}]  # as sent: no cap, no stream
    assert r.status_code == 200 and r.headers["x-degen-guarded"] == "false"
