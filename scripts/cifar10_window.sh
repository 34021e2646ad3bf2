#!/usr/bin/env bash
# usage: bash scripts/cifar10_window.sh first|second [--dry-run] [--budget S] [--minutes M] [--config NAME]
#
# CIFAR-10 on all 50,000 training images in one GPU window, in two device calls made one right after the
# other (each call carries at most 64 MiB; the data set packs into two parts: scripts/cifar10_parts.py).
#
#   bash scripts/cifar10_window.sh first  [--dry-run] [--budget SECONDS]
#        carried: .cifar-parts/part1 and .whl. Keeps part1 outside the work tree (/tmp/spikeep_window), so
#        the next call finds it while the machine is warm; installs the wheels; records the GPU, driver,
#        torch, CUDA, cuDNN and Triton versions; runs the CUDA tests and analysis/bench_gpu.py with what is
#        left of BUDGET seconds (default 300). Report: $OUT/window_first.tgz.
#   bash scripts/cifar10_window.sh second [--dry-run] [--minutes M] [--config TOML]
#        carried: .cifar-parts/part2 and .whl. Joins part1 and part2 (join_cifar10.py checks every array's
#        sha256) and trains CONFIG (default cifar10_window, spikeep/config/shipped/cifar10_window.toml) on all 50,000 images for M minutes
#        (default: the config's train.minutes) with a final evaluation of the 10,000 test images. If part1 is
#        gone (the machine was released between the calls), it says so and trains on what part2 alone holds
#        (18,000 random training images, the whole test set). Report: $OUT/window_second.tgz (run folder
#        files, weights_fp16.pt, the log).
#
# --dry-run: the same steps on the CPU, for CI: Triton's interpreter, a small ConvNet, parts made from a
# small pack (PARTS, default .cifar-parts), a local report folder (OUT, default ./window_report).
# Prepare on the CPU: python scripts/cifar10_parts.py pack .cifar-parts (~5 min), and the wheels:
#   pip wheel --no-deps norse==1.1.0 -w .whl && pip download --no-deps -d .whl nir nirtorch
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
shift || true
DRY=0; BUDGET=300; MINUTES=""; CONFIG=cifar10_window
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget) BUDGET=$2; shift ;;
    --minutes) MINUTES=$2; shift ;;
    --config) CONFIG=$2; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cifar10_window.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$MODE" in
  first|second) ;;
  -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: bash scripts/cifar10_window.sh first|second [--dry-run] (see --help)" >&2; exit 2 ;;
esac
START=$(date +%s)
PARTS=${PARTS:-.cifar-parts}
STASH=${WINDOW_STASH:-/tmp/spikeep_window}   # outside the work tree: kept while the machine stays warm
DEST=${OUT:-./window_report}
REPORT=$STASH/report_$MODE
mkdir -p "$STASH" "$REPORT" "$DEST"
say() { echo "$*" | tee -a "$REPORT/summary.txt"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
pack_report() { tar czf "$DEST/window_$MODE.tgz" -C "$STASH" "report_$MODE"; }

if [ -d .whl ] && ! python3 -c "import norse" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  DEVICE=cpu
  # a small ConvNet through the same engine and rules, a few hundred images, short phases
  SETS=(--set "model.channels=[4,4,4,4]" --set train.batch_size=8 --set dynamics.T1=6 --set dynamics.T2=3
        --set dynamics.engine=triton --set dynamics.precision=strict --set dynamics.tol_every=3
        --set data.subset=320 --set data.test_subset=32 --set train.eval_batch_size=32 --set train.threads=1)
else
  DEVICE=cuda
  SETS=()
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU (nvidia-smi)"
  python3 -c "import torch, triton; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version(), '| triton', triton.__version__)"
} > "$REPORT/versions.txt" 2>&1
say "== cifar10_window $MODE (dry run: $DRY) on $(head -1 "$REPORT/versions.txt")"

stage() {  # stage NAME SECONDS CMD...: at most SECONDS, never past the budget; output in REPORT/NAME.log
  local name=$1 t=$2; shift 2
  local l; l=$(left); (( t > l - 5 )) && t=$(( l - 5 ))
  if (( t < 10 )); then say "== $name: skipped (budget)"; return; fi
  local t0; t0=$(date +%s)
  timeout "$t" "$@" > "$REPORT/$name.log" 2>&1
  say "== $name: exit $? in $(( $(date +%s) - t0 )) s (limit $t s)"
  tail -n 5 "$REPORT/$name.log" | tee -a "$REPORT/summary.txt"
  pack_report
}

if [ "$MODE" = first ]; then
  if [ -f "$PARTS/part1/manifest.json" ]; then
    rm -rf "$STASH/part1" && cp -r "$PARTS/part1" "$STASH/part1"
    say "part1 kept in $STASH/part1 ($(du -sm "$STASH/part1" | cut -f1) MiB) for the second call"
  else
    say "part1 not carried ($PARTS/part1/manifest.json missing): the second call will train on part2 alone"
  fi
  if [ "$DRY" = 1 ]; then  # no GPU: they skip; the engine's interpreter tests are in the suite already
    stage cuda_tests 60 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
  else
    stage cuda_tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_engine.py
  fi
  if [ "$DRY" = 1 ]; then
    say "== bench: skipped (dry run: no GPU)"
  else
    stage bench 200 python3 analysis/bench_gpu.py --batches 512,128 --full-at 512 --steps 30 --repeats 3 \
      --iterations 2 --json "$REPORT/bench_gpu.json"
  fi
  say "total $(( $(date +%s) - START )) s"
  pack_report
  exit 0
fi

# second call: the data, then the run
NPZ=$STASH/cifar10.npz
P1=""
for c in "$STASH/part1" "$PARTS/part1"; do [ -f "$c/manifest.json" ] && P1=$c && break; done
if [ ! -d "$PARTS/part2" ]; then
  say "part2 not carried ($PARTS/part2): nothing to train on"; pack_report; exit 3
fi
DATA=full
if [ -n "$P1" ] && python3 scripts/cifar10_parts.py join "$P1" "$PARTS/part2" "$NPZ" >> "$REPORT/data.log" 2>&1; then
  say "joined $P1 + $PARTS/part2 -> $NPZ (every array's sha256 checked)"
else
  DATA=part2
  if [ -z "$P1" ]; then
    say "part1 is not here (the machine was released between the two calls): FALLBACK, training on part2 alone"
  else
    say "the join failed (see data.log): FALLBACK, training on part2 alone"
  fi
  python3 scripts/cifar10_parts.py partial "$PARTS/part2" "$NPZ" 2>&1 | tee -a "$REPORT/summary.txt"
fi
RUN=$STASH/run
rm -rf "$RUN"
ARGS=("$CONFIG" --device "$DEVICE" --set data.npz="$NPZ" --set data.subset=0 --run-dir "$RUN" --no-progress "${SETS[@]}")
[ -n "$MINUTES" ] && ARGS+=(--set train.minutes="$MINUTES")
M=$(python3 -c "import sys; from spikeep.training.validation import load_config; print(load_config(sys.argv[1], sys.argv[2:]).train.minutes)" \
    "$CONFIG" ${MINUTES:+train.minutes=$MINUTES})
HARD=$(python3 -c "print(int(float('$M') * 60 + 120))")   # the run's own deadline + setup; a guard only
say "training $CONFIG on the $DATA data for $M min (hard stop after $HARD s)"
timeout --signal=TERM "$HARD" python3 -m spikeep.cli train "${ARGS[@]}" > "$REPORT/train_console.log" 2>&1
say "train: exit $?"
grep -E "epoch|time budget|test accuracy|cut" "$REPORT/train_console.log" | tail -n 30 | tee -a "$REPORT/summary.txt"
for f in config.json metrics.csv summary.json env.json plan.json train.log curves.png weights_fp16.pt; do
  [ -f "$RUN/$f" ] && cp "$RUN/$f" "$REPORT/"
done
echo "$DATA" > "$REPORT/data.txt"
say "total $(( $(date +%s) - START )) s"
pack_report
