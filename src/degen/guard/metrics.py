"""The guard's metrics, served at ``/metrics`` in the Prometheus text format (0.0.4),
written here so the guard needs no client library.

Three kinds: :class:`Counter` (only goes up), :class:`Gauge` and :class:`Histogram`
(cumulative ``_bucket{le=...}`` series, ``_sum`` and ``_count``), each with optional
labels. :class:`GuardMetrics` holds the guard's own set; ``render()`` gives the page.
Updates take a lock, so a metric may be touched from any thread.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def total(self, **labels: str) -> float:
        """The sum over every series that has these label values."""
        idx = [(self.labelnames.index(k), str(v)) for k, v in labels.items()]
        with self._lock:
            return sum(v for k, v in self._values.items() if all(k[i] == x for i, x in idx))

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {_num(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float],
                 labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        if not self.buckets:
            raise ValueError("a histogram needs at least one bucket")
        # per label set: counts per bucket (not cumulative), sum, count
        self._data: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * len(self.buckets), [0.0, 0.0]))
            for i, b in enumerate(self.buckets):
                if value <= b:
                    counts[i] += 1
                    break
            total[0] += value
            total[1] += 1

    def count(self, **labels: str) -> int:
        d = self._data.get(self._key(labels))
        return int(d[1][1]) if d else 0

    def lines(self) -> list[str]:
        out = []
        with self._lock:
            items = sorted((k, (list(c), list(t))) for k, (c, t) in self._data.items())
        for key, (counts, (total, n)) in items:
            cum = 0
            for b, c in zip(self.buckets, counts, strict=True):
                cum += c
                out.append(f"{self.name}_bucket{_labels(self.labelnames, key, f'le={_q(b)}')}"
                           f" {cum}")
            out.append(f"{self.name}_bucket{_labels(self.labelnames, key, _INF)} {int(n)}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_num(total)}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {int(n)}")
        return out


_INF = 'le="+Inf"'


def _q(b: float) -> str:
    return f'"{_num(b)}"'


PREFIX = "degen:"


class GuardMetrics:
    """The metrics ``degen guard`` keeps, named in vLLM's style (``degen:`` like
    ``vllm:``; ``_total`` counters, ``_seconds`` durations; labels for the model, the
    kind of degeneration and the finish reason). ``model`` is the model a request
    asked for when an upstream serves it (or is named for it), else ``other``, so a
    client cannot blow up the number of series.

    With several workers (:mod:`degen.guard.workers`), each keeps its own and the page
    adds them up."""

    def __init__(self) -> None:
        p = PREFIX
        self.requests = Counter(p + "requests_total", "Requests received, by model, endpoint "
                                "and whether the client asked for a stream.",
                                ("model", "endpoint", "stream"))
        self.responses = Counter(p + "responses_total", "Generations answered, by model, "
                                 "endpoint and finish reason (repetition: a loop cut by the "
                                 "guard or the upstream; degenerate: gibberish or glued words "
                                 "cut; a cut counts under its kind's reason even with "
                                 "--cut-reason length; disconnected, error, shutdown).",
                                 ("model", "endpoint", "finish_reason"))
        self.cuts = Counter(p + "cuts_total", "Generations cut, by model and kind of "
                            "degeneration (loop, gibberish, spacing).", ("model", "kind"))
        self.upstream_cuts = Counter(p + "upstream_cuts_total", "Generations the upstream "
                                     "stopped early itself, by its finish reason (vLLM's "
                                     "repetition_detection: repetition); never a success.",
                                     ("model", "finish_reason"))
        self.detected = Counter(p + "detections_total", "Degenerations detected, by model and "
                                "kind, cut or not (--no-cut, or found at the end of an "
                                "answer).", ("model", "kind"))
        self.vetoes = Counter(p + "vetoes_total", "Repeating runs judged legitimate and left "
                              "alone, by reason (requested, data, counting, markup).",
                              ("reason",))
        self.retries = Counter(p + "retries_total", "Cut requests sent again with safer "
                               "parameters (--on-degenerate retry), by outcome (ok: the "
                               "second answer was not cut; cut; error).", ("model", "outcome"))
        self.tokens_saved = Counter(p + "tokens_saved_total", "Tokens not generated thanks to "
                                    "cuts (estimated: the request's max_tokens minus the "
                                    "tokens generated at the cut).", ("model",))
        self.generation_tokens = Counter(p + "generation_tokens_total", "Completion tokens "
                                         "relayed (from the upstream's usage when it reports "
                                         "it, else counted chunks).", ("model",))
        self.chunks = Counter(p + "relayed_chunks_total", "Stream events read from the "
                              "upstreams for guarded requests.", ("model",))
        self.upstream_errors = Counter(p + "upstream_errors_total", "Requests an upstream "
                                       "failed, by upstream and HTTP status (502: unreachable "
                                       "or broken stream, 504: timeout, stream: an error "
                                       "event mid-stream).", ("upstream", "status"))
        self.rejected = Counter(p + "rejected_requests_total", "Requests refused by the guard "
                                "itself, by status (400 bad JSON, 401 key, 404 no upstream "
                                "for the model, 413 too large, 503 shutting down).",
                                ("status",))
        self.disconnects = Counter(p + "client_disconnects_total", "Clients that left before "
                                   "their answer was complete (the upstream request is "
                                   "closed).", ("model",))
        self.running = Gauge(p + "num_requests_running", "Requests being answered now.")
        self.upstream_up = Gauge(p + "upstream_up", "1 when the upstream answered its last "
                                 "health check (/v1/models), else 0.", ("upstream",))
        self.duration = Histogram(p + "e2e_request_latency_seconds", "Time from request to "
                                  "the end of the answer.", LATENCY_BUCKETS,
                                  ("model", "endpoint"))
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Time from request to the "
                              "first generated text.", TTFT_BUCKETS, ("model", "endpoint"))
        self.cut_after = Histogram(p + "cut_after_tokens", "Tokens generated when a "
                                   "generation was cut, by kind.", TOKEN_BUCKETS, ("kind",))

    def all(self) -> list[_Metric]:
        return [v for v in vars(self).values() if isinstance(v, _Metric)]

    def names(self) -> list[str]:
        """Every series name the page can hold (histograms: ``_bucket``, ``_sum``,
        ``_count``)."""
        out = []
        for m in self.all():
            out += [m.name + s for s in ("_bucket", "_sum", "_count")] \
                if isinstance(m, Histogram) else [m.name]
        return out

    def render(self) -> str:
        lines: list[str] = []
        for m in self.all():
            lines += m.header()
            lines += m.lines()
        return "\n".join(lines) + "\n"

    # ---------------------------------------------------------------- several workers
    def snapshot(self) -> dict[str, Any]:
        """Every value, as JSON (for the other workers to add up)."""
        out: dict[str, Any] = {}
        for m in self.all():
            with m._lock:
                if isinstance(m, Histogram):
                    out[m.name] = [[list(k), list(c), t[0], t[1]] for k, (c, t) in
                                   m._data.items()]
                else:
                    out[m.name] = [[list(k), v] for k, v in m._values.items()]
        return out

    def add(self, snap: dict[str, Any], gauges: bool = True) -> None:
        """Add another worker's :meth:`snapshot` into these (its gauges only when
        ``gauges``: a worker that is gone holds nothing open)."""
        by_name = {m.name: m for m in self.all()}
        for name, rows in snap.items():
            m = by_name.get(name)
            if m is None:
                continue
            with m._lock:
                if isinstance(m, Histogram):
                    for key, counts, total, n in rows:
                        k = tuple(key)
                        c, t = m._data.setdefault(k, ([0] * len(m.buckets), [0.0, 0.0]))
                        if len(counts) == len(c):
                            c[:] = [a + b for a, b in zip(c, counts, strict=True)]
                            t[0] += total
                            t[1] += n
                elif isinstance(m, Gauge) and not gauges:
                    continue
                else:
                    for key, v in rows:
                        k = tuple(key)
                        m._values[k] = m._values.get(k, 0.0) + v


_SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_page(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text page: (name, labels, value) each."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SERIES.match(line)
        if m:
            labels = dict(_LABEL.findall(m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` on a page whose labels include ``labels``.

    >>> sample('a_total{kind="loop",model="m"} 2\\na_total{kind="x",model="m"} 1',
    ...        "a_total", kind="loop")
    2.0
    """
    return sum(v for n, lab, v in parse_page(text)
               if n == name and all(lab.get(k) == str(x) for k, x in labels.items()))
