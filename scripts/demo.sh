#!/usr/bin/env bash
# Set up (if needed) and run the main job: quantize the built-in Fashion-MNIST models, print the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/slimq demo "$@"
