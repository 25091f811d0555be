#!/usr/bin/env bash
# MTT on the CIFAR-10 subset at IPC 1 with a reduced official budget, on a CUDA machine.
#
# Budget (stated beside the published 46.3 +- 0.8 in benchmarks/RESULTS.md section 11):
#   experts     10 x 15 epochs (official 100 x 50), plain SGD lr 0.01, batch 256, on the whole
#               subset (2,000 images per class), per-epoch test on the 1,000 test images
#   distill     the shipped cifar10/mtt_ipc1 values (N = 50, M = 2, T+ = 2, lr_img 100,
#               lr_lr 1e-7, alpha_0 0.01, whole set every step), 1,000 iterations (official
#               5,000), no evaluation while distilling (the last set is the result)
#   evaluation  classic protocol, 5 runs x 1000 epochs, learned lr; random subset beside it
# Everything is written to one JSON file (the methods.py report: accuracies, config, seconds).
#
# Usage (from anywhere; uses the machine's own CUDA PyTorch and this tree's src/):
#   benchmarks/cifar10_gpu.sh [DATA_ROOT] [OUT_JSON]
#   benchmarks/cifar10_gpu.sh ../shared/data/cifar10-subset benchmarks/results/cifar10_gpu_mtt_ipc1.json
# Environment (benchmarks/gpu_check.sh sets them for its dry run on a CPU):
#   DEVICE=cuda (default) | cpu; BUDGET=reduced (default, the budget above) | tiny (2 experts
#   x 3 epochs on 20 images per class, 2 iterations, 1 run x 2 epochs: checks the plumbing)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-../shared/data/cifar10-subset}
OUT=${2:-benchmarks/results/cifar10_gpu_mtt_ipc1.json}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-$(command -v python || command -v python3)}
BUDGET=${BUDGET:-reduced}
if [[ $DEVICE == cuda* ]]; then
  "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else
    'benchmarks/cifar10_gpu.sh needs a CUDA device; torch ' + torch.__version__ + ' sees none')"
fi
case $BUDGET in
  reduced) THREADS=4
           SIZE=(--train-per-class 2000 --experts 10 --expert-epochs 15 --expert-batch 256
                 --test-samples 1000 --max-start 2 --syn-steps 50 --batch-syn 10
                 --iterations 1000 --runs 5 --epochs 1000) ;;
  tiny)    THREADS=1
           SIZE=(--train-per-class 20 --experts 2 --expert-epochs 3 --expert-batch 64
                 --test-samples 100 --max-start 1 --syn-steps 2 --batch-syn 10
                 --iterations 2 --runs 1 --epochs 2) ;;
  *) echo "BUDGET=$BUDGET: use reduced or tiny" >&2; exit 2 ;;
esac
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} "$PY" benchmarks/methods.py --dataset cifar10 \
    --root "$ROOT" --methods mtt --ipc 1 "${SIZE[@]}" --random-for mtt --threads "$THREADS" \
    --work "${WORK_DIR:-runs/gpu}" --out "$OUT" device="$DEVICE"
