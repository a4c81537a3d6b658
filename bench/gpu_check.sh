#!/usr/bin/env bash
# One GPU, under 8 minutes: the GPU plan's predicted peak memory and step time against a real step of each
# stage on the 7B architecture (random weights from its config; nothing downloaded), each stage in a fresh process.
#   bash bench/gpu_check.sh              # on a GPU machine
#   bash bench/gpu_check.sh --dry-run    # on a CPU: the same code on the tiny architecture (nothing compared)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
ARCH=7b
if [ "${1:-}" = "--dry-run" ]; then ARCH=tiny; shift; fi
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
start=$(date +%s)
results=()
printf '%-14s %14s %14s %12s %12s %8s\n' stage "pred GiB" "meas GiB" "pred s" "meas s" "MFU"
for stage in vla-train-4 vla-train-32 sft eval; do
  out=$(timeout 110 "$PY" bench/gpu_check.py --stage "$stage" --arch "$ARCH" "$@" 2>"/tmp/gpu_check_$stage.err")
  row=$(echo "$out" | grep '^ROW ' | tail -1)
  if [ -z "$row" ]; then
    why=$(grep -m1 -o 'out of memory' "/tmp/gpu_check_$stage.err" || tail -1 "/tmp/gpu_check_$stage.err")
    printf '%-14s failed: %s\n' "$stage" "$why"
    results+=("$stage=failed")
    continue
  fi
  echo "${row#ROW }"
  results+=("$stage=$(echo "$out" | grep '^RATIO ' | tail -1 | cut -d' ' -f2)")
done
echo "gpu check ($ARCH, $(( $(date +%s) - start )) s): measured / predicted peak memory per stage: ${results[*]}"
