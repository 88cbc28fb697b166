"""One split ready for training: pixels, tokenized reports, batches with loss masks.

Pixels come from the node's image cache (:mod:`cxr_core.cache`: decoded and resized once, memory-mapped as
uint8, normalised in torch at batch time) or, with ``cache_dir=None``, from the model's own image processor,
run once per split. Both give the same numbers to float rounding. The captioning objective: GIT puts the image
tokens first and computes the loss only on text; here the labels are the report's token ids with -100 at
padding, so padding carries no loss either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_core.cache import PixelSpec, image_cache, pixel_spec
from cxr_core.errors import CxrError
from cxr_core.images import DECODE_ERRORS, check_relative_paths, describe_error, read_image, safe_image_path
from cxr_core.labels import LABELS
from cxr_core.mimic import image_relpaths
from cxr_core.prepare import read_split

__all__ = ["SplitData", "CachedPixels", "load_split", "batches", "text_batch", "split_image_paths"]
__all__ += ["read_image", "safe_image_path"]

log = logging.getLogger(__name__)
IGNORE_INDEX = -100
IMAGE_POLICIES = ("skip", "error")


class CachedPixels:
    """Rows of an image cache, normalised on the fly: ``self[idx]`` -> (B, 3, H, W) float32.

    Holds the memory-mapped (N, C, H, W) uint8 array (C = 1 for grayscale) and the rows of the split that
    are kept; pickles as the file's path, so DataLoader workers and Ray reopen the map instead of copying it.
    """

    def __init__(self, array_path: str | Path, rows: np.ndarray, spec: PixelSpec):
        self.array_path = str(array_path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.spec = spec
        self._pixels = np.load(self.array_path, mmap_mode="r")
        self._coeffs: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getstate__(self) -> dict:
        return {"array_path": self.array_path, "rows": self.rows, "spec": self.spec}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["array_path"], state["rows"], state["spec"])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        h, w = self._pixels.shape[2:]
        return (len(self.rows), self.spec.channels, h, w)

    def uint8(self, idx) -> torch.Tensor:
        """(B, C, H, W) uint8 rows ``idx`` of the split (any order), read from the map in file order."""
        if isinstance(idx, torch.Tensor):
            idx = idx.numpy()
        rows = self.rows[np.asarray(idx, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self._pixels.shape[1:]), dtype=np.uint8)
        out[order] = self._pixels[rows[order]]
        return torch.from_numpy(out)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 on any device -> (B, channels, H, W) float32: ``x * scale / std - mean / std``."""
        a, b = self._coeffs.get(x.device) or self._make_coeffs(x.device)
        if x.shape[1] != self.spec.channels:
            x = x.expand(-1, self.spec.channels, -1, -1)  # grayscale: the processor's RGB copy, made here
        return torch.addcmul(b, x.to(torch.float32), a)

    def _make_coeffs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.spec
        scale = np.full(s.channels, s.rescale_factor if s.do_rescale else 1.0)
        mean = np.asarray(s.image_mean) if s.do_normalize else np.zeros(s.channels)
        std = np.asarray(s.image_std) if s.do_normalize else np.ones(s.channels)
        # (1, C, 1, 1) float32: x * a + b == (x * scale - mean) / std
        a = torch.tensor(scale / std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        b = torch.tensor(-mean / std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self._coeffs[device] = (a, b)
        return a, b

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)):
            return self.normalize(self.uint8([idx]))[0]
        if isinstance(idx, slice):
            idx = np.arange(len(self))[idx]
        return self.normalize(self.uint8(idx))


@dataclass
class SplitData:
    """A split, preprocessed.

    Attributes:
        pixel_values: indexable by a batch of row indices -> (B, 3, H, W) float32, normalised as the model's
            image processor does: a :class:`CachedPixels` (image cache) or a tensor (processor path).
        input_ids: N token-id lists of the reports, ``[CLS] ... [SEP]``.
        reports: the N reference reports.
        labels: (N, 14) label values (1, 0, -1, NaN).
        skipped: paths of images that were missing or unreadable (policy ``skip``).
        skip_reasons: why, one entry per skipped path (``missing file``, ``unreadable: ...``).
        rows: (N,) positions of the kept images in the split CSV (the key of per-image records); 0..N-1 when
            nothing was skipped.
    """

    pixel_values: torch.Tensor | CachedPixels
    input_ids: list[list[int]]
    reports: list[str]
    labels: np.ndarray
    skipped: list[str] = field(default_factory=list)
    skip_reasons: list[str] = field(default_factory=list)
    rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = np.arange(len(self.reports), dtype=np.int32)

    def __len__(self) -> int:
        return len(self.reports)


def split_image_paths(frame: pd.DataFrame, image_root: str | Path) -> list[str]:
    """Absolute image paths of a split's rows: its ``path`` column when it has one (relative to the image
    root), else MIMIC's ``files/p../p{subject}/s{study}/{dicom}.jpg`` built from the ids (seed format).

    Raises:
        CxrError: a path would leave the image root (``..``, absolute paths), or ids are missing.
    """
    root = Path(image_root).resolve()
    if "path" in frame.columns:
        rels = frame["path"]
    else:
        missing = {"subject_id", "study_id", "dicom_id"} - set(frame.columns)
        if missing:
            raise CxrError(
                f"split CSV has no path column and lacks {', '.join(sorted(missing))}; give a path column "
                "(relative to data.image_root) or the MIMIC ids"
            )
        rels = image_relpaths(frame)
    check_relative_paths(rels, root)
    prefix = str(root).rstrip("/") + "/"
    return [prefix + rel for rel in rels.astype(str).tolist()]


def _failure_report(split: str, failures: list[tuple[int, str, str]], policy: str, root: Path) -> None:
    if not failures:
        return
    first = "; ".join(f"{path} ({why})" for _, path, why in failures[:3])
    if policy == "error":
        raise CxrError(
            f"the {split} split has {len(failures)} missing or unreadable images under {root}, first: {first}; "
            "fix or remove them, or set data.image_policy: skip"
        )
    log.warning("%s split: skipped %d missing or unreadable images, first: %s", split, len(failures), first)


def _processor_pixels(
    paths: list[str], processor, *, chunk: int, policy: str, split: str, root: Path
) -> tuple[torch.Tensor | None, list[tuple[int, str, str]]]:
    """The processor path: decode every image and run the processor on chunks; (N_ok, 3, H, W) float."""
    chunks: list[torch.Tensor] = []
    failures: list[tuple[int, str, str]] = []
    batch: list = []
    for i, path in enumerate(paths):
        try:
            batch.append(read_image(path).convert("RGB"))
        except DECODE_ERRORS as exc:
            failures.append((i, path, describe_error(exc)))
            if policy == "error":
                _failure_report(split, failures, policy, root)
        if batch and (len(batch) == chunk or i == len(paths) - 1):
            chunks.append(processor.image_processor(images=batch, return_tensors="pt")["pixel_values"])
            batch = []
    return (torch.cat(chunks) if chunks else None), failures


def load_split(
    split_dir: str | Path,
    split: str,
    *,
    image_root: str | Path,
    processor,
    limit: int = 0,
    policy: str = "skip",
    chunk: int = 64,
    cache_dir: str | Path | None = None,
    workers: int = 0,
) -> SplitData:
    """Read ``{split}_split.csv`` and preprocess its images and reports.

    Args:
        split_dir: folder of the split CSVs (this project's or the seed's, same format).
        split: ``train``, ``val`` or ``test``.
        image_root: folder the image paths are relative to (the MIMIC-CXR-JPG root).
        processor: the model's ``GitProcessor`` (image processor + tokenizer).
        limit: keep only the first N rows (0 = all).
        policy: ``skip`` a missing or unreadable image (logged, listed in ``skipped``) or raise an ``error``.
        chunk: images per processor call (processor path).
        cache_dir: the image cache folder; None = run the processor here instead (slow at full size).
        workers: processes that build the cache; 0 = every CPU this process may use.

    Raises:
        CxrError: a missing split file, an image path that leaves the root, an unreadable image under
            ``policy="error"``, or a split with no readable image.
    """
    if policy not in IMAGE_POLICIES:
        raise CxrError(f"image policy must be one of {', '.join(IMAGE_POLICIES)}, got {policy!r}")
    frame = read_split(split_dir, split)
    if limit:
        frame = frame.head(limit)
    root = Path(image_root)
    if not root.is_dir():
        raise CxrError(
            f"image root {root} does not exist; set data.image_root to the MIMIC-CXR-JPG root folder"
        )
    paths = split_image_paths(frame, root)
    if cache_dir is not None:
        spec = pixel_spec(processor)
        cache = image_cache(paths, spec, cache_dir=cache_dir, workers=workers)
        failures = cache.failures
        _failure_report(split, failures, policy, root)
        keep = np.setdiff1d(np.arange(len(paths)), np.array([r for r, _, _ in failures], dtype=np.int64))
        pixels: torch.Tensor | CachedPixels | None = CachedPixels(cache.path / "pixels.npy", keep, spec)
        log.info("%s split: image cache %s (%s)", split, cache.path, "built" if cache.built else "reused")
    else:
        pixels, failures = _processor_pixels(
            paths, processor, chunk=chunk, policy=policy, split=split, root=root
        )
        _failure_report(split, failures, policy, root)
        keep = np.setdiff1d(np.arange(len(paths)), np.array([r for r, _, _ in failures], dtype=np.int64))
    if not len(keep):
        raise CxrError(f"the {split} split has no readable image under {root}; check data.image_root")
    frame = frame.iloc[keep]
    reports = frame["mini_report"].fillna("").astype(str).tolist()
    input_ids = processor.tokenizer(reports, truncation=True, max_length=512)["input_ids"]
    return SplitData(
        pixel_values=pixels,
        input_ids=input_ids,
        reports=reports,
        labels=frame[list(LABELS)].to_numpy(dtype=float),
        skipped=[path for _, path, _ in failures],
        skip_reasons=[why for _, _, why in failures],
        rows=keep.astype(np.int32),
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


def name_weights(labels: torch.Tensor, marks: dict[str, int], weight: float) -> torch.Tensor:
    """Per-token loss weights of a batch of report tokens ``labels`` (B, T; -100 at padding): ``weight`` on the
    tokens that name a finding stated present, the ``N`` of the template's "Evidence of N is present." (after
    "evidence of" not preceded by "no", up to "is"), 1 on every other token, 0 at padding.

    ``marks``: the token ids of ``evidence``, ``of``, ``no`` and ``is`` in the model's tokenizer
    (:func:`template_marks`). Aligned with ``labels``: position ``t`` weighs the prediction of ``labels[:, t]``.
    """
    out = (labels != IGNORE_INDEX).float()
    ev, of, no, is_ = marks["evidence"], marks["of"], marks["no"], marks["is"]
    for row, seq in enumerate(labels.tolist()):
        t = 0
        while t + 2 < len(seq):
            if seq[t] == ev and seq[t + 1] == of and (t == 0 or seq[t - 1] != no):
                end = t + 2
                while end < len(seq) and seq[end] not in (is_, IGNORE_INDEX):
                    end += 1
                if end < len(seq) and seq[end] == is_:  # a whole "evidence of N is" sentence
                    out[row, t + 2 : end] = weight
                t = end
            else:
                t += 1
    return out


def template_marks(tokenizer) -> dict[str, int]:
    """The token ids :func:`name_weights` reads the report template by: one token each for "evidence", "of",
    "no" and "is", as the tokenizer spells the template's words (lower-cased or not)."""
    ids = tokenizer("No evidence of is", add_special_tokens=False).input_ids
    if len(ids) != 4:
        raise CxrError(f"the tokenizer splits the template's words 'no evidence of is' into {len(ids)} tokens, "
                       "not 4; train.name_weight needs one token each: set train.name_weight to 1")  # fmt: skip
    return dict(zip(("no", "evidence", "of", "is"), ids, strict=True))


def sample_weights(labels: np.ndarray, threshold: float) -> np.ndarray:
    """Repeat-factor sampling weights (Gupta et al. 2019, LVIS) of the images whose label rows are ``labels``
    ((N, 14): 1, 0, -1, NaN): a label positive in a fraction ``f`` of the images has the repeat factor
    ``max(1, sqrt(threshold / f))``; an image takes the largest factor among its positive labels (1 with none).
    A label positive in fewer than ``threshold`` of the images is drawn more often, the rarer the more."""
    positive = np.asarray(labels) == 1.0
    f = positive.mean(axis=0)
    factor = np.where(f > 0, np.sqrt(threshold / np.maximum(f, 1e-12)), 1.0).clip(min=1.0)
    return np.where(positive, factor, 1.0).max(axis=1, initial=1.0)


def batches(
    data: SplitData,
    *,
    batch_size: int,
    pad_id: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    weights: np.ndarray | None = None,
):
    """Yield training/eval batches (a shuffled order when ``generator`` is given).

    ``weights`` (with a ``generator``): draw the epoch's ``len(data)`` images with replacement in proportion to
    them (:func:`sample_weights`) instead of each image once.

    With the image cache and a ``device``, the uint8 pixels travel to the device (a quarter of the bytes of
    float, a twelfth for grayscale) and are normalised there; otherwise on the CPU.
    """
    n = len(data)
    if generator is None:
        order = torch.arange(n)
    elif weights is not None:
        order = torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), n, replacement=True,
                                  generator=generator)  # fmt: skip
    else:
        order = torch.randperm(n, generator=generator)
    pixels = data.pixel_values
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        batch = text_batch([data.input_ids[i] for i in idx.tolist()], pad_id)
        if isinstance(pixels, CachedPixels):
            raw = pixels.uint8(idx)  # (B, C, H, W) uint8
            batch["pixel_values"] = pixels.normalize(raw.to(device) if device is not None else raw)
        else:
            batch["pixel_values"] = pixels[idx]
        yield batch
