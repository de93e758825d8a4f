#!/usr/bin/env bash
# The GPU benchmark: Network Dissection of a torchvision ResNet-50's layer4 over a
# Broden-format probe of 10,000 images (written once to $NEMAUDIT_BRODEN), images/s against a
# bare forward pass on the same device; then the sharded run on every visible GPU (NCCL).
# Runs on a CPU-only machine too (N=200 there, unless N is set).
#   bash benchmarks/gpu.sh            # N=10000 on a GPU machine
#   N=500 bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ -z "${N:-}" ]; then
  if [ "$GPUS" -gt 0 ]; then N=10000; else N=200; fi
fi
export NEMAUDIT_BRODEN=${NEMAUDIT_BRODEN:-/tmp/nemaudit-broden-$N}
$PY benchmarks/bench_gpu.py --n "$N" --root "$NEMAUDIT_BRODEN"
if [ "$GPUS" -gt 1 ]; then
  echo "--- sharded over $GPUS GPUs (torchrun, NCCL) ---"
  time $PY -m torch.distributed.run --nproc-per-node "$GPUS" --local-ranks-filter 0 -m nemaudit \
    dissect --model torchvision:resnet50 --weights random --layer layer4 \
    --probe "broden:$NEMAUDIT_BRODEN" --batch-size 128 --no-cache --show 0
fi
