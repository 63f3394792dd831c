#!/usr/bin/env bash
# GPU figures on one CUDA machine in one run of at most 8 minutes (bench/gpu.py says what it
# measures): cache rows/s and MFU of all-MiniLM-L6-v2 and all-mpnet-base-v2 in bfloat16 with the
# torch backend (and ONNX Runtime's CUDA provider when onnxruntime-gpu is installed), then
# SmolLM2-135M top-k caching in tokens/s. Then the CUDA runner tests. Nothing is downloaded:
# the models come from the venv's packages (a missing one is skipped, named on its line).
#
# Run from the repository root: bash bench/gpu.sh [bench/gpu.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 420 python bench/gpu.py "$@"
timeout 60 python -m pytest -q -p no:cacheprovider tests/test_runner.py tests/test_onnx_backend.py -k cuda
