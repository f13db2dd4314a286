#!/usr/bin/env bash
# The training runs behind results/ablation/README.md, one after the other on the 2-core CPU.
# Each ablation changes one thing against the 128 px / 3 epoch baseline (same seed, same split).
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${DATA:-../shared/data/ham10000}
run() { local out=$1; shift; [ -f "$out/metrics.json" ] || /usr/bin/time -f "%e s" -o "$out.time" python -m train --data "$data" --out "$out" "$@" > "$out.log" 2>&1; }
mkdir -p runs/ablation
base=(--config train/configs/cpu-finetune.yaml --image-size 128 --epochs 3 --no-explanations)
run runs/ablation/b0-128                   "${base[@]}"
run runs/ablation/b0-128-random            "${base[@]}" --no-pretrained
run runs/ablation/lite0-128                "${base[@]}" --architecture efficientnet_lite0
