#!/usr/bin/env bash
# Sets up .venv if needed and runs the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest tests "$@"
