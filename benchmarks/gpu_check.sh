#!/usr/bin/env bash
# One-shot GPU check (≤ 8 min on one GPU): train step fp32 eager / bf16 / +compile / +Triton kernels
# (LightningDiT-XL/1, REPA on, the trainer's own step), peak memory, sampler at 250 steps with CFG,
# DINOv3-B/16 extraction at 256² (random weights). Writes benchmarks/results/gpu.{json,md}.
# On a machine without a GPU it runs the tiny shapes to check itself, into /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  exec timeout 480 $PY -m repackctl.bench.gpu_check --out benchmarks/results/gpu.json --md benchmarks/results/gpu.md "$@"
fi
echo "no GPU here: a self-check on the tiny shapes (figures say nothing about a GPU)" >&2
exec timeout 480 $PY -m repackctl.bench.gpu_check --out /tmp/gpu_check.json --md /tmp/gpu_check.md --repeats 2 "$@"
