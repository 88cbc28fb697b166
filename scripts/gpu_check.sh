#!/usr/bin/env bash
# The GPU check, for the first machine with an NVIDIA GPU: from a fresh clone, in under 10 minutes on one H200.
# Sets up .venv/ (scripts/setup.sh: pip's CUDA build of torch where the index has it, as PyPI does for Linux
# x86-64), checks that torch sees the GPU, then runs python -m bench.gpu_check: bench.gpu (every method at batch
# 64 and 256, bf16: samples/s, peak memory, MFU) and a 6-trial sweep of git-base (random weights) on synthetic
# 224 px images, FFT at resources.gpu 1 and LoRA at 0.5 (two LoRA trials per GPU), 1 epoch each. Prints one JSON
# line with every figure last and writes ray_results/gpu_check/gpu_check.md, tables for docs/benchmarks.md.
#
#   bash scripts/gpu_check.sh            # on the GPU machine
#   bash scripts/gpu_check.sh --tiny     # the same on a CPU at tiny size (tests/test_bench.py runs it)
#
# Other arguments go to bench.gpu_check (--out DIR). CXR_PYTHON=/path/to/python uses that interpreter and skips
# the set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${CXR_PYTHON:-}" ]; then
    py=$CXR_PYTHON
else
    bash scripts/setup.sh
    py=.venv/bin/python
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
tiny=0
for arg in "$@"; do if [ "$arg" = "--tiny" ]; then tiny=1; fi; done
if [ "$tiny" = 0 ]; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    fi
    if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        version=$("$py" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')
        echo "gpu_check: error: torch $version sees no CUDA device; on a machine with an NVIDIA GPU (nvidia-smi" \
            "works) remove .venv/ and run this again, so that scripts/setup.sh installs the CUDA build (or" \
            "TORCH_SPEC=\"torch==2.13.0\" with pip's index pointing at the CUDA wheels); --tiny runs the CPU check" >&2
        exit 2
    fi
fi
exec "$py" -m bench.gpu_check "$@"
