"""The Prometheus text format the guard writes itself."""

from __future__ import annotations

import re

import pytest

from degen.guard.metrics import Counter, Gauge, GuardMetrics, Histogram, sample

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})?'
                    r" (-?[0-9.e+]+|\+Inf|-Inf|NaN)$")


def check_format(text: str) -> None:
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        assert SAMPLE.match(line), line


def test_counter_gauge_and_labels() -> None:
    c = Counter("x_total", "Xs.", ("kind",))
    c.inc(kind="loop")
    c.inc(2, kind='we"ird\\\n')
    g = Gauge("g", "G.")
    g.inc(3)
    g.dec()
    text = "\n".join(c.header() + c.lines() + g.header() + g.lines()) + "\n"
    check_format(text)
    assert 'x_total{kind="loop"} 1' in text
    assert 'x_total{kind="we\\"ird\\\\\\n"} 2' in text
    assert "# TYPE g gauge\ng 2" in text
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(-1, kind="loop")
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(other="x")


def test_histogram_is_cumulative() -> None:
    h = Histogram("lat_seconds", "Latency.", (0.1, 1.0), ("endpoint",))
    for v in (0.05, 0.5, 0.7, 3.0):
        h.observe(v, endpoint="/v1/x")
    lines = h.lines()
    assert lines == ['lat_seconds_bucket{endpoint="/v1/x",le="0.1"} 1',
                     'lat_seconds_bucket{endpoint="/v1/x",le="1"} 3',
                     'lat_seconds_bucket{endpoint="/v1/x",le="+Inf"} 4',
                     'lat_seconds_sum{endpoint="/v1/x"} 4.25',
                     'lat_seconds_count{endpoint="/v1/x"} 4']
    assert h.count(endpoint="/v1/x") == 4


def test_the_guards_page_is_valid_and_names_its_metrics() -> None:
    m = GuardMetrics()
    m.requests.inc(model="m", endpoint="/v1/chat/completions", stream="true")
    m.cuts.inc(model="m", kind="loop")
    m.tokens_saved.inc(8000, model="m")
    m.duration.observe(0.3, model="m", endpoint="/v1/chat/completions")
    m.cut_after.observe(40, kind="loop")
    text = m.render()
    check_format(text)
    for name in ("degen:requests_total", "degen:cuts_total", "degen:tokens_saved_total",
                 "degen:upstream_errors_total", "degen:e2e_request_latency_seconds",
                 "degen:num_requests_running", "degen:vetoes_total",
                 "degen:client_disconnects_total", "degen:retries_total",
                 "degen:upstream_up"):
        assert f"# TYPE {name} " in text
    assert 'degen:tokens_saved_total{model="m"} 8000' in text
    # the style of vLLM's metrics and Prometheus's conventions
    for metric in m.all():
        assert metric.name.startswith("degen:")
        if metric.kind == "counter":
            assert metric.name.endswith("_total"), metric.name
        assert "duration" not in metric.name and "_ms" not in metric.name


def test_workers_pages_add_up_and_a_gone_workers_gauges_do_not_count() -> None:
    a, b = GuardMetrics(), GuardMetrics()
    a.cuts.inc(model="m", kind="loop")
    b.cuts.inc(2, model="m", kind="loop")
    b.cuts.inc(model="m", kind="spacing")
    a.running.inc()
    b.running.inc(3)
    a.cut_after.observe(40, kind="loop")
    b.cut_after.observe(4000, kind="loop")
    total = GuardMetrics()
    total.add(a.snapshot())
    total.add(b.snapshot(), gauges=False)
    text = total.render()
    check_format(text)
    assert sample(text, "degen:cuts_total", kind="loop") == 3
    assert sample(text, "degen:cuts_total", kind="spacing") == 1
    assert sample(text, "degen:num_requests_running") == 1
    assert sample(text, "degen:cut_after_tokens_count") == 2
    assert sample(text, "degen:cut_after_tokens_bucket", le="64") == 1
    assert sample(text, "degen:cut_after_tokens_sum") == 4040


def test_every_metric_is_documented_and_every_documented_one_exists() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "guard.md").read_text()
    table = set(re.findall(r"^\| `(degen:[a-z0-9_]+)` \|", doc, re.M))
    assert table == {m.name for m in GuardMetrics().all()}
