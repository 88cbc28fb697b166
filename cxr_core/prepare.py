"""Balanced sampling, multilabel-stratified splits and the seed's split-CSV format.

The seed's semantics, kept: shuffle the frontal images with a fixed seed; walk them and give each image to
the first label (in label order) that is positive or uncertain for it and whose quota is not yet full;
write the mini report; split 60/20/20 with multilabel iterative stratification on the 14 labels.
Here the split is grouped by patient by default, so no ``subject_id`` appears in two splits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from cxr_core.errors import CxrError
from cxr_core.labels import LABELS
from cxr_core.mimic import SEED_COLUMNS, mimic_frame
from cxr_core.report import NO_FINDING_SENTENCES, sentence

SPLITS = ("train", "val", "test")
SPLIT_BY = ("patient", "image")


def balanced_sample(frame: pd.DataFrame, *, per_label: int, seed: int = 0) -> pd.DataFrame:
    """Quota sampling with the seed's walk, computed label by label instead of row by row.

    Walking the shuffled images, label k receives exactly the first ``per_label`` images that are eligible
    for k (positive or uncertain) and were not taken by an earlier label: an image goes to an earlier
    eligible label whenever that label's quota is still open, which depends on that label alone. So 14
    vectorised passes give the same assignment as the row loop.

    Returns:
        The sampled rows in walk order, with a ``sampled_label`` column.
    """
    if per_label < 1:
        raise CxrError(f"per-label quota must be a positive integer, got {per_label}")
    order = np.random.default_rng(seed).permutation(len(frame))
    shuffled = frame.iloc[order].reset_index(drop=True)
    values = shuffled[list(LABELS)].to_numpy(dtype="float64")
    eligible = (values == 1.0) | (values == -1.0)  # (N, 14)
    assigned = np.full(len(shuffled), -1, dtype=np.int64)
    for k in range(len(LABELS)):
        candidates = eligible[:, k] & (assigned < 0)
        taken = candidates & (np.cumsum(candidates) <= per_label)
        assigned[taken] = k
    keep = assigned >= 0
    out = shuffled[keep].copy()
    out["sampled_label"] = np.asarray(LABELS)[assigned[keep]]
    return out.reset_index(drop=True)


def mini_reports(frame: pd.DataFrame) -> pd.Series:
    """The mini report of every row, built column by column (same text as :func:`report.mini_report`)."""
    text = pd.Series("", index=frame.index, dtype=object)
    for label in LABELS:
        table = (
            NO_FINDING_SENTENCES if label == "No_Finding" else {v: sentence(label, v) for v in (1.0, 0.0, -1.0)}
        )
        part = frame[label].map(table).fillna("")
        text = text + np.where((text != "") & (part != ""), " ", "") + part
    return text


def split_frame(
    frame: pd.DataFrame, *, seed: int = 0, by: str = "patient", fractions=(0.6, 0.2, 0.2)
) -> dict[str, pd.DataFrame]:
    """Multilabel iterative stratification into train/val/test.

    Stratifies on the 14 labels (mentioned as positive or uncertain = 1, else 0). With ``by="patient"``
    each patient's images stay together: patients are stratified on the union of their images' labels.
    """
    if by not in SPLIT_BY:
        raise CxrError(f"--split-by must be one of {', '.join(SPLIT_BY)}, got {by!r}")
    key = "subject_id" if by == "patient" else "dicom_id"
    y_img = frame[list(LABELS)].isin([1.0, -1.0]).astype(np.int8)
    y = y_img.groupby(frame[key].to_numpy()).max()
    groups = y.index.to_numpy()
    if len(groups) < 5:
        raise CxrError(f"only {len(groups)} {by}s after sampling; a 60/20/20 split needs at least 5")
    train_f, val_f, test_f = fractions
    first = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_f + test_f, random_state=seed)
    train_idx, rest_idx = next(first.split(np.zeros(len(groups)), y.to_numpy()))
    second = MultilabelStratifiedShuffleSplit(
        n_splits=1, test_size=test_f / (val_f + test_f), random_state=seed
    )
    val_sub, test_sub = next(second.split(np.zeros(len(rest_idx)), y.to_numpy()[rest_idx]))
    parts = {"train": groups[train_idx], "val": groups[rest_idx[val_sub]], "test": groups[rest_idx[test_sub]]}
    return {name: frame[frame[key].isin(ids)].reset_index(drop=True) for name, ids in parts.items()}


def seed_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The seed's split-CSV columns: ids, labels (MIMIC order), split, view, size, datetime, uid, report."""
    out = frame.copy()
    out["unique_id"] = (
        out["subject_id"].astype(str) + "_" + out["study_id"].astype(str) + "_" + out["dicom_id"].astype(str)
    )
    out["mini_report"] = mini_reports(out)
    return out[list(SEED_COLUMNS)]


def atomic_write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write to a temporary name in the same folder, then rename: a failed run never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def prepare_splits(
    mimic_root: str | Path,
    out_dir: str | Path,
    *,
    per_label: int = 5000,
    seed: int = 0,
    labeler: str = "chexpert",
    split_by: str = "patient",
    check_images: bool = True,
) -> dict:
    """MIMIC root -> ``train_split.csv``, ``val_split.csv``, ``test_split.csv`` in ``out_dir``.

    Returns:
        A summary: rows per split, rows per label per split, images dropped and why.

    Raises:
        CxrError: bad input (see :func:`mimic_frame`) or a split left empty.
    """
    frame = mimic_frame(mimic_root, labeler=labeler, check_images=check_images)
    sampled = balanced_sample(frame, per_label=per_label, seed=seed)
    if sampled.empty:
        raise CxrError(f"{mimic_root}: no image has a positive or uncertain label, so sampling kept nothing")
    splits = split_frame(sampled, seed=seed, by=split_by)
    for name, part in splits.items():
        if part.empty:
            raise CxrError(f"the {name} split is empty ({len(sampled)} images sampled); raise --per-label")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        atomic_write_csv(seed_frame(part), out_dir / f"{name}_split.csv")
    summary = {
        "mimic_root": str(mimic_root),
        "labeler": labeler,
        "per_label": per_label,
        "seed": seed,
        "split_by": split_by,
        "images_total": frame.attrs["images_total"],
        "dropped_view": frame.attrs["images_view_dropped"],
        "dropped_missing_file": len(frame.attrs["missing"]),
        "missing_examples": frame.attrs["missing"][:10],
        "sampled": len(sampled),
        "rows": {name: len(part) for name, part in splits.items()},
        "rows_per_label": {
            name: {label: int(part[label].isin([1.0, -1.0]).sum()) for label in LABELS}
            for name, part in splits.items()
        },
    }
    tmp = out_dir / ".prepare_summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out_dir / "prepare_summary.json")
    return summary


def read_split(split_dir: str | Path, split: str) -> pd.DataFrame:
    """Read ``{split}_split.csv`` (seed format) from ``split_dir``.

    Raises:
        CxrError: the file is missing or has no rows.
    """
    if split not in SPLITS:
        raise CxrError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = Path(split_dir) / f"{split}_split.csv"
    if not path.is_file():
        raise CxrError(
            f"{path} does not exist; run `python -m jobs.prepare_data --mimic-root DIR --out {split_dir}`"
        )
    frame = pd.read_csv(path)
    if frame.empty:
        raise CxrError(f"{path} has no rows; prepare the data again with a larger --per-label")
    return frame
