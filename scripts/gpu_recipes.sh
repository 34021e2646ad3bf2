#!/usr/bin/env bash
# Second GPU call: the CUDA tests, then CIFAR-10 recipes trained side by side on the carried subset for
# BUDGET seconds (each its own process; they time-slice the GPU), metrics tarred into $OUT.
#   bash scripts/gpu_recipes.sh [BUDGET_SECONDS]
case "${1:-}" in
  -h|--help) echo "usage: bash scripts/gpu_recipes.sh [BUDGET_SECONDS]"; sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;;
  -*) echo "unknown option $1 (--help for usage)" >&2; exit 2 ;;
esac
set -uo pipefail
BUDGET=${1:-240}
START=$(date +%s)
R=/tmp/gpu_recipes; mkdir -p $R; DEST=${OUT:-.}
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py > $R/cuda_tests.log 2>&1; echo "cuda tests rc $?"; tail -3 $R/cuda_tests.log
NPZ=$PWD/.cifar-sub/cifar10_sub.npz
T=$(( BUDGET - ($(date +%s) - START) - 10 ))
run() {  # run NAME OVERRIDES...
  local name=$1; shift
  timeout $T python3 -m spikeep.cli train cifar10_fast --device cuda --set data.npz="$NPZ" \
    --run-dir $R/$name --no-progress "$@" > $R/$name.out 2>&1 &
}
# the paper's schedule (T1 250, T2 25, zeros) in bf16_incremental; the fast candidate without tolerances
run paper_schedule --set dynamics.tol=0 --set dynamics.warm_start=none
run t60_warm --set dynamics.tol=0 --set dynamics.T1=60 --set dynamics.T2=15
wait
for d in $R/*/; do n=$(basename $d); cp $d/metrics.csv $R/$n.metrics.csv 2>/dev/null; cp $d/train.log $R/$n.train.log 2>/dev/null; done
grep -h "epoch" $R/*.train.log | head -40
tar czf $DEST/gpu_recipes.tgz --exclude='*.pt' --exclude='*.h5' -C /tmp gpu_recipes
echo "total $(( $(date +%s) - START ))s"
