#!/usr/bin/env bash
# One GPU, under 8 minutes: the GPU plan's predicted peak memory and step time against a real step of each
# stage on the 7B architecture (random weights from its config; nothing downloaded), each stage in a fresh process.
#   bash bench/gpu_check.sh              # on a GPU machine
#   bash bench/gpu_check.sh --dry-run    # on a CPU: the same code on the tiny architecture (nothing compared)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
ARCH=7b
[ "${1:-}" = "--dry-run" ] && ARCH=tiny
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
start=$(date +%s)
results=()
printf '%-14s %14s %14s %12s %12s %8s\n' stage "pred GiB" "meas GiB" "pred s" "meas s" "MFU"
for stage in vla-train-4 vla-train-32 sft eval; do
  line=$(timeout 110 "$PY" bench/gpu_check.py --stage "$stage" --arch "$ARCH" "${@:2}" 2>/tmp/gpu_check_$stage.err \
    | grep '^RESULT ' | tail -1)
  if [ -z "$line" ]; then
    why=$(grep -m1 -o 'out of memory' /tmp/gpu_check_$stage.err || tail -1 /tmp/gpu_check_$stage.err)
    printf '%-14s failed: %s\n' "$stage" "$why"
    results+=("$stage:failed")
    continue
  fi
  echo "${line#RESULT }" | "$PY" -c '
import json, sys
r = json.loads(sys.stdin.read())
print(f"{r[\"stage\"]:<14} {r[\"predicted_gib\"]:14.1f} {r[\"measured_gib\"]:14.1f} {r[\"predicted_step_s\"]:12.3f} "
      f"{r[\"measured_step_s\"]:12.3f} {r[\"utilisation_measured\"]:8.0%}")'
  results+=("$stage:$(echo "${line#RESULT }" | "$PY" -c 'import json,sys; r=json.loads(sys.stdin.read()); print(f"{r[\"measured_gib\"]/max(r[\"predicted_gib\"],1e-9):.2f}")')")
done
echo "gpu check ($ARCH, $(( $(date +%s) - start )) s): measured / predicted peak memory per stage: ${results[*]}"
