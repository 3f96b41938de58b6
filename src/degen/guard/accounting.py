"""What one finished guarded request leaves behind: its metrics and its log line
(:func:`account`, called by :class:`~degen.guard.relay.Relay` when the request ends,
however it ended)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

from degen.records import CUT_REASONS as STOPPED_EARLY

if TYPE_CHECKING:
    from degen.guard.exchange import Exchange
    from degen.guard.routing import Route
    from degen.guard.state import Guard

log = logging.getLogger("degen.guard")


class Finished(Protocol):
    """What :func:`account` reads of a finished request (a
    :class:`~degen.guard.relay.Relay`)."""

    guard: Guard
    route: Route
    ex: Exchange  # the answer the client got (a retry's, when retried)
    first: Exchange | None  # the cut exchange a retry replaced
    model: str  # the metrics' label
    status: int  # what the client got (0: nothing)
    error: str | None
    shutdown_cut: bool


def account(relay: Finished, left: bool) -> None:
    """Count ``relay`` in the guard's metrics and log it (its output too, with
    ``log_content``); ``left``: its client went away before the answer ended."""
    g, ex, m = relay.guard, relay.ex, relay.guard.metrics
    ep, model = ex.endpoint, relay.model
    dur = time.monotonic() - ex.started
    m.duration.observe(dur, model=model, endpoint=ep)
    if ex.first_token_at is not None:
        m.ttft.observe(ex.first_token_at - ex.started, model=model, endpoint=ep)
    if left:
        m.disconnects.inc(model=model)
    if relay.shutdown_cut:
        reasons = ["shutdown"]
    elif (left or relay.error) and not ex.any_cut:
        reasons = ["disconnected" if left else "error"]
    else:
        reasons = ex.finish_reasons()
    for r in reasons:
        m.responses.inc(model=model, endpoint=ep, finish_reason=r)
    tokens = ex.completion_tokens
    m.generation_tokens.inc(tokens, model=model)
    exchanges = [ex] if relay.first is None else [relay.first, ex]
    if relay.first is not None and relay.first is not ex:
        m.retries.inc(model=model, outcome="cut" if ex.any_cut else
                      ("error" if relay.error else "ok"))
    for x in exchanges:
        m.chunks.inc(x.events, model=model)
        for st in x.choices.values():
            if st.watch is not None:
                for why, n in st.watch.vetoes.items():
                    m.vetoes.inc(n, reason=why)
                for kind in st.watch.findings:
                    m.detected.inc(model=model, kind=kind)
            if st.cut is None and st.finish in STOPPED_EARLY:
                m.upstream_cuts.inc(model=model, finish_reason=st.finish)
            if st.cut is not None:
                m.cuts.inc(model=model, kind=st.cut["kind"])
                m.cut_after.observe(st.tokens, kind=st.cut["kind"])
                m.tokens_saved.inc(max(0, x.max_tokens - st.tokens), model=model)
    cut = next((st.cut for x in exchanges for st in x.choices.values()
                if st.cut is not None), None)
    fields = {"endpoint": ep, "model": model, "upstream": relay.route.label,
              "stream": ex.stream, "status": relay.status or None,
              "finish": ",".join(reasons) or None, "tokens": tokens,
              "seconds": round(dur, 3), "cut": cut["kind"] if cut else None,
              "cut_at": cut["completion_tokens"] if cut else None,
              "retried": relay.first is not None, "client_left": left,
              "error": relay.error}
    log.info("%s model=%s stream=%s status=%s finish=%s tokens=%d %.2fs%s%s%s", ep, model,
             str(ex.stream).lower(), relay.status or "-", fields["finish"] or "-", tokens,
             dur, f" cut={cut['kind']}@{cut['completion_tokens']}" if cut else "",
             " retried" if relay.first is not None else "",
             " client-left" if left else (f" error={relay.error}" if relay.error else ""),
             extra={"request": {k: v for k, v in fields.items() if v is not None}})
    if g.config.log_content:
        for x in exchanges:
            for st in x.choices.values():
                text = "".join(st.reasoning) + "".join(st.text)
                if text:
                    log.info("output %s[%d]: %s", ep, st.index, text[:4000])
