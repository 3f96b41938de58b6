"""The guard's configuration: :class:`GuardConfig`, validated on construction, and the
helpers that build it from flags (``name=value`` parameters, sizes, kinds to cut, a
tuning study's best parameters)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from degen.detect.watch import KINDS, TEXT_KINDS, cut_kinds
from degen.errors import InvalidParams, UsageError

CUT_REASONS = ("kind", "length")
ON_DEGENERATE = ("cut", "retry")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Fields the guard owns: a default or override of them would break the proxy itself.
PROTECTED = frozenset({"stream", "stream_options", "messages", "prompt"})
# Knob values `degen tune` may store that become request fields (built as the openai
# engine sends them, so the tuned configuration is reproduced, neutral values included).
_NOT_SAMPLING = frozenset({"model", "messages", "prompt", "max_tokens", "stream",
                           "stream_options", "seed", "stop"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 1000**2,
          "mb": 1000**2, "mib": 1024**2, "mi": 1024**2, "g": 1000**3, "gb": 1000**3,
          "gib": 1024**3, "gi": 1024**3}


def parse_assignment(spec: str, flag: str = "--default") -> tuple[str, Any]:
    """``name=value`` -> (name, value); the value is read as JSON when it is JSON
    (``0.7``, ``true``, ``{"a": 1}``), else kept as a string."""
    name, eq, raw = spec.partition("=")
    name = name.strip()
    if not eq or not _NAME.fullmatch(name):
        raise InvalidParams(f"{flag} must look like name=value (e.g. temperature=0.7), "
                            f"got {spec!r}")
    if name in PROTECTED:
        raise InvalidParams(f"{flag} {name}: the guard sets {name} itself; it cannot be "
                            "given a default or an override")
    raw = raw.strip()
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


def parse_assignments(specs: Iterable[str], flag: str) -> dict[str, Any]:
    return dict(parse_assignment(s, flag) for s in specs)


def parse_kinds(spec: str | None, flag: str = "--cut") -> frozenset[str]:
    """``loop,gibberish`` or ``all`` -> the kinds (empty for None or "")."""
    if spec is None or not spec.strip():
        return frozenset()
    try:
        return cut_kinds(spec)
    except InvalidParams:
        bad = [k.strip() for k in spec.split(",") if k.strip() not in (*KINDS, "all", "")]
        raise InvalidParams(f"{flag}: unknown kind {bad[0]!r}; use all or any of "
                            f"{', '.join(KINDS)}, comma-separated") from None


def parse_size(text: str | int, flag: str = "--max-body") -> int:
    """``1048576``, ``1MiB``, ``512KiB``, ``2MB`` -> bytes (``flag`` names it in errors)."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = _SIZE.fullmatch(str(text))
        if not m:
            raise InvalidParams(f"{flag} must be a size such as 1MiB, 512KiB or 1048576, "
                                f"got {text!r}")
        n = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
    if n < 1:
        raise InvalidParams(f"{flag} must be at least 1 byte, got {text!r}")
    return n


def check_repetition_detection(value: Any, flag: str) -> None:
    """A ``repetition_detection`` default or override must be what vLLM accepts, e.g.
    ``{"max_pattern_size": 64, "min_pattern_size": 1, "min_count": 3}``; checked here so
    a typo is one line at start-up, not a 400 on every request."""
    from degen.engines.openai import DETECTION_FIELDS
    from degen.records import SamplingParams

    example = ('repetition_detection={"max_pattern_size": 64, "min_pattern_size": 1, '
               '"min_count": 3}')
    if not isinstance(value, dict) or not value or set(value) - set(DETECTION_FIELDS):
        raise InvalidParams(f"{flag} repetition_detection must be a JSON object with "
                            f"{', '.join(DETECTION_FIELDS)}, e.g. {example}")
    try:
        SamplingParams(**{DETECTION_FIELDS[k]: v for k, v in value.items()})
    except InvalidParams as e:
        raise InvalidParams(f"{flag} repetition_detection: {e}") from None


@dataclass(frozen=True)
class UpstreamConfig:
    """One upstream the guard routes to.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000`` (``/v1`` added when the path is
            empty).
        name: requests whose ``model`` is this name go here (as do requests for a model
            the upstream lists in ``/v1/models``); None for the default upstream, which
            gets every request no other upstream claims.
        defaults, overrides, system: request fields set for this upstream's requests,
            on top of the guard's own (this upstream's win).
        upstream_key: the bearer key sent to this upstream (else the guard's).
    """

    url: str
    name: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    system: str | None = None
    upstream_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from degen.engines.openai import normalize_base_url

        s = object.__setattr__
        what = f"--upstream {self.name}=..." if self.name else "--upstream"
        if not isinstance(self.url, str) or not self.url.strip():
            raise InvalidParams(f"{what} needs the server's URL, e.g. http://127.0.0.1:8000")
        try:
            s(self, "url", normalize_base_url(self.url))
        except InvalidParams:
            raise InvalidParams(f"{what} must start with http:// or https://, got "
                                f"{self.url!r}") from None
        if self.name is not None and not _NAME.fullmatch(self.name):
            raise InvalidParams(f"upstream name {self.name!r}: use letters, digits, '_', "
                                "'-', '.' (the model name its requests ask for)")
        for flag, fields in (("defaults", self.defaults), ("overrides", self.overrides)):
            for k in fields:
                if k in PROTECTED:
                    raise InvalidParams(f"{what} {flag} {k}: the guard sets {k} itself")
            if "repetition_detection" in fields:
                check_repetition_detection(fields["repetition_detection"], f"--{flag[:-1]}")
        s(self, "defaults", dict(self.defaults))
        s(self, "overrides", dict(self.overrides))

    @property
    def label(self) -> str:
        return self.name or "default"


def parse_upstream(spec: str) -> tuple[str | None, str]:
    """``http://host:8000`` -> (None, url): the default upstream; ``NAME=URL`` -> (NAME,
    URL): the upstream for requests whose ``model`` is NAME."""
    name, eq, url = spec.partition("=")
    if eq and "://" not in name:
        return name.strip(), url.strip()
    return None, spec.strip()


@dataclass(frozen=True)
class GuardConfig:
    """Everything ``degen guard`` needs; validated on construction.

    Args:
        upstream: the guarded server, e.g. ``http://127.0.0.1:8000`` (``/v1`` is added
            when the path is empty).
        host, port: where the guard listens (loopback unless told otherwise).
        api_key: clients must send ``Authorization: Bearer <api_key>``.
        upstream_key: sent upstream instead of the client's Authorization.
        max_tokens_cap: the most tokens a request may ask for; also what a request
            that names no limit gets.
        defaults: request fields set when the client did not send them.
        overrides: request fields always set.
        system: a system prompt put before chat conversations that have none.
        max_body: largest request body accepted, in bytes (413 above).
        max_n: the most choices (``n``, and ``best_of``) a request may ask for (400
            above): each one is a generation the upstream runs.
        max_header_size, max_headers: the request line and headers may take this many
            bytes and header fields (431 above).
        client_timeout: seconds a client may take to send a request's headers, and
            again its body (408 past either; slowloris).
        timeout: seconds without data from the upstream before a request fails (504).
        connect_timeout: seconds to connect to the upstream (502 past it).
        cut_kinds: the kinds that end a generation (:data:`KINDS`: loop, gibberish,
            spacing, and runaway, which is not cut unless asked; every kind is watched
            and counted either way). Cutting runaways asks the upstream for each
            token's top alternatives, to read the model's stopping evidence.
        horizon: a runaway would not end by this many tokens (None: 8 times each
            request's ``max_tokens``).
        runaway_weights: the runaway predictor's fit (None: the one degen ships for
            the model).
        stop_tokens: texts of the served models' stop tokens beyond the common ones
            (:data:`~degen.engines.evidence.STOP_TOKENS`).
        cut_reason: the finish_reason of a cut: ``"kind"`` (``"repetition"`` for a loop,
            ``"degenerate"`` for babble and glued words) or ``"length"`` (for clients
            that accept only OpenAI's values; the ``degen`` evidence names the kind).
        logprobs: ask the upstream for the sampled tokens' log-probabilities when the
            client did not (the watch weighs them in; the client never sees them).
        log_content: log prompts and outputs (never done otherwise).
        max_connections: upstream connections open at once at most (per upstream and
            worker).
        upstreams: named upstreams (:class:`UpstreamConfig`), routed to by the
            request's ``model``; ``upstream`` (may then be None) is the default.
        holdback: tokens held back before they are relayed (0: none), so a cut ends the
            answer at its last clean sentence and never shows the degenerate start.
        on_degenerate: ``"cut"``, or ``"retry"``: a request cut before any of its text
            reached the client is sent once more with ``retry_params`` on top.
        retry_params: request fields for the retry (e.g. a lower temperature).
        workers: processes serving the port (metrics add up across them).
        shutdown_timeout: seconds open streams may take to finish after a shutdown
            begins; what is still open then is cut, counted and logged.
        health_interval: seconds between checks of each upstream's ``/v1/models``.
        log_format: ``"text"`` or ``"json"`` (a JSON object a line); ``log_level``.
    """

    upstream: str | None
    host: str = "127.0.0.1"
    port: int = 8100
    api_key: str | None = field(default=None, repr=False)
    upstream_key: str | None = field(default=None, repr=False)
    max_tokens_cap: int = 8192
    defaults: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    system: str | None = None
    max_body: int = 1 << 20
    max_n: int = 16
    max_header_size: int = 64 << 10
    max_headers: int = 100
    client_timeout: float = 10.0
    timeout: float = 600.0
    connect_timeout: float = 10.0
    cut_kinds: frozenset[str] = frozenset(TEXT_KINDS)
    cut_reason: str = "kind"
    horizon: int | None = None
    runaway_weights: Mapping[str, Any] | None = None
    stop_tokens: tuple[str, ...] = ()
    logprobs: bool = True
    log_content: bool = False
    max_connections: int = 1024
    upstreams: tuple[UpstreamConfig, ...] = ()
    holdback: int = 0
    on_degenerate: str = "cut"
    retry_params: Mapping[str, Any] = field(default_factory=dict)
    workers: int = 1
    shutdown_timeout: float = 30.0
    health_interval: float = 10.0
    log_format: str = "text"
    log_level: str = "info"

    def __post_init__(self) -> None:
        from degen.engines.openai import normalize_base_url

        s = object.__setattr__
        if not self.upstreams and (self.upstream is None or (isinstance(self.upstream, str)
                                   and not self.upstream.strip())):
            raise InvalidParams("--upstream is required: the URL of the server to guard, "
                                "e.g. http://127.0.0.1:8000 (or NAME=URL, repeatable)")
        if self.upstream is not None:
            if not isinstance(self.upstream, str) or not self.upstream.strip():
                raise InvalidParams("--upstream must be the URL of the server to guard, "
                                    "e.g. http://127.0.0.1:8000")
            try:
                s(self, "upstream", normalize_base_url(self.upstream))
            except InvalidParams:
                raise InvalidParams(f"--upstream must start with http:// or https://, got "
                                    f"{self.upstream!r}") from None
        ups = tuple(self.upstreams)
        names = [u.name for u in ups]
        if None in names:
            raise InvalidParams("a named upstream needs its name (NAME=URL)")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InvalidParams(f"--upstream {dup[0]}=... is given twice; name each upstream "
                                "once")
        s(self, "upstreams", ups)
        if not (isinstance(self.holdback, int) and 0 <= self.holdback <= 4096):
            raise InvalidParams(f"--holdback must be a whole number of tokens in [0, 4096], "
                                f"got {self.holdback!r}")
        if self.on_degenerate not in ON_DEGENERATE:
            raise InvalidParams(f"--on-degenerate must be cut or retry, got "
                                f"{self.on_degenerate!r}")
        for k in self.retry_params:
            if k in PROTECTED:
                raise InvalidParams(f"--retry-param {k}: the guard sets {k} itself")
        if self.on_degenerate == "retry" and not self.retry_params:
            raise InvalidParams("--on-degenerate retry needs the safer parameters to retry "
                                "with: --retry-param name=value (e.g. temperature=0.3) or "
                                "--retry-params-from a tuning folder")
        s(self, "retry_params", dict(self.retry_params))
        if not (isinstance(self.workers, int) and 1 <= self.workers <= 256):
            raise InvalidParams(f"--workers must be in [1, 256], got {self.workers!r}")
        for name, v in (("--shutdown-timeout", self.shutdown_timeout),
                        ("health_interval", self.health_interval)):
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise InvalidParams(f"{name} must be > 0 seconds, got {v}")
        if self.log_format not in LOG_FORMATS:
            raise InvalidParams(f"--log-format must be text or json, got {self.log_format!r}")
        if self.log_level not in LOG_LEVELS:
            raise InvalidParams(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got "
                                f"{self.log_level!r}")
        if not self.host:
            raise InvalidParams("--host must not be empty (127.0.0.1 listens on loopback only)")
        if not 0 <= self.port <= 65535:
            raise InvalidParams(f"--port must be in [0, 65535], got {self.port}")
        for name, key in (("--api-key", self.api_key), ("--upstream-key", self.upstream_key)):
            if key is not None and (not key.strip() or any(c in key for c in "\r\n")):
                raise InvalidParams(f"{name} must be a non-empty single-line string")
        if self.max_tokens_cap < 1:
            raise InvalidParams(f"--max-tokens-cap must be >= 1, got {self.max_tokens_cap}")
        if self.max_body < 1:
            raise InvalidParams(f"--max-body must be >= 1 byte, got {self.max_body}")
        for name, v, low in (("--max-n", self.max_n, 1), ("--max-headers", self.max_headers, 8),
                             ("--max-header-size", self.max_header_size, 1024)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InvalidParams(f"{name} must be a whole number >= {low}, got {v!r}")
        for name, v in (("--timeout", self.timeout), ("connect_timeout", self.connect_timeout),
                        ("--client-timeout", self.client_timeout)):
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise InvalidParams(f"{name} must be > 0 seconds, got {v}")
        if self.max_connections < 1:
            raise InvalidParams(f"max_connections must be >= 1, got {self.max_connections}")
        for what, fields in (("--default", self.defaults), ("--override", self.overrides)):
            for k in fields:
                if k in PROTECTED:
                    raise InvalidParams(f"{what} {k}: the guard sets {k} itself")
            if "repetition_detection" in fields:
                check_repetition_detection(fields["repetition_detection"], what)
        if isinstance(self.cut_kinds, str):
            s(self, "cut_kinds", parse_kinds(self.cut_kinds))
        else:
            kinds = frozenset(self.cut_kinds)
            bad = sorted(kinds - set(KINDS))
            if bad:
                raise InvalidParams(f"--cut: unknown kind {bad[0]!r}; use all or any of "
                                    f"{', '.join(KINDS)}")
            s(self, "cut_kinds", kinds)
        if self.horizon is not None and (isinstance(self.horizon, bool)
                                         or not isinstance(self.horizon, int)
                                         or self.horizon < 2):
            raise InvalidParams(f"--horizon must be a number of tokens >= 2, got "
                                f"{self.horizon!r}")
        if self.runaway_weights is not None:
            from degen.detect.runaway import check_weights

            s(self, "runaway_weights", check_weights(self.runaway_weights))
        if isinstance(self.stop_tokens, str) or not all(
                isinstance(t, str) for t in self.stop_tokens):
            raise InvalidParams("stop_tokens must be a list of the stop tokens' texts")
        s(self, "stop_tokens", tuple(self.stop_tokens))
        if self.cut_reason not in CUT_REASONS:
            raise InvalidParams(f"--cut-reason must be kind or length, got {self.cut_reason!r}")
        s(self, "defaults", dict(self.defaults))
        s(self, "overrides", dict(self.overrides))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def routes(self) -> list[UpstreamConfig]:
        """Every upstream: the named ones, then the default (``upstream``) if any."""
        out = list(self.upstreams)
        if self.upstream is not None:
            out.append(UpstreamConfig(self.upstream, None, upstream_key=self.upstream_key))
        return out


# ---------------------------------------------------------------------- tuned params
def resolve_dialect(upstream: str, key: str | None = None, timeout: float = 5.0) -> str:
    """The parameter dialect of the server at ``upstream`` (from ``owned_by`` in its
    ``/models``): vllm, llamacpp or openai. Raises UsageError when nobody answers."""
    import httpx

    from degen.engines.openai import _OWNED_BY, normalize_base_url

    base = normalize_base_url(upstream)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.get(base + "/models", headers=headers, timeout=timeout)
        data = (r.json().get("data") or []) if r.status_code == 200 else []
    except (httpx.HTTPError, ValueError, AttributeError) as e:
        raise UsageError(f"cannot tell which server runs at {base} ({type(e).__name__}) to "
                         "name the tuned parameters; start it first or pass --dialect "
                         "vllm, llamacpp or openai") from None
    owned = data[0].get("owned_by") if data and isinstance(data[0], dict) else None
    return _OWNED_BY.get(str(owned or ""), "openai")


def load_tuned(folder: Path | str) -> dict[str, Any]:
    """The best knob values of the study in ``folder`` (``tune.json`` of ``degen tune``)."""
    folder = Path(folder)
    path = folder / "tune.json" if folder.is_dir() or not folder.suffix else folder
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no tune.json in {folder}; pass the --out folder of a finished "
                         "`degen tune`") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}; pass the --out folder of a finished "
                         "`degen tune`") from None
    best = data.get("best") if isinstance(data, dict) else None
    values = best.get("values") if isinstance(best, dict) else None
    if not isinstance(values, dict):
        raise UsageError(f"{path} has no best configuration (no trial finished); finish the "
                         "study or drop --params-from")
    return values


def tuned_fields(values: Mapping[str, Any], dialect: str
                 ) -> tuple[dict[str, Any], str | None, list[str]]:
    """Request fields for a tuning study's best ``values`` on a server of ``dialect``:
    (fields, system prompt or None, one warning per knob the server cannot express).

    Fields are named and completed as the openai engine sends them during a study (so
    the server's own defaults cannot sneak in where the study had a knob off)."""
    from degen.engines.openai import DIALECTS, build_body, unsupported_fields
    from degen.experiments.tune.space import KNOBS, SYSTEM_PROMPTS, sampling_params
    from degen.records import Request

    if dialect not in DIALECTS or dialect == "auto":
        raise InvalidParams(f"dialect must be vllm, llamacpp or openai, got {dialect!r}")
    warnings = [f"{k}={v!r} from the study is not a knob degen knows; ignored"
                for k, v in values.items() if k not in KNOBS]
    known = {k: v for k, v in values.items() if k in KNOBS}
    params = sampling_params(known, max_tokens=1)
    _, body = build_body(Request("guard", "guard", params,
                                 messages=({"role": "user", "content": ""},)),
                         "model", dialect, "chat", stream=False)
    fields = {k: v for k, v in body.items() if k not in _NOT_SAMPLING}
    for name, why in unsupported_fields(params, dialect).items():
        if name in ("repetition_penalty_scope", "penalize_eot"):
            name = f"penalty_scope={known.get('penalty_scope')}"
        else:
            name = f"{name}={getattr(params, name)}"
        warning = f"{name} is not applied: {why}"
        if warning not in warnings:
            warnings.append(warning)
    variant = known.get("system")
    system = SYSTEM_PROMPTS.get(variant) if isinstance(variant, str) else None
    return fields, system, warnings
