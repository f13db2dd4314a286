#!/usr/bin/env bash
# The training-throughput measurement on a GPU machine, in one command (docs/results.md: Training
# throughput). Written for a machine whose python3 (3.12) has torch but lacks albumentations,
# captum and timm >= 1.0.31; prepare, on a machine with the repository and the data:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     -d .whl albumentations==2.0.8 albucore==0.0.24 simsimd stringzilla pydantic==2.14.3 pydantic-core==2.50.4 \
#     annotated-types typing-inspection captum==0.9.0 timm==1.0.31
#   mkdir -p .device/ham10000 && cp -r DATA/ham10000/{HAM10000_metadata.csv,images} .device/ham10000/
# (both folders are git-ignored), copy the working tree with them to the GPU machine and run
# `bash benchmarks/gpu.sh` there; the table is written to $OUT (or results/).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m benchmarks.training_throughput --data .device/ham10000 --device cuda --image-size 224 \
  --batch-size 256 --workers 15 --epochs 4 --out "${OUT:-results}/training_throughput.md"
