# Sourced by scripts/test.sh and scripts/coverage.sh: the tier's marker expression (MARK) and the pytest-xdist
# arguments (PARALLEL). COLLAPSE_SLOW=1 adds the slow tests, COLLAPSE_SLOW=only runs only them; COLLAPSE_REAL=1 runs
# only the real-LM ones. Test files run side by side, one worker per core up to 4 (a file stays on one worker, so
# its module fixtures are built once; tests/conftest.py gives each worker its share of the cores);
# COLLAPSE_TEST_WORKERS=1 runs them one after another in pytest's process.
case "${COLLAPSE_SLOW:-0}" in
  1) MARK="not gpu" ;;
  only) MARK="slow and not gpu" ;;
  *) MARK="not slow and not gpu" ;;
esac
if [ "${COLLAPSE_REAL:-0}" = "1" ]; then MARK="real"; else MARK="$MARK and not real"; fi
CORES="$(python3 -c 'import os; print(len(os.sched_getaffinity(0)))' 2>/dev/null || echo 1)"
WORKERS="${COLLAPSE_TEST_WORKERS:-$(( CORES < 4 ? CORES : 4 ))}"
PARALLEL=()
if [ "$WORKERS" -gt 1 ]; then PARALLEL=(-n "$WORKERS" --dist loadfile); fi
