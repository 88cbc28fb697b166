"""The seed's own split CSVs as a data source: a search space points at them plus an image root and trains."""

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_core.labels import LABELS
from cxr_core.mimic import image_relpaths
from cxr_core.synthetic import render_image
from tests.conftest import FIXTURES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seed_folder(tmp_path_factory):
    """The seed's rows copied unchanged to train/val/test_split.csv, and small JPEGs at MIMIC's paths."""
    base = tmp_path_factory.mktemp("seed_source")
    splits, root = base / "splits", base / "mimic"
    splits.mkdir()
    for name in ("train", "val", "test"):
        shutil.copyfile(FIXTURES / "seed_val_split_sample.csv", splits / f"{name}_split.csv")
    rows = pd.read_csv(FIXTURES / "seed_val_split_sample.csv")
    for i, (rel, (_, row)) in enumerate(zip(image_relpaths(rows), rows.iterrows(), strict=True)):
        labels = {label: row[label] for label in LABELS}
        px = render_image(labels, view=row["ViewPosition"], rng=np.random.default_rng(i), size=(76, 64))
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(px).save(path, quality=90)
    return splits, root, rows


def test_seed_csvs_train_a_tiny_trial(seed_folder, tmp_path):
    from cxr_core.trial import run_trial

    splits, root, rows = seed_folder
    config = {
        "name": "seed-csv",
        "method": "lora",
        "model": "embedded",
        "data": {"split_dir": str(splits), "image_root": str(root), "max_train": 48, "max_val": 16,
                 "cache_dir": str(tmp_path / "cache"), "cache_workers": 1},
        "train": {"epochs": 2, "batch_size": 16, "lr": 5.0e-3, "num_threads": 1, "warmup_ratio": 0.0},
        "lora": {"r": 4},
        "evaluation": {"max_new_tokens": 24, "batch_size": 16},
    }  # fmt: skip
    reports = []
    metrics = run_trial(config, report=lambda m, folder: reports.append((dict(m), sorted(folder.iterdir()))))
    assert len(reports) == 2 and all(files for _, files in reports)  # an epoch, a checkpoint folder, twice
    assert metrics["n_train"] == 48 and metrics["n_val"] == 16 and metrics["images_skipped"] == 0
    first, second = reports[0][0], reports[1][0]
    assert math.isfinite(first["train_loss"]) and second["val_loss"] < first["val_loss"]  # it learns
    # One cache entry per split, holding exactly the seed rows' images at the model's 64 px, grayscale.
    entries = sorted(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    shapes = sorted(np.load(p / "pixels.npy", mmap_mode="r").shape for p in entries)
    assert shapes == [(16, 1, 64, 64), (48, 1, 64, 64)]
