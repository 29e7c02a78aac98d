#!/usr/bin/env bash
# The ONE command for a lent GPU: correctness self-test, then the GPU benchmark, inside ~6 minutes.
#   bash scripts/gpu_check.sh            (OUT defaults to ./gpu_out)
# Writes $OUT/bench_cuda.json and $OUT/bench_cuda.log. Exit code: 0 all checks passed, 1 a check failed,
# 2 no CUDA device, 124 the hard time limit hit. No downloads, no datasets/wandb needed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export COLLAPSE_CACHE=${COLLAPSE_CACHE:-$OUT/cache}
PY=${PYTHON:-python3}
{
  echo "== $(date -u +%FT%TZ) $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1 || true
  "$PY" -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'| transformers', transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__)"
  "$PY" -c "import sys, collapse.decoding.generate, collapse.decoding.fastgen, collapse.models.train, collapse.bench.gpu.cuda; \
bad=[m for m in ('datasets','wandb') if m in sys.modules]; print('lazy imports ok' if not bad else f'EAGER IMPORTS: {bad}')"
} 2>&1 | tee "$OUT/bench_cuda.log"
# the self-test runs first inside the same process (it decides the exit code); --budget-s bounds the
# benchmark (sizes that would not fit are skipped and listed in the JSON); timeout is the hard stop
timeout -k 10 360 "$PY" scripts/bench.py --device cuda --selftest --budget-s "${BUDGET_S:-270}" \
  --out "$OUT/bench_cuda.json" 2>&1 | tee -a "$OUT/bench_cuda.log"
rc=${PIPESTATUS[0]}
echo "== exit $rc ($(date -u +%FT%TZ))" | tee -a "$OUT/bench_cuda.log"
exit "$rc"
