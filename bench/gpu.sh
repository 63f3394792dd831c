#!/usr/bin/env bash
# GPU figures on one CUDA machine in one run of at most 8 minutes (bench/gpu.py says what it
# measures): cache rows/s and MFU of all-MiniLM-L6-v2 and all-mpnet-base-v2 in bfloat16 with the
# torch backend (and ONNX Runtime's CUDA provider when onnxruntime-gpu is installed), then
# SmolLM2-135M top-k caching in tokens/s. Then the CUDA inference tests. Nothing is downloaded.
#
# Two ways to have distill's dependencies there:
# - .whl/ (from `python bench/gpu_wheels.py download`): the wheels the GPU image lacks are
#   installed into $DISTILL_GPU_SITE (default /tmp/distill-site), then distill itself from this
#   checkout, for the machine's own python3 (its CUDA torch and transformers);
# - else a .venv/ with the CUDA build of torch and distill installed.
# A teacher whose weights are not installed runs with random weights built from its config in
# bench/gpu_models/ (its line says so).
#
# Run from the repository root: bash bench/gpu.sh [bench/gpu.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  site=${DISTILL_GPU_SITE:-/tmp/distill-site}
  start=$SECONDS
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade \
    --target "$site" .
  # PYTHONSAFEPATH: no python3 puts the current folder first, where the checkout's distill/
  # (the package root alone) would shadow the installed package.
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
  echo "installed .whl/ and distill into $site in $((SECONDS - start)) s"
  python3 bench/gpu_wheels.py check
elif [ -f .venv/bin/activate ]; then
  . .venv/bin/activate
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 390 python3 bench/gpu.py "$@"
timeout 45 python3 -m pytest -q -p no:cacheprovider tests/test_inference.py tests/test_onnx_backend.py -k cuda
