"""``degen compare``: any two or more configurations, paired, on the same requests.

An *arm* is a name and any settings of ``degen run``: sampling fields
(``temperature=0.7``, ``repetition_penalty=1.1``...), the engine and its model
(``model=PATH`` for a GGUF file or a Hugging Face folder, ``engine=openai`` with
``base_url=URL``...). Every arm gets the same plan: the same prompts in the same
order with the same per-request seeds under the same arrival schedule, one arm after
the other so each has the machine to itself. Differences between arms are then
differences between the settings, and each pair of arms is compared request by
request:

- per arm: failure rate with its Wilson 95% interval, tokens, latency, errors, and
  the failure rate by prompt and category (:mod:`degen.measurement.risk`);
- per pair: the difference of failure rates with Newcombe's interval for paired
  proportions and the exact McNemar p-value, adjusted for the number of pairs with
  Holm's step-down method (so "some pair differs" keeps a 5% error rate).

Records go to ``OUT/arms/NAME/`` (``--resume`` continues each arm), the summary to
``OUT/compare.json``, and the report to ``OUT/report.html`` and ``report.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from degen.errors import InvalidParams, UsageError
from degen.experiments.load.runner import run_load, versions
from degen.experiments.load.schedule import Plan
from degen.measurement.failure import FAILURE_KINDS, Measure, examples, lengths, paired
from degen.measurement.progress import Forwarding, Progress
from degen.measurement.risk import prompt_categories, risk
from degen.prompts import Prompt
from degen.records import Completion, SamplingParams
from degen.stats import holm, percentile
from degen.store import write_json_atomic

#: engine settings an arm may set, with their types (the others are sampling fields)
ENGINE_KEYS: dict[str, type] = {
    "engine": str, "model": str, "base_url": str, "api_key": str, "api": str,
    "stream": bool, "dialect": str, "timeout": float, "retries": int, "batch_size": int,
    "device": str, "dtype": str, "guard": bool, "logprobs": bool}
_ALIASES = {"penalty_scope": "repetition_penalty_scope"}
_NOT_PER_ARM = ("seed", "stop")  # the plan's seeds are what pairs the arms
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _sampling_types() -> dict[str, type]:
    hints = {"float": float, "int": int, "bool": bool, "str": str}
    return {f.name: hints[str(f.type)] for f in dataclasses.fields(SamplingParams)
            if f.name not in _NOT_PER_ARM and str(f.type) in hints}


def _convert(key: str, raw: str, kind: type) -> Any:
    if kind is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise InvalidParams(f"arm setting {key}={raw!r}: expected true or false")
    try:
        return kind(raw)
    except ValueError:
        raise InvalidParams(f"arm setting {key}={raw!r}: expected a{'n' if kind is int else ''} "
                            f"{kind.__name__}") from None


@dataclass(frozen=True)
class Arm:
    """One configuration to compare: its name, engine settings and sampling fields."""

    name: str
    engine: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Arm:
        """``NAME`` or ``NAME:key=value,key=value``.

        >>> Arm.parse("hot:temperature=1.3,model=/m/x.gguf")
        Arm(name='hot', engine={'model': '/m/x.gguf'}, sampling={'temperature': 1.3})
        """
        name, _, rest = spec.partition(":")
        name = name.strip()
        if not _NAME.match(name):
            raise InvalidParams(f"--arm {spec!r}: start with a name of letters, digits, "
                                "'.', '_', '+' or '-', then ':key=value,...'")
        types = _sampling_types()
        engine: dict[str, Any] = {}
        sampling: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, raw = item.partition("=")
            key = _ALIASES.get(key.strip(), key.strip())
            if not eq or not raw.strip():
                raise InvalidParams(f"--arm {name}: {item!r} is not key=value")
            raw = raw.strip()
            if key in ENGINE_KEYS:
                engine[key] = _convert(key, raw, ENGINE_KEYS[key])
            elif key in types:
                sampling[key] = _convert(key, raw, types[key])
            else:
                known = sorted([*ENGINE_KEYS, *types, *_ALIASES])
                raise InvalidParams(f"--arm {name}: unknown setting {key!r}; use one of "
                                    f"{', '.join(known)}")
        arm = cls(name, engine, sampling)
        arm.params(512)  # SamplingParams checks the values now, not after an hour
        if engine.get("engine", "local") not in ("local", "openai"):
            raise InvalidParams(f"--arm {name}: engine must be local or openai")
        return arm

    def params(self, max_tokens: int) -> SamplingParams:
        return SamplingParams(**{"max_tokens": max_tokens, **self.sampling})

    def describe(self) -> dict[str, Any]:
        return {"engine": {k: v for k, v in self.engine.items() if k != "api_key"},
                "sampling": self.sampling}


def check_arms(arms: Sequence[Arm]) -> None:
    if len(arms) < 2:
        raise UsageError("compare needs at least two --arm NAME:key=value,... (one per "
                         "configuration)")
    names = [a.name for a in arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"arm names must differ; {', '.join(dup)} is used twice")


@dataclass
class CompareConfig:
    """The plan every arm shares."""

    out: Path
    requests: int = 64
    runs: int = 1
    max_tokens: int = 512
    seed: int = 0
    rate: float | None = None
    arrivals: str = "poisson"
    concurrency: int | None = None
    kinds: tuple[str, ...] = FAILURE_KINDS
    resume: bool = False
    #: runaways would not end by this many tokens (None: 8 x max_tokens)
    horizon: int | None = None
    #: continue every arm's capped generations to the horizon (runaways known)
    extend: bool = False
    extend_share: float = 1.0
    runaway_weights: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        from degen.outcomes import check_horizon, check_share, default_horizon
        from degen.store import check_out_dir

        self.horizon = check_horizon(self.horizon, self.max_tokens) \
            if self.horizon is not None else default_horizon(self.max_tokens)
        self.extend_share = check_share(self.extend_share)
        self.out = check_out_dir(Path(self.out))


_LOCAL_OPTIONS = ("model", "batch_size", "device", "dtype", "logprobs")
_OPENAI_OPTIONS = {"base_url": "base_url", "api_key": "api_key", "model": "model",
                   "api": "api", "stream": "stream", "dialect": "dialect",
                   "timeout": "timeout", "retries": "max_retries", "logprobs": "logprobs"}


def arm_engine(arm: Arm, horizon: int | None = None,
               runaway_weights: Mapping[str, Any] | None = None) -> Any:
    """The engine of an arm: the bundled model in-process unless it says otherwise
    (``guard=true`` on a server streams, as the cut needs the stream; ``horizon`` and
    ``runaway_weights`` are its runaway cut's)."""
    from degen.engines import create_engine

    e = arm.engine
    name = e.get("engine", "local")
    opts: dict[str, Any] = {"guard": e.get("guard", False), "horizon": horizon,
                            "runaway_weights": runaway_weights}
    if name == "local":
        opts.update({k: e[k] for k in _LOCAL_OPTIONS if k in e})
    else:
        opts.update({dest: e[k] for k, dest in _OPENAI_OPTIONS.items() if k in e})
        opts.setdefault("stream", bool(opts["guard"]))
        opts.setdefault("base_url", "http://127.0.0.1:8000/v1")
    return create_engine(name, **opts)


def run_compare(arms: Sequence[Arm], prompts: Sequence[Prompt], cfg: CompareConfig,
                make_engine: Callable[[Arm], Any] | None = None,
                progress: Progress | None = None, detectors: Any = None,
                log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every arm on the same plan (one after the other), write ``compare.json``
    and return it. ``make_engine(arm)`` builds an arm's engine (default
    :func:`arm_engine`); it is closed after the arm. With ``cfg.extend`` each arm's
    capped generations are continued to the horizon once its plan is done."""
    check_arms(arms)
    if make_engine is None:
        def make_engine(arm: Arm) -> Any:
            return arm_engine(arm, cfg.horizon, cfg.runaway_weights)
    log = log or (lambda s: None)
    progress = progress or Progress(len(arms) * cfg.requests * cfg.runs)
    cfg.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    done: dict[str, list[Completion]] = {}
    engines: dict[str, dict[str, Any]] = {}
    with progress:
        for arm in arms:
            plan = Plan(prompts=tuple(prompts), params=arm.params(cfg.max_tokens),
                        requests=cfg.requests, runs=cfg.runs, rate=cfg.rate,
                        arrivals=cfg.arrivals, seed=cfg.seed)
            folder = cfg.out / "arms" / arm.name
            eng = make_engine(arm)
            try:
                load = getattr(eng, "load", None)
                log(f"arm {arm.name}: {eng.name} {eng.model}")
                if load is not None:
                    load()
                engines[arm.name] = eng.describe()
                result = run_load(eng, plan, folder, concurrency=cfg.concurrency,
                                  resume=cfg.resume and (folder / "run.json").exists(),
                                  progress=Forwarding(progress, plan.total),
                                  detectors=detectors, extra_meta={"arm": arm.name,
                                                                   "horizon": cfg.horizon},
                                  horizon=cfg.horizon if cfg.extend else None,
                                  extend_share=cfg.extend_share)
            finally:
                eng.close()
            done[arm.name] = result.completions
    summary = summarize_compare(arms, done, cfg, prompt_categories(prompts))
    summary.update(engines=engines, versions=versions(), wall_s=time.time() - t0)
    write_json_atomic(cfg.out / "compare.json", summary)
    return summary


def arm_row(arm: Arm, cs: Sequence[Completion], kinds: Sequence[str],
            categories: dict[str, str], horizon: int | None = None,
            extend_share: float | None = None) -> dict[str, Any]:
    m = Measure.of(cs, kinds, horizon, extend_share)
    lat = [c.timings.latency_s for c in cs if c.is_measured and c.timings.latency_s is not None]
    return {"name": arm.name, "settings": arm.describe(), "n": m.n, "failures": m.failures,
            "failure_rate": m.rate, "ci95": list(m.ci95), "cut": m.cut, "errors": m.errors,
            "capped": m.capped, "runaways": m.runaways, "runaways_known": m.runaways_known,
            "long": m.long, "degenerate": m.degenerate, "estimate": m.estimate,
            "extension_tokens": m.extension_tokens,
            "lengths": lengths(cs),
            "cancelled": m.cancelled, "tokens": m.tokens,
            "tokens_per_request": m.tokens / len(cs) if cs else None,
            "latency_p50_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95),
            "examples": examples(cs, kinds), **risk(cs, kinds, categories)}


def summarize_compare(arms: Sequence[Arm], done: dict[str, list[Completion]],
                      cfg: CompareConfig, categories: dict[str, str]) -> dict[str, Any]:
    share = cfg.extend_share if cfg.extend else None
    rows = [arm_row(a, done[a.name], cfg.kinds, categories, cfg.horizon, share) for a in arms]
    pairs = []
    for a, b in itertools.combinations(arms, 2):
        p = paired(done[a.name], done[b.name], cfg.kinds)
        pairs.append({"a": a.name, "b": b.name, **p})
    for p, adj in zip(pairs, holm([p["p_value"] for p in pairs]), strict=True):
        p["p_adjusted"] = adj
    return {"kind": "degen.compare", "arms": rows, "pairs": pairs,
            "config": {"requests": cfg.requests, "runs": cfg.runs,
                       "max_tokens": cfg.max_tokens, "seed": cfg.seed, "rate": cfg.rate,
                       "arrivals": cfg.arrivals, "concurrency": cfg.concurrency,
                       "kinds": list(cfg.kinds), "horizon": cfg.horizon,
                       "extend": cfg.extend, "extend_share": share},
            "out": str(cfg.out)}


def refresh_compare(folder: Path, horizon: int, share: float | None) -> dict[str, Any]:
    """``compare.json`` of ``folder`` measured again from its arms' records (after
    :func:`degen.experiments.load.extend.extend` continued them): written back and returned."""
    from degen.outcomes import load_run
    from degen.reports.compare import load_compare

    folder = Path(folder)
    s = load_compare(folder)
    arms = [Arm(a["name"], dict(a["settings"]["engine"]), dict(a["settings"]["sampling"]))
            for a in s["arms"]]
    done = {a.name: load_run(folder / "arms" / a.name) for a in arms}
    c = s["config"]
    cfg = CompareConfig(out=folder, requests=c["requests"], runs=c["runs"],
                        max_tokens=c["max_tokens"], seed=c["seed"], rate=c["rate"],
                        arrivals=c["arrivals"], concurrency=c["concurrency"],
                        kinds=tuple(c["kinds"]), horizon=horizon, extend=share is not None,
                        extend_share=share or 1.0)
    cats = {r["prompt_id"]: r["category"] for a in s["arms"] for r in a["by_prompt"]}
    new = summarize_compare(arms, done, cfg, cats)
    new.update({k: s[k] for k in ("engines", "versions", "wall_s") if k in s})
    write_json_atomic(folder / "compare.json", new)
    return new
