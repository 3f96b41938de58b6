"""Where a study lives: Optuna's RDB storage (SQLite or PostgreSQL) with the fixes
degen needs, file locks for records folders, and the liveness check for workers."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class Interrupted(Exception):
    """A trial stopped because the study was interrupted (it is queued again)."""


def redact(url: str) -> str:
    """A storage URL without its password."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


@contextlib.contextmanager
def locked(path: Path) -> Any:
    """An exclusive ``flock`` on the file ``path`` (made if missing), held inside."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_STORAGE: Any = None


def storage_class() -> Any:
    """Optuna's RDB storage, with one fix: claiming a queued trial is serialized
    within the process. Optuna claims a WAITING trial by reading and then updating
    it; SQLite takes no row lock on the read, so two threads could both claim the
    same trial (PostgreSQL's ``SELECT ... FOR UPDATE`` already prevents this)."""
    global _STORAGE
    if _STORAGE is None:
        from optuna.storages import RDBStorage
        from optuna.trial import TrialState

        class Storage(RDBStorage):  # type: ignore[misc]
            _claim = threading.Lock()

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                # the trials this process started or claimed, so that a Ctrl-C queues
                # them again even before the objective has named its worker; once
                # closed, it starts and claims no more
                self.started: set[int] = set()
                self.closed = False

            def _create_new_trial(self, study_id: int, template_trial: Any = None) -> Any:
                if template_trial is not None and template_trial.state != TrialState.RUNNING:
                    return super()._create_new_trial(study_id, template_trial)
                with self._claim:
                    if self.closed:
                        raise Interrupted("the study was interrupted")
                    t = super()._create_new_trial(study_id, template_trial)
                    self.started.add(t._trial_id)
                    return t

            def set_trial_state_values(self, trial_id: int, state: TrialState,
                                       values: Sequence[float] | None = None) -> bool:
                if state != TrialState.RUNNING:
                    return super().set_trial_state_values(trial_id, state, values)
                with self._claim:
                    if self.closed:
                        return False
                    claimed = super().set_trial_state_values(trial_id, state, values)
                    if claimed:
                        self.started.add(trial_id)
                    return claimed

            def close(self) -> set[int]:
                """Start and claim nothing more; the trials this process started."""
                with self._claim:
                    self.closed = True
                    return set(self.started)

        _STORAGE = Storage
    return _STORAGE


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
