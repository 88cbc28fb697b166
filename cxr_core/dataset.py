"""One split in memory, ready for training: preprocessed pixels, tokenized reports, batches with loss masks.

Images are decoded and run through the model's own image processor once per split, not once per epoch.
The captioning objective: GIT puts the image tokens first and computes the loss only on text; here the
labels are the report's token ids with -100 at padding, so padding carries no loss either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cxr_core.errors import CxrError
from cxr_core.labels import LABELS
from cxr_core.mimic import image_relpaths
from cxr_core.prepare import read_split

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


@dataclass
class SplitData:
    """A split, preprocessed.

    Attributes:
        pixel_values: (N, 3, H, W) float32, normalised by the model's image processor.
        input_ids: N token-id lists of the reports, ``[CLS] ... [SEP]``.
        reports: the N reference reports.
        labels: (N, 14) label values (1, 0, -1, NaN).
        skipped: paths of images that were missing or unreadable (policy ``skip``).
    """

    pixel_values: torch.Tensor
    input_ids: list[list[int]]
    reports: list[str]
    labels: np.ndarray
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.reports)


def safe_image_path(root: Path, rel: str) -> Path:
    """``root / rel``, refusing a path that would leave ``root`` (``..``, absolute paths)."""
    path = (root / rel).resolve()
    if Path(rel).is_absolute() or not path.is_relative_to(root.resolve()):
        raise CxrError(
            f"image path {rel!r} leaves the image root {root}; paths must be relative and stay inside it"
        )
    return path


def read_image(path: Path) -> Image.Image:
    """Open and fully decode an image (so a truncated file fails here, not later)."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB") if img.mode != "RGB" else img.copy()


def load_split(
    split_dir: str | Path,
    split: str,
    *,
    image_root: str | Path,
    processor,
    limit: int = 0,
    policy: str = "skip",
    chunk: int = 64,
) -> SplitData:
    """Read ``{split}_split.csv`` and preprocess its images and reports.

    Raises:
        CxrError: a missing split file, an image that escapes the root, an unreadable image under
            ``policy="error"``, or a split with no readable image.
    """
    frame = read_split(split_dir, split)
    if limit:
        frame = frame.head(limit)
    root = Path(image_root)
    if not root.is_dir():
        raise CxrError(
            f"image root {root} does not exist; set data.image_root to the MIMIC-CXR-JPG root folder"
        )
    rels = image_relpaths(frame).tolist()
    keep: list[int] = []
    skipped: list[str] = []
    chunks: list[torch.Tensor] = []
    batch: list[Image.Image] = []
    for i, rel in enumerate(rels):
        path = safe_image_path(root, rel)
        try:
            batch.append(read_image(path))
            keep.append(i)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            if policy == "error":
                raise CxrError(
                    f"cannot read image {path}: {exc}; fix or remove the file, or use image_policy skip"
                ) from None
            skipped.append(str(path))
        if len(batch) == chunk or (i == len(rels) - 1 and batch):
            chunks.append(processor.image_processor(images=batch, return_tensors="pt")["pixel_values"])
            batch = []
    if skipped:
        log.warning("%s: skipped %d unreadable images, first: %s", split, len(skipped), skipped[:3])
    if not keep:
        raise CxrError(f"the {split} split has no readable image under {root}; check data.image_root")
    frame = frame.iloc[keep]
    reports = frame["mini_report"].fillna("").astype(str).tolist()
    input_ids = processor.tokenizer(reports, truncation=True, max_length=512)["input_ids"]
    return SplitData(
        pixel_values=torch.cat(chunks),
        input_ids=input_ids,
        reports=reports,
        labels=frame[list(LABELS)].to_numpy(dtype=float),
        skipped=skipped,
    )


def text_batch(ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad token lists to the batch's longest: input_ids, attention_mask, labels (-100 at padding)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    labels = input_ids.masked_fill(mask == 0, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def batches(data: SplitData, *, batch_size: int, pad_id: int, generator: torch.Generator | None = None):
    """Yield training/eval batches (a shuffled order when ``generator`` is given)."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        batch = text_batch([data.input_ids[i] for i in idx.tolist()], pad_id)
        batch["pixel_values"] = data.pixel_values[idx]
        yield batch
