#!/usr/bin/env bash
# One-time set-up: the CPU build of torch (a GPU machine keeps the CUDA build it has), then collapse.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then "$PY" -m pip install -q torch
  else "$PY" -m pip install -q torch==2.13.0 || "$PY" -m pip install -q torch
  fi
fi
"$PY" -m pip install -q -e ".[test]"
