#!/usr/bin/env bash
# Sets up .venv if needed and runs the demo: synthetic shop log -> prepare -> train sasrec_tiny -> evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/seqjax demo "$@"
