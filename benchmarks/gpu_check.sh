#!/usr/bin/env bash
# The GPU checks of the batched trainer, in one short run for a lent CUDA machine:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# 1. the CUDA tests (jobs and whole scenarios on the GPU agree with the CPU: 1e-5 / 1e-4);
# 2. batched vs sequential updates/s on the GPU at 1 to 1,000 pending jobs (goal >= 30x at 1,000),
#    MLP and CNN, with the CPU figure beside it for the same jobs.
# Everything it prints also lands in OUT_DIR (default: $OUT, else ./gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check}}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python -m pytest -q tests -k "cuda or gpu" 2>&1 | tail -15 | tee "$out/tests.txt"
python benchmarks/bench_trainer.py --device cuda --pending 1 10 100 1000 --models mlp cnn \
    --backends sequential batched --max-jobs 2000 2>&1 | tee "$out/trainer_cuda.txt"
