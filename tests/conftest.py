"""Shared fixtures: fixed seeds, offline Hugging Face, and small real data built on disk once per session."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Trials run by the tests cache their images here, not in the checkout's data/cache/.
os.environ.setdefault("CXR_CACHE_DIR", tempfile.mkdtemp(prefix="cxr-test-cache-"))

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def run_module(*args: str, timeout: int = 900):
    """Run ``python -m ARGS`` from the repository root, as a user would; fail the test with its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(autouse=True)
def _seeds():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def seed_sample():
    import pandas as pd

    return pd.read_csv(FIXTURES / "seed_val_split_sample.csv")


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """A small synthetic MIMIC-layout root and its prepared splits (real generator, real prepare step)."""
    from cxr_core.prepare import prepare_splits
    from cxr_core.synthetic import make_synthetic

    base = tmp_path_factory.mktemp("small_data")
    root, splits = base / "mimic", base / "splits"
    make_synthetic(root, n_patients=120, seed=1, image_size=128)
    prepare_splits(root, splits, per_label=15, seed=0)
    return root, splits
