"""degen inside vLLM's V1 engine: a logits processor that ends a degenerate sequence.

Start the server with it::

    vllm serve MODEL --logits-processors degen.integrations.vllm:DegenLogitsProcessor

and ask for it per request (``extra_body={"vllm_xargs": {"degen": True}}`` with the
OpenAI SDK; ``"degen": "loop,gibberish"`` for some kinds only, ``False`` to opt out), or
for every request with ``DEGEN_VLLM_CUT=all`` (or kinds) in the server's environment.

Each watched request has its own :class:`~degen.engines.token_watch.TokenWatch` (the
watch degen's engines and guard run: the same kinds, the same evidence), fed the
request's new output token ids before each forward pass (vLLM hands a processor a
reference to each request's growing output list). Once the watch confirms a kind the
request asked to cut, the next token is forced to be its end token (every other logit
set to -inf), so vLLM ends the sequence there with ``finish_reason`` ``"stop"``.

vLLM gives a logits processor no way to set a finish reason, no request id and no
output channel: each cut is therefore logged on the ``vllm.degen`` logger (kind, batch
row, tokens, evidence; the text only with ``DEGEN_VLLM_LOG_CONTENT=1``), appended as a
JSON line to ``$DEGEN_VLLM_EVENTS`` when set, and counted in :attr:`counts`. A request
may pass ``"degen_id"`` in ``vllm_xargs`` to find its cut there.

vLLM is imported only when :class:`DegenLogitsProcessor` is first read (the class is
built then, on vLLM's base class), so ``import degen.integrations.vllm`` costs nothing
without it. For the V1 model runner (the one vLLM's CPU build and most platforms run);
vLLM's Model Runner V2 has another processor interface.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, MutableSequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from degen.detect.base import Finding
from degen.engines.token_watch import TokenWatch
from degen.integrations._lazy import lazy_classes

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("vllm.degen")

#: the per-request switch's key in ``extra_args`` (``vllm_xargs`` over HTTP)
KEY = "degen"
#: an optional request label echoed in the log and the events file
ID_KEY = "degen_id"
ENV_CUT = "DEGEN_VLLM_CUT"
ENV_EVENTS = "DEGEN_VLLM_EVENTS"
ENV_CONTENT = "DEGEN_VLLM_LOG_CONTENT"

_ON = {"1", "true", "yes", "on", "all"}
_OFF = {"0", "false", "no", "off", "none", ""}


def parse_kinds(value: Any, what: str = KEY) -> frozenset[str]:
    """The kinds a switch names: True/1/"true"/"all" (every kind), False/0/"false"/
    "none" (none), or kinds (``"loop,gibberish"`` or a list). ValueError otherwise."""
    from degen.detect.watch import KINDS, cut_kinds

    usage = (f"{what} must be true, false, 'all', 'none' or kinds from "
             f"{', '.join(KINDS)} (e.g. 'loop,gibberish')")
    if isinstance(value, bool):
        return cut_kinds(value)
    if isinstance(value, int | float):
        if value in (0, 1):
            return cut_kinds(bool(value))
        raise ValueError(f"{usage}, got {value!r}")
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _ON:
            return cut_kinds(True)
        if v in _OFF:
            return frozenset()
        items: Any = v
    elif isinstance(value, list | tuple) and all(isinstance(x, str) for x in value):
        items = [x.strip().lower() for x in value]
    else:
        raise ValueError(f"{usage}, got {value!r}")
    try:
        return cut_kinds(items)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def request_kinds(extra_args: Mapping[str, Any] | None) -> frozenset[str] | None:
    """The kinds a request asks to cut (``extra_args["degen"]``; ``vllm_xargs`` over
    HTTP), or None when it does not say (the server's ``$DEGEN_VLLM_CUT`` applies).
    ValueError, with what to send instead, for a value that is not a switch."""
    if not extra_args or KEY not in extra_args:
        return None
    return parse_kinds(extra_args[KEY], f"vllm_xargs.{KEY}")


def server_kinds(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The kinds cut for requests that do not say: ``$DEGEN_VLLM_CUT`` (none if unset)."""
    env = os.environ if environ is None else environ
    return parse_kinds(env.get(ENV_CUT, ""), ENV_CUT)


def _plain(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """The evidence without text (numbers, flags, None): what is logged without
    ``DEGEN_VLLM_LOG_CONTENT``."""
    return {k: v for k, v in evidence.items()
            if v is None or isinstance(v, bool | int | float)}


@dataclass
class _Row:
    """One watched request in the persistent batch."""

    watch: TokenWatch
    output: MutableSequence[int]  # vLLM's own list: it grows as the request does
    end: int | None  # the token forced at a cut (None: none would end it)
    prompt_tokens: int
    label: str | None
    fed: int = 0
    reported: bool = False


class _Processor:
    """The logic of :class:`DegenLogitsProcessor`, apart from vLLM's base class."""

    def __init__(self, vllm_config: Any, device: Any = None, is_pin_memory: bool = False,
                 *, tokenizer: Any = None) -> None:
        mc = getattr(vllm_config, "model_config", None)
        self.default_kinds = server_kinds()
        self.max_model_len = int(getattr(mc, "max_model_len", 0) or 0) or None
        served = getattr(mc, "served_model_name", None)
        self.model = (served[0] if isinstance(served, list | tuple) and served else served
                      ) or getattr(mc, "model", None)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                str(mc.tokenizer), revision=getattr(mc, "tokenizer_revision", None),
                trust_remote_code=bool(getattr(mc, "trust_remote_code", False)))
        self.tokenizer = tokenizer
        self.rows: dict[int, _Row] = {}
        self.counts: Counter[str] = Counter()
        self.events_path = os.environ.get(ENV_EVENTS) or None
        self.log_content = os.environ.get(ENV_CONTENT, "").strip().lower() in _ON - {"all"}
        self._unstoppable = False
        # the watch's word lists load on first use: here, not in the first request's step
        warm = TokenWatch(tokenizer, "", max_tokens=64)
        for t in tokenizer.encode("Warm up: the sea, the sea, the waves.")[:16]:
            warm.push(t)
        if self.default_kinds:
            log.info("degen watches every request (cut: %s)",
                     ",".join(sorted(self.default_kinds)))

    # ------------------------------------------------------------------ vLLM's contract
    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Reject a request whose ``degen`` switch is not one (HTTP 400 in the server)."""
        request_kinds(getattr(sampling_params, "extra_args", None))

    def is_argmax_invariant(self) -> bool:
        """A cut replaces the argmax with the end token: never invariant."""
        return False

    def update_state(self, batch_update: Any) -> None:
        """Apply the batch's changes (removed, then added, then moved: vLLM's order),
        then feed every watched row the tokens it generated since the last step."""
        if batch_update is not None:
            for index in batch_update.removed:
                self.rows.pop(index, None)
            for index, params, prompt_ids, output_ids in batch_update.added:
                row = self._new_row(params, prompt_ids, output_ids)
                if row is None:
                    self.rows.pop(index, None)
                else:
                    self.rows[index] = row
            for a, b, direction in batch_update.moved:
                moving = self.rows.pop(a, None)
                other = self.rows.pop(b, None)
                if moving is not None:
                    self.rows[b] = moving
                if other is not None and getattr(direction, "name", direction) == "SWAP":
                    self.rows[a] = other
        broken = []
        for index, row in self.rows.items():
            try:
                self._feed(index, row)
            except Exception:  # a watch's bug must not take the engine down
                log.exception("degen: the watch failed on row %d; the row is left alone",
                              index)
                broken.append(index)
        for index in broken:
            del self.rows[index]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Force the end token on each row whose watch confirmed a cut."""
        for index, row in self.rows.items():
            if row.watch.cut is not None and row.end is not None and index < logits.shape[0]:
                logits[index].fill_(float("-inf"))
                logits[index, row.end] = 0.0
        return logits

    # ------------------------------------------------------------------ rows
    def _new_row(self, params: Any, prompt_ids: list[int] | None,
                 output_ids: MutableSequence[int]) -> _Row | None:
        extra = getattr(params, "extra_args", None) or {}
        kinds = request_kinds(extra)
        if kinds is None:
            kinds = self.default_kinds
        if not kinds:
            return None
        end = getattr(params, "eos_token_id", None)
        if end is None:  # ignore_eos: a stop token the request listed ends it too
            end = next(iter(getattr(params, "stop_token_ids", None) or ()), None)
        if end is None and not self._unstoppable:
            self._unstoppable = True
            log.warning("degen: a watched request has no end token (ignore_eos and no "
                        "stop_token_ids): its cuts are logged but cannot end it")
        prompt = (self.tokenizer.decode(list(prompt_ids), skip_special_tokens=True)
                  if prompt_ids else "")
        max_tokens = getattr(params, "max_tokens", None) or self.max_model_len or 512
        stops = set(getattr(params, "all_stop_token_ids", None) or ())
        watch = TokenWatch(self.tokenizer, prompt, max_tokens=int(max_tokens),
                           model=self.model, cut=kinds, stop_ids=stops)
        label = extra.get(ID_KEY)
        return _Row(watch, output_ids, end, len(prompt_ids or ()),
                    None if label is None else str(label))

    def _feed(self, index: int, row: _Row) -> None:
        out, n = row.output, len(row.output)
        while row.fed < n and row.watch.cut is None:
            t = out[row.fed]
            if t < 0:  # a placeholder (async scheduling): its token comes next step
                break
            row.fed += 1
            row.watch.push(t)
        if row.watch.cut is not None and not row.reported:
            row.reported = True
            self._report(index, row, row.watch.cut)

    def _report(self, index: int, row: _Row, f: Finding) -> None:
        self.counts[f.kind] += 1
        event: dict[str, Any] = {
            "time": round(time.time(), 3), "kind": f.kind,
            "finish_reason": row.watch.finish_reason, "row": index, "id": row.label,
            "tokens": row.watch.cut_at, "prompt_tokens": row.prompt_tokens,
            "score": round(f.score, 4), "ended": row.end is not None,
            "evidence": dict(f.evidence) if self.log_content else _plain(f.evidence)}
        if self.log_content:
            event["message"] = f.message
            event["text"] = row.watch.text
        log.info("degen cut %s: row %d%s after %s tokens (%s) evidence=%s", f.kind, index,
                 f" id={row.label}" if row.label else "", row.watch.cut_at,
                 "ends now" if row.end is not None else "no end token: not ended",
                 json.dumps(event["evidence"], default=str))
        if self.log_content:
            log.info("degen cut text (row %d): %s", index, row.watch.text[-4000:])
        if self.events_path:
            try:
                with open(self.events_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(event, default=str) + "\n")
            except OSError as e:
                log.warning("degen: cannot write %s: %s", self.events_path, e)


def _build() -> type:
    from vllm.v1.sample.logits_processor import LogitsProcessor

    return type("DegenLogitsProcessor", (_Processor, LogitsProcessor), {
        "__doc__": "degen's watch on each request, as a vLLM V1 logits processor: a "
                   "request whose watch confirms a kind it asked to cut is ended at its "
                   "next token (its end token forced). See this module's docstring.",
    })


__getattr__ = lazy_classes(__name__, {"DegenLogitsProcessor": _build},
                           "vLLM, in the server's environment: pip install 'degen[vllm]'")


# DegenLogitsProcessor is read through __getattr__ (it needs vLLM)
__all__ = ["parse_kinds", "request_kinds", "server_kinds"]
