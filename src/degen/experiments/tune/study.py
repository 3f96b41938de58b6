"""A tuning study: Optuna searches sampling parameters; degen's load runner measures
each trial; the best configurations are confirmed on fresh requests.

Statistics (the failure rates worth tuning are small, so every request counts):

- **Common random numbers.** Every trial sends the same plan (prompts, order,
  per-request seeds); only the sampling parameters differ. Differences between
  trials are then differences between parameters, not between prompt draws. A
  trial's records live in ``trials/<hash of its parameters>/``, so a repeated
  configuration (or a retried trial) resumes its records instead of paying again.
- **What fails.** A runaway (a generation that would not end by ``horizon`` tokens,
  8 times ``max_tokens`` by default) or a degenerate one (a loop, babble, glued
  words); reaching the cap alone is not a failure (most capped answers of a good
  configuration end a little later). In the search, runaways are predicted by the
  watch (:mod:`degen.detect.runaway`); in the confirmation they are known: every
  capped generation is continued to the horizon (``extend_share`` of them, with a
  two-phase estimate, when < 1; none with ``extend=False``).
- **Early cut** (``early_cut``): the engine's watch stops a generation that loops,
  babbles or glues its words after tens of tokens (finish_reason ``repetition`` or
  ``degenerate``), or that it predicts will not end (``runaway``); it counts as a
  failure.
- **Racing** (``prune``): a trial is compared, request by request, with the best
  finished trial that is at least as good on the other objectives, at a quarter,
  half and three quarters of its requests; once an exact paired test says it is
  worse (5% error budget over the looks) it sends nothing more and its requests in
  flight are cancelled (:mod:`degen.experiments.tune.race`).
- **Confirmation** (``confirm``): the baseline (the engine's defaults) and the
  front of best configurations are re-run on *new* requests (another seed, so the
  winner's luck in the search does not carry over), all arms on the same requests;
  best vs baseline gets a paired test (exact McNemar) and Newcombe's interval of
  the difference.

Objectives, by name: ``failure`` (runaways and degenerate kinds, or any of ``kinds``),
``tokens`` (mean completion tokens), ``latency`` (p50 seconds) and ``deviation``
(seed 000's ``|repetition_penalty - 1|``). ``deviation`` is a known function of the
parameters, so by default it is *not* handed to the sampler, which would otherwise
spend trials mapping a curve we can write down: the study minimizes what must be
measured, and the Pareto front over (failure, deviation) is computed afterwards
from the finished trials. Pass it as an objective to reproduce seed 000 exactly.

Storage is Optuna's RDB storage (a SQLite file in ``out`` by default, or a
PostgreSQL URL that several workers share); each trial keeps a heartbeat, and a
trial whose worker died is failed and retried with the same parameters
(:mod:`degen.experiments.tune.lifecycle`). The study's settings:
:class:`~degen.experiments.tune.config.TuneConfig`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# ``X as X``: re-exported, names this module defined or imported before TuneConfig moved
# to degen.experiments.tune.config and the study's storage handling to
# degen.experiments.tune.lifecycle
from degen.detect.base import DetectorList
from degen.engines.base import Engine
from degen.errors import InvalidParams
from degen.errors import UsageError as UsageError
from degen.experiments.load.runner import run_load, versions
from degen.experiments.load.schedule import Plan
from degen.experiments.tune.config import OBJECTIVES as OBJECTIVES
from degen.experiments.tune.config import TuneConfig
from degen.experiments.tune.lifecycle import abandon as abandon_trials
from degen.experiments.tune.lifecycle import open_study as open_optuna_study
from degen.experiments.tune.race import Race, as_stop, outcomes
from degen.experiments.tune.space import SearchSpace as SearchSpace
from degen.experiments.tune.space import deviation, sampling_params, with_system
from degen.experiments.tune.storage import Interrupted, locked
from degen.experiments.tune.storage import alive as alive
from degen.experiments.tune.storage import redact as redact
from degen.experiments.tune.storage import storage_class as storage_class
from degen.experiments.tune.summary import DEFAULTS_ARM, best_risk, confirmation, summarize_study
from degen.measurement.failure import FAILURE_KINDS as FAILURE_KINDS
from degen.measurement.failure import Measure, examples, params_key
from degen.measurement.progress import Forwarding, Progress
from degen.measurement.risk import prompt_categories
from degen.prompts import Prompt
from degen.records import Completion
from degen.store import RECORDS, iter_records, settled


# --------------------------------------------------------------------- the study
@dataclass
class TuneResult:
    summary: dict[str, Any]
    out: Path
    study: Any = field(repr=False, default=None)


class Tuner:
    """Runs one worker of a study. See the module doc."""

    def __init__(self, engine: Engine, prompts: Sequence[Prompt], cfg: TuneConfig,
                 progress: Progress | None = None, detectors: DetectorList | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.engine, self.prompts, self.cfg = engine, tuple(prompts), cfg
        self.progress = progress or Progress(cfg.trials * cfg.requests * cfg.runs)
        self.detectors = detectors
        self.log = log or (lambda s: None)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._halt = threading.Event()  # set on Ctrl-C: send nothing more
        self.weights: tuple[float, ...] | None = None  # the stress plan's, with --stress
        self._storage: Any = None

    # ---- storage (see degen.experiments.tune.lifecycle)
    def open_study(self) -> Any:
        """The study (made, or joined with the same settings); its storage is kept for
        :meth:`abandon`."""
        study, self._storage = open_optuna_study(self.cfg, self.engine, self.log)
        return study

    def abandon(self, study: Any) -> None:
        """This worker's running trials are failed and queued again with the same
        parameters (an interrupted study resumes them, and their records, next time)."""
        abandon_trials(study, self._storage, self.worker)

    def _background(self, jobs: Sequence[Callable[[], Any]]) -> None:
        """Run ``jobs`` in threads while the main thread waits, waking often: Ctrl-C
        reaches only the main thread, which then sets the halt flag and re-raises."""
        errors: list[BaseException] = []

        def wrap(fn: Callable[[], Any]) -> Callable[[], None]:
            def go() -> None:
                try:
                    fn()
                except BaseException as e:  # handed to the main thread
                    errors.append(e)
                    self._halt.set()
            return go

        threads = [threading.Thread(target=wrap(fn), daemon=True, name="degen-tune")
                   for fn in jobs]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
        except BaseException:
            self._halt.set()
            raise
        if errors:
            raise errors[0]

    # ---- one trial
    def measure(self, values: dict[str, Any], folder: Path, seed: int, requests: int,
                stop: Callable[[list[Completion]], bool] | None = None,
                weights: tuple[float, ...] | None = None, extend: bool = False
                ) -> tuple[Measure, list[Completion], bool]:
        """One configuration on one plan; ``extend``: its capped generations are then
        continued to the horizon (the confirmation's truth)."""
        cfg = self.cfg
        params = sampling_params(values, cfg.max_tokens)
        plan = Plan(prompts=with_system(self.prompts, values.get("system")), params=params,
                    requests=requests, runs=cfg.runs, rate=cfg.rate, arrivals=cfg.arrivals,
                    seed=seed, weights=weights)
        # one run at a time per records folder, across threads and processes
        with locked(cfg.out / ".locks" / f"{folder.parent.name}-{folder.name}"):
            resume = (folder / "run.json").exists()
            nested = Forwarding(self.progress, plan.total)
            result = run_load(self.engine, plan, folder, concurrency=cfg.concurrency,
                              resume=resume, progress=nested, detectors=self.detectors,
                              extra_meta={"values": values, "horizon": cfg.horizon},
                              stop=stop, interrupt=self._halt,
                              horizon=cfg.horizon if extend else None,
                              extend_share=cfg.extend_share,
                              extend_progress=self._extend_bar)
        if result.stopped:
            self.progress.skip(plan.total - len(result.completions))
        share = cfg.extend_share if extend else None
        return (Measure.of(result.completions, cfg.kinds, cfg.horizon, share),
                result.completions, result.stopped)

    def _extend_bar(self, n: int) -> Progress:
        """The continuations of an extension, counted on the study's one bar."""
        self.progress.grow(n)
        return Forwarding(self.progress, n)

    def _pruner(self, study: Any, values: dict[str, Any]) -> Callable[[list[Completion]], bool]:
        """Race the trial against the best finished trial that is no worse on every
        other objective (only failure and deviation are known early): see
        :mod:`degen.experiments.tune.race`."""
        from optuna.trial import TrialState

        cfg = self.cfg
        halted = self._halt.is_set
        if not cfg.prune or any(o in ("tokens", "latency") for o in cfg.objectives):
            return lambda cs: halted()
        mine = deviation(values)
        leader = None
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            r = t.user_attrs.get("measure", {}).get("rate")
            if r is None or ("deviation" in cfg.objectives and deviation(t.params) > mine):
                continue
            if leader is None or r < leader[0]:
                leader = (r, t)
        if leader is None:
            return lambda cs: halted()
        rate, t = leader
        records = cfg.out / str(t.user_attrs.get("records", "")) / RECORDS
        paired_with = None
        if t.user_attrs.get("records") and records.exists():  # not another worker's folder
            paired_with = outcomes(settled(iter_records(records, allow_torn_tail=True)),
                                   cfg.kinds)
        race = Race(cfg.requests * cfg.runs, leader=paired_with, leader_rate=rate)
        return as_stop(race, cfg.kinds, halted)

    def objective(self, study: Any) -> Callable[[Any], Any]:
        import optuna

        cfg = self.cfg

        def run_trial(trial: Any) -> Any:
            if self._halt.is_set():
                raise Interrupted("the study was interrupted")
            trial.set_user_attr("worker", self.worker)
            values = cfg.space.suggest(trial)
            key = params_key(values)
            trial.set_user_attr("values", values)
            trial.set_user_attr("records", f"trials/{key}")
            self.log(f"trial {trial.number}: " + ", ".join(
                f"{k}={_fmt(v)}" for k, v in values.items()))
            m, cs, stopped = self.measure(values, cfg.out / "trials" / key, cfg.seed,
                                          cfg.requests, self._pruner(study, values),
                                          self.weights)
            if self._halt.is_set():
                raise Interrupted("the study was interrupted")
            trial.set_user_attr("measure", m.to_dict())
            if self.weights is not None:
                from degen.measurement.stress import reweighted

                trial.set_user_attr("reweighted", reweighted(cs, self.prompts, self.weights,
                                                             cfg.kinds))
            trial.set_user_attr("examples", examples(cs, cfg.kinds))
            if stopped:
                raise optuna.TrialPruned(f"failure rate at least {m.ci95[0]:.1%}")
            if m.n == 0:
                raise InvalidParams(f"every request of trial {trial.number} failed with an "
                                    f"error: {next((c.error for c in cs if c.error), '')}")
            vals = [m.value(o, values) for o in cfg.objectives]
            return vals[0] if len(vals) == 1 else vals

        return run_trial

    def search(self) -> Any:
        import optuna
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        study = self.open_study()
        if self.cfg.stress:
            self.weights = self.stress_plan(study)
        done = (TrialState.COMPLETE, TrialState.PRUNED)
        counted = len(study.get_trials(deepcopy=False, states=done))
        if counted < self.cfg.trials:
            self.progress.skip(counted * self.cfg.requests * self.cfg.runs)
            try:
                self._background([lambda: study.optimize(
                    self.objective(study), n_trials=self.cfg.trials - counted,
                    n_jobs=self.cfg.jobs, catch=(), gc_after_trial=False,
                    callbacks=[MaxTrialsCallback(self.cfg.trials, states=done)])])
            except BaseException:
                self.abandon(study)
                raise
        else:
            self.progress.skip(self.cfg.trials * self.cfg.requests * self.cfg.runs)
        del optuna
        return study

    def stress_plan(self, study: Any) -> tuple[float, ...]:
        """The stress plan's prompt weights: from the study when it has them (a resumed
        or shared study), else from a first pass of the engine defaults on the plain
        prompt mix (``OUT/pilot``)."""
        from degen.measurement.stress import stress_weights

        cfg = self.cfg
        got = study.user_attrs.get("stress")
        if got:
            self.progress.skip(cfg.requests * cfg.runs)
            return tuple(got["weights"])
        self.log(f"stress: a first pass of the engine defaults on {cfg.requests} requests")
        m, cs, _ = self.measure({}, cfg.out / "pilot", cfg.seed, cfg.requests,
                                lambda cs: self._halt.is_set())
        if self._halt.is_set():
            raise KeyboardInterrupt
        weights = stress_weights(cs, self.prompts, cfg.kinds)
        study.set_user_attr("stress", {"weights": list(weights), "pilot": m.to_dict(),
                                       "prompts": [p.id for p in self.prompts]})
        return weights

    # ---- confirmation
    def front(self, study: Any) -> list[Any]:
        """Finished trials on the Pareto front of the objectives plus deviation (a
        known function, so it costs nothing to consider), best failure rate first."""
        from optuna.trial import TrialState

        trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if t.user_attrs.get("measure", {}).get("rate") is not None]
        keys = list(self.cfg.objectives)
        if "deviation" not in keys:
            keys.append("deviation")

        def vec(t: Any) -> list[float]:
            m = t.user_attrs["measure"]
            out = []
            for k in keys:
                if k == "failure":
                    out.append(m["rate"])
                elif k == "tokens":
                    out.append(m["tokens"] / max(1, m["n"] + m["errors"] + m.get("cancelled", 0)))
                elif k == "latency":
                    out.append(m["latency_p50"] if m["latency_p50"] is not None else 1e18)
                else:
                    out.append(deviation(t.params))
            return out

        vs = {t.number: vec(t) for t in trials}
        front = [t for t in trials if not any(
            all(a <= b for a, b in zip(vs[o.number], vs[t.number], strict=True))
            and vs[o.number] != vs[t.number] for o in trials)]
        front.sort(key=lambda t: (vs[t.number][0], vs[t.number][1:]))
        return front

    def _key(self, t: Any) -> tuple[Any, ...]:
        """What orders the front: failures and n (a tie is the same count of the
        same requests), then deviation."""
        m = t.user_attrs.get("measure") or {}
        return (m.get("failures"), m.get("n"), deviation(t.params))

    def confirm(self, study: Any) -> dict[str, Any]:
        cfg = self.cfg
        front = self.front(study)
        arms: list[tuple[str, dict[str, Any], int | None]] = [(DEFAULTS_ARM, {}, None)]
        seen = {params_key({})}
        last: Any = None
        for t in front:
            values = t.user_attrs.get("values") or dict(t.params)
            if params_key(values) in seen:
                continue
            # past confirm_top, only trials tied with the last one taken: a tie is
            # settled on the new requests, never by which trial ran first
            if len(arms) > cfg.confirm_top and self._key(t) != self._key(last):
                break
            seen.add(params_key(values))
            arms.append((f"trial-{t.number}", values, t.number))
            last = t
        completions: dict[str, list[Completion]] = {}

        def arm(name: str, values: dict[str, Any], number: int | None) -> Callable[[], None]:
            def go() -> None:
                _, cs, _ = self.measure(values, cfg.out / "confirm" / params_key(values),
                                        cfg.seed + 1, cfg.confirm,
                                        lambda cs: self._halt.is_set(), extend=cfg.extend)
                if not self._halt.is_set():
                    completions[name] = cs
            return go

        self.log(f"confirming {', '.join(a[0] for a in arms)} on {cfg.confirm} new requests"
                 + (f", their capped generations continued to {cfg.horizon:,} tokens"
                    if cfg.extend else ""))
        # with parallel jobs the arms share the engine at once (fuller batches)
        step = len(arms) if cfg.jobs > 1 else 1
        for i in range(0, len(arms), step):
            self._background([arm(*a) for a in arms[i:i + step]])
        return confirmation([(n, v, t, completions[n]) for n, v, t in arms], cfg.kinds,
                            cfg.horizon, cfg.extend_share if cfg.extend else None,
                            prompt_categories(self.prompts), cfg.confirm, cfg.seed + 1)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def tune(engine: Engine, prompts: Sequence[Prompt], cfg: TuneConfig,
         progress: Progress | None = None, detectors: DetectorList | None = None,
         log: Callable[[str], None] | None = None) -> TuneResult:
    """Search, confirm, and write ``tune.json`` into ``cfg.out``. See the module doc."""
    t0 = time.time()
    tuner = Tuner(engine, prompts, cfg, progress, detectors, log)
    with tuner.progress:
        study = tuner.search()
        confirmation = tuner.confirm(study) if cfg.confirm > 0 else None
    summary = summarize_study(study, cfg, confirmation)
    summary.update(best_risk(summary, cfg, prompt_categories(tuner.prompts)))
    summary.update(engine=engine.describe(), versions=versions(), wall_s=time.time() - t0,
                   finished_at=datetime.now(UTC).isoformat(timespec="seconds"))
    path = cfg.out / "tune.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    tmp.replace(path)
    return TuneResult(summary, cfg.out, study)
