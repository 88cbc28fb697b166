#!/usr/bin/env bash
# Set up .venv/ if needed, then run the whole study on the embedded default (python -m jobs.demo).
set -euo pipefail
cd "$(dirname "$0")/.."
export CXR_DEMO_START="${CXR_DEMO_START:-$(date +%s)}"   # jobs.demo's running time includes the set-up
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m jobs.demo "$@"
