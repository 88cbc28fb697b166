"""Balanced sampling, multilabel-stratified splits, the seed's split-CSV format and the manifest.

The seed's semantics, kept: shuffle the frontal images with a fixed seed; walk them and give each image to
the first label (in label order) that is positive or uncertain for it and whose quota is not yet full;
write the mini report; split 60/20/20 with multilabel iterative stratification on the 14 labels.
Here the split is grouped by patient by default, so no ``subject_id`` appears in two splits
(``split_by="image"`` is what the seed did, for reproducing it).

Images are checked lazily: only the images the walk reaches are checked (exist, or decode), and a bad one
is replaced by the next eligible image of the walk, which is exactly the sample the seed's walk would have
drawn with the bad images left out. ``manifest.json`` beside the CSVs records inputs, settings, counts and
every reason a row was dropped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from cxr_core.errors import CxrError
from cxr_core.images import DECODE_ERRORS, describe_error, read_image
from cxr_core.labels import LABELS, canonical_label_columns
from cxr_core.mimic import FRONTAL_VIEWS, SEED_COLUMNS, mimic_frame, table_path
from cxr_core.mini_report import NO_FINDING_SENTENCES, sentence

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_BY = ("patient", "image")
CHECK_IMAGES = ("exists", "decode", "off")
IMAGE_POLICIES = ("skip", "error")
FRACTIONS = (0.6, 0.2, 0.2)


def _walk(frame: pd.DataFrame, *, per_label: int, seed: int, usable: np.ndarray | None) -> tuple:
    """The quota walk on positions: (order, assigned) with ``order`` the shuffled row positions of
    ``frame`` and ``assigned[i]`` the label index row ``order[i]`` fills, or -1."""
    order = np.random.default_rng(seed).permutation(len(frame))
    values = frame[list(LABELS)].to_numpy(dtype="float64")[order]
    eligible = (values == 1.0) | (values == -1.0)  # (N, 14)
    if usable is not None:
        eligible &= np.asarray(usable, dtype=bool)[order, None]
    assigned = np.full(len(frame), -1, dtype=np.int64)
    for k in range(len(LABELS)):
        candidates = eligible[:, k] & (assigned < 0)
        taken = candidates & (np.cumsum(candidates) <= per_label)
        assigned[taken] = k
    return order, assigned


def balanced_sample(
    frame: pd.DataFrame, *, per_label: int, seed: int = 0, usable: np.ndarray | None = None
) -> pd.DataFrame:
    """Quota sampling with the seed's walk, computed label by label instead of row by row.

    Walking the shuffled images, label k receives exactly the first ``per_label`` images that are eligible
    for k (positive or uncertain) and were not taken by an earlier label: an image goes to an earlier
    eligible label whenever that label's quota is still open, which depends on that label alone. So 14
    vectorised passes give the same assignment as the row loop.

    Args:
        frame: one row per image with the 14 label columns.
        per_label: the quota of every label.
        seed: the shuffle's seed.
        usable: optional (N,) bool mask aligned with ``frame``; unusable rows (a missing image) are passed over
            by the walk without changing the shuffle, as if they had never been there.

    Returns:
        The sampled rows in walk order, with a ``sampled_label`` column.

    Raises:
        CxrError: a quota below 1.
    """
    if per_label < 1:
        raise CxrError(f"per-label quota must be a positive integer, got {per_label}")
    order, assigned = _walk(frame, per_label=per_label, seed=seed, usable=usable)
    keep = assigned >= 0
    out = frame.iloc[order[keep]].copy()
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


def check_fractions(fractions: Sequence[float]) -> None:
    """Raises CxrError unless ``fractions`` are three positive shares summing to 1."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        shown = ",".join(f"{f:g}" for f in fractions)
        raise CxrError(
            f"--fractions must be three positive train,val,test shares summing to 1, got {shown}; e.g. 0.6,0.2,0.2"
        )


def split_frame(
    frame: pd.DataFrame, *, seed: int = 0, by: str = "patient", fractions: Sequence[float] = FRACTIONS
) -> dict[str, pd.DataFrame]:
    """Multilabel iterative stratification into train/val/test.

    Stratifies on the 14 labels (mentioned as positive or uncertain = 1, else 0). With ``by="patient"``
    each patient's images stay together: patients are stratified on the union of their images' labels.
    With ``by="image"`` (the seed's way) a patient's images may land in different splits.

    Raises:
        CxrError: an unknown ``by``, or fewer than 5 patients (images).
    """
    if by not in SPLIT_BY:
        raise CxrError(f"--split-by must be one of {', '.join(SPLIT_BY)}, got {by!r}")
    key = "subject_id" if by == "patient" else "dicom_id"
    y_img = frame[list(LABELS)].isin([1.0, -1.0]).astype(np.int8)
    y = y_img.groupby(frame[key].to_numpy()).max()
    groups = y.index.to_numpy()
    if len(groups) < 5:
        raise CxrError(
            f"only {len(groups)} {by}s left after the filters and sampling, so a split would be empty; a "
            "60/20/20 split needs at least 5: raise --per-label, widen --views, or use another --labeler"
        )
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


def atomic_write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def file_record(path: Path) -> dict:
    """``{path, bytes, sha256}`` of one file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _decode_ok(path: str) -> str | None:
    """None when the image decodes, else the reason (runs in worker processes)."""
    try:
        read_image(path)
    except DECODE_ERRORS as exc:
        return describe_error(exc)
    return None


def check_image_files(paths: Sequence[str], *, mode: str, workers: int = 0) -> list[str | None]:
    """Check each image: ``exists`` (a file is there) or ``decode`` (it decodes fully, in ``workers``
    processes; 0 = every CPU). Returns None for a good image, else the reason."""
    if mode == "exists":
        return [None if os.path.isfile(p) else "missing file" for p in paths]
    workers = workers or len(os.sched_getaffinity(0))
    if workers <= 1 or len(paths) < 64:
        return [_decode_ok(p) for p in paths]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_decode_ok, paths, chunksize=32))


def _sample_checked(
    frame: pd.DataFrame, root: Path, *, per_label: int, seed: int, check: str, workers: int
) -> tuple[pd.DataFrame, dict[int, str], int]:
    """Sample, check the images the walk took, pass over the bad ones and walk again until every sampled
    image is good. Returns the sample, ``{row position in frame: reason}`` of the bad images and the number
    of images checked."""
    usable = np.ones(len(frame), dtype=bool)
    checked = np.zeros(len(frame), dtype=bool)
    values = frame[list(LABELS)].to_numpy(dtype="float64")
    eligible = ((values == 1.0) | (values == -1.0)).any(axis=1)
    bad: dict[int, str] = {}
    rel = frame["path"].to_numpy()
    rounds = 0
    while True:
        order, assigned = _walk(frame, per_label=per_label, seed=seed, usable=usable)
        taken = order[assigned >= 0]
        todo = taken[~checked[taken]] if check != "off" else taken[:0]
        if rounds >= 3 and check == "exists":  # many missing files: cheaper to check every row once
            todo = np.flatnonzero(~checked & eligible)
        if not len(todo):
            break
        rounds += 1
        reasons = check_image_files([str(root / r) for r in rel[todo]], mode=check, workers=workers)
        checked[todo] = True
        for pos, why in zip(todo.tolist(), reasons, strict=True):
            if why is not None:
                bad[pos] = why
                usable[pos] = False
        log.info("image check round %d: %d checked, %d bad so far", rounds, len(todo), len(bad))
    sample = frame.iloc[taken].copy()
    sample["sampled_label"] = np.asarray(LABELS)[assigned[assigned >= 0]]
    return sample.reset_index(drop=True), bad, int(checked.sum())


def _check_mode(check_images: bool | str) -> str:
    mode = {True: "exists", False: "off"}.get(check_images, check_images)
    if mode not in CHECK_IMAGES:
        raise CxrError(f"--check-images must be one of {', '.join(CHECK_IMAGES)}, got {check_images!r}")
    return mode


def prepare_splits(
    mimic_root: str | Path,
    out_dir: str | Path,
    *,
    per_label: int = 5000,
    seed: int = 0,
    labeler: str = "chexpert",
    split_by: str = "patient",
    check_images: bool | str = True,
    views: tuple[str, ...] | None = FRONTAL_VIEWS,
    image_policy: str = "skip",
    workers: int = 0,
    fractions: Sequence[float] = FRACTIONS,
) -> dict:
    """MIMIC root -> ``train_split.csv``, ``val_split.csv``, ``test_split.csv`` and ``manifest.json`` in
    ``out_dir``.

    Args:
        mimic_root: the MIMIC-CXR-JPG root (label, metadata and split tables; ``files/``).
        out_dir: where the CSVs and the manifest go (created).
        per_label: quota of images per label.
        seed: seed of the shuffle and of the split.
        labeler: ``chexpert`` or ``negbio``.
        split_by: ``patient`` (no patient in two splits) or ``image`` (the seed's way).
        check_images: ``exists`` (True), ``decode`` (a full decode, in parallel) or ``off`` (False); only the
            images the walk reaches are checked.
        views: ViewPosition values to keep; None = all.
        image_policy: ``skip`` a missing or unreadable image (counted; the walk takes the next one) or raise
            an ``error``.
        workers: processes for ``check_images="decode"``; 0 = every CPU.
        fractions: train/val/test shares of the patients (or images), summing to 1; a large test share is
            cheap (it is evaluated once, for the chosen configurations only) and narrows the test intervals.

    Returns:
        The manifest (what ``manifest.json`` holds): inputs, settings, counts, rows dropped and why, rows
        per split, per label per split, and the output files.

    Raises:
        CxrError: bad input (see :func:`mimic_frame`), a bad image under ``image_policy="error"``, or a split
            left empty.
    """
    check = _check_mode(check_images)
    if image_policy not in IMAGE_POLICIES:
        raise CxrError(f"--image-policy must be one of {', '.join(IMAGE_POLICIES)}, got {image_policy!r}")
    if split_by not in SPLIT_BY:
        raise CxrError(f"--split-by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")
    check_fractions(fractions)
    if per_label < 1:
        raise CxrError(f"per-label quota must be a positive integer, got {per_label}")
    root = Path(mimic_root)
    frame = mimic_frame(root, labeler=labeler, views=views, check_images=False)
    sampled, bad, n_checked = _sample_checked(
        frame, root, per_label=per_label, seed=seed, check=check, workers=workers
    )
    if bad and image_policy == "error":
        pos, why = next(iter(sorted(bad.items())))
        raise CxrError(
            f"{len(bad)} sampled images are missing or unreadable, first: {root / frame['path'].iloc[pos]} "
            f"({why}); fix the files, or use --image-policy skip"
        )
    if sampled.empty and bad:
        pos, why = next(iter(sorted(bad.items())))
        raise CxrError(
            f"{mimic_root}: every eligible image is missing or unreadable ({len(bad)}, first: "
            f"{root / frame['path'].iloc[pos]} ({why})); check that files/ under --mimic-root holds the JPEGs"
        )
    if sampled.empty:
        raise CxrError(f"{mimic_root}: no image has a positive or uncertain label, so sampling kept nothing")
    splits = split_frame(sampled, seed=seed, by=split_by, fractions=fractions)
    for name, part in splits.items():
        if part.empty:
            raise CxrError(f"the {name} split is empty ({len(sampled)} images sampled); raise --per-label")
    settings = {"labeler": labeler, "views": list(views) if views is not None else "all", "per_label": per_label,
                "shuffle_seed": seed, "split_seed": seed, "split_by": split_by, "fractions": list(fractions),
                "check_images": check, "image_policy": image_policy}  # fmt: skip
    return _write_outputs(Path(out_dir), splits, lambda outputs: _manifest(
        root, frame, sampled, splits, bad, outputs, n_checked, settings=settings))  # fmt: skip


def _write_outputs(out_dir: Path, splits: dict[str, pd.DataFrame], manifest_of) -> dict:
    """Write the split CSVs and the manifest under temporary names, then rename them into place together:
    a run that fails (or is interrupted) leaves the previous files as they were and no half-written file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []  # (temporary, final)
    try:
        outputs = {}
        for name, part in splits.items():
            path = out_dir / f"{name}_split.csv"
            staged.append((path.with_name(f".{path.name}.tmp-{os.getpid()}"), path))
            seed_frame(part).to_csv(staged[-1][0], index=False)
            outputs[path.name] = {"rows": len(part), **file_record(staged[-1][0]), "path": str(path.resolve())}
        manifest = manifest_of(outputs)
        path = out_dir / "manifest.json"
        staged.append((path.with_name(f".{path.name}.tmp-{os.getpid()}"), path))
        staged[-1][0].write_text(json.dumps(manifest, indent=2) + "\n")
        for tmp, path in staged:  # everything is written: only renames are left
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return manifest


def _manifest(root, frame, sampled, splits, bad, outputs, n_checked, *, settings: dict) -> dict:
    values = frame[list(LABELS)].to_numpy(dtype="float64")
    eligible = ((values == 1.0) | (values == -1.0)).any(axis=1)
    a = frame.attrs
    dropped = {
        "view_not_kept": a["images_view_dropped"],
        "no_positive_or_uncertain_label": int((~eligible).sum()),
        "missing_file": sum(why == "missing file" for why in bad.values()),
        "unreadable_file": sum(why != "missing file" for why in bad.values()),
        "quota_full": int(eligible.sum()) - len(bad) - len(sampled),  # every checked image is eligible
    }
    return {
        "created_by": "cxr_core.prepare.prepare_splits",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mimic_root": str(root.resolve()),
        "inputs": {
            name: file_record(table_path(root, table))
            for name, table in (("labels", settings["labeler"]), ("metadata", "metadata"), ("split", "split"))
        },
        "settings": settings,
        "counts": {
            "images_total": a["images_total"],
            "patients_total": a["patients_total"],
            "studies_total": a["studies_total"],
            "images_after_view_filter": len(frame),
            "images_without_label_row": a["no_label_row"],
            "images_without_official_split": a["no_split_row"],
            "eligible": int(eligible.sum()),
            "images_checked": n_checked,
            "sampled": len(sampled),
        },
        "dropped": dropped,
        "dropped_images": [
            {"path": str(root / frame["path"].iloc[pos]), "reason": why}
            for pos, why in sorted(bad.items())[:50]
        ],
        "rows": {name: len(part) for name, part in splits.items()},
        "patients": {name: int(part["subject_id"].nunique()) for name, part in splits.items()},
        "rows_per_label": {
            name: {label: int(part[label].isin([1.0, -1.0]).sum()) for label in LABELS}
            for name, part in splits.items()
        },
        "quota_label": {
            name: {label: int((part["sampled_label"] == label).sum()) for label in LABELS}
            for name, part in splits.items()
        },
        "outputs": outputs,
    }


def read_split(split_dir: str | Path, split: str) -> pd.DataFrame:
    """Read ``{split}_split.csv`` (seed format) from ``split_dir``.

    Label columns may have spaced or underscored names (renamed to the canonical ones); a file without
    ``mini_report`` gets it written from the labels. An optional ``path`` column (relative to the image root)
    overrides the path MIMIC's layout derives from the ids.

    Raises:
        CxrError: the file is missing, has no rows or lacks a label column.
    """
    if split not in SPLITS:
        raise CxrError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = Path(split_dir) / f"{split}_split.csv"
    if not path.is_file():
        raise CxrError(
            f"{path} does not exist; run `python -m jobs.prepare_data --mimic-root DIR --out {split_dir}`"
        )
    try:
        frame = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as exc:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise CxrError(
            f"{path} is not a readable CSV ({exc}); prepare the data again with jobs.prepare_data"
        ) from None
    if frame.empty:
        raise CxrError(f"{path} has no rows; prepare the data again with a larger --per-label")
    frame = frame.rename(columns=canonical_label_columns(frame.columns))
    missing = [label for label in LABELS if label not in frame.columns]
    if missing:
        raise CxrError(
            f"{path}: missing label columns {', '.join(missing)}; a split CSV has the 14 CheXpert label "
            "columns (spaced or underscored names) as the seed's train_split.csv does"
        )
    if "mini_report" not in frame.columns:
        frame["mini_report"] = mini_reports(frame)
    return frame
