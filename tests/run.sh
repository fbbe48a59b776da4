#!/usr/bin/env bash
# Runs the tests as separate Python processes (one XLA CPU client per process: in one
# long process, jax 0.10.2 segfaulted compiling in tests/test_models.py after the
# pipeline tests), sharing one fresh persistent compilation cache.  A job is a test
# file of tests/, tests/tasks/ or tests/stages/, or one of the other folders mirroring
# the package (tests/unlearning/, tests/evaluation/, ...) whole, or the few light files listed
# below together; tests/test_configs.py's one-step smoke runs are one job per config.
# TEST_JOBS jobs run at once (default 2: most of the suite is single-threaded XLA
# compilation, so two processes use both cores of a 2-core machine), the slowest
# first; each job's output is printed whole, in order, and the last line sums them up.
# Extra arguments go to every pytest call.  Exit status: non-zero if any job fails.
set -uo pipefail
cd "$(dirname "$0")/.."
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d -t unlearn_jax_xla_XXXX)}"
# The suite is dominated by XLA:CPU compilation of tiny models: LLVM's optimisation
# level 0 compiles them ~40% faster (the tiny SD train step: 27 s -> 16 s) for ~1.4x
# slower steps.  Set UNLEARN_JAX_TEST_XLA_OPT to another level to change it.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=${UNLEARN_JAX_TEST_XLA_OPT:-0}"
logs=$(mktemp -d -t unlearn_jax_tests_XXXX)

jobs=()
for c in configs/*.py; do
  jobs+=("tests/test_configs.py::test_config_cpu_variant_one_step[$(basename "$c")]")
done
jobs+=("tests/test_configs.py --deselect=tests/test_configs.py::test_config_cpu_variant_one_step")
# The slowest files next (measured), then the rest.
slow=(tests/test_dimum_pipeline.py tests/tasks/test_unlearncanvas.py tests/test_training.py tests/test_cli.py
      tests/test_models.py tests/test_aot.py tests/test_mesh.py tests/test_multiprocess.py tests/test_benchmarks.py)
for f in "${slow[@]}"; do [ -f "$f" ] && jobs+=("$f"); done
# Files that take a few seconds each (measured: <= 15 s on their own, most of it the ~4 s of
# starting Python, jax and pytest) share one process.
light=(tests/test_losses.py tests/test_checkpoints.py tests/test_erasing_methods.py tests/test_settings.py tests/test_resume.py
       tests/test_imports.py tests/test_canvas.py tests/test_sde.py tests/test_data.py tests/test_likelihood.py
       tests/stages/test_train_consts.py tests/stages/test_kinds.py tests/tasks/test_interface.py
       tests/tasks/test_prompts.py tests/reporting)
present=()
for f in "${light[@]}"; do [ -e "$f" ] && present+=("$f"); done
for f in tests/test_*.py tests/tasks/test_*.py tests/stages/test_*.py; do
  [[ -f "$f" ]] || continue
  [[ "$f" == tests/test_configs.py || " ${slow[*]} " == *" $f "* || " ${light[*]} " == *" $f "* ]] || jobs+=("$f")
done
# The other folders mirroring unlearn_jax/<package>/ hold small unit tests: one job per folder.
for d in tests/*/; do
  d=${d%/}
  [[ "$d" == tests/tasks || "$d" == tests/stages || " ${light[*]} " == *" $d "* ]] && continue
  compgen -G "$d/test_*.py" > /dev/null && jobs+=("$d")
done
[ ${#present[@]} -gt 0 ] && jobs+=("${present[*]}")

run_job() {  # $1: index, $2: job (pytest arguments, space-separated); $TEST_ARGS: extra ones
  local -a spec extra
  read -r -a spec <<<"$2"
  read -r -a extra <<<"${TEST_ARGS:-}"
  local t0=$SECONDS
  python -m pytest -q "${spec[@]}" "${extra[@]}" > "$logs/$1.log" 2>&1
  echo $? > "$logs/$1.rc"
  echo $((SECONDS - t0)) > "$logs/$1.s"
}
export -f run_job
export logs
export TEST_ARGS="$*"
for i in "${!jobs[@]}"; do printf '%s\0%s\0' "$i" "${jobs[$i]}"; done |
  xargs -0 -n 2 -P "${TEST_JOBS:-2}" bash -c 'run_job "$@"' _ || true

status=0 passed=0 failed=0
for i in "${!jobs[@]}"; do
  echo "=== ${jobs[$i]} ($(cat "$logs/$i.s" 2>/dev/null || echo '?') s)"
  cat "$logs/$i.log"
  rc=$(cat "$logs/$i.rc" 2>/dev/null || echo 1)
  line=$(grep -E "[0-9]+ (passed|failed|errors?)" "$logs/$i.log" | tail -n 1)   # the summary (an atexit warning may follow it)
  p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '^[0-9]+' || true)
  e=$(grep -oE '[0-9]+ (failed|errors?)' <<<"$line" | awk '{s += $1} END {if (NR) print s}')
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${e:-0}))
  if [ "$rc" != 0 ]; then
    status=1
    [ -n "$e" ] || failed=$((failed + 1))
  fi
done
echo "${passed} passed, ${failed} failed in $SECONDS s (job times sum to $(cat "$logs"/*.s 2>/dev/null | awk '{s += $1} END {print s + 0}') s)"
exit $status
