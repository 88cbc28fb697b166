"""New images -> generated mini reports and the 14 labels parsed from them, with an exported model.

The model is a folder written by ``jobs.export`` (a full model, or an adapter with its base in ``base/`` or
named by hub id) or any GIT folder that transformers loads. Images are decoded as the data layer decodes them
(:func:`cxr_core.images.read_image`: JPEG or PNG, 8 or 16 bit, grayscale or RGB; DICOM is not read) and go
through the model's own image processor; generation is greedy, batched, with the sweep's ``max_new_tokens``,
batch size and precision (from ``cxr_export.json``), as ``jobs.evaluate`` generated.

Every input image gets one row, in input order: ``path``, ``status`` (``ok`` or ``skipped``), ``reason`` (why an
image was skipped), ``report`` (the generated text), the 14 labels as the report states them (1 present,
0 absent, -1 uncertain, blank when not mentioned), ``unparsed`` (1 when a sentence matched no template
sentence), ``sentences`` and ``unparsed_sentences`` (counts) and ``uncertain_policy`` (how the sweep's metrics
counted -1: ``negative`` or ``positive``). A missing or unreadable image is skipped (named, with its reason)
or stops the run, per the image policy the sweep trained with (``skip`` / ``error``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.errors import CxrError
from cxr_core.labels import LABELS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what a folder is searched for (any named file is tried)
DICOM_SUFFIXES = (".dcm", ".dicom")
COLUMNS = ("path", "status", "reason", "report", *LABELS, "unparsed", "sentences", "unparsed_sentences",
           "uncertain_policy")  # fmt: skip


@dataclass
class Settings:
    """How to generate and read: the sweep's evaluation settings (``cxr_export.json``) or defaults."""

    max_new_tokens: int = 128
    batch_size: int = 64
    precision: str = "auto"
    uncertain: str = "negative"
    image_policy: str = "skip"


def read_settings(folder: Path) -> Settings:
    """The evaluation settings recorded by jobs.export; the model's ``max_new_tokens`` and defaults otherwise."""
    info_path = folder / "cxr_export.json"
    if not info_path.is_file():
        s = Settings()
        gen = folder / "generation_config.json"
        if gen.is_file():
            s.max_new_tokens = int(json.loads(gen.read_text()).get("max_new_tokens") or s.max_new_tokens)
        return s
    info = json.loads(info_path.read_text())
    gen = info.get("generation", {})
    return Settings(
        max_new_tokens=int(gen.get("max_new_tokens", 128)),
        batch_size=int(gen.get("batch_size", 64)),
        precision=str(gen.get("precision", "auto")),
        uncertain=str(info.get("labels", {}).get("uncertain_policy", "negative")),
        image_policy=str(info.get("image_policy", "skip")),
    )


def load_exported(folder: str | Path):
    """``(model, processor)`` of an export (or any GIT model folder): a full model, or an adapter whose
    ``base_model_name_or_path`` is a folder relative to the export (``base``) or a hub id / absolute path.

    Raises:
        CxrError: the folder holds neither a model nor an adapter, or its base cannot be loaded.
    """
    from transformers import AutoProcessor

    from cxr_core.model import load_model

    folder = Path(folder)
    if not folder.is_dir():
        raise CxrError(f"model folder {folder} does not exist; pass a folder written by jobs.export")
    adapter = folder / "adapter_config.json"
    if not adapter.is_file() and not (folder / "config.json").is_file():
        raise CxrError(
            f"{folder} holds neither a model (config.json) nor an adapter (adapter_config.json); pass a folder "
            "written by jobs.export"
        )
    try:
        processor = AutoProcessor.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise CxrError(f"{folder} holds no processor ({str(exc).strip().splitlines()[0]}); pass a folder written "
                       "by jobs.export, which saves the image processor and tokenizer beside the model") from None  # fmt: skip
    if adapter.is_file():
        from peft import PeftModel

        ref = str(json.loads(adapter.read_text()).get("base_model_name_or_path") or "")
        base = folder / ref if ref and (folder / ref).is_dir() else ref
        model = PeftModel.from_pretrained(load_model(str(base)), folder)
    else:
        model = load_model(str(folder))
    return model.eval(), processor


def find_images(inputs: Iterable[str]) -> list[str]:
    """The images named: a file as given, a folder searched (recursively, sorted) for JPEG and PNG files.

    Raises:
        CxrError: nothing given, a path that does not exist, or a folder without an image.
    """
    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                dicom = any(f.suffix.lower() in DICOM_SUFFIXES for f in p.rglob("*"))
                hint = " (it holds DICOM files, which are not read: convert them to PNG first)" if dicom else ""
                raise CxrError(f"image folder {p} holds no image (.jpg, .jpeg or .png, searched recursively){hint}; "
                               "pass a folder or files of JPEG or PNG images")  # fmt: skip
            paths.extend(found)
        elif p.exists():
            paths.append(str(p))
        else:
            raise CxrError(f"image {p} does not exist; pass image files or folders that hold them")
    if not paths:
        raise CxrError("no image given; pass image files or folders, or --csv FILE --image-root DIR")
    return paths


def csv_images(csv: str | Path, image_root: str | Path) -> list[str]:
    """The images of a CSV: its ``path`` column (relative to ``image_root``), else MIMIC's layout from the
    ``subject_id``, ``study_id`` and ``dicom_id`` columns, as the data layer reads a split CSV.

    Raises:
        CxrError: a missing or unreadable CSV, a missing image root, no path or ids, a path leaving the root.
    """
    from cxr_core.dataset import split_image_paths

    csv, root = Path(csv), Path(image_root)
    if not csv.is_file():
        raise CxrError(f"--csv {csv} does not exist; pass a CSV with a path column or MIMIC's ids")
    if not root.is_dir():
        raise CxrError(f"--image-root {root} does not exist; pass the folder the CSV's paths are relative to")
    try:
        frame = pd.read_csv(csv)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CxrError(f"--csv {csv} is not a readable CSV ({exc})") from None
    if frame.empty:
        raise CxrError(f"--csv {csv} has no rows; pass a CSV with one row per image")
    return split_image_paths(frame, root)


def _decode(path: str):
    """The image as the model's processor takes it (RGB), or the reason it cannot be read."""
    from cxr_core.images import DECODE_ERRORS, describe_error, read_image

    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        return None, "unreadable: DICOM is not read; convert it to PNG or JPEG first"
    try:
        return read_image(path).convert("RGB"), None
    except DECODE_ERRORS as exc:
        return None, describe_error(exc)


def predict(
    model,
    processor,
    paths: list[str],
    *,
    settings: Settings,
    device=None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Generate a report for every image of ``paths`` and parse it; one row per path (see the module docstring).

    Batches hold ``settings.batch_size`` readable images, in input order (as jobs.evaluate batches a split).

    Raises:
        CxrError: an unreadable image under ``image_policy="error"`` (nothing is returned).
    """
    import torch

    from cxr_core.mini_report import parse_report
    from cxr_core.trial import uses_bf16

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    rows: list[dict] = [{}] * len(paths)
    pending: list[tuple[int, object]] = []

    def run(batch: list[tuple[int, object]]) -> None:
        pixels = processor.image_processor(images=[img for _, img in batch], return_tensors="pt")[
            "pixel_values"
        ]
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16,
                                             enabled=uses_bf16(settings.precision, device)):  # fmt: skip
            out = model.generate(pixel_values=pixels.to(device), max_new_tokens=settings.max_new_tokens)
        for (i, _), text in zip(batch, processor.batch_decode(out, skip_special_tokens=True), strict=True):
            parsed = parse_report(text)
            rows[i] = {"path": paths[i], "status": "ok", "reason": "", "report": text,
                       **dict(zip(LABELS, parsed.values, strict=True)), "unparsed": int(parsed.n_unparsed > 0),
                       "sentences": parsed.n_sentences, "unparsed_sentences": parsed.n_unparsed}  # fmt: skip

    done = 0
    for i, path in enumerate(paths):
        image, reason = _decode(path)
        if image is None:
            if settings.image_policy == "error":
                raise CxrError(f"image {path} is missing or unreadable ({reason}); fix or remove it, or pass "
                               "--image-policy skip to name it in the output and go on")  # fmt: skip
            rows[i] = {"path": path, "status": "skipped", "reason": reason, "report": ""}
            done += 1
        else:
            pending.append((i, image))
        if len(pending) == settings.batch_size or (i == len(paths) - 1 and pending):
            run(pending)
            done += len(pending)
            pending = []
            if progress is not None:
                progress(done, len(paths))
    frame = pd.DataFrame(rows, columns=list(COLUMNS[:-1]))
    frame["uncertain_policy"] = settings.uncertain
    for col in ("unparsed", "sentences", "unparsed_sentences"):
        frame[col] = frame[col].astype("Int64")
    return frame


class Progress:
    """Progress lines on stderr for long runs: at most one every ``every`` seconds, and the last one."""

    def __init__(self, *, every: float = 10.0, stream=None):
        import sys

        self.every, self.stream = every, stream or sys.stderr
        self.start = self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        left = (total - done) / rate if rate > 0 else float("nan")
        eta = f", about {_duration(left)} left" if done < total and np.isfinite(left) else ""
        print(f"predict: {done:,}/{total:,} images ({done / total:.0%}), {rate:.1f} images/s{eta}",
              file=self.stream, flush=True)  # fmt: skip


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
