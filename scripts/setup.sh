#!/usr/bin/env bash
# Creates .venv with Python >= 3.12 and installs seqjax (editable) with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
find_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3 python; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)'; then
  py=$(find_python) || { echo "seqjax needs Python >= 3.12 (current JAX requires it); none found on PATH. Install one or set PYTHON=/path/to/python3.12" >&2; exit 1; }
  echo "using $py ($("$py" --version))"
  rm -rf .venv
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
