#!/usr/bin/env bash
# Set up everything the tests and the demo need on a fresh Debian machine, then get out of the way.
# Idempotent: a second run checks a stamp and returns within seconds.
#   - system packages (when root and missing): orthanc, orthanc-dicomweb, dcmtk, dcm2niix, dicom3tools,
#     docker-compose, chromium + chromium-driver (the browser test), redis-server and postgresql (the
#     Celery harness starts its own Redis and PostgreSQL cluster from these binaries)
#   - a virtual environment in .venv (override with KAAPANA_VENV)
#   - torch==2.13.0 (CPU) first, then this package with its extras
# It prints one line per step; the output of apt-get and pip goes to a log file (KAAPANA_BOOTSTRAP_LOG,
# default .cache/bootstrap.log) whose path and last lines are printed when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${KAAPANA_VENV:-$PWD/.venv}"
PY="${PYTHON:-python3}"
LOG="${KAAPANA_BOOTSTRAP_LOG:-$PWD/.cache/bootstrap.log}"

# step "what" command...: one progress line, the command's output into $LOG; on failure the log's tail
step() {
  local what="$1"; shift
  mkdir -p "$(dirname "$LOG")"
  printf '%s\n' "=== $(date -u +%FT%TZ) $what: $*" >>"$LOG"
  printf 'bootstrap: %s ... ' "$what"
  local start=$SECONDS
  if "$@" >>"$LOG" 2>&1; then
    echo "done ($((SECONDS - start)) s)"
  else
    local rc=$?
    echo "FAILED (exit $rc)"
    echo "bootstrap: the last lines of the full log $LOG:" >&2
    tail -n 25 "$LOG" >&2
    exit "$rc"
  fi
}

need_apt=()
for pair in Orthanc:orthanc storescu:dcmtk dcm2niix:dcm2niix dciodvfy:dicom3tools docker-compose:docker-compose \
    chromium:chromium chromedriver:chromium-driver redis-server:redis-server; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
done
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "apt-get update" apt-get update -qq
    step "apt-get install ${need_apt[*]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  else
    echo "bootstrap: missing system packages: ${need_apt[*]} (install them with apt-get as root)" >&2
  fi
fi

# PostgreSQL: the end-to-end test runs Airflow's metadata DB on 127.0.0.1:5432 (user postgres, trust auth)
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "bootstrap: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
elif ! command -v pg_isready >/dev/null 2>&1; then
  echo "bootstrap: PostgreSQL is not installed; the end-to-end test needs it on 127.0.0.1:5432" >&2
fi

stamp="$VENV/.kaapana-stamp"
want="$(cat setup.cfg pyproject.toml scripts/constraints.txt | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "bootstrap: setting up $VENV (details in $LOG)"
[ -x "$VENV/bin/python" ] || step "creating the virtual environment" "$PY" -m venv "$VENV"
step "upgrading pip" "$VENV/bin/pip" install --upgrade pip
# torch first: the CPU wheel on disk. A plain 'torch' requirement would pull GBs of CUDA wheels.
"$VENV/bin/python" -c "import torch" 2>/dev/null || step "installing torch 2.13.0 (CPU)" "$VENV/bin/pip" install torch==2.13.0
# the constraint keeps torch at the CPU build: timm (via nnU-Net) wants torchvision, whose newest release
# would otherwise replace torch with a CUDA build of several GB.
step "installing airflow-provider-kaapana and its test, docs and nnU-Net extras" \
  "$VENV/bin/pip" install -c scripts/constraints.txt -e ".[test,docs,all]"
echo "$want" > "$stamp"
echo "bootstrap: ready ($VENV)"
