"""The engine contract and the name registry.

An engine turns a :class:`~degen.records.Request` into a
:class:`~degen.records.Completion`. That is all it does: it never judges the
text (detectors do) and never schedules load (the runner does).

Contract, which the shared conformance suite in ``tests/engines`` checks for
every engine:

- :meth:`Engine.complete` blocks until the request is done and is **thread-safe**:
  the load runner calls it from up to ``concurrency`` threads at once, and an
  engine may batch concurrent calls together (the local engine does).
- It **never raises for a failed request.** Whatever goes wrong with one request
  (a bad prompt, a server error after retries, a timeout) comes back as a
  Completion with ``finish_reason="error"`` and the reason in ``error``, so a
  failure is never mistaken for a runaway and never stops a run.
- ``finish_reason="length"`` means the generation used ``max_tokens`` (or the
  model's context) without producing an end token or stop string.
- Every field of :class:`~degen.records.SamplingParams` is honoured, or the engine
  says which it cannot send (:attr:`Engine.dropped_params`).
- **Cancellation.** ``complete(request, cancel=event)`` ends the request soon after
  ``event`` is set (a ``threading.Event``): a request still queued is never started,
  one in flight stops at its next token (the local engine drops its row from the
  batch; the openai engine closes the stream, which makes vLLM and llama.cpp abort
  the generation; a non-streaming request can only be withdrawn before it is sent
  or between retries). It comes back with ``finish_reason="cancelled"``, its partial
  text and tokens, and is neither a failure nor a success.
- Timings are wall-clock (``time.time()``); ``started_at`` is when the engine began
  work on the request, not when it was queued.
"""

from __future__ import annotations

import importlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from degen.errors import UnknownName
from degen.records import Completion, Request, SamplingParams, Timings


class Engine(ABC):
    """Base class of every engine. Subclasses set :attr:`name` and implement
    :meth:`complete`."""

    name: ClassVar[str] = ""
    #: the model name recorded on every completion
    model: str = ""
    #: how many requests the engine serves well at once (the runner's default concurrency)
    preferred_concurrency: int = 8

    @abstractmethod
    def complete(self, request: Request, cancel: threading.Event | None = None) -> Completion:
        """Run one request to the end, or until ``cancel`` is set. Thread-safe; never
        raises for a failed request."""

    def unsupported(self, params: SamplingParams) -> dict[str, str]:
        """Fields of ``params`` this engine will not apply, with the reason (empty: none).
        Callers warn about these before a run rather than silently measuring something else."""
        return {}

    @property
    def dropped_params(self) -> dict[str, str]:
        """Fields actually dropped so far, over every request served."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What to write into ``run.json`` about this engine (no secrets)."""
        return {"engine": self.name, "model": self.model}

    def generate(self, requests: Sequence[Request], concurrency: int | None = None,
                 on_done: Callable[[Completion], None] | None = None) -> list[Completion]:
        """Run ``requests`` with up to ``concurrency`` in flight; results in input order."""
        workers = max(1, concurrency or self.preferred_concurrency)

        def one(r: Request) -> Completion:
            c = self.complete(r)
            if on_done is not None:
                on_done(c)
            return c

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="degen-gen") as pool:
            return list(pool.map(one, requests))

    def cancelled(self, request: Request, started: float, text: str = "",
                  completion_tokens: int | None = None, **fields: Any) -> Completion:
        """The record of a request withdrawn by its caller."""
        return Completion.from_request(
            request, finish_reason="cancelled", text=text, engine=self.name,
            model=self.model, completion_tokens=completion_tokens,
            timings=Timings(scheduled_at=request.scheduled_at, started_at=started,
                            finished_at=time.time()), **fields)

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release resources (threads, connections, model memory). Idempotent."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# name -> "module:Class"; imported only when the engine is created, so that
# `degen --help` never pays for torch or httpx.
_REGISTRY: dict[str, str] = {
    "local": "degen.engines.local:LocalEngine",
    "openai": "degen.engines.openai:OpenAIEngine",
}


def register_engine(name: str, target: str) -> None:
    """Register an engine class by import path (``"package.module:Class"``)."""
    if ":" not in target:
        raise ValueError(f"engine target must look like 'module:Class', got {target!r}")
    _REGISTRY[name] = target


def available_engines() -> list[str]:
    return sorted(_REGISTRY)


def engine_class(name: str) -> type[Engine]:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise UnknownName(
            f"engine {name!r} is not registered; available: {', '.join(available_engines())}"
        ) from None
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise TypeError(f"{target} is not an Engine subclass")
    return cls


def engine_from_description(desc: Mapping[str, Any], **overrides: Any) -> Engine:
    """An engine like the one a run described (``run.json``'s ``engine``): the same model
    or server, to continue that run's generations. ``overrides`` (not None) win, e.g. a
    ``base_url`` where the server now listens. The tokens' log-probabilities and
    stopping evidence are recorded when the engine can give them."""
    name = desc.get("engine")
    opts: dict[str, Any]
    if name == "local":
        opts = {"model": desc.get("source"), "batch_size": desc.get("batch_size", 32),
                "device": desc.get("device", "auto"), "dtype": desc.get("dtype", "auto"),
                "logprobs": True}
    elif name == "openai":
        opts = {"base_url": desc.get("base_url"), "model": desc.get("model"),
                "api": desc.get("api", "auto"), "stream": bool(desc.get("stream")),
                "dialect": desc.get("dialect", "auto"), "logprobs": desc.get("logprobs")}
    else:
        raise UnknownName(f"the run was made by engine {name!r}, which degen cannot rebuild "
                          f"from its description; available: {', '.join(available_engines())}")
    opts.update({k: v for k, v in overrides.items() if v is not None})
    return create_engine(name, **opts)


def create_engine(name: str, **options: Any) -> Engine:
    """Create the engine registered as ``name`` with its options.

    >>> create_engine("nope")
    Traceback (most recent call last):
    degen.errors.UnknownName: engine 'nope' is not registered; available: local, openai
    """
    return engine_class(name)(**options)
