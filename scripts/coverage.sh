#!/usr/bin/env bash
# Line coverage of collapse/ under a test tier, with the code that runs in CLI subprocesses, forked children
# (tests/prefork.py) and accelerate's ranks counted: most of the package runs there, not in pytest's process.
#   bash scripts/coverage.sh                      # the fast tier (what scripts/test.sh runs)
#   COLLAPSE_SLOW=only bash scripts/coverage.sh   # other tiers, workers and pytest arguments: as scripts/test.sh
# Prints the report and leaves coverage.json (per-file figures) in $COVERAGE_OUT (default: a temp folder).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import coverage, sys; sys.exit(coverage.version_info < (7, 10))" 2>/dev/null \
  || python3 -m pip install -q "coverage>=7.10"  # [run] patch = subprocess, fork, _exit
OUT="${COVERAGE_OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# absolute data file: a subprocess started in another folder writes next to the others
cat > "$OUT/coverage.ini" <<INI
[run]
source_pkgs = collapse
data_file = $OUT/.coverage
parallel = true
patch = subprocess, fork, _exit
disable_warnings = module-not-imported, no-data-collected
[report]
skip_empty = true
precision = 1
INI
export COVERAGE_RCFILE="$OUT/coverage.ini"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
source scripts/tiers.sh  # MARK and PARALLEL, as scripts/test.sh chooses them (workers are subprocesses: measured)
python3 -m coverage run -m pytest -q -m "$MARK" -p no:cacheprovider ${PARALLEL[@]+"${PARALLEL[@]}"} "$@" \
  || echo "pytest failed: the figure below counts the tests that ran"
python3 -m coverage combine -q
python3 -m coverage report --format=total > "$OUT/total.txt"
python3 -m coverage json -q -o "$OUT/coverage.json"
python3 -m coverage report | tail -n 3
echo "line coverage of collapse/: $(cat "$OUT/total.txt")% (data in $OUT)"
