#!/usr/bin/env bash
# The test command: set up what is missing (see bootstrap.sh), lint, then run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k orthanc -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV="${KAAPANA_VENV:-$PWD/.venv}"
"$VENV/bin/ruff" check airflow_provider_kaapana dags tests benchmarks operators_images
"$VENV/bin/ruff" format --check airflow_provider_kaapana dags tests benchmarks operators_images
exec "$VENV/bin/python" -m pytest "$@"
