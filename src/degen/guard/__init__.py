"""``degen guard``: an OpenAI-compatible proxy in front of vLLM, llama.cpp or any
OpenAI-compatible server that cuts looping generations as they happen.

Every generation request goes upstream as a stream; the text of each choice is
watched by :class:`~degen.detect.watch.LoopWatch` (the streaming loop detector with
the batch detector's vetoes, so requested repetition, tables and counting are left
alone). A confirmed loop ends the answer with ``finish_reason: "repetition"`` and the
evidence in a ``degen`` field, and the upstream connection is closed so the server
aborts the request and frees its KV cache. The proxy also caps ``max_tokens``,
applies parameter defaults and overrides (or a tuning study's best parameters) and
serves Prometheus metrics.

    from degen.guard import GuardConfig, create_app
    import uvicorn
    uvicorn.run(create_app(GuardConfig(upstream="http://127.0.0.1:8000")), port=8100)

See docs/guard.md.
"""

from degen.guard.app import create_app
from degen.guard.config import GuardConfig

__all__ = ["GuardConfig", "create_app"]
