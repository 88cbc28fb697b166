#!/usr/bin/env bash
# Set up .venv/ if needed, then run the test suite (all of it, slow end-to-end tests included).
#
# Much of the suite waits on Ray and on subprocesses, so it runs on two pytest-xdist workers, a test file's tests on
# one worker (--dist loadfile: a module's fixtures are built once); then the tests marked `serial` (they stop, kill
# or time processes mid-sweep, which a busy second worker can upset) run alone.
# CXR_TEST_WORKERS=0 runs everything in one process; other pytest arguments pass through to both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
workers=${CXR_TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then exec .venv/bin/python -m pytest "$@"; fi
parallel=0 serial=0
.venv/bin/python -m pytest -n "$workers" --dist loadfile -m "not serial" "$@" || parallel=$?
echo "--- the tests marked serial, alone:"
.venv/bin/python -m pytest -m serial "$@" || serial=$?
if [ "$parallel" = 5 ] && [ "$serial" = 5 ]; then exit 5; fi  # nothing selected at all
# 5 in one part only means that part selected nothing (e.g. one file passed): not a failure.
for rc in "$parallel" "$serial"; do [ "$rc" = 0 ] || [ "$rc" = 5 ] || exit "$rc"; done
