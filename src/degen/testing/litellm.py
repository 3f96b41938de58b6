"""Start and stop a real LiteLLM proxy on 127.0.0.1, with degen's guardrail, in front
of an OpenAI-compatible server (the tests' llama.cpp).

LiteLLM lives in its own virtual environment (``scripts/setup.sh --test`` makes
``.venv-litellm`` with ``litellm[proxy]`` and degen, editable, for the guardrail the
proxy imports): its pins would fight degen's. The proxy is started as
``python -m litellm.proxy.proxy_cli --config ...`` with a master key (every request
then needs it) and is ready once ``/health/liveliness`` answers. It is kept off the
network: the model cost map is read from the package (``LITELLM_LOCAL_MODEL_COST_MAP``)
and telemetry is off.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from degen.testing.llamacpp import ServerProcess, venv_python

VENV = ".venv-litellm"
MASTER_KEY = "sk-degen-test"
GUARDRAIL = "degen.integrations.litellm.DegenGuardrail"


def litellm_python(root: Path | str = ".") -> Path:
    """The Python that has LiteLLM: ``$DEGEN_LITELLM_PYTHON``, else
    ``<root>/.venv-litellm``."""
    return venv_python(root, VENV, "DEGEN_LITELLM_PYTHON", "litellm[proxy]")


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_yaml(upstream_base_url: str, model_name: str, *, guardrail: bool = True,
                master_key: str = MASTER_KEY, api_key: str = "none",
                options: Mapping[str, Any] | None = None,
                more_models: Mapping[str, str] | None = None,
                guardrail_class: str = GUARDRAIL) -> str:
    """The proxy's ``config.yaml``: ``model_name`` served by the OpenAI-compatible
    server at ``upstream_base_url`` (``.../v1``; ``more_models``: more names and their
    servers) and, with ``guardrail``, degen's guardrail on every answer (``options``:
    its ``litellm_params``, e.g. ``{"cut_reason": "length"}``; ``guardrail_class``:
    another guardrail in its place, for comparisons)."""
    lines = ["model_list:"]
    for name, url in {model_name: upstream_base_url, **(more_models or {})}.items():
        lines += [
            f"  - model_name: {name}",
            "    litellm_params:",
            f"      model: openai/{name}",
            f"      api_base: {url}",
            f"      api_key: {api_key}",
        ]
    if guardrail:
        lines += [
            "guardrails:",
            "  - guardrail_name: degen",
            "    litellm_params:",
            f"      guardrail: {guardrail_class}",
            "      mode: post_call",
            "      default_on: true",
        ]
        lines += [f"      {k}: {_scalar(v)}" for k, v in (options or {}).items()]
    lines += [
        "general_settings:",
        f"  master_key: {master_key}",
        "litellm_settings:",
        "  telemetry: false",
    ]
    return "\n".join(lines) + "\n"


def write_config(path: Path | str, upstream_base_url: str, model_name: str,
                 **kwargs: Any) -> Path:
    """:func:`config_yaml` written to ``path``."""
    p = Path(path)
    p.write_text(config_yaml(upstream_base_url, model_name, **kwargs))
    return p


class LiteLLMProxy(ServerProcess):
    """LiteLLM's proxy serving ``config`` (a config.yaml, see :func:`write_config`);
    clients use ``base_url`` with ``api_key`` (the master key)."""

    what = "LiteLLM proxy"

    def __init__(self, config: Path | str, *, python: Path | None = None,
                 master_key: str = MASTER_KEY, log: Path | None = None,
                 start_timeout: float = 900.0) -> None:
        self.api_key = master_key
        super().__init__(
            [str(python or litellm_python()), "-m", "litellm.proxy.proxy_cli",
             "--config", str(config), "--host", "127.0.0.1", "--port", "{port}",
             "--num_workers", "1", "--telemetry", "False"],
            log=log, env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                          "DO_NOT_TRACK": "1", "LITELLM_LOG": "ERROR",
                          "DISABLE_ADMIN_UI": "True", "NO_DOCS": "True"},
            start_timeout=start_timeout, ready_path="/health/liveliness")
