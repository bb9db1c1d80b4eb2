#!/usr/bin/env bash
# End-to-end GAD demo on a CPU in a few minutes, offline after the install:
#   1. build/reuse the venv (scripts/install_env.sh),
#   2. write a tiny random Qwen2 student and a toy teacher data set (gad-trl make-tiny),
#   3. train it with GAD (recipes/tiny/gad.yaml: critic warm-up -> SFT warm-up -> GAD, no vLLM),
#   4. measure the discriminator on a fixed held-out set (gad-trl eval-discriminator).
# Usage: scripts/demo.sh [OUTPUT_ROOT]   (default: outputs). Extra settings through env, e.g. MAX_STEPS=20.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-outputs}
V=${GAD_TRL_VENV:-$ROOT/.venv}
bash "$ROOT/scripts/install_env.sh" "$V"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
GAD="$V/bin/gad-trl"

"$GAD" make-tiny "$OUT/tiny"
"$GAD" analyze-lengths --model_name_or_path "$OUT/tiny/model" --dataset_name "$OUT/tiny/data" --round_to 8
"$GAD" gad --config recipes/tiny/gad.yaml \
  --model_name_or_path "$OUT/tiny/model" --dataset_name "$OUT/tiny/data" --output_dir "$OUT/tiny-gad" \
  ${MAX_STEPS:+--max_steps "$MAX_STEPS"}
"$GAD" eval-discriminator --discriminator_name_or_path "$OUT/tiny-gad/discriminator" \
  --student_name_or_path "$OUT/tiny/model" --dataset_name "$OUT/tiny/data" --dataset_split test \
  --num_samples 16 --max_new_tokens 16 --heldout_cache "$OUT/tiny/heldout.jsonl" \
  --output_json "$OUT/tiny-gad/heldout_eval.json"
echo "[demo] student: $OUT/tiny-gad   discriminator: $OUT/tiny-gad/discriminator   logs: tensorboard --logdir $OUT/tiny-gad/runs"
