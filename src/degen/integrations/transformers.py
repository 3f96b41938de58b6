"""degen inside transformers ``generate``: a ``StoppingCriteria`` that stops only the
rows that degenerate.

>>> from degen.integrations.transformers import WatchStoppingCriteria
>>> watch = WatchStoppingCriteria(tokenizer, max_new_tokens=256)       # doctest: +SKIP
>>> out = model.generate(**enc, max_new_tokens=256,
...                      stopping_criteria=[watch])                     # doctest: +SKIP
>>> [(r.row, r.kind, r.stopped_at) for r in watch.results() if r.kind]  # doctest: +SKIP
[(2, 'loop', 45)]

Each row's new tokens go, one at a time, through its own
:class:`~degen.engines.token_watch.TokenWatch`: the same watch degen's engines, ``run``
and the guard run, so the same kinds and evidence. The prompt is read from the first
call (the width of ``input_ids`` then, less the token just generated; left padding is
decoded away), so repetition the prompt asked for is left alone. When ``generate``
passes the step's scores (it always does) their log-softmax gives each token's
log-probability and the probability of ending, which the watch weighs in. A row is
stopped once the watch confirms one of the ``cut`` kinds; the others go on. Works with
batches (left padding) and streamers (``TextIteratorStreamer`` ends when ``generate``
does). One ``generate`` call at a time; a new call (a shorter or differently sized
``input_ids``) starts fresh, or call :meth:`WatchStoppingCriteria.reset`.

torch and transformers are imported lazily: the class is built on first use so that
``import degen.integrations.transformers`` costs nothing without them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from degen.detect.base import Finding
from degen.engines.token_watch import TokenWatch
from degen.integrations._lazy import lazy_classes

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class RowResult:
    """What the watch found in one row of a ``generate`` call.

    ``kind``: the kind the row was stopped for (None: not stopped);
    ``finish_reason``: degen's reason for it (``repetition``, ``degenerate``,
    ``runaway``); ``stopped_at``: new tokens generated when it was stopped;
    ``findings``: every kind found (a row can show a kind without being stopped for it,
    when ``cut`` leaves that kind out); ``evidence``: the stopping finding's.
    """

    row: int
    kind: str | None
    finish_reason: str | None
    stopped_at: int | None
    tokens: int
    findings: dict[str, Finding] = field(default_factory=dict)

    @property
    def evidence(self) -> dict[str, Any]:
        f = self.findings.get(self.kind) if self.kind else None
        return dict(f.evidence) if f is not None else {}

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "kind": self.kind, "finish_reason": self.finish_reason,
                "stopped_at": self.stopped_at, "tokens": self.tokens,
                "findings": {k: f.to_dict() for k, f in self.findings.items()}}


class _Criteria:
    """The logic of :class:`WatchStoppingCriteria`, apart from transformers' base class."""

    def __init__(self, tokenizer: Any, *, max_new_tokens: int = 512,
                 cut: bool | str | Iterable[str] | None = "all",
                 eos_token_id: int | Iterable[int] | None = None,
                 use_scores: bool = True, model: str | None = None,
                 horizon: int | None = None) -> None:
        from degen.detect.watch import cut_kinds
        from degen.errors import InvalidParams

        if not callable(getattr(tokenizer, "decode", None)):
            raise InvalidParams("WatchStoppingCriteria needs the model's tokenizer (something "
                                "with decode()): WatchStoppingCriteria(tokenizer)")
        if max_new_tokens < 1:
            raise InvalidParams(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.cut = cut_kinds(cut)
        if eos_token_id is None:
            eos_token_id = getattr(tokenizer, "eos_token_id", None)
        ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or ())
        self.stop_ids = frozenset(int(i) for i in ids)
        self.use_scores = use_scores
        self.model = model
        self.horizon = horizon
        self.reset()

    def reset(self) -> None:
        """Forget the last call's rows (a new ``generate`` call does this by itself)."""
        self.watches: list[TokenWatch] = []
        self.prompt_len: int | None = None
        self._width = 0
        self._last: list[int] = []  # each row's token at the last call's last column
        self._ended: list[bool] = []

    def _start(self, input_ids: torch.Tensor) -> None:
        self.reset()
        rows, width = input_ids.shape
        self.prompt_len = width - 1
        prompts = input_ids[:, :width - 1].tolist()
        for p in prompts:
            text = self.tokenizer.decode(p, skip_special_tokens=True)
            self.watches.append(TokenWatch(self.tokenizer, text, max_tokens=self.max_new_tokens,
                                           horizon=self.horizon, model=self.model,
                                           cut=self.cut, stop_ids=self.stop_ids))
        self._ended = [False] * rows

    def _same_call(self, input_ids: torch.Tensor) -> bool:
        """Whether ``input_ids`` continues the rows seen so far (else a new call)."""
        rows, width = input_ids.shape
        if not self.watches or rows != len(self.watches) or width <= self._width:
            return False
        return input_ids[:, self._width - 1].tolist() == self._last

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        import torch

        rows, width = input_ids.shape
        if not self._same_call(input_ids):
            self._start(input_ids)
            new = 1
        else:
            new = width - self._width  # more than one: assisted generation's accepted run
        self._width = width
        self._last = input_ids[:, -1].tolist()
        lps = stops = None
        if new == 1 and self.use_scores and scores is not None and scores.dim() == 2 \
                and scores.shape[0] == rows:
            lsm = torch.log_softmax(scores.float(), dim=-1)
            idx = torch.arange(rows, device=lsm.device)
            lps = lsm[idx, input_ids[:, -1].to(lsm.device)].tolist()
            cols = [i for i in self.stop_ids if i < lsm.shape[-1]]
            if cols:
                stops = lsm[:, cols].logsumexp(-1).tolist()
        fresh = input_ids[:, width - new:].tolist()
        out = []
        for i, (w, toks) in enumerate(zip(self.watches, fresh, strict=True)):
            for t in toks:
                if self._ended[i] or w.cut is not None:
                    break
                lp = lps[i] if lps is not None else None
                if lp is not None and lp == float("-inf"):
                    lp = None  # a token the processors ruled out
                st = (max(stops[i], -99.0), False) if stops is not None else None
                w.push(t, lp, st)
                if t in self.stop_ids:
                    self._ended[i] = True
            out.append(self._ended[i] or w.cut is not None)
        return torch.tensor(out, dtype=torch.bool, device=input_ids.device)

    def results(self) -> list[RowResult]:
        """Each row of the last call: what was found, whether and where it was stopped."""
        res = []
        for i, w in enumerate(self.watches):
            w.close(ended=self._ended[i])
            n = len(w.ids)
            if self._ended[i]:
                n -= 1  # the end token is no text
            res.append(RowResult(row=i, kind=w.cut.kind if w.cut else None,
                                 finish_reason=w.finish_reason, stopped_at=w.cut_at,
                                 tokens=n, findings=dict(w.findings)))
        return res


WatchStoppingCriteria: type  # built by __getattr__ on first use (transformers imported then)


def _build() -> type:
    from transformers import StoppingCriteria

    class WatchStoppingCriteria(_Criteria, StoppingCriteria):
        """Stops each row of ``generate`` that degenerates (see the module doc).

        Args:
            tokenizer: the model's tokenizer.
            max_new_tokens: the call's cap (the runaway horizon is 8 times it).
            cut: the kinds that stop a row (``"all"``, or e.g. ``"loop,spacing"``;
                ``"none"``: watch only, stop nothing).
            eos_token_id: the end ids (default the tokenizer's); a row that emits
                one ended by itself.
            use_scores: weigh the model's log-probabilities in (from the step's
                scores).
            model: the model's name, for its runaway fit.
            horizon: the runaway horizon in tokens, instead of 8 x max_new_tokens.
        """

    return WatchStoppingCriteria


__getattr__ = lazy_classes(__name__, {"WatchStoppingCriteria": _build},
                           "transformers: pip install 'degen[transformers]'")


__all__ = ["RowResult", "WatchStoppingCriteria"]
