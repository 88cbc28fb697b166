#!/usr/bin/env bash
# Set up .venv/ if needed, then run the test suite (all of it, slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Two workers: much of the suite waits on Ray and subprocesses, so two cut its time by about 30% on 2 cores
# (CXR_TEST_WORKERS=0 runs it in one process; tests/conftest.py groups the tests).
workers=${CXR_TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then exec .venv/bin/python -m pytest "$@"; fi
exec .venv/bin/python -m pytest -n "$workers" --dist loadgroup "$@"
