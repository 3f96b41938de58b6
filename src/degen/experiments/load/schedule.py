"""What to send and when: the request plan of a load run.

A :class:`Plan` is fully determined by its fields: which prompt each request uses,
its per-request seed and its arrival offset are all derived from ``seed``, the run
number and the request index. Two runs of the same plan send the same requests at
the same offsets with the same seeds: that is what makes ``--resume`` exact and
what lets a tuning study compare trials on common random numbers.

Seed 000's structure is ``runs=5, requests=120, rate=1/s, arrivals="poisson"``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from degen.errors import InvalidParams
from degen.prompts import Prompt
from degen.records import Request, SamplingParams, derive_seed

ARRIVALS = ("poisson", "constant")
_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
          "h": 3600.0, "hour": 3600.0}


def parse_rate(text: str | float | None) -> float | None:
    """Requests per second from ``"2"``, ``"1/s"``, ``"60/min"``, ``"3600/h"``; ``None``,
    ``""``, ``"max"`` or ``"inf"`` mean as fast as concurrency allows."""
    if text is None:
        return None
    if isinstance(text, int | float):
        value = float(text)
        unit = 1.0
    else:
        s = text.strip().lower().replace(" ", "")
        if s in ("", "max", "inf", "unlimited"):
            return None
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)(?:/(\w+))?", s)
        if not m or (m.group(2) and m.group(2) not in _UNITS):
            raise InvalidParams(
                f"--rate must look like 2, 1/s, 60/min or 3600/h, got {text!r}"
            )
        value = float(m.group(1))
        unit = _UNITS[m.group(2)] if m.group(2) else 1.0
    if value <= 0:
        raise InvalidParams(f"--rate must be > 0 (omit it for as fast as allowed), got {text!r}")
    return value / unit


@dataclass(frozen=True, slots=True)
class Plan:
    """``runs`` runs of ``requests`` requests each over ``prompts`` with ``params``."""

    prompts: tuple[Prompt, ...]
    params: SamplingParams
    requests: int = 32
    runs: int = 1
    rate: float | None = None
    arrivals: str = "poisson"
    seed: int = 0
    #: a stress plan's chance of drawing each prompt (see :mod:`degen.measurement.stress`); None:
    #: every prompt in turn, in a seeded shuffle
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.prompts:
            raise InvalidParams("a plan needs at least one prompt")
        if self.requests < 1:
            raise InvalidParams(f"--requests must be >= 1, got {self.requests}")
        if self.runs < 1:
            raise InvalidParams(f"--runs must be >= 1, got {self.runs}")
        if self.arrivals not in ARRIVALS:
            raise InvalidParams(
                f"--arrivals must be one of {', '.join(ARRIVALS)}, got {self.arrivals!r}"
            )
        if self.rate is not None and not self.rate > 0:
            raise InvalidParams(f"--rate must be > 0, got {self.rate}")
        if self.seed < 0:
            raise InvalidParams(f"--seed must be >= 0, got {self.seed}")
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if self.weights is not None:
            w = tuple(float(x) for x in self.weights)
            if len(w) != len(self.prompts) or min(w) <= 0 or abs(sum(w) - 1) > 1e-6:
                raise InvalidParams(f"a stress plan needs one weight > 0 per prompt "
                                    f"({len(self.prompts)}), summing to 1")
            object.__setattr__(self, "weights", w)

    @property
    def total(self) -> int:
        return self.requests * self.runs

    def prompt_order(self, run: int) -> list[int]:
        """Prompt indices for ``run``: a seeded shuffle of the suite, cycled; or, in a
        stress plan, independent draws by ``weights``. The same for every run, so runs
        are replicates over one prompt mix."""
        if self.weights is not None:
            rng = np.random.default_rng(derive_seed(self.seed, "stress-prompts"))
            return rng.choice(len(self.prompts), size=self.requests,
                              p=np.asarray(self.weights) / sum(self.weights)).tolist()
        rng = np.random.default_rng(derive_seed(self.seed, "prompts"))
        perm = rng.permutation(len(self.prompts)).tolist()
        return [perm[i % len(perm)] for i in range(self.requests)]

    def offsets(self, run: int) -> list[float]:
        """Arrival offsets (seconds from the run's start) of each request of ``run``."""
        if self.rate is None:
            return [0.0] * self.requests
        if self.arrivals == "constant":
            return [i / self.rate for i in range(self.requests)]
        rng = np.random.default_rng(derive_seed(self.seed, "arrivals", run))
        gaps = rng.exponential(1.0 / self.rate, size=self.requests)
        gaps[0] = 0.0  # the first request goes at once
        return np.cumsum(gaps).tolist()

    def requests_for(self, run: int) -> list[Request]:
        order = self.prompt_order(run)
        out: list[Request] = []
        for i, pi in enumerate(order):
            p = self.prompts[pi]
            out.append(Request(
                request_id=f"{run}-{i}",
                prompt_id=p.id,
                params=self.params.replace(seed=derive_seed(self.seed, "request", run, i)),
                messages=p.messages,
                prompt=p.text,
                run=run,
                index=i,
            ))
        return out

    def fingerprint(self) -> dict[str, Any]:
        """What must match for ``--resume`` to continue this plan."""
        digest = hashlib.sha256()
        for p in self.prompts:
            digest.update(repr((p.id, p.messages and [sorted(m.items()) for m in p.messages],
                                p.text)).encode())
        return {
            "params": self.params.to_dict(),
            "prompts_sha256": digest.hexdigest(),
            "n_prompts": len(self.prompts),
            "requests": self.requests,
            "runs": self.runs,
            "rate": self.rate,
            "arrivals": self.arrivals,
            "seed": self.seed,
            **({"weights": list(self.weights)} if self.weights is not None else {}),
        }


def describe_rate(rate: float | None) -> str:
    if rate is None:
        return "as fast as allowed"
    if rate < 1:
        return f"{rate * 60:g}/min"
    return f"{rate:g}/s"

