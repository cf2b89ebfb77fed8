#!/usr/bin/env bash
# The test command: lint, then the CPU suite (reference path + Triton kernels under the interpreter).
# `pytest`, not `python -m pytest`: the latter puts the repo root on sys.path, which would import the source
# tree instead of the installed package (whose `hf_adasplash.kernels` maps the top-level kernels/ folder).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
export TRITON_INTERPRET=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# GPU tests (`-m gpu`) run on a CUDA machine; here they are deselected rather than reported as skips.
marker="not gpu"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && marker="gpu or not gpu"
pytest -q -p no:cacheprovider --timeout 900 -m "$marker" "$@"
