#!/usr/bin/env bash
# One GPU window, prepared on the CPU: CUDA tests, the engine bench (+ profile), the precision table on
# CUDA and a short CIFAR-10 training of the fast candidate recipe, every stage under its own timeout so
# the whole stays inside BUDGET seconds. Writes a small report folder to $OUT (or ./gpu_report).
#   bash scripts/gpu_check.sh [BUDGET_SECONDS]        (wheels in .whl/, CIFAR-10 subset in .cifar-sub/)
case "${1:-}" in
  -h|--help) echo "usage: bash scripts/gpu_check.sh [BUDGET_SECONDS]"; sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;;
  -*) echo "unknown option $1 (--help for usage)" >&2; exit 2 ;;
esac
set -uo pipefail
BUDGET=${1:-420}
START=$(date +%s)
OUTDIR=/tmp/gpu_report   # tarred into ${OUT:-.}/gpu_report.tgz after every stage (few files come back)
DEST=${OUT:-.}
mkdir -p "$OUTDIR"
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
stage() {  # stage NAME SECONDS CMD...: at most SECONDS, never past the budget
  local name=$1 t=$2; shift 2
  local l; l=$(left); (( t > l - 5 )) && t=$(( l - 5 ))
  if (( t < 10 )); then echo "== $name: skipped (budget)" | tee -a "$OUTDIR/summary.txt"; return; fi
  echo "== $name (<= ${t}s, $(left)s left)" | tee -a "$OUTDIR/summary.txt"
  local t0; t0=$(date +%s)
  timeout "$t" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc $rc in $(( $(date +%s) - t0 ))s" | tee -a "$OUTDIR/summary.txt"
  grep -v -i "warn" "$OUTDIR/$name.log" | tail -n 40
  tar czf "$DEST/gpu_report.tgz" -C /tmp gpu_report
}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version(), 'triton', triton.__version__)"
} > "$OUTDIR/versions.txt" 2>&1
cat "$OUTDIR/versions.txt"

stage cuda_tests 100 python3 -m pytest -q -m "" -p no:cacheprovider tests/test_cuda.py tests/test_engine.py  # -m "": the slow ones too
stage bench 170 python3 analysis/bench_gpu.py --batches 512,128,2048 --full-at 512 --steps 30 --repeats 3 \
  --iterations 2 --profile --json "$OUTDIR/bench_gpu.json"
NPZ=$PWD/.cifar-sub/cifar10_sub.npz
stage precision 60 python3 analysis/precision.py --device cuda --impl triton --npz "$NPZ" --out "$OUTDIR/precision"
if [ -f "$NPZ" ]; then
  stage train_fast $(( $(left) - 15 )) python3 -m spikeep.cli train cifar10_fast --device cuda \
    --set data.npz="$NPZ" --set train.epochs=30 --run-dir /tmp/run_fast --no-progress
  cp /tmp/run_fast/metrics.csv "$OUTDIR/fast_metrics.csv" 2>/dev/null
  cp /tmp/run_fast/env.json "$OUTDIR/fast_env.json" 2>/dev/null
  cp /tmp/run_fast/train.log "$OUTDIR/fast_train.log" 2>/dev/null
fi
echo "total $(( $(date +%s) - START ))s" | tee -a "$OUTDIR/summary.txt"
tar czf "$DEST/gpu_report.tgz" -C /tmp gpu_report
