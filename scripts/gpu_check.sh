#!/usr/bin/env bash
# Checks for a lent CUDA machine (never CI), in one run: the diagnosis of bench.py gpu (cores, affinity and CPU
# quota; the bare kernels in 1, 4, 12 threads; stall ratios on a long-epoch store and on S16 if given, batch 256 and
# 512, bf16 + channels_last, loader at 4, 8, 12, 16 threads and with worker processes), then AMP / channels_last
# speed-ups (bench.py train), a bf16 training run, torchrun over NCCL, and prediction on the GPU.
# Results go to $OUT (default /tmp/gpu_check). S16: a prepared 16-class store (prepare_data.py --classes ...).
#   OUT=/tmp/g S16=data/s16 bash scripts/gpu_check.sh
#   ONLY=diagnose OUT=/tmp/g bash scripts/gpu_check.sh          # the diagnosis alone
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
PY=${PY:-python3}
PER_CLASS=${PER_CLASS:-5000}  # 80,000 drawings: 312 batches of 256 an epoch, 156 of 512
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $*"; }
step machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, numba, numpy; print('torch', torch.__version__, 'numba', numba.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
nproc
step prepare synthetic store
$PY prepare_data.py --input synthetic --output "$OUT/store" --synthetic-per-class "$PER_CLASS" | tail -n 2
step diagnose
$PY bench.py gpu --data "$OUT/store" ${S16:+--data2 "$S16"} ${GPU_ARGS:-} 2>&1 | tee "$OUT/diagnose.txt"
if [ "${ONLY:-}" = diagnose ]; then rm -rf "$OUT/store"; exit 0; fi
step bench train
$PY bench.py train --model resnet34 --size 128 --sweep --data "$OUT/store" ${BENCH_ARGS:-} 2>&1 | grep -v "it/s\]" | tee "$OUT/bench_train.txt"
step train bf16
$PY train.py --config configs/demo.yaml --data "$OUT/store" --output "$OUT/demo" --image-size 128 --batch-size 256 \
  --samples-per-class 2000 --val-per-class 100 --workers 8 --amp --amp-dtype bf16 --no-progress ${TRAIN_ARGS:-} 2>&1 | tail -n 8
step torchrun nccl
torchrun --standalone --nproc_per_node=1 train.py --config configs/demo.yaml --data "$OUT/store" --output "$OUT/ddp" \
  --epochs 1 --no-progress --overwrite ${TRAIN_ARGS:-} 2>&1 | tail -n 4
step predict
$PY predict.py --checkpoint "$OUT/demo/best.pth" --input "$OUT/store" --split val --tta --amp bf16 --quiet \
  --output "$OUT/preds_val.csv" 2>&1 | tail -n 4
rm -rf "$OUT/store"
