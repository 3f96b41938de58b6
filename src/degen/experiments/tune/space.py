"""The search space of a tuning study: which sampling knobs vary, and over what.

A :class:`Dim` is one knob: a float or int range (optionally log-scaled), a list of
choices, or a fixed value. Knobs are the :class:`~degen.records.SamplingParams`
fields plus two that are not plain fields:

- ``penalty_scope``: which tokens the repetition penalty sees: ``prompt+output``
  (HF and vLLM), ``output`` (generated tokens only) or ``eot-exempt`` (prompt and
  output, but never the end-of-turn tokens, which every chat prompt contains). On
  the bundled model this decides most runaways at a high penalty;
- ``system``: a system-prompt variant put before every chat conversation (seed 003's
  prompt-engineering mitigation), by name: ``none`` or ``concise``.

Spaces come from a preset (``wide``, the default, shows the bundled model's
landscape; ``seed000`` is seed 000's ranges), a TOML file, or ``--param`` flags
(``temperature=0.5:1.2``, ``top_k=0,40``, ``min_p=0.05``), later ones overriding.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from degen.errors import InvalidParams
from degen.measurement.failure import deviation  # noqa: F401 - an objective, defined there
from degen.prompts import Prompt
from degen.records import SamplingParams

SCOPES = ("prompt+output", "output", "eot-exempt")
SYSTEM_PROMPTS: dict[str, str | None] = {
    "none": None,
    "concise": "You are a helpful assistant. Answer the request directly and concisely, "
               "and stop as soon as the answer is complete.",
}
_FLOATS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
           "frequency_penalty")
_INTS = ("top_k", "no_repeat_ngram_size", "repetition_min_count", "repetition_max_pattern",
         "repetition_min_pattern")
KNOBS = (*_FLOATS, *_INTS, "penalty_scope", "system")


@dataclass(frozen=True, slots=True)
class Dim:
    """One knob: ``low``..``high`` (``log`` for a log scale), or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.name not in KNOBS:
            raise InvalidParams(f"unknown knob {self.name!r}; tunable: {', '.join(KNOBS)}")
        if self.choices is not None:
            if not self.choices:
                raise InvalidParams(f"{self.name}: give at least one choice")
            for c in self.choices:
                _value(self.name, c)  # validates each
            return
        if self.name in ("penalty_scope", "system"):
            raise InvalidParams(f"{self.name} takes choices, e.g. {self.name}="
                                + ",".join(SCOPES if self.name == "penalty_scope"
                                           else SYSTEM_PROMPTS))
        if self.low is None or self.high is None or not self.low < self.high:
            raise InvalidParams(f"{self.name}: need low < high, got {self.low}..{self.high}")
        _value(self.name, self.low)
        _value(self.name, self.high)
        if self.name == "repetition_min_count" and self.low < 2:
            raise InvalidParams("repetition_min_count: a range must start at 2 or more "
                                "(1 is not a repetition); for off, give choices such as "
                                "0,3,5")
        if self.log and self.low <= 0:
            raise InvalidParams(f"{self.name}: a log scale needs low > 0")

    @property
    def fixed(self) -> bool:
        return self.choices is not None and len(self.choices) == 1

    def describe(self) -> str:
        if self.choices is not None:
            return ", ".join(str(c) for c in self.choices)
        return f"{self.low:g} .. {self.high:g}" + (" (log)" if self.log else "")

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial picks for this knob."""
        if self.choices is not None:
            return self.choices[0] if self.fixed else trial.suggest_categorical(
                self.name, list(self.choices))
        if self.name in _INTS:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


def _value(name: str, v: Any) -> Any:
    if name == "penalty_scope":
        if v not in SCOPES:
            raise InvalidParams(f"penalty_scope must be one of {', '.join(SCOPES)}, got {v!r}")
        return v
    if name == "system":
        if v not in SYSTEM_PROMPTS:
            raise InvalidParams(f"system must be one of {', '.join(SYSTEM_PROMPTS)}, got {v!r}")
        return v
    SamplingParams(**{name: v})  # the records' own validation, with its ranges
    return v


def _number(name: str, text: str) -> float | int:
    try:
        return int(text) if name in _INTS else float(text)
    except ValueError:
        raise InvalidParams(f"{name}: {text!r} is not a number") from None


def parse_dim(spec: str) -> Dim:
    """``name=low:high``, ``name=low:high:log``, ``name=a,b,c`` or ``name=value``."""
    m = re.fullmatch(r"\s*([a-z_]+)\s*=\s*(.+?)\s*", spec)
    if not m:
        raise InvalidParams(f"--param must look like temperature=0.5:1.2 or top_k=0,40, "
                            f"got {spec!r}")
    name, rhs = m.groups()
    if name not in KNOBS:
        raise InvalidParams(f"unknown knob {name!r}; tunable: {', '.join(KNOBS)}")
    if ":" in rhs and name not in ("penalty_scope", "system"):
        parts = rhs.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise InvalidParams(f"--param {name}: a range is low:high or low:high:log")
        return Dim(name, _number(name, parts[0]), _number(name, parts[1]),
                   log=len(parts) == 3)
    items = [x.strip() for x in rhs.split(",") if x.strip()]
    if name not in ("penalty_scope", "system"):
        return Dim(name, choices=tuple(_number(name, x) for x in items))
    return Dim(name, choices=tuple(items))


def _dim_from_toml(name: str, v: Any) -> Dim:
    if isinstance(v, Mapping):
        if "choices" in v:
            return Dim(name, choices=tuple(v["choices"]))
        return Dim(name, v.get("low"), v.get("high"), log=bool(v.get("log", False)))
    if isinstance(v, list):
        if len(v) == 2 and all(isinstance(x, int | float) and not isinstance(x, bool)
                               for x in v) and name not in ("penalty_scope", "system"):
            return Dim(name, v[0], v[1])
        return Dim(name, choices=tuple(v))
    return Dim(name, choices=(v,))


PRESETS: dict[str, tuple[Dim, ...]] = {
    # seed 000's ranges, as published
    "seed000": (Dim("temperature", 0.7, 0.9), Dim("min_p", 0.0, 0.1),
                Dim("repetition_penalty", 1.0, 1.1)),
    # wide enough to show the bundled model's landscape: from babbling (high T, no
    # min_p) through loops (low T) to the end-of-turn trap (penalty on <|im_end|>)
    "wide": (Dim("temperature", 0.2, 1.3), Dim("min_p", 0.0, 0.2),
             Dim("repetition_penalty", 1.0, 1.3), Dim("penalty_scope", choices=SCOPES)),
}


@dataclass(frozen=True, slots=True)
class SearchSpace:
    dims: tuple[Dim, ...]

    def __post_init__(self) -> None:
        names = [d.name for d in self.dims]
        if len(set(names)) != len(names):
            raise InvalidParams(f"a knob appears twice in the space: {names}")
        if not any(not d.fixed for d in self.dims):
            raise InvalidParams("the search space has nothing to vary")

    @classmethod
    def build(cls, preset: str | None = "wide", file: Path | None = None,
              params: Iterable[str] = ()) -> SearchSpace:
        """A preset, then a TOML file's ``[space]`` table, then ``--param`` flags."""
        dims: dict[str, Dim] = {}
        if preset:
            if preset not in PRESETS:
                raise InvalidParams(f"unknown preset {preset!r}; available: "
                                    f"{', '.join(PRESETS)}")
            dims.update((d.name, d) for d in PRESETS[preset])
        if file is not None:
            import tomllib

            what = "pass a TOML file with a [space] table, e.g. temperature = [0.5, 1.2]"
            try:
                data = tomllib.loads(Path(file).read_text("utf-8"))
            except FileNotFoundError:
                raise InvalidParams(f"space file {file} does not exist; {what}") from None
            except (OSError, UnicodeDecodeError) as e:
                raise InvalidParams(f"cannot read space file {file} ({e}); {what}") from None
            except tomllib.TOMLDecodeError as e:
                raise InvalidParams(f"space file {file}: {e}") from None
            table = data.get("space", data)
            if not isinstance(table, Mapping) or not table:
                raise InvalidParams(f"space file {file} has no [space] table; {what}")
            dims.update((k, _dim_from_toml(k, v)) for k, v in table.items())
        for spec in params:
            d = parse_dim(spec)
            dims[d.name] = d
        return cls(tuple(dims.values()))

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {d.name: d.suggest(trial) for d in self.dims}

    def to_dict(self) -> dict[str, Any]:
        return {d.name: (list(d.choices) if d.choices is not None
                         else {"low": d.low, "high": d.high, "log": d.log}) for d in self.dims}


def sampling_params(values: Mapping[str, Any], max_tokens: int) -> SamplingParams:
    """The SamplingParams of a trial's ``values`` (knobs not in it keep their defaults)."""
    fields: dict[str, Any] = {k: v for k, v in values.items() if k in (*_FLOATS, *_INTS)}
    scope = values.get("penalty_scope", "prompt+output")
    fields["repetition_penalty_scope"] = "output" if scope == "output" else "prompt+output"
    fields["penalize_eot"] = scope != "eot-exempt"
    return SamplingParams(max_tokens=max_tokens, **fields)


_FIELD_KNOB = {"repetition_penalty_scope": "penalty_scope", "penalize_eot": "penalty_scope"}


def inert_knobs(space: SearchSpace, unsupported: Callable[[SamplingParams], Mapping[str, str]]
                ) -> dict[str, str]:
    """Knob values of ``space`` that an engine would not apply (``"knob=value"`` -> why),
    by asking its ``unsupported`` about each choice and each end of each range: the
    study would search them while they change nothing (say, ``penalty_scope`` on vLLM).
    """
    out: dict[str, str] = {}
    for d in space.dims:
        for v in d.choices if d.choices is not None else (d.low, d.high):
            values: dict[str, Any] = {d.name: v}
            if d.name == "penalty_scope":
                values["repetition_penalty"] = 1.2  # a scope only matters under a penalty
            for field, why in unsupported(sampling_params(values, 1)).items():
                if _FIELD_KNOB.get(field, field) == d.name:
                    out.setdefault(f"{d.name}={v}", why)
    return out


def with_system(prompts: Iterable[Prompt], variant: str | None) -> tuple[Prompt, ...]:
    """``prompts`` with the system prompt ``variant`` before each chat conversation that
    has none (raw text prompts are left alone)."""
    text = SYSTEM_PROMPTS.get(variant or "none")
    out = []
    for p in prompts:
        if text and p.messages is not None and not any(
                m.get("role") == "system" for m in p.messages):
            p = Prompt(p.id, messages=({"role": "system", "content": text}, *p.messages))
        out.append(p)
    return tuple(out)
