#!/usr/bin/env bash
# Set up and run the test suite (offline). Tiers: the default (fast) one; COLLAPSE_SLOW=1 adds the slow tests,
# COLLAPSE_SLOW=only runs only them; COLLAPSE_REAL=1 runs only the real-LM ones. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
source scripts/tiers.sh  # MARK and PARALLEL
exec python3 -m pytest -q -m "$MARK" ${PARALLEL[@]+"${PARALLEL[@]}"} "$@"
