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
trial whose worker died is failed and retried with the same parameters.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from degen.detect.base import DetectorList
from degen.engines.base import Engine
from degen.errors import InvalidParams, UsageError
from degen.experiments.load.runner import run_load, versions
from degen.experiments.load.schedule import Plan
from degen.experiments.tune.race import Race, as_stop, outcomes
from degen.experiments.tune.space import SearchSpace, deviation, sampling_params, with_system
from degen.experiments.tune.storage import Interrupted, alive, locked, redact, storage_class
from degen.experiments.tune.summary import DEFAULTS_ARM, best_risk, confirmation, summarize_study
from degen.measurement.failure import FAILURE_KINDS, Measure, examples, params_key
from degen.measurement.progress import Forwarding, Progress
from degen.measurement.risk import prompt_categories
from degen.prompts import Prompt
from degen.records import Completion
from degen.store import RECORDS, iter_records, settled

OBJECTIVES = ("failure", "tokens", "latency", "deviation")


@dataclass
class TuneConfig:
    """Everything a study needs besides the engine and the prompts."""

    space: SearchSpace
    out: Path
    objectives: tuple[str, ...] = ("failure",)
    kinds: tuple[str, ...] = FAILURE_KINDS
    trials: int = 10
    requests: int = 32
    runs: int = 1
    rate: float | None = None
    arrivals: str = "poisson"
    concurrency: int | None = None
    max_tokens: int = 256
    seed: int = 0
    early_cut: bool = True
    prune: bool = True
    confirm: int = 48
    confirm_top: int = 2
    storage: str | None = None
    study: str = "degen"
    sampler: str = "tpe"
    jobs: int = 1
    stress: bool = False
    horizon: int | None = None  # None: 8 x max_tokens
    extend: bool = True  # continue the confirmation's capped generations to the horizon
    extend_share: float = 1.0

    def __post_init__(self) -> None:
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or not self.objectives:
            raise InvalidParams(f"unknown objective {', '.join(bad) or '(none)'}; "
                                f"choose from {', '.join(OBJECTIVES)}")
        if "failure" not in self.objectives:
            raise InvalidParams("the objectives must include failure (that is what degen "
                                "tunes away)")
        if len(set(self.objectives)) != len(self.objectives):
            raise InvalidParams("an objective is named twice")
        self.objectives = ("failure", *[o for o in self.objectives if o != "failure"])
        bad = [k for k in self.kinds if k not in FAILURE_KINDS]
        if bad or not self.kinds:
            raise InvalidParams(f"unknown failure kind {', '.join(bad) or '(none)'}; "
                                f"choose from {', '.join(FAILURE_KINDS)}")
        for name in ("trials", "requests", "runs", "max_tokens", "confirm_top", "jobs"):
            if getattr(self, name) < 1:
                raise InvalidParams(f"--{name.replace('_', '-')} must be >= 1, "
                                    f"got {getattr(self, name)}")
        if self.confirm < 0:
            raise InvalidParams(f"--confirm must be >= 0 (0 = skip), got {self.confirm}")
        if self.sampler not in ("tpe", "random"):
            raise InvalidParams(f"--sampler must be tpe or random, got {self.sampler!r}")
        from degen.outcomes import check_horizon, check_share, default_horizon

        self.horizon = check_horizon(self.horizon, self.max_tokens) \
            if self.horizon is not None else default_horizon(self.max_tokens)
        self.extend_share = check_share(self.extend_share)
        from degen.store import check_out_dir

        self.out = check_out_dir(Path(self.out))

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("space", "out")}
        d["space"] = self.space.to_dict()
        d["out"] = str(self.out)
        d["storage"] = redact(self.storage_url)
        return d


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

    # ---- storage
    def open_study(self) -> Any:
        import warnings

        import optuna
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        cfg = self.cfg
        cfg.out.mkdir(parents=True, exist_ok=True)
        for attempt in range(4):
            try:
                storage = storage_class()(
                    cfg.storage_url, heartbeat_interval=5, grace_period=20,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                        max_retry=3),
                    engine_kwargs={"pool_pre_ping": True})
                self._storage = storage
                break
            except Exception as e:  # bad URL, unreachable server, missing driver
                # workers started together on a new database race to create its tables;
                # the loser sees a unique-key violation and succeeds a moment later
                if "IntegrityError" in type(e).__name__ + str(e)[:200] and attempt < 3:
                    time.sleep(0.5 + attempt)
                    continue
                raise UsageError(
                    f"cannot open the study storage {redact(cfg.storage_url)}: "
                    f"{type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
        sampler = (optuna.samplers.RandomSampler(seed=cfg.seed) if cfg.sampler == "random"
                   else optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=min(
                       6, max(2, cfg.trials // 2)), multivariate=True,
                       constant_liar=cfg.jobs > 1 or cfg.storage is not None))
        study = optuna.create_study(
            storage=storage, study_name=cfg.study, sampler=sampler, load_if_exists=True,
            directions=["minimize"] * len(cfg.objectives))
        attrs = study.user_attrs
        # jobs is left out: workers may run different numbers of trials at once
        mine = {"objectives": list(cfg.objectives), "kinds": list(cfg.kinds),
                "space": cfg.space.to_dict(), "requests": cfg.requests, "runs": cfg.runs,
                "max_tokens": cfg.max_tokens, "horizon": cfg.horizon, "seed": cfg.seed,
                "early_cut": cfg.early_cut,
                "rate": cfg.rate, "arrivals": cfg.arrivals, "stress": cfg.stress}
        if "degen" in attrs:
            theirs = attrs["degen"]
            diff = sorted(k for k in mine if theirs.get(k) != mine[k])
            if diff:
                raise UsageError(
                    f"study {cfg.study!r} was started with other settings ({', '.join(diff)}); "
                    "use the same flags, or another --study / --out")
        else:
            study.set_user_attr("degen", mine)
            study.set_user_attr("engine", self.engine.describe())
            study.set_user_attr("versions", versions())
        self._fail_own_dead(study)
        return study

    def _fail_own_dead(self, study: Any) -> None:
        """Trials left RUNNING by a killed worker on this host are failed (and retried)
        at once, rather than after the heartbeat's grace period."""
        host = socket.gethostname()
        for t in self._running(study):
            w = str(t.user_attrs.get("worker", ""))
            h, _, pid = w.rpartition(":")
            if h != host or not pid.isdigit() or alive(int(pid)):
                continue
            if self._retry(study, t):
                self.log(f"trial {t.number} of a killed worker (pid {pid}) will be retried")

    def abandon(self, study: Any) -> None:
        """This worker's running trials are failed and queued again with the same
        parameters (an interrupted study resumes them, and their records, next time)."""
        from optuna.trial import TrialState

        study._stop_flag = True  # Optuna's loop starts no further trial
        started = self._storage.close() if self._storage is not None else set()
        for t in self._running(study):
            if t._trial_id in started or t.user_attrs.get("worker") == self.worker:
                self._retry(study, t)
        # the interrupt cancels a trial's requests at once, so Optuna may have failed
        # one of ours (its objective raised Interrupted) before the loop above saw it
        # running: queue those again too, once
        retried = {t.system_attrs.get("failed_trial") for t in study.get_trials(
            deepcopy=False, states=(TrialState.WAITING,))}
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t._trial_id in started and t.number not in retried:
                self._retry(study, t)

    @staticmethod
    def _running(study: Any) -> list[Any]:
        from optuna.trial import TrialState

        return list(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    @staticmethod
    def _retry(study: Any, t: Any) -> bool:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.storages import RetryHeartbeatStaleTrialCallback
        from optuna.trial import TrialState

        with contextlib.suppress(UpdateFinishedTrialError):  # Optuna ended it meanwhile
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        frozen = study._storage.get_trial(t._trial_id)
        if frozen.state != TrialState.FAIL:  # it finished: keep it
            return False
        RetryHeartbeatStaleTrialCallback(max_retry=3)(study, frozen)
        return True

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
