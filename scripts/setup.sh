#!/usr/bin/env bash
# Creates .venv/ in the checkout and installs the project into it (idempotent, quick when done already).
# Versions are pinned: every package comes at the exact version in requirements/lock.txt (docs/install.md says
# how it is made and refreshed); CXR_LOCK= (empty) installs from pyproject.toml's ranges instead.
# PyTorch is pinned here (not in the lock): torch==2.13.0 from the index pip is configured with (PyPI's Linux
# wheel is the CUDA build; a CPU wheel index or local wheels give the CPU build).
# Override with TORCH_SPEC="torch==X.Y.Z".
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=${CXR_LOCK-requirements/lock.txt}
key=$(cat pyproject.toml ${LOCK:+"$LOCK"} | sha1sum | cut -c1-12)
stamp=.venv/.installed-$key
if [ -f "$stamp" ]; then exit 0; fi
python3 -m venv .venv
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
pins=()
if [ -n "$LOCK" ]; then pins=(-c "$LOCK"); fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "${pins[@]}" "$TORCH_SPEC" 2> >(grep -v "is ignored" >&2)
# PYTHONWARNINGS reaches setuptools' build of the editable wheel: its advice about same-named folders in the
# working directory (the checkout is that folder, by design) is a 9-line block on every fresh set-up.
PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q "${pins[@]}" -e ".[test]" 2> >(grep -v "is ignored" >&2)
touch "$stamp"
