"""``degen guard``'s settings from a TOML file and flags (flags win): :func:`build`.

A file holds everything the flags hold, with the flags' names (``max_tokens_cap``,
``cut``, ``holdback``, ...), the parameter tables ``[defaults]``, ``[overrides]`` and
``[retry_params]``, and one ``[upstreams.NAME]`` table per named upstream (``url``,
``defaults``, ``overrides``, ``system``, ``upstream_key``, ``params_from``,
``dialect``); ``upstream`` is the default upstream's URL. See docs/guard-operations.md.

>>> cfg = build({"upstream": "http://127.0.0.1:8000", "holdback": 8,
...              "defaults": {"temperature": 0.7}},
...             {"holdback": 16, "default": ["min_p=0.1"]}, resolve=False)
>>> cfg.holdback, cfg.defaults
(16, {'temperature': 0.7, 'min_p': 0.1})
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from degen.errors import InvalidParams, UsageError

# file key -> what it must be
SCALARS: dict[str, type | tuple[type, ...]] = {
    "upstream": str, "host": str, "port": int, "workers": int, "api_key": str,
    "upstream_key": str, "timeout": (int, float), "connect_timeout": (int, float),
    "max_body": (str, int), "max_n": int, "max_header_size": (str, int), "max_headers": int,
    "client_timeout": (int, float), "max_tokens_cap": int, "max_connections": int,
    "params_from": str, "dialect": str, "cut": (str, list), "no_cut": (str, list),
    "cut_reason": str, "logprobs": bool, "holdback": int, "on_degenerate": str,
    "retry_params_from": str, "shutdown_timeout": (int, float),
    "health_interval": (int, float), "log_format": str, "log_level": str,
    "log_content": bool, "system": str, "horizon": int, "runaway_weights": str,
    "stop_tokens": list,
}
TABLES = ("defaults", "overrides", "retry_params", "upstreams")
DEFAULT_CUT = "loop,gibberish,spacing"  # runaway is watched, cut only when asked
UPSTREAM_KEYS = {"url": str, "defaults": dict, "overrides": dict, "system": str,
                 "upstream_key": str, "params_from": str, "dialect": str}
DIALECTS = ("auto", "vllm", "llamacpp", "openai")


def read(path: Path | str) -> dict[str, Any]:
    """The settings in the TOML file at ``path``, checked (one line on any mistake)."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no config file at {path}; pass an existing --config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}; pass a TOML --config file") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML: {e}") from None
    for k, v in data.items():
        if k in TABLES:
            if not isinstance(v, dict):
                raise UsageError(f"{path}: {k} must be a table ([{k}])")
        elif k not in SCALARS:
            raise UsageError(f"{path}: unknown setting {k!r}; known: "
                             f"{', '.join([*SCALARS, *TABLES])}")
        elif not isinstance(v, SCALARS[k]) or (isinstance(v, bool) and SCALARS[k] is not bool):
            raise UsageError(f"{path}: {k} = {v!r} has the wrong type")
    for name, up in (data.get("upstreams") or {}).items():
        if not isinstance(up, dict) or "url" not in up:
            raise UsageError(f"{path}: [upstreams.{name}] needs url = \"http://...\"")
        for k, v in up.items():
            if k not in UPSTREAM_KEYS:
                raise UsageError(f"{path}: unknown setting {k!r} in [upstreams.{name}]; "
                                 f"known: {', '.join(UPSTREAM_KEYS)}")
            if not isinstance(v, UPSTREAM_KEYS[k]):
                raise UsageError(f"{path}: upstreams.{name}.{k} = {v!r} has the wrong type")
    return data


def _kinds(v: Any, flag: str) -> Any:
    from degen.guard.config import parse_kinds

    return parse_kinds(",".join(v) if isinstance(v, list) else v, flag)


def _tuned(folder: str, url: str, key: str | None, dialect: str
           ) -> tuple[dict[str, Any], str | None]:
    """A tuning study's best parameters as request fields for the server at ``url``."""
    import typer

    from degen.guard.config import load_tuned, resolve_dialect, tuned_fields

    values = load_tuned(folder)
    if dialect == "auto":
        dialect = resolve_dialect(url, key)
    fields, system, warnings = tuned_fields(values, dialect)
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)
    return fields, system


def build(file: Mapping[str, Any], flags: Mapping[str, Any], resolve: bool = True) -> Any:
    """The :class:`~degen.guard.config.GuardConfig` of a file's settings and the flags
    given (None: not given). Flags win; ``--default``/``--override``/``--retry-param``
    win key by key over the file's tables; ``--upstream`` replaces the file's default
    upstream and adds (or replaces by name) named ones. ``resolve``: read the tuning
    folders of ``params_from`` (asks the upstream its dialect when ``auto``)."""
    from degen.guard.config import (
        GuardConfig,
        UpstreamConfig,
        parse_assignments,
        parse_size,
        parse_upstream,
    )

    given = {k: v for k, v in flags.items() if v is not None and v != []}
    s: dict[str, Any] = {**{k: v for k, v in file.items() if k in SCALARS}, **given}
    dialect = s.get("dialect", "auto")
    if dialect not in DIALECTS:
        raise InvalidParams(f"--dialect must be auto, vllm, llamacpp or openai, got {dialect!r}")
    tables = {t: dict(file.get(t) or {}) for t in ("defaults", "overrides", "retry_params")}
    for t, flag in (("defaults", "default"), ("overrides", "override"),
                    ("retry_params", "retry_param")):
        tables[t].update(parse_assignments(given.get(flag) or (), f"--{flag.replace('_', '-')}"))
    named: dict[str, dict[str, Any]] = {n: dict(u) for n, u in
                                        (file.get("upstreams") or {}).items()}
    default_url = file.get("upstream")
    specs = given.get("upstreams") or []
    if isinstance(specs, str):
        specs = [specs]
    for spec in specs:
        name, url = parse_upstream(spec)
        if name is None:
            default_url = url
        else:
            named[name] = {**named.get(name, {}), "url": url}
    key = s.get("upstream_key")
    ups = []
    for name, u in named.items():
        defaults, system = dict(u.get("defaults") or {}), u.get("system")
        if u.get("params_from") and resolve:
            fields, tuned_system = _tuned(u["params_from"], u["url"],
                                          u.get("upstream_key") or key,
                                          u.get("dialect", dialect))
            defaults, system = {**fields, **defaults}, system or tuned_system
        ups.append(UpstreamConfig(u["url"], name, defaults, dict(u.get("overrides") or {}),
                                  system, u.get("upstream_key")))
    system = s.get("system")
    first_url = default_url or (ups[0].url if ups else None)
    if s.get("params_from") and resolve and first_url:
        fields, tuned_system = _tuned(s["params_from"], first_url, key, dialect)
        tables["defaults"] = {**fields, **tables["defaults"]}
        system = system or tuned_system
    if s.get("retry_params_from") and resolve and first_url:
        fields, _ = _tuned(s["retry_params_from"], first_url, key, dialect)
        tables["retry_params"] = {**fields, **tables["retry_params"]}
    kinds = _kinds(s.get("cut", DEFAULT_CUT), "--cut") - _kinds(s.get("no_cut"), "--no-cut")
    kw: dict[str, Any] = {k: s[k] for k in (
        "host", "port", "workers", "api_key", "upstream_key", "timeout", "connect_timeout",
        "max_tokens_cap", "max_connections", "cut_reason", "logprobs", "holdback",
        "on_degenerate", "shutdown_timeout", "health_interval", "log_format", "log_level",
        "log_content", "horizon", "max_n", "max_headers", "client_timeout") if k in s}
    for k in ("max_body", "max_header_size"):
        if k in s:
            kw[k] = parse_size(s[k], "--" + k.replace("_", "-"))
    if "stop_tokens" in s:
        kw["stop_tokens"] = tuple(s["stop_tokens"])
    if s.get("runaway_weights"):
        from degen.detect.runaway_weights import load_weights

        kw["runaway_weights"] = load_weights(Path(s["runaway_weights"]))
    return GuardConfig(upstream=default_url, upstreams=tuple(ups), defaults=tables["defaults"],
                       overrides=tables["overrides"], retry_params=tables["retry_params"],
                       system=system, cut_kinds=kinds, **kw)
