#!/usr/bin/env bash
# Runs every test file in its own Python process (one XLA CPU client per file: in one
# long process, jax 0.10.2 segfaulted compiling in tests/test_models.py after the
# pipeline tests), sharing one fresh persistent compilation cache.  Exit status: non-zero
# if any file fails.
set -uo pipefail
cd "$(dirname "$0")/.."
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d -t unlearn_jax_xla_XXXX)}"
status=0
for f in tests/test_*.py; do
  python -m pytest -q "$f" "$@" || status=1
done
exit $status
