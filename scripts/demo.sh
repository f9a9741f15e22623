#!/usr/bin/env bash
# The demo: set up what is missing, then run the whole pipeline on a synthetic CT study (kaapana demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV="${KAAPANA_VENV:-$PWD/.venv}"
exec "$VENV/bin/kaapana" demo "$@"
