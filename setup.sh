#!/usr/bin/env bash
# One command on a fresh machine: a virtual environment in .venv with everything installed,
# then the quickstart (the main job on the bundled tiny default). VENV=dir to choose another place.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r requirements.txt
if [ "${SKIP_QUICKSTART:-0}" != 1 ]; then
  "$VENV/bin/python" quickstart.py "$@"
fi
