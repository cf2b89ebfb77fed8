#!/usr/bin/env bash
# The test command: lint, then the CPU suite (reference path + Triton kernels under the interpreter).
# `pytest`, not `python -m pytest`: the latter puts the repo root on sys.path, which would import the source
# tree instead of the installed package (whose `hf_adasplash.kernels` maps the top-level kernels/ folder).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Without CUDA the kernels run through Triton's interpreter and the GPU tests are deselected (not skipped).
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    marker="gpu or not gpu"
else
    export TRITON_INTERPRET=1
    marker="not gpu"
fi
pytest -q -p no:cacheprovider --timeout 900 -m "$marker" "$@"
