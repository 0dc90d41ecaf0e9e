#!/usr/bin/env bash
# Creates .venv at the repo root and installs a requirements file into it, once per
# change of that file (a stamp holds its hash). Usage: source scripts/ensure_venv.sh FILE
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQ="${1:-requirements.txt}"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "[setup] creating $ROOT/.venv"
  "$PY" -m venv "$ROOT/.venv"
fi
STAMP="$ROOT/.venv/.stamp-$(basename "$REQ")"
# installed without their declared dependencies (see each file): runtime ones always, test references
# with the test requirements
NODEPS="$ROOT/requirements-nodeps.txt"
[ "$REQ" = "requirements-test.txt" ] && NODEPS="$NODEPS $ROOT/requirements-test-nodeps.txt"
WANT="$(cat "$ROOT/$REQ" "$ROOT/requirements.txt" $NODEPS | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[setup] installing $REQ into .venv (first run only)"
  "$ROOT/.venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
  "$ROOT/.venv/bin/python" -m pip install --disable-pip-version-check -q -r "$ROOT/$REQ"
  for file in $NODEPS; do
    "$ROOT/.venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps -r "$file"
  done
  # A torchvision left by an earlier install (spandrel used to pull it) breaks every pipeline import here.
  "$ROOT/.venv/bin/python" -m pip uninstall --disable-pip-version-check -q -y torchvision 2>/dev/null || true
  echo "$WANT" > "$STAMP"
fi
