"""MIMIC-CXR-JPG ingestion: the official on-disk layout -> one frame of frontal images with their labels.

Layout (files may be ``.csv`` or ``.csv.gz``)::

    ROOT/mimic-cxr-2.0.0-chexpert.csv.gz   one row per study: subject_id, study_id, 14 labels (spaced names)
    ROOT/mimic-cxr-2.0.0-negbio.csv.gz     the same, from the NegBio labeler
    ROOT/mimic-cxr-2.0.0-metadata.csv.gz   one row per image (dicom_id, ViewPosition, Rows, Columns, ...)
    ROOT/mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split (train / validate / test)
    ROOT/files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg

The seed study's split CSVs (``train_split.csv`` ...) hold one row per image with the columns of
:data:`SEED_COLUMNS`; :func:`seed_frame` writes exactly those.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.errors import CxrError
from cxr_core.labels import LABELS, canonical_label_columns

PREFIX = "mimic-cxr-2.0.0-"
LABELERS = ("chexpert", "negbio")
FRONTAL_VIEWS = ("PA", "AP")

# The seed's label columns come in MIMIC's (alphabetical) column order, not in report order.
SEED_LABEL_ORDER: tuple[str, ...] = tuple(sorted(LABELS))
SEED_COLUMNS: tuple[str, ...] = (
    ("subject_id", "study_id", "dicom_id")
    + SEED_LABEL_ORDER
    + ("split", "ViewPosition", "Rows", "Columns", "study_datetime", "unique_id", "mini_report")
)


def table_path(root: Path, name: str) -> Path:
    """The path of ``mimic-cxr-2.0.0-{name}.csv`` or ``.csv.gz`` under ``root``.

    Raises:
        CxrError: neither file exists.
    """
    for suffix in (".csv", ".csv.gz"):
        path = root / f"{PREFIX}{name}{suffix}"
        if path.is_file():
            return path
    raise CxrError(
        f"{root}: no {PREFIX}{name}.csv(.gz) found; point --mimic-root at the MIMIC-CXR-JPG root folder "
        f"(the one holding {PREFIX}metadata.csv.gz and files/)"
    )


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` with a malformed, empty or non-text file (or absent ``usecols``) as one CxrError."""
    try:
        return pd.read_csv(path, **kwargs)
    except (ValueError, EOFError, OSError) as exc:  # ParserError, EmptyDataError, UnicodeDecodeError, bad gzip
        raise CxrError(
            f"{path}: cannot read it as a CSV table ({exc}); replace it with the file from MIMIC-CXR-JPG"
        ) from None


def read_labels(path: Path) -> pd.DataFrame:
    """One labeler table (CheXpert or NegBio, ``.csv`` or ``.csv.gz``), label columns renamed to the canonical
    (underscored) names and checked.

    Raises:
        CxrError: a missing column, a label value other than 1.0 / 0.0 / -1.0 / blank, or a study listed twice.
    """
    frame = _read_csv(path)
    missing_ids = {"subject_id", "study_id"} - set(frame.columns)
    renames = canonical_label_columns(frame.columns)
    if missing_ids or len(renames) != len(LABELS):
        absent = sorted(missing_ids | (set(LABELS) - set(renames.values())))
        raise CxrError(
            f"{path}: missing columns {', '.join(absent)}; a label file needs subject_id, study_id and the "
            "14 CheXpert label columns (spaced or underscored names)"
        )
    frame = frame.rename(columns=renames)[["subject_id", "study_id", *LABELS]]
    values = frame[list(LABELS)].apply(pd.to_numeric, errors="coerce")
    bad = ~(values.isna() | values.isin([1.0, 0.0, -1.0])) | (values.isna() & frame[list(LABELS)].notna())
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        value = frame[LABELS[col]].iloc[row]
        value = value.item() if isinstance(value, np.generic) else value  # 2.0, not np.float64(2.0)
        raise CxrError(
            f"{path}: label {LABELS[col]} has value {value!r} in row {row + 2}; "
            "label values must be 1.0, 0.0, -1.0 or blank"
        )
    frame[list(LABELS)] = values.astype("float64")
    dup = frame.duplicated(["subject_id", "study_id"])
    if dup.any():
        first = frame.loc[dup].iloc[0]
        raise CxrError(
            f"{path}: study {first['study_id']} of subject {first['subject_id']} is listed more than once "
            f"({int(dup.sum())} repeated rows); a label file has one row per study (two files concatenated?)"
        )
    return frame


def image_relpaths(frame: pd.DataFrame) -> pd.Series:
    """``files/p10/p10000032/s50414267/{dicom_id}.jpg`` for every row (vectorised string building)."""
    subject = frame["subject_id"].astype("int64").astype(str)
    return (
        "files/p"
        + subject.str[:2]
        + "/p"
        + subject
        + "/s"
        + frame["study_id"].astype("int64").astype(str)
        + "/"
        + frame["dicom_id"].astype(str)
        + ".jpg"
    )


def _study_datetime(frame: pd.DataFrame) -> pd.Series:
    """StudyDate 21871127 + StudyTime 220857.546 -> '2187-11-27 22:08:57.546' (fraction kept when non-zero)."""
    date = frame["StudyDate"].astype("int64").astype(str)
    time = frame["StudyTime"].astype(str)
    whole = time.str.split(".").str[0].str.zfill(6)
    # Milliseconds as the seed wrote them: none when zero, else at least three digits ("01.920").
    frac = time.str.split(".").str[1].fillna("").str.rstrip("0")
    frac = frac.where(frac == "", "." + frac.str.ljust(3, "0"))
    return (
        date.str[:4] + "-" + date.str[4:6] + "-" + date.str[6:8] + " "
        + whole.str[:2] + ":" + whole.str[2:4] + ":" + whole.str[4:6] + frac
    )  # fmt: skip


META_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
)


def parse_views(text: str | None) -> tuple[str, ...] | None:
    """``"PA,AP"`` -> ("PA", "AP"); ``"all"`` (or None) -> None, meaning every ViewPosition, blanks included.

    Raises:
        CxrError: an empty list.
    """
    if text is None or str(text).strip().lower() == "all":
        return None
    views = tuple(v.strip() for v in str(text).split(",") if v.strip())
    if not views:
        raise CxrError(f"--views must list ViewPosition values (e.g. PA,AP) or be 'all', got {text!r}")
    return views


def mimic_frame(
    root: str | Path,
    *,
    labeler: str = "chexpert",
    views: tuple[str, ...] | None = FRONTAL_VIEWS,
    check_images: bool = True,
) -> pd.DataFrame:
    """Read a MIMIC-CXR-JPG root into one frame: one row per image of the chosen views.

    Args:
        root: the MIMIC-CXR-JPG root folder.
        labeler: ``chexpert`` (default) or ``negbio``.
        views: ViewPosition values to keep (frontal PA and AP by default); None keeps every image.
        check_images: drop rows whose image file does not exist (their paths in ``frame.attrs["missing"]``).

    Returns:
        Columns: subject_id, study_id, dicom_id, the 14 labels (canonical names, NaN = blank), split (the
        official one), ViewPosition, Rows, Columns, study_datetime, path (relative to ``root``). ``attrs``
        holds the counts: ``images_total``, ``patients_total``, ``studies_total``, ``images_view_dropped``,
        ``no_label_row`` (images whose study the label file lacks), ``no_split_row``, ``missing``.

    Raises:
        CxrError: the root, a table or a column is missing, a label value is invalid, or no image is left.
    """
    root = Path(root)
    if not root.is_dir():
        raise CxrError(
            f"MIMIC root {root} does not exist; pass --mimic-root the folder holding {PREFIX}*.csv.gz"
        )
    if labeler not in LABELERS:
        raise CxrError(f"labeler must be one of {', '.join(LABELERS)}, got {labeler!r}")
    meta_path = table_path(root, "metadata")
    header = _read_csv(meta_path, nrows=0).columns
    missing_cols = sorted(set(META_COLUMNS) - set(header))
    if missing_cols:
        raise CxrError(f"{meta_path}: missing columns {', '.join(missing_cols)}")
    meta = _read_csv(
        meta_path,
        usecols=list(META_COLUMNS),
        dtype={"dicom_id": str, "ViewPosition": str, "StudyTime": str},
        keep_default_na=False,
        na_values={"Rows": [""], "Columns": [""], "StudyDate": [""]},
    )
    n_images = len(meta)
    patients, studies = int(meta["subject_id"].nunique()), int(meta["study_id"].nunique())
    if views is not None:
        meta = meta[meta["ViewPosition"].isin(views)]
    labels = read_labels(table_path(root, labeler))
    split = _read_csv(table_path(root, "split"), usecols=["dicom_id", "split"], dtype={"dicom_id": str})
    split = split.drop_duplicates("dicom_id")
    frame = meta.merge(labels, on=["subject_id", "study_id"], how="left", indicator="_labels").merge(
        split, on="dicom_id", how="left"
    )
    frame["study_datetime"] = _study_datetime(frame)
    frame["path"] = image_relpaths(frame)
    frame.attrs.update(
        images_total=n_images,
        patients_total=patients,
        studies_total=studies,
        images_view_dropped=n_images - len(meta),
        no_label_row=int((frame["_labels"] == "left_only").sum()),
        no_split_row=int(frame["split"].isna().sum()),
    )
    missing: list[str] = []
    if check_images:
        exists = np.fromiter(((root / p).is_file() for p in frame["path"]), dtype=bool, count=len(frame))
        missing = frame.loc[~exists, "path"].tolist()
        frame = frame[exists]
    frame.attrs["missing"] = missing
    if frame.empty:
        shown = "every view" if views is None else f"views {', '.join(views)}"
        raise CxrError(
            f"{root}: no images left after keeping {shown} and existing files; check the view filter "
            "(--views) and that files/ holds the JPEGs"
        )
    cols = ["subject_id", "study_id", "dicom_id", *LABELS, "split", "ViewPosition", "Rows", "Columns"]
    out = frame[[*cols, "study_datetime", "path"]].reset_index(drop=True)
    out.attrs = dict(frame.attrs)
    return out
