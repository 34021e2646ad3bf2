#!/usr/bin/env bash
# One command for a CUDA machine: everything a GPU report needs, in one folder.
#
#   scripts/cuda_report.sh OUT_DIR [CONFIG] [MINUTES]
#
# 1. the CUDA tests (tests/test_cuda.py), 2. analysis/bench_gpu.py (paper ConvNet, batch 128, every
# precision, against the paper code's method), 3. analysis/precision.py on the GPU (TF32 rows included),
# 4. training CONFIG (default spikeep/config/shipped/cifar10_ep_symmetric_ce.toml) for at most MINUTES (default 8) of
# this invocation, into OUT_DIR/run: a later invocation with the same OUT_DIR resumes it (--resume), so
# a long run goes on across jobs limited to 10 minutes. Needs CIFAR-10 under $SPIKEEP_DATA.
set -uo pipefail
usage="usage: scripts/cuda_report.sh OUT_DIR [CONFIG] [MINUTES]

  OUT_DIR   folder for the report (env.txt, test_cuda.log, bench_gpu.json/.txt, precision/, run/);
            an existing one resumes its training run
  CONFIG    training config (default spikeep/config/shipped/cifar10_ep_symmetric_ce.toml)
  MINUTES   at most this many minutes of training in this invocation (default 8)"
case "${1:-}" in
  -h|--help) echo "$usage"; exit 0 ;;
  "") echo "$usage" >&2; exit 2 ;;
  -*) echo "unknown option $1" >&2; echo "$usage" >&2; exit 2 ;;
esac
out=$1
config=${2:-spikeep/config/shipped/cifar10_ep_symmetric_ce.toml}
minutes=${3:-8}
mkdir -p "$out"
cd "$(dirname "$0")/.."
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
} > "$out/env.txt" 2>&1
if [ ! -e "$out/.tests_done" ]; then
  python -m pytest -q tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log" && touch "$out/.tests_done"
  python analysis/bench_gpu.py --device cuda --batches 128 --full-at 128 --steps 50 --repeats 3 \
      --json "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.txt"
  python analysis/precision.py --device cuda --out "$out/precision" 2>&1 | tail -n 20
fi
if [ -f "$out/run/checkpoint.pt" ]; then
  args=(--resume "$out/run")
else
  args=("$config" --run-dir "$out/run" --device cuda)
fi
timeout --signal=TERM "$((minutes * 60))" spikeep train "${args[@]}" --no-progress 2>&1 | tee -a "$out/train_console.log"
status=${PIPESTATUS[0]}
if [ "$status" = 124 ]; then
  echo "stopped after $minutes minutes: run the same command again to resume from the last checkpoint"
fi
exit 0
