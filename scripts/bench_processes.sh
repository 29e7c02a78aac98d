#!/usr/bin/env bash
# Generation and training throughput of `collapse run` with 1 vs 2 CPU processes (gloo), side by side.
#   bash scripts/bench_processes.sh        (about 2 minutes; the scratch model must be cached or is built once)
# Prints the stage lines of each run; the tok/s figures go into docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 COLLAPSE_SKIP_REPORT=1
ARGS=(configs/tiny.yaml generations=1 resume=never overwrite=true)
collapse run "${ARGS[@]}" out_dir=/tmp/collapse-bench-1proc 2>&1 | tr '\r' '\n' | grep -E '^\[' || true
echo "--- 2 processes"
ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu-2proc.yaml -m collapse run \
  "${ARGS[@]}" out_dir=/tmp/collapse-bench-2proc 2>&1 | tr '\r' '\n' | grep -E '^\[' || true
python3 - <<'PY'
import numpy as np, pyarrow.parquet as pq
a = pq.read_table("/tmp/collapse-bench-1proc/gen_001/samples.parquet").column("token_ids").to_pylist()
b = pq.read_table("/tmp/collapse-bench-2proc/gen_001/samples.parquet").column("token_ids").to_pylist()
print("generation-1 samples identical for 1 and 2 processes:", a == b)
PY
