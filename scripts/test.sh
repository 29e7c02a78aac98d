#!/usr/bin/env bash
# Set up and run the test suite (offline; the slow tests run only with COLLAPSE_SLOW=1, the real-LM ones with
# COLLAPSE_REAL=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
MARK="not slow and not gpu"
if [ "${COLLAPSE_SLOW:-0}" = "1" ]; then MARK="not gpu"; fi
if [ "${COLLAPSE_REAL:-0}" = "1" ]; then MARK="real"; else MARK="$MARK and not real"; fi
exec python3 -m pytest -q -m "$MARK" "$@"
