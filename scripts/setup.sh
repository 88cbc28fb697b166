#!/usr/bin/env bash
# Creates .venv/ in the checkout and installs the project into it (idempotent, quick when done already).
# On a machine without an NVIDIA GPU it installs the CPU build of PyTorch first; with a GPU, pip's
# default torch (a CUDA build) is used. Override with TORCH_SPEC="torch==X.Y.Z".
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ -f "$stamp" ]; then exit 0; fi
python3 -m venv .venv
if [ -z "${TORCH_SPEC:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then TORCH_SPEC="torch"; else TORCH_SPEC="torch==2.13.0"; fi
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "$TORCH_SPEC" 2> >(grep -v "is ignored" >&2)
.venv/bin/python -m pip install -q -e ".[test]" 2> >(grep -v "is ignored" >&2)
touch "$stamp"
