"""degen in a training run: sample fixed prompts at each evaluation, judge and profile
them, and log how the samples degrade checkpoint by checkpoint (seed 004).

>>> from degen.integrations.training import DegenCallback
>>> trainer = Trainer(model=model, args=args, ...)                      # doctest: +SKIP
>>> DegenCallback(tokenizer, prompts, "runs/degen", max_new_tokens=256).attach(trainer)
>>> trainer.train()                                                    # doctest: +SKIP

At each evaluation :func:`evaluate` samples the prompts with
:func:`degen.integrations.sampling.sample` (under a forked random state: training's own
randomness is untouched), judges every sample with degen's watch, and writes:

- ``OUT/step-N/records.jsonl``: the samples as degen records (``degen scan``, ``degen
  profile`` and the report read them);
- ``OUT/step-N/profile.csv``: quality by token position (:mod:`degen.experiments.profile`);
- ``OUT/step-N/scalars.json``: the numbers below, and ``OUT/scalars.jsonl``, one line
  per checkpoint;
- ``OUT/profile.csv``, ``OUT/profile.png``, ``OUT/profile.html``: every checkpoint so
  far, one curve each, overlaid.

The scalars (:func:`scalars`, named ``degen/...``) go through ``Trainer.log``, so
TensorBoard, W&B, MLflow and ``trainer.state.log_history`` get them like the losses.
A ``TrainerCallback`` is not handed its trainer, hence :meth:`DegenCallback.attach`;
without it the scalars still go to ``state.log_history`` (and the files) but not to the
reporting integrations. Only the main process samples (``state.is_world_process_zero``);
models sharded across processes (FSDP, DeepSpeed ZeRO-3) cannot generate on one rank
alone and are not supported.

The callback class is built on first use, so ``import degen.integrations.training``
costs nothing without transformers.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from degen.errors import InvalidParams
from degen.integrations._lazy import lazy_classes
from degen.records import Completion

log = logging.getLogger(__name__)

PREFIX = "degen/"
#: the kinds whose share is logged (``capped`` is ``1 - ended``)
KINDS = ("loop", "gibberish", "spacing", "runaway")


def _window(max_new_tokens: int, window: int | None, step: int | None) -> tuple[int, int]:
    w = window if window is not None else min(32, max(8, max_new_tokens // 4))
    return w, step if step is not None else max(1, w // 2)


def scalars(completions: Sequence[Completion], prefix: str = PREFIX) -> dict[str, float]:
    """One checkpoint's numbers from its judged samples: the share degenerate (any kind,
    and each of :data:`KINDS`), the mean repetition (seq-rep-4) and distinct-1 of a
    sample, the mean surprise (-log-probability), entropy and probability of ending per
    generated token, the mean tokens of a sample and the share that ended by themselves.
    A number the records cannot give (no log-probabilities) is left out."""
    from degen.detect.metrics import distinct_n, seq_rep_n, words
    from degen.detect.verdict import judge

    cs = [c for c in completions if c.is_measured]
    if not cs:
        return {}
    verdicts = [c.verdict if c.verdict is not None else judge(c) for c in cs]
    n = len(cs)
    out = {"degenerate": sum(bool(v["degenerate"]) for v in verdicts) / n}
    for k in KINDS:
        out[k] = sum(k in v["kinds"] for v in verdicts) / n
    units = [list(c.token_ids) if c.token_ids else words(c.text) for c in cs]
    out["repetition"] = sum(seq_rep_n(u, 4) for u in units) / n
    out["distinct_1"] = sum(distinct_n(u, 1) for u in units) / n

    def per_token(key: str, f: Any) -> float | None:
        xs = [f(x) for c in cs for x in (c.extra.get(key) or ())
              if isinstance(x, int | float)]
        return sum(xs) / len(xs) if xs else None

    for name, key, f in (("surprise", "logprobs", lambda x: -x),
                         ("entropy", "entropy", float),
                         ("p_stop", "stop_logprobs", math.exp)):
        v = per_token(key, f)
        if v is not None:
            out[name] = v
    out["tokens"] = sum(c.completion_tokens if c.completion_tokens is not None
                        else len(u) for c, u in zip(cs, units, strict=True)) / n
    out["ended"] = sum(c.finish_reason == "stop" for c in cs) / n
    return {prefix + k: round(v, 6) for k, v in out.items()}


def overlay(out_dir: Path | str, window: int = 32, step: int = 16) -> list[Any]:
    """Profile every checkpoint under ``out_dir`` (``step-N/records.jsonl``), one curve
    each, into ``out_dir/profile.csv``, ``profile.png`` and ``profile.html``; returns
    the curves."""
    from degen.experiments.profile import profile, reading, sources, write_csv, write_plots
    from degen.store import iter_records

    out_dir = Path(out_dir)
    curves = [profile(iter_records(f), label, window, step)
              for label, f in sources([out_dir])]
    write_csv(curves, out_dir / "profile.csv")
    if any(c.positions for c in curves):
        write_plots(curves, out_dir / "profile.png", out_dir / "profile.html",
                    [reading(c) for c in curves])
    return curves


def evaluate(model: Any, tokenizer: Any, prompts: Iterable[Any], out_dir: Path | str,
             step: int, *, max_new_tokens: int = 128, seed: int = 0,
             window: int | None = None, window_step: int | None = None,
             prefix: str = PREFIX, **sample_kw: Any) -> dict[str, float]:
    """Sample ``prompts`` from ``model`` at training step ``step``, write the checkpoint's
    files under ``out_dir`` (see the module doc) and refresh the overlay; returns the
    scalars. For a custom training loop; :class:`DegenCallback` calls it for a Trainer.

    ``sample_kw`` go to :func:`~degen.integrations.sampling.sample` (``temperature``,
    ``top_p``, ``n``, ``batch_size``...); ``window``/``window_step``: the profile's
    windows in tokens (default: a quarter of ``max_new_tokens``, at most 32, half of it).
    """
    from degen.experiments.profile import profile, write_csv
    from degen.integrations.sampling import sample
    from degen.store import write_json_atomic

    if step < 0:
        raise InvalidParams(f"step must be >= 0, got {step}")
    w, ws = _window(max_new_tokens, window, window_step)
    out = Path(out_dir)
    folder = out / f"step-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    cs = sample(model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed,
                **sample_kw)
    tmp = folder / "records.jsonl.tmp"
    tmp.write_text("".join(c.to_json() + "\n" for c in cs), encoding="utf-8")
    tmp.replace(folder / "records.jsonl")
    write_csv([profile(cs, folder.name, w, ws)], folder / "profile.csv")
    values = scalars(cs, prefix)
    write_json_atomic(folder / "scalars.json", {"step": step, **values})
    with open(out / "scalars.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, **values}) + "\n")
    overlay(out, w, ws)
    return values


class _Callback:
    """What :class:`DegenCallback` does; the ``TrainerCallback`` base is added on first use."""

    def __init__(self, tokenizer: Any, prompts: Iterable[Any], out_dir: Path | str, *,
                 max_new_tokens: int = 128, seed: int = 0, every: str | int = "eval",
                 window: int | None = None, window_step: int | None = None,
                 prefix: str = PREFIX, **sample_kw: Any) -> None:
        if every != "eval" and (isinstance(every, bool) or not isinstance(every, int)
                                or every < 1):
            raise InvalidParams(f"every must be 'eval' (at each evaluation) or a number of "
                                f"steps >= 1, got {every!r}")
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        if not self.prompts:
            raise InvalidParams("DegenCallback needs at least one prompt")
        self.out_dir = Path(out_dir)
        self.every = every
        self.options: dict[str, Any] = dict(max_new_tokens=max_new_tokens, seed=seed,
                                            window=window, window_step=window_step,
                                            prefix=prefix, **sample_kw)
        self.trainer: Any = None
        self.history: list[dict[str, Any]] = []  # {"step": N, **scalars} per checkpoint
        self._warned = False

    def attach(self, trainer: Any) -> Any:
        """Add this callback to ``trainer`` and keep it, so the scalars go through
        ``trainer.log`` (and so to every reporting integration). Returns self."""
        trainer.add_callback(self)
        self.trainer = trainer
        return self

    def run(self, state: Any, model: Any, tokenizer: Any = None) -> dict[str, float] | None:
        """Sample, write and log now (at ``state.global_step``); None when this process is
        not the main one or this step was done already."""
        step = int(state.global_step)
        if not getattr(state, "is_world_process_zero", True) or \
                any(h["step"] == step for h in self.history):
            return None
        tok = self.tokenizer if self.tokenizer is not None else tokenizer
        if tok is None:
            raise InvalidParams("DegenCallback has no tokenizer: pass one, or give the "
                                "Trainer a processing_class")
        values = evaluate(model, tok, self.prompts, self.out_dir, step, **self.options)
        self.history.append({"step": step, **values})
        if self.trainer is not None:
            self.trainer.log(dict(values))
        else:
            if not self._warned:
                log.warning("DegenCallback was not attached (DegenCallback.attach(trainer)): "
                            "its scalars go to state.log_history only, not to the "
                            "reporting integrations")
                self._warned = True
            state.log_history.append({**values, "step": step})
        return values

    # the TrainerCallback events
    def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None,
                    processing_class: Any = None, **kwargs: Any) -> None:
        if self.every == "eval":
            self.run(state, model, processing_class)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None,
                    processing_class: Any = None, **kwargs: Any) -> None:
        if isinstance(self.every, int) and state.global_step % self.every == 0:
            self.run(state, model, processing_class)


DegenCallback: type  # built by __getattr__ on first use (transformers imported then)


def _build() -> type:
    from transformers import TrainerCallback

    class DegenCallback(_Callback, TrainerCallback):
        """Samples fixed prompts during training and logs how they degrade (see the
        module doc).

        Args:
            tokenizer: the model's tokenizer (None: the Trainer's processing_class).
            prompts: raw text strings, degen Prompts, or mappings with ``prompt`` or
                ``messages`` (see :func:`degen.integrations.sampling.sample`).
            out_dir: where each checkpoint's files and the overlay go.
            max_new_tokens: each sample's cap.
            seed: the sampling seed, the same at every checkpoint.
            every: ``"eval"`` (at each evaluation) or a number of steps.
            window, window_step: the profile's windows (tokens).
            prefix: the scalars' name prefix.
            **sample_kw: more :func:`~degen.integrations.sampling.sample` options
                (``temperature``, ``n``, ``batch_size``...).
        """

    return DegenCallback


__getattr__ = lazy_classes(__name__, {"DegenCallback": _build},
                           "transformers: pip install 'degen[transformers]'")


__all__ = ["DegenCallback", "evaluate", "overlay", "scalars"]
