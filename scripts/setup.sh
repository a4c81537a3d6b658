#!/usr/bin/env bash
# Creates .venv (Python >= 3.12, as LeRobot 0.6 needs) and installs this package with every dependency.
# The interpreter: $PYTHON if set, else python3.13 / python3.12 on PATH, else a 3.12+ one that pyenv installed.
# Idempotent: a second run only checks. First run: ~4 GB download (torch), 3-5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
NEED="3.12"

version_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }

find_python() {
  if [ -n "${PYTHON:-}" ]; then
    version_ok "$PYTHON" && { echo "$PYTHON"; return; }
    found=$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || echo "not runnable")
    echo "setup: PYTHON=$PYTHON is Python $found; r1vla needs Python >= $NEED (LeRobot 0.6)" >&2
    return 1
  fi
  for cand in python3.13 python3.12; do
    p=$(command -v "$cand" || true)
    [ -n "$p" ] && version_ok "$p" && { echo "$p"; return; }
  done
  if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    for p in $(ls -d "$root"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do
      version_ok "$p" && { echo "$p"; return; }
    done
  fi
  found=$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || echo "none")
  echo "setup: no Python >= $NEED found (python3 here is $found). Install Python 3.12 or 3.13" \
    "(e.g. 'pyenv install 3.12' or your distribution's python3.12 package), or set PYTHON=/path/to/python3.12" >&2
  return 1
}

if [ -x .venv/bin/python ] && ! version_ok .venv/bin/python; then
  old=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  echo "setup: .venv has Python $old; r1vla needs >= $NEED: recreating it" >&2
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  PY=$(find_python)
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
