#!/usr/bin/env bash
# Runs every test file in its own Python process (one XLA CPU client per file: in one
# long process, jax 0.10.2 segfaulted compiling in tests/test_models.py after the
# pipeline tests), sharing one fresh persistent compilation cache.  TEST_JOBS files run
# at once (default 2: most of the suite is single-threaded XLA compilation, so two
# processes use both cores of a 2-core machine); each file's output is printed whole,
# in order, and the last line sums them up.  Extra arguments go to every pytest call.
# Exit status: non-zero if any file fails.
set -uo pipefail
cd "$(dirname "$0")/.."
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d -t unlearn_jax_xla_XXXX)}"
logs=$(mktemp -d -t unlearn_jax_tests_XXXX)
# The slowest files first (measured), so the workers finish close together.
slow=(tests/test_configs.py tests/test_dimum_pipeline.py tests/test_cli.py tests/test_training.py)
files=()
for f in "${slow[@]}"; do [ -f "$f" ] && files+=("$f"); done
for f in tests/test_*.py; do
  [[ " ${slow[*]} " == *" $f "* ]] || files+=("$f")
done
printf '%s\n' "${files[@]}" | xargs -P "${TEST_JOBS:-2}" -I{} sh -c \
  'f="$1"; shift; name=$(basename "$f" .py); python -m pytest -q "$f" "$@" > "'"$logs"'/$name.log" 2>&1; echo $? > "'"$logs"'/$name.rc"' \
  _ {} "$@"
status=0 passed=0 failed=0
for f in "${files[@]}"; do
  name=$(basename "$f" .py)
  echo "=== $f"
  cat "$logs/$name.log"
  rc=$(cat "$logs/$name.rc" 2>/dev/null || echo 1)
  [ "$rc" = 0 ] || status=1
  line=$(tail -n 1 "$logs/$name.log")
  p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+' || true)
  e=$(grep -oE '[0-9]+ (failed|errors?)' <<<"$line" | awk '{s += $1} END {if (NR) print s}')
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${e:-0}))
  if [ "$rc" != 0 ] && [ -z "$e" ]; then failed=$((failed + 1)); fi
done
echo "${passed} passed, ${failed} failed"
exit $status
