#!/usr/bin/env bash
# Set up safekeel on a fresh machine: PyTorch first (the CPU build when there is no GPU, so pip does not
# pull a multi-GB CUDA build), then the package with its test dependencies. Idempotent: re-running is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "torch>=2.4"
  else
    "$PY" -m pip install --quiet "torch==2.13.0"
  fi
fi
"$PY" -m pip install --quiet -e ".[dev]"
