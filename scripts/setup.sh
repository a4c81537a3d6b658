#!/usr/bin/env bash
# Creates .venv (Python 3.10-3.12; 3.11 preferred) and installs this package with every dependency.
# Idempotent: a second run only checks. First run: ~4 GB download (torch), 3-5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
