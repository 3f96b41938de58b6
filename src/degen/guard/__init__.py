"""``degen guard``: an OpenAI-compatible proxy in front of vLLM, llama.cpp or any
OpenAI-compatible server that cuts degenerate generations as they happen.

Every generation request goes upstream as a stream (asking for the sampled tokens'
log-probabilities, which the client does not see unless it asked); the text of each
choice is watched by a :class:`~degen.detect.watch.Watch` for every kind: loops (with
the batch detector's vetoes, so requested repetition, tables and counting are left
alone), gibberish and glued words. A confirmed loop ends the answer with
``finish_reason: "repetition"``, gibberish or glued words with ``"degenerate"`` (or
``"length"`` for strict clients), the evidence in a ``degen`` field, and the upstream
connection is closed so the server aborts the request and frees its KV cache. The
proxy also caps ``max_tokens``, applies parameter defaults and overrides (or a tuning
study's best parameters) and serves Prometheus metrics.

    from degen.guard import GuardConfig, create_app
    import uvicorn
    uvicorn.run(create_app(GuardConfig(upstream="http://127.0.0.1:8000")), port=8100)

See docs/guard.md.
"""

from degen.guard.app import create_app
from degen.guard.config import GuardConfig

__all__ = ["GuardConfig", "create_app"]
