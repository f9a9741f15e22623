#!/usr/bin/env bash
# The test command: set up what is missing (see bootstrap.sh), lint (ruff, import-linter), then run the whole
# test suite. Extra arguments go to pytest, e.g. scripts/test.sh -k orthanc -x, or scripts/test.sh -m "not e2e"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV="${KAAPANA_VENV:-$PWD/.venv}"
"$VENV/bin/ruff" check airflow_provider_kaapana dags tests benchmarks operators_images
"$VENV/bin/ruff" format --check airflow_provider_kaapana dags tests benchmarks operators_images
# the layering of docs/architecture.rst (contracts in .importlinter); quiet unless a contract breaks
if ! layering="$("$VENV/bin/lint-imports" --no-logo --no-cache .importlinter 2>&1)"; then
  echo "$layering" >&2
  exit 1
fi
echo "$layering" | grep -E "^Contracts:"
# With arguments: one pytest run with them. Without (CI): the real-Airflow end-to-end tests (tests/e2e, mostly
# waiting on schedulers and services) run in a second pytest process beside the rest, which roughly halves
# the wall time on 2 cores; its output follows when both are done. Then the soak tests (-m soak: liveness under
# load, which a loaded machine would starve) run alone. KAAPANA_TEST_SERIAL=1 runs one process.
if [ $# -gt 0 ] || [ "${KAAPANA_TEST_SERIAL:-0}" = 1 ]; then
  exec "$VENV/bin/python" -m pytest "$@"
fi
e2e_log="$(mktemp -t kaapana-e2e-XXXXXX.log)"
"$VENV/bin/python" -m pytest -m "e2e and not soak" -p no:cacheprovider >"$e2e_log" 2>&1 &
e2e_pid=$!
trap 'kill "$e2e_pid" 2>/dev/null || true' INT TERM
rc_rest=0
"$VENV/bin/python" -m pytest -m "not e2e and not soak" || rc_rest=$?
rc_e2e=0
wait "$e2e_pid" || rc_e2e=$?
echo "=== end-to-end tests (pytest -m e2e, log $e2e_log) ==="
cat "$e2e_log"
echo "=== soak tests (pytest -m soak, alone on the machine) ==="
rc_soak=0
"$VENV/bin/python" -m pytest -m soak -p no:cacheprovider || rc_soak=$?
echo "test.sh: not e2e exit $rc_rest, e2e exit $rc_e2e, soak exit $rc_soak"
[ "$rc_rest" = 0 ] && [ "$rc_e2e" = 0 ] && [ "$rc_soak" = 0 ]
