#!/usr/bin/env bash
# The test command: lint, then the CPU suite (reference path + Triton kernels under the interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
export TRITON_INTERPRET=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
python -m pytest -q -p no:cacheprovider --timeout 900 "$@"
