"""The Prometheus text format the guard writes itself."""

from __future__ import annotations

import re

import pytest

from degen.guard.metrics import Counter, Gauge, GuardMetrics, Histogram

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
    m.requests.inc(endpoint="/v1/chat/completions", stream="true")
    m.cuts.inc(kind="loop")
    m.tokens_saved.inc(8000)
    m.duration.observe(0.3, endpoint="/v1/chat/completions")
    m.cut_after.observe(40)
    text = m.render()
    check_format(text)
    for name in ("degen_guard_requests_total", "degen_guard_cuts_total",
                 "degen_guard_tokens_saved_total", "degen_guard_upstream_errors_total",
                 "degen_guard_request_duration_seconds", "degen_guard_in_flight",
                 "degen_guard_vetoes_total", "degen_guard_client_disconnects_total"):
        assert f"# TYPE {name} " in text
    assert "degen_guard_tokens_saved_total 8000" in text
