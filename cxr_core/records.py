"""Per-image evaluation records: what every evaluation keeps of each image, for paired statistics.

An evaluation (validation at every epoch of a trial, ``jobs.evaluate`` on the test split) keeps, for every
scored image, keyed by the image's row position in the split CSV:

- ``pred``: the generated report parsed back into the 14 labels (1.0 / 0.0 / -1.0, NaN = not mentioned),
- ``loss_sum`` and ``tokens``: the teacher-forced cross-entropy summed over the reference report's tokens and
  their count (so ``sum(loss_sum) / sum(tokens)`` is the split's loss exactly as the trial reports it),
- ``sentences`` and ``unparsed``: sentences in the generated report and those the parser could not read.

Nothing from the source data is stored (no ids, no text): the reference labels are read back from the split
CSV by row position (:func:`reference_labels`). One record is about 24 bytes per image before compression
(13,000 MIMIC validation images: ~310 KB per epoch), written as a compressed ``.npz``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_core.errors import CxrError
from cxr_core.labels import LABELS
from cxr_core.mini_report import parse_report

RECORDS_DIR = "records"  # inside a trial's folder: records/val_epoch001.npz, ...
_NOT_MENTIONED = 2  # int8 code of NaN on disk
FIELDS = ("rows", "pred", "loss_sum", "tokens", "sentences", "unparsed")


@dataclass
class ImageRecords:
    """One evaluation of one model on one split (see the module docstring); arrays of length N."""

    rows: np.ndarray
    pred: np.ndarray
    loss_sum: np.ndarray
    tokens: np.ndarray
    sentences: np.ndarray
    unparsed: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def image_records(
    generated: Sequence[str], *, rows: Sequence[int], loss_sum: Sequence[float], tokens: Sequence[int]
) -> ImageRecords:
    """Records of one evaluation from its generated reports and per-image teacher-forced losses."""
    parsed = [parse_report(text) for text in generated]
    pred = np.array([p.values for p in parsed], dtype=float).reshape(-1, len(LABELS))
    return ImageRecords(
        rows=np.asarray(rows, dtype=np.int32),
        pred=pred,
        loss_sum=np.asarray(loss_sum, dtype=np.float32),
        tokens=np.asarray(tokens, dtype=np.int32),
        sentences=np.array([p.n_sentences for p in parsed], dtype=np.int16),
        unparsed=np.array([p.n_unparsed for p in parsed], dtype=np.int16),
    )


def records_name(split: str, epoch: int) -> str:
    """``val_epoch003.npz``: a trial's records of ``split`` at ``epoch`` (inside its ``records/`` folder)."""
    return f"{split}_epoch{int(epoch):03d}.npz"


def to_bytes(rec: ImageRecords) -> bytes:
    """The compressed ``.npz`` of a record (labels as int8, NaN coded as 2)."""
    codes = np.where(np.isnan(rec.pred), _NOT_MENTIONED, rec.pred).astype(np.int8)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        rows=rec.rows,
        pred=codes,
        loss_sum=rec.loss_sum,
        tokens=rec.tokens,
        sentences=rec.sentences,
        unparsed=rec.unparsed,
    )
    return buf.getvalue()


def save_records(rec: ImageRecords, path: str | Path) -> Path:
    """Write ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(to_bytes(rec))
    tmp.replace(path)
    return path


def from_bytes(data: bytes, *, what: str = "records") -> ImageRecords:
    """Read a record written by :func:`to_bytes`.

    Raises:
        CxrError: the bytes are not such a record.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in FIELDS}
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise CxrError(f"{what} is not a per-image record file ({type(exc).__name__}: {exc})") from None
    pred = arrays["pred"].astype(float)
    pred[arrays["pred"] == _NOT_MENTIONED] = np.nan
    arrays["pred"] = pred
    return ImageRecords(**arrays)


def load_records(path: str, *, filesystem=None) -> ImageRecords:
    """Read a record from a local path, or through a pyarrow ``filesystem`` (a storage URI's)."""
    if filesystem is None:
        return from_bytes(Path(path).read_bytes(), what=str(path))
    with filesystem.open_input_file(path) as f:
        return from_bytes(f.read(), what=str(path))


def reference_labels(split_dir: str | Path, split: str) -> np.ndarray:
    """(rows, 14) reference label values of a split CSV, in row order (the key of every record)."""
    from cxr_core.prepare import read_split

    frame = read_split(split_dir, split)
    missing = [c for c in LABELS if c not in frame]
    if missing:
        raise CxrError(f"{split} split in {split_dir} has no label columns {', '.join(missing)}")
    return frame[list(LABELS)].to_numpy(dtype=float)


def align(records: Sequence[ImageRecords]) -> np.ndarray:
    """The row positions every record has (images skipped by one evaluation are left out of all), sorted."""
    if not records:
        return np.zeros(0, dtype=np.int32)
    common = records[0].rows
    for rec in records[1:]:
        common = np.intersect1d(common, rec.rows)
    return np.sort(common)


def take(rec: ImageRecords, rows: np.ndarray) -> ImageRecords:
    """The record restricted to (and ordered by) ``rows``, which it must all have."""
    pos = {int(r): i for i, r in enumerate(rec.rows)}
    idx = np.array([pos[int(r)] for r in rows], dtype=np.int64)
    return ImageRecords(
        rows=rec.rows[idx],
        pred=rec.pred[idx],
        loss_sum=rec.loss_sum[idx],
        tokens=rec.tokens[idx],
        sentences=rec.sentences[idx],
        unparsed=rec.unparsed[idx],
    )
