#!/usr/bin/env bash
# Issue 13's GPU measurement in one command on the GPU machine (the `device` tool, whose
# python3 is 3.12 with torch but without albumentations, captum or a recent timm).
# Prepare here, once (both folders are git-ignored; together about 52 MB of the 64 MiB carry):
#   ../shared/tools/device-wheels.sh .whl
#   mkdir -p .device/ham10000 && cp -r ../shared/data/ham10000/{HAM10000_metadata.csv,images} .device/ham10000/
# Then run `bash benchmarks/gpu.sh` there with carry [".whl", ".device"]; the table comes back
# through $OUT (copy it to results/training_throughput.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m benchmarks.training_throughput --data .device/ham10000 --device cuda --image-size 224 \
  --batch-size 256 --workers 15 --epochs 4 --out "${OUT:-results}/training_throughput.md"
