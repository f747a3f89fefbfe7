#!/usr/bin/env bash
# Set up (if needed), check import layering and types, and run the whole test suite.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== lint-imports"
.venv/bin/lint-imports
echo "== mypy src/slimq"
.venv/bin/mypy src/slimq
exec .venv/bin/python -m pytest "$@"
