#!/usr/bin/env bash
# The CUDA path, checked in one go on a GPU machine; every figure goes to one JSON file.
#
# Steps (each one's exit status, seconds and output tail are recorded; a failing step does not
# stop the later ones, but makes the script exit 1 and the JSON say "ok": false):
#   env      torch, CUDA, the GPUs (nvidia-smi when present)
#   parity   every stage at toy scale on the digits, CUDA against the CPU, TF32 off:
#            experts (SGD, GSAM), distill (mtt ftd datm mdatm pad x unrolled adjoint), eval,
#            baselines, INFER's teachers, INFER; with 2+ GPUs also experts and adjoint
#            distillation under torchrun (NCCL) against one process. Tolerances and why:
#            tests/parity.py. It is what `pytest -m gpu tests/test_gpu.py` runs, without pytest.
#   pytest   the other `gpu` tests (tests/test_adjoint.py, tests/test_augment.py), when pytest
#            is installed; otherwise recorded as skipped, with the reason
#   nccl     with 2+ GPUs: torchrun --nproc_per_node 2, one all-reduce over NCCL, every rank
#            checks the sum (on --device cpu: the same over gloo, as a dry run)
#   speed    benchmarks/speed.py on the device: one unrolled iteration, official-style student
#            vs ours, CIFAR-10 shape, IPC 1 / 50 steps and IPC 10 / 30 steps, DSA on
#   memory   benchmarks/memory.py on the device: time and peak CUDA memory of unrolled and
#            adjoint iterations (CIFAR-10 IPC 10, 10 / 30 / 80 steps) and the shipped CIFAR-100
#            IPC 10 / 50 and Tiny ImageNet IPC 10 configs in adjoint mode, beside the estimate
#   cifar    only with --with-cifar or --cifar-only: benchmarks/cifar10_gpu.sh, MTT at CIFAR-10
#            IPC 1 on the subset with a reduced official budget (10 experts x 15 epochs, 1,000
#            iterations, 5 evaluation runs of 1,000 epochs, random subset beside it)
#
# Time on one GPU: the default steps are sized for under 8 minutes (estimate: parity 2-3 min,
# of which the CPU halves are most; pytest under 1 min; speed about 1 min; memory 2-3 min). The
# cifar step is separate because it would not fit beside them: estimated 4-8 minutes on an
# H100 (10 x 15 expert epochs on 20,000 images, 1,000 iterations of 50 student steps, 10
# evaluation networks of 1,000 epochs). None of these times has been measured: no GPU was
# available when this script was written (benchmarks/RESULTS.md section 13).
#
# Usage (repository root or anywhere; the machine's own CUDA PyTorch, PYTHONPATH=src, nothing
# installed):
#   benchmarks/gpu_check.sh                                   # -> $OUT/gpu_check.json or ./gpu_check.json
#   benchmarks/gpu_check.sh --out /path/gpu_check.json --with-cifar --cifar-root DIR
#   benchmarks/gpu_check.sh --cifar-only --cifar-root DIR     # the CIFAR-10 run alone
#   benchmarks/gpu_check.sh --device cpu --tiny               # dry run of the plumbing on a CPU
# --tiny shrinks every step (a few parity comparisons, tiny benchmark cells, a tiny CIFAR
# budget) so that the whole script runs in a few minutes on a CPU; its figures mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=$(pwd)

DEVICE=cuda
TINY=0
CIFAR=0       # 0: no cifar step; 1: add it; 2: only it
CIFAR_ROOT=""
OUT_FILE="${OUT:-.}/gpu_check.json"
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --out) OUT_FILE=$2; shift 2 ;;
    --with-cifar) CIFAR=1; shift ;;
    --cifar-only) CIFAR=2; shift ;;
    --cifar-root) CIFAR_ROOT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-$(command -v python || command -v python3)}  # the machine's own interpreter
[[ -z $PY ]] && { echo "gpu_check.sh: no python or python3 on PATH (set PYTHON=...)" >&2; exit 2; }
export PYTHON=$PY
export PYTHONPATH="$ROOT_DIR/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::UserWarning}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
STEPS="$WORK/steps.jsonl"
: > "$STEPS"
FAILED=0

# record NAME STATUS RC SECONDS LOG: one JSON line per step (status ok | failed | skipped)
record() {
  "$PY" - "$@" >> "$STEPS" <<'PY'
import json, sys
name, status, rc, seconds, log = sys.argv[1:6]
tail = open(log, errors="replace").read()[-4000:] if log and log != "-" else ""
print(json.dumps({"step": name, "status": status, "rc": int(rc), "seconds": int(seconds),
                  "tail": tail}))
PY
}

# step NAME CMD...: run CMD, log to $WORK/NAME.log, record its status; never exits
step() {
  local name=$1; shift
  local log="$WORK/$name.log" t0 rc
  echo "== $name: $*" >&2
  t0=$(date +%s)
  "$@" > "$log" 2>&1
  rc=$?
  local secs=$(( $(date +%s) - t0 ))
  if [[ $rc -eq 0 ]]; then
    record "$name" ok "$rc" "$secs" "$log"
    echo "   $name: ok ($secs s)" >&2
  else
    FAILED=1
    record "$name" failed "$rc" "$secs" "$log"
    echo "   $name: FAILED (exit $rc, $secs s); last lines:" >&2
    tail -n 20 "$log" | sed 's/^/     /' >&2
  fi
}

skip() {  # skip NAME REASON
  local log="$WORK/$1.log"
  echo "$2" > "$log"
  record "$1" skipped 0 0 "$log"
  echo "== $1: skipped ($2)" >&2
}

# ---------------------------------------------------------------- env
step env "$PY" - "$DEVICE" "$WORK/env.json" <<'PY'
import json, platform, shutil, subprocess, sys
import torch
device, out = sys.argv[1], sys.argv[2]
env = {"python": platform.python_version(), "torch": torch.__version__,
       "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
       "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
       if torch.cuda.is_available() else [], "device": device, "cpu": platform.processor()}
if shutil.which("nvidia-smi"):
    env["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
        capture_output=True, text=True).stdout.strip()
json.dump(env, open(out, "w"), indent=1)
print(json.dumps(env))
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit(f"--device {device}: torch {torch.__version__} sees no CUDA device "
             "(use --device cpu --tiny for a dry run)")
PY
if grep -q '"status": "failed"' "$STEPS"; then
  echo "gpu_check.sh: no usable device; stopping" >&2
  CIFAR=2; DEVICE_OK=0
else
  DEVICE_OK=1
fi
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")

if [[ $DEVICE_OK -eq 1 && $CIFAR -ne 2 ]]; then
  # -------------------------------------------------------------- parity
  ONLY=()
  [[ $TINY -eq 1 ]] && ONLY=(--only experts_sgd eval distill_mtt_adjoint infer)
  step parity "$PY" tests/parity.py --device "$DEVICE" "${ONLY[@]}" --out "$WORK/parity.json"

  # -------------------------------------------------------------- pytest (other gpu tests)
  if "$PY" -c "import pytest" 2>/dev/null; then
    step pytest "$PY" -m pytest -q -p no:cacheprovider -m gpu tests \
      --ignore=tests/test_gpu.py -o addopts="-ra"
  else
    skip pytest "pytest is not installed here: the gpu tests of tests/test_adjoint.py and tests/test_augment.py did not run (test_gpu.py's comparisons ran as the parity step)"
  fi

  # -------------------------------------------------------------- nccl
  if [[ $DEVICE == cuda* && $GPUS -ge 2 ]] || [[ $DEVICE == cpu && $TINY -eq 1 ]]; then
    step nccl "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 \
      tests/parity.py --allreduce-smoke --out "$WORK/nccl.json"
  else
    skip nccl "$GPUS CUDA device(s): the 2-process NCCL smoke test needs 2"
  fi

  # -------------------------------------------------------------- speed
  if [[ $TINY -eq 1 ]]; then
    SPEED=(--width 8 --steps-scale 0.04 --ipc 1 --iterations 1)
  else
    SPEED=(--iterations 3)
  fi
  # the CPU allocator settings do not touch CUDA memory: one official-style run suffices
  step speed "$PY" benchmarks/speed.py --device "$DEVICE" --dsa-modes on "${SPEED[@]}" \
    --impls official ours --out "$WORK/speed.json"

  # -------------------------------------------------------------- memory
  if [[ $TINY -eq 1 ]]; then
    MEM=(--cells tiny --iterations 2)
  else
    MEM=(--cells steps official --iterations 3 --only cifar10_ipc10_steps10
         cifar10_ipc10_steps30 cifar10_ipc10_steps80 cifar100_ipc10 cifar100_ipc50 tiny_ipc10)
  fi
  step memory "$PY" benchmarks/memory.py --device "$DEVICE" "${MEM[@]}" --out "$WORK/memory.json"
fi

# ---------------------------------------------------------------- cifar
if [[ $DEVICE_OK -eq 1 && $CIFAR -ge 1 ]]; then
  if [[ -z $CIFAR_ROOT ]]; then
    for d in ../shared/data/cifar10-subset shared/data/cifar10-subset; do
      [[ -d $d ]] && CIFAR_ROOT=$d && break
    done
  fi
  if [[ -n $CIFAR_ROOT && -d $CIFAR_ROOT ]]; then
    BUDGET=reduced
    [[ $TINY -eq 1 ]] && BUDGET=tiny
    step cifar env DEVICE="$DEVICE" BUDGET="$BUDGET" WORK_DIR="$WORK/cifar_runs" \
      benchmarks/cifar10_gpu.sh "$CIFAR_ROOT" "$WORK/cifar.json"
  else
    FAILED=1
    echo "no CIFAR-10 subset at '${CIFAR_ROOT:-../shared/data/cifar10-subset or shared/data/cifar10-subset}'" \
      > "$WORK/cifar.log"
    record cifar failed 2 0 "$WORK/cifar.log"
    echo "== cifar: FAILED (no data; pass --cifar-root DIR)" >&2
  fi
fi

# ---------------------------------------------------------------- one file
mkdir -p "$(dirname "$OUT_FILE")"
"$PY" - "$WORK" "$OUT_FILE" "$DEVICE" "$TINY" <<'PY'
import json, sys
from pathlib import Path
work, out, device, tiny = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines()]
report = {"device": device, "tiny": tiny, "steps": {s["step"]: s for s in steps}}
for name in ("env", "parity", "nccl", "speed", "memory", "cifar"):
    path = work / f"{name}.json"
    if path.is_file():
        report[name] = json.loads(path.read_text())
if "parity" in report:  # the headline: worst relative difference per comparison
    report["parity_summary"] = {
        stage: {"ok": e["ok"], "worst_rel": max((r.get("rel", 0.0) for r in e.get("rows", [])),
                                                default=None),
                "error": e.get("error")}
        for stage, e in report["parity"]["stages"].items()}
report["ok"] = all(s["status"] != "failed" for s in steps)
out.write_text(json.dumps(report, indent=1) + "\n")
width = max(len(s["step"]) for s in steps)
for s in steps:
    print(f"{s['step']:<{width}}  {s['status']:<7}  {s['seconds']:>5} s", file=sys.stderr)
print(f"gpu_check: {'ok' if report['ok'] else 'FAILED'}; figures in {out}", file=sys.stderr)
PY
COLLECT=$?
rm -rf "$WORK"
[[ $COLLECT -ne 0 ]] && exit 1
exit $FAILED
