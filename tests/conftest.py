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

from cxr_core.testing import two_arm_space

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


def two_arm_sweep(
    small_data,
    tmp,
    *,
    name: str,
    max_train: int,
    max_val: int,
    seeds=None,
    objective=("label_f1_micro", "max"),
    extra_arms: str = "",
    sweep_args=(),
) -> Path:
    """Run (and analyse) a real tiny sweep: FFT at lr 1e-3 and LoRA r=4 on all linear layers, 2 epochs,
    optionally repeated over ``seeds``, plus ``extra_arms`` (YAML list items, indented as the arms), ``sweep_args``
    passed on to jobs.sweep; returns the experiment folder."""
    root, splits = small_data
    space = tmp / "space.yaml"
    space.write_text(two_arm_space(splits, root, name=name, max_train=max_train, max_val=max_val, seeds=seeds,
                                   metric=objective[0], mode=objective[1], extra_arms=extra_arms))  # fmt: skip
    sweep = run_module("jobs.sweep", str(space), "--name", name, "--storage", str(tmp / "rr"), "--num-cpus", "2",
                       *sweep_args)  # fmt: skip
    (tmp / "sweep_console.txt").write_text(sweep.stdout + sweep.stderr)  # what the user saw
    analyze = run_module("jobs.analyze", str(tmp / "rr" / name))
    (tmp / "analyze_console.txt").write_text(analyze.stdout + analyze.stderr)
    return tmp / "rr" / name


@pytest.fixture(scope="session")
def seeds_sweep(small_data, tmp_path_factory):
    """A real two-arm sweep over two seeds (4 trials of 2 epochs; see :func:`two_arm_sweep`), made once per test
    process (on each pytest-xdist worker that runs a reader). test_analysis evaluates it and re-analyses it in
    place; tests that change it otherwise work on a copy."""
    return two_arm_sweep(small_data, tmp_path_factory.mktemp("seeds"), name="seeds", max_train=32, max_val=16,
                         seeds=[0, 1])  # fmt: skip
