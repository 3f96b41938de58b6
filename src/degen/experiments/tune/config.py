"""What a tuning study is told: :class:`TuneConfig` (everything a study needs besides
the engine and the prompts, checked when it is made) and the objectives it may
minimize (:data:`OBJECTIVES`; see :mod:`degen.experiments.tune.study`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from degen.errors import InvalidParams
from degen.experiments.tune.space import SearchSpace
from degen.experiments.tune.storage import redact
from degen.measurement.failure import FAILURE_KINDS

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
