"""Data loading at MIMIC's full image size: per-sample decode + GIT processor vs the image cache.

On the same ``--n`` synthetic full-size (3056 x 2544, MIMIC's typical size) grayscale JPEGs, through a real
``torch.utils.data.DataLoader``:

(a) ``processor``: what the old study did, per sample: open the JPEG, convert to RGB, run git-base's image
    processor (CLIP, 224 px: resize the shorter side with bicubic, center crop, rescale, normalise), with
    ``--workers`` DataLoader worker processes (default: every CPU);
(b) ``cache``: the split's image cache (:mod:`cxr_core.cache`, built once beforehand; its build time is
    reported too), read in batches from the memory map and normalised in torch, in the main process.

Reports samples per second of each, their ratio (target: 20 or more) and the largest difference between
the two paths' pixel values (float rounding only). The images are written once into ``--work`` and reused.

    python -m bench.data_loading                # 200 images, about 3 minutes on 2 cores the first time
    python -m bench.data_loading --n 40         # a quick look

The last line of the output is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from cxr_core.cache import image_cache, pixel_spec
from cxr_core.dataset import CachedPixels
from cxr_core.synthetic import render_image, sample_labels

WORK = Path(tempfile.gettempdir()) / "cxr-bench" / "data_loading"
FULL_SIZE = (3056, 2544)  # (rows, columns), MIMIC-CXR-JPG's most common size


def git_base_image_processor():
    """git-base's image processor, as its ``preprocessor_config.json`` sets it (built offline)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        resample=3,  # bicubic
        do_center_crop=True,
        do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )


def write_images(folder: Path, n: int, *, seed: int = 0) -> list[str]:
    """``n`` full-size synthetic chest X-ray JPEGs (quality 95), written once."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:04d}.jpg"
        if not path.is_file():
            rng = np.random.default_rng([seed, i])
            px = render_image(sample_labels(rng), view=("PA", "AP")[i % 2], rng=rng, size=FULL_SIZE)
            tmp = path.with_name(f".{path.name}.tmp")
            Image.fromarray(px).save(tmp, format="JPEG", quality=95)
            os.replace(tmp, path)
        paths.append(str(path))
    return paths


class PerSampleProcessor(Dataset):
    """The old study's loading: one image decoded and processed per ``__getitem__``."""

    def __init__(self, paths: list[str], processor):
        self.paths, self.processor = paths, processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as img:
            rgb = img.convert("RGB")
        return self.processor(images=rgb, return_tensors="pt")["pixel_values"][0]  # (3, 224, 224)


class CacheBatches(Dataset):
    """The cache: ``__getitem__`` takes a whole batch of indices (a BatchSampler feeds it)."""

    def __init__(self, pixels: CachedPixels):
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, idx: list[int]) -> torch.Tensor:
        return self.pixels[idx]  # (B, 3, 224, 224) float32, normalised in torch


def time_loader(loader: DataLoader, epochs: int) -> tuple[float, int]:
    """(seconds, samples) to iterate ``epochs`` passes of ``loader``."""
    samples = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            samples += batch.shape[0]
    return time.perf_counter() - start, samples


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="full-size images (default 200)")
    p.add_argument("--work", default=str(WORK), help=f"folder for the images and the cache (default {WORK})")
    p.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers for (a) and cache builders; 0 = CPUs"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cache-epochs", type=int, default=30, help="passes over the cache to time (it is fast)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    workers = args.workers or len(os.sched_getaffinity(0))
    work = Path(args.work)
    start = time.perf_counter()
    paths = write_images(work / "images", args.n)
    print(f"{len(paths)} images of {FULL_SIZE[0]} x {FULL_SIZE[1]} in {work / 'images'} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    processor = git_base_image_processor()

    # (a) per-sample decode + processor, as the old study did
    per_sample = DataLoader(PerSampleProcessor(paths, processor), batch_size=args.batch_size, shuffle=True,
                            num_workers=workers)  # fmt: skip
    a_seconds, a_samples = time_loader(per_sample, 1)
    a_rate = a_samples / a_seconds
    print(f"(a) per-sample decode + processor, {workers} workers: {a_rate:.1f} samples/s", flush=True)

    # (b) the cache: built once (timed apart), then read through a DataLoader
    spec = pixel_spec(processor)
    cache_dir = work / "cache"
    for old in cache_dir.glob("*"):  # time a fresh build every run
        if old.is_dir():
            shutil.rmtree(old)
    entry = image_cache(paths, spec, cache_dir=cache_dir, workers=workers)
    pixels = CachedPixels(entry.path / "pixels.npy", np.arange(len(paths)), spec)
    sampler = BatchSampler(RandomSampler(pixels), args.batch_size, drop_last=False)
    cached = DataLoader(CacheBatches(pixels), batch_size=None, sampler=sampler, num_workers=0)
    time_loader(cached, 1)  # warm-up: page cache, torch kernels
    b_seconds, b_samples = time_loader(cached, args.cache_epochs)
    b_rate = b_samples / b_seconds
    print(f"(b) image cache, built in {entry.build_seconds:.1f} s: {b_rate:.0f} samples/s", flush=True)

    check = list(range(0, len(paths), max(1, len(paths) // 8)))
    want = torch.stack([per_sample.dataset[i] for i in check])
    diff = float((pixels[check] - want).abs().max())
    result = {
        "benchmark": "data_loading",
        "images": len(paths),
        "image_size": list(FULL_SIZE),
        "model_input": [3, 224, 224],
        "batch_size": args.batch_size,
        "cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "a_per_sample_processor": {"samples_per_s": round(a_rate, 2), "dataloader_workers": workers,
                                   "samples": a_samples, "seconds": round(a_seconds, 2)},
        "b_cache": {"samples_per_s": round(b_rate, 1), "dataloader_workers": 0, "samples": b_samples,
                    "seconds": round(b_seconds, 3), "build_seconds": entry.build_seconds,
                    "cache_mb": round((entry.path / "pixels.npy").stat().st_size / 2**20, 2),
                    "channels_stored": int(entry.pixels.shape[1])},
        "ratio": round(b_rate / a_rate, 1),
        "target_ratio": 20,
        "max_abs_pixel_difference": diff,
    }  # fmt: skip
    result["meets_target"] = result["ratio"] >= 20
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
