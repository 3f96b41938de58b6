"""The Optuna side of a study's life: opening it (its storage, tried again while workers
started together race to create the tables; its sampler; the settings every worker of
a shared study must agree on) and failing and queueing again the trials of a worker
that was killed or interrupted, with the same parameters (:func:`retry`). Optuna is
imported only inside these functions."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from degen.errors import UsageError
from degen.experiments.load.runner import versions
from degen.experiments.tune.storage import alive, redact, storage_class

if TYPE_CHECKING:
    from degen.engines.base import Engine
    from degen.experiments.tune.config import TuneConfig


def open_study(cfg: TuneConfig, engine: Engine, log: Callable[[str], None]
               ) -> tuple[Any, Any]:
    """The study of ``cfg`` (made, or joined when it exists with the same settings) and
    its storage; the trials a killed worker of this host left running are retried."""
    import warnings

    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    cfg.out.mkdir(parents=True, exist_ok=True)
    for attempt in range(4):
        try:
            storage = storage_class()(
                cfg.storage_url, heartbeat_interval=5, grace_period=20,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=3),
                engine_kwargs={"pool_pre_ping": True})
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
        study.set_user_attr("engine", engine.describe())
        study.set_user_attr("versions", versions())
    fail_own_dead(study, log)
    return study, storage


def fail_own_dead(study: Any, log: Callable[[str], None]) -> None:
    """Trials left RUNNING by a killed worker on this host are failed (and retried)
    at once, rather than after the heartbeat's grace period."""
    host = socket.gethostname()
    for t in running(study):
        w = str(t.user_attrs.get("worker", ""))
        h, _, pid = w.rpartition(":")
        if h != host or not pid.isdigit() or alive(int(pid)):
            continue
        if retry(study, t):
            log(f"trial {t.number} of a killed worker (pid {pid}) will be retried")


def abandon(study: Any, storage: Any, worker: str) -> None:
    """The running trials of ``worker`` (and those ``storage`` started) are failed and
    queued again with the same parameters (an interrupted study resumes them, and their
    records, next time)."""
    from optuna.trial import TrialState

    study._stop_flag = True  # Optuna's loop starts no further trial
    started = storage.close() if storage is not None else set()
    for t in running(study):
        if t._trial_id in started or t.user_attrs.get("worker") == worker:
            retry(study, t)
    # the interrupt cancels a trial's requests at once, so Optuna may have failed
    # one of ours (its objective raised Interrupted) before the loop above saw it
    # running: queue those again too, once
    retried = {t.system_attrs.get("failed_trial") for t in study.get_trials(
        deepcopy=False, states=(TrialState.WAITING,))}
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t._trial_id in started and t.number not in retried:
            retry(study, t)


def running(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return list(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def retry(study: Any, t: Any) -> bool:
    """Fail trial ``t`` and queue it again with its parameters; False when it finished
    meanwhile (it is kept)."""
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
