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
exec "$VENV/bin/python" -m pytest "$@"
