"""A node-local image cache: each split decoded and resized once, then memory-mapped by every trial and epoch.

Decoding one full-size MIMIC JPEG and resizing it costs about 100 ms of a CPU core; an H200 trains git-base on
more than a thousand images a second. So the images of a split are preprocessed once, to the model's input
size, into a uint8 ``.npy`` array of shape (N, C, H, W) (C = 1 for grayscale; 3 only when some image is
colour) that every trial on the node memory-maps. Rescaling and normalisation happen at batch time, in torch
(:class:`cxr_core.dataset.CachedPixels`).

Layout under the cache folder (``data.cache_dir``; default ``$CXR_CACHE_DIR``, else ``data/cache`` of the
checkout)::

    {key}/pixels.npy      (N, C, H, W) uint8
    {key}/meta.json       shape, the processor settings, the images that failed and why
    {key}.lock            the build lock (flock); left in place, it is empty
    .building-{key}-PID/  a build in progress (renamed to {key}/ when complete)

The key hashes the image list (absolute paths, in order), the output size and the processor settings, so
changing any of them builds a new entry. Before an entry is used, its ``meta.json`` (format version, key, shape)
and the header and exact size of ``pixels.npy`` are checked (a few hundred bytes read, no hash): an entry cut
short (a full disk, a copy that stopped) or written by another version of the code is rebuilt, never read as
garbage pixels (:func:`entry_problem`). Concurrent first use is safe: the first process to take the lock
builds into a temporary folder and renames it into place; the others wait on the lock and then open the
finished entry. A folder named ``{key}`` is only ever complete, so a half-written cache is never read; a
build that died leaves a ``.building-*`` folder, removed by the next build of that key. The cache does not
notice an image file replaced in place under the same path: delete ``{key}/`` (or the whole folder) then, or
call :func:`forget_images_under` (jobs.demo does when it rewrites its synthetic images).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cxr_core.errors import CxrError
from cxr_core.images import Geometry, fill_rows

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_ENV = "CXR_CACHE_DIR"
OFF = ("none", "off")
_CHUNK = 64  # images per worker task


@dataclass(frozen=True)
class PixelSpec:
    """What turns a decoded image into model input: geometry (baked into the cache), then rescale and
    normalisation (applied at batch time).

    Attributes:
        geometry: resize and center crop, as the processor does them.
        do_rescale, rescale_factor: multiply uint8 values by ``rescale_factor`` (1/255) when set.
        do_normalize, image_mean, image_std: then ``(x - mean) / std`` per channel when set.
        channels: channels of the model input (3 for RGB models; grayscale is repeated).
        processor: the image processor's class name (part of the key).
    """

    geometry: Geometry
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    channels: int
    processor: str

    def to_dict(self) -> dict:
        return asdict(self)


def _size_dict(value) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    if isinstance(value, int):
        return {"shortest_edge": value}
    return {k: v for k, v in vars(value).items() if v is not None and not k.startswith("_")}


def _per_channel(value, channels: int) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),) * channels
    return tuple(float(v) for v in value)


def pixel_spec(processor) -> PixelSpec:
    """The cacheable settings of an image processor (or of a ``GitProcessor`` holding one).

    Supports processors that resize to a shortest edge or to a fixed height x width and may center-crop,
    rescale and normalise: CLIP's (git-base's), ViT's and most others.

    Raises:
        CxrError: the processor's output size is not fixed, or its settings are of a kind the cache cannot
            reproduce (set ``data.cache_dir: none`` to use the processor itself).
    """
    ip = getattr(processor, "image_processor", processor)
    name = type(ip).__name__.removesuffix("Pil").removesuffix("Fast")
    size, crop = _size_dict(getattr(ip, "size", None)), _size_dict(getattr(ip, "crop_size", None))
    do_resize = bool(getattr(ip, "do_resize", False))
    do_crop = bool(getattr(ip, "do_center_crop", False))
    fix = "set data.cache_dir: none to preprocess with the processor itself"
    shortest = height = width = 0
    if do_resize:
        if size.get("shortest_edge") and not size.get("longest_edge"):
            shortest = int(size["shortest_edge"])
        elif size.get("height") and size.get("width"):
            height, width = int(size["height"]), int(size["width"])
        else:
            raise CxrError(
                f"image processor {name} resizes with size={size}, which the image cache cannot do; {fix}"
            )
    resample = getattr(ip, "resample", None)
    try:
        resample = int(resample if resample is not None else 2)
    except (TypeError, ValueError):
        raise CxrError(f"image processor {name} has resample={resample!r}, not a PIL filter; {fix}") from None
    crop_h = int(crop.get("height", 0)) if do_crop else 0
    crop_w = int(crop.get("width", 0)) if do_crop else 0
    geometry = Geometry(shortest, height, width, resample, crop_h, crop_w)
    if geometry.output_size() is None:
        raise CxrError(f"image processor {name} gives images of varying size (no crop, no fixed size); {fix}")
    mean = getattr(ip, "image_mean", None)
    channels = 3 if mean is None or isinstance(mean, (int, float)) else len(mean)
    do_normalize = bool(getattr(ip, "do_normalize", False)) and mean is not None
    return PixelSpec(
        geometry=geometry,
        do_rescale=bool(getattr(ip, "do_rescale", False)),
        rescale_factor=float(getattr(ip, "rescale_factor", 1 / 255)),
        do_normalize=do_normalize,
        image_mean=_per_channel(mean, channels) if do_normalize else (),
        image_std=_per_channel(getattr(ip, "image_std", 1.0), channels) if do_normalize else (),
        channels=channels,
        processor=name,
    )


def default_cache_dir() -> Path:
    """``$CXR_CACHE_DIR``, else ``data/cache`` of this checkout (absolute, so every Tune trial's working
    directory shares it), else ``~/.cache/cxr-tune`` for an installed package."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "data" / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxr-tune"


def resolve_cache_dir(value: str | Path | None) -> Path | None:
    """``data.cache_dir`` -> a folder: ``auto`` = :func:`default_cache_dir`; ``none``, ``off``, None = none."""
    if value is None or str(value).strip().lower() in OFF:
        return None
    if str(value).strip().lower() in ("auto", ""):
        return default_cache_dir()
    return Path(value).expanduser()


def cache_key(paths: Sequence[str | Path], spec: PixelSpec) -> str:
    """Hex key of (the image list in order, the processor settings, the cache format version)."""
    images = hashlib.sha256("\n".join(str(p) for p in paths).encode("utf-8")).hexdigest()
    blob = json.dumps({"version": CACHE_VERSION, "spec": spec.to_dict(), "images": images}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


@dataclass
class PixelCache:
    """An opened cache entry.

    Attributes:
        path: the entry's folder (``{cache_dir}/{key}``).
        pixels: (N, C, H, W) uint8, memory-mapped read-only; rows of failed images are zero.
        failures: ``[(row, path, reason), ...]`` for missing or unreadable images, in row order.
        built: True when this call built the entry, False when it reused one.
        build_seconds: how long the build took (whoever built it).
    """

    path: Path
    pixels: np.ndarray
    failures: list[tuple[int, str, str]]
    built: bool
    build_seconds: float

    @property
    def key(self) -> str:
        return self.path.name


def image_cache(
    paths: Sequence[str | Path],
    spec: PixelSpec,
    *,
    cache_dir: str | Path,
    workers: int = 0,
) -> PixelCache:
    """Open the cache entry of ``paths`` under ``spec``, building it first when it does not exist.

    Args:
        paths: absolute image paths, in row order.
        spec: from :func:`pixel_spec`.
        cache_dir: the cache folder (node-local storage is best: it is memory-mapped).
        workers: decoding processes for a build; 0 = every CPU this process may use.

    Returns:
        The opened entry; missing or unreadable images are listed in ``failures``, never raised.

    Raises:
        CxrError: the cache folder cannot be created or written.
    """
    if not paths:
        raise CxrError("no images to cache; the split has no rows")
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CxrError(
            f"cannot create the image cache folder {cache_dir} ({exc}); set data.cache_dir"
        ) from None
    key = cache_key(paths, spec)
    final = cache_dir / key
    if entry_problem(final, len(paths)) is None:
        return _open(final, built=False)
    with open(cache_dir / f"{key}.lock", "a+") as lock:
        _lock(lock, final)
        try:
            problem = entry_problem(final, len(paths))
            if problem is None:
                return _open(final, built=False)
            if final.exists():
                log.warning("image cache %s: %s; rebuilding it", final, problem)
            for stale in [*cache_dir.glob(f".building-{key}-*"), *([final] if final.exists() else [])]:
                shutil.rmtree(stale, ignore_errors=True)  # a build that died, or an entry missing its meta
            _build([str(p) for p in paths], spec, final, workers=workers)
            return _open(final, built=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _lock(handle, final: Path) -> None:
    """Take the build lock of ``final``, waiting while another process holds it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        log.info("image cache %s is being built by another process; waiting", final)
    except OSError as exc:
        raise CxrError(
            f"cannot lock {handle.name} ({exc}); put data.cache_dir on node-local storage that supports locks"
        ) from None
    fcntl.flock(handle, fcntl.LOCK_EX)


def forget_images_under(cache_dir: str | Path, root: str | Path) -> list[str]:
    """Delete the cache entries built from images under ``root``, for when those images were rewritten in place
    (the key hashes paths, not contents). An entry holds one split's images, so its first image (``meta.json``)
    tells where they are. Returns the keys removed; entries of other images are kept."""
    cache_dir, root = Path(cache_dir), Path(root).resolve()
    removed = []
    for meta_path in sorted(cache_dir.glob("*/meta.json")) if cache_dir.is_dir() else []:
        try:
            first = Path(json.loads(meta_path.read_text())["first_image"]).resolve()
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if first.is_relative_to(root):
            shutil.rmtree(meta_path.parent, ignore_errors=True)
            removed.append(meta_path.parent.name)
    return removed


def entry_problem(folder: Path, n_images: int) -> str | None:
    """Why the cache entry ``folder`` cannot be used (absent, unfinished, cut short, another version's), or None.

    Reads ``meta.json`` and the ``.npy`` header only: the file must be exactly header + N x C x H x W bytes of
    uint8 in the shape ``meta.json`` records, for ``n_images`` images.
    """
    meta_path, pixels = folder / "meta.json", folder / "pixels.npy"
    if not meta_path.is_file():
        return "no entry" if not folder.exists() else "meta.json is missing"
    try:
        meta = json.loads(meta_path.read_text())
        version, shape = meta.get("version"), [int(v) for v in meta["shape"]]
    except (ValueError, KeyError, TypeError, OSError):
        return "meta.json is damaged"
    if version != CACHE_VERSION:
        return f"written by cache format {version!r}, this code reads format {CACHE_VERSION}"
    if meta.get("key") != folder.name or len(shape) != 4 or shape[0] != n_images:
        return f"meta.json describes another entry (key {meta.get('key')!r}, shape {shape})"
    try:
        with open(pixels, "rb") as f:
            major, minor = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            )
            got_shape, fortran, dtype = read_header(f)
            offset = f.tell()
        size = pixels.stat().st_size
    except (OSError, ValueError) as exc:
        return f"pixels.npy is missing or its header is damaged ({exc})"
    if list(got_shape) != shape or dtype != np.uint8 or fortran:
        return f"pixels.npy holds {dtype} {list(got_shape)}, meta.json says uint8 {shape}"
    want = offset + int(np.prod(shape))
    if size != want:
        return f"pixels.npy is {size} bytes, {want} expected (cut short or padded)"
    return None


def _open(folder: Path, *, built: bool) -> PixelCache:
    meta = json.loads((folder / "meta.json").read_text())
    pixels = np.load(folder / "pixels.npy", mmap_mode="r")
    failures = [(int(r), str(p), str(why)) for r, p, why in meta["failures"]]
    return PixelCache(folder, pixels, failures, built, float(meta["build_seconds"]))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def _build(paths: list[str], spec: PixelSpec, final: Path, *, workers: int) -> None:
    """Decode every image into a temporary folder, then rename it to ``final`` (atomic on one file system)."""
    start = time.perf_counter()
    n = len(paths)
    h, w = spec.geometry.output_size()
    tmp = final.with_name(f".building-{final.name}-{os.getpid()}")
    tmp.mkdir()
    gray_path = tmp / "gray.npy"
    np.lib.format.open_memmap(gray_path, mode="w+", dtype=np.uint8, shape=(n, 1, h, w)).flush()
    tasks = [(start_row, paths[start_row : start_row + _CHUNK]) for start_row in range(0, n, _CHUNK)]
    workers = min(workers or _cpu_count(), len(tasks))
    log.info("building image cache %s: %d images at %dx%d with %d worker(s)", final, n, h, w, workers)
    failures: list[tuple[int, str]] = []
    colour: dict[int, np.ndarray] = {}
    done = 0
    if workers <= 1:
        results = (fill_rows(str(gray_path), s, chunk, spec.geometry) for s, chunk in tasks)
        for fails, col in results:
            failures += fails
            colour.update(col)
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork from a threaded process (Ray, torch)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(fill_rows, str(gray_path), s, chunk, spec.geometry) for s, chunk in tasks]
            for i, future in enumerate(futures):
                fails, col = future.result()
                failures += fails
                colour.update(col)
                done += len(tasks[i][1])
                if (i + 1) % max(1, len(tasks) // 20) == 0:
                    log.info("image cache: %d / %d images (%.0f s)", done, n, time.perf_counter() - start)
    _finish(tmp, gray_path, colour, n, h, w)
    failures.sort()
    meta = {
        "version": CACHE_VERSION,
        "key": final.name,
        "shape": [n, 3 if colour else 1, h, w],
        "spec": spec.to_dict(),
        "images": n,
        "colour_images": len(colour),
        "failures": [[row, paths[row], why] for row, why in failures],
        "build_seconds": round(time.perf_counter() - start, 3),
        "first_image": paths[0],
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    os.replace(tmp, final)
    log.info("image cache %s built in %.1f s (%d failed)", final, meta["build_seconds"], len(failures))


def _finish(tmp: Path, gray_path: Path, colour: dict[int, np.ndarray], n: int, h: int, w: int) -> None:
    """Write ``pixels.npy``: the one-channel array as it is, or, when some image is colour, (N, 3, H, W)."""
    if not colour:
        os.replace(gray_path, tmp / "pixels.npy")
        return
    gray = np.load(gray_path, mmap_mode="r")
    rgb = np.lib.format.open_memmap(tmp / "pixels.npy", mode="w+", dtype=np.uint8, shape=(n, 3, h, w))
    for s in range(0, n, 1024):
        rgb[s : s + 1024] = gray[s : s + 1024]  # (B, 1, H, W) broadcast to 3 channels
    for row, px in colour.items():
        rgb[row] = px
    rgb.flush()
    del rgb, gray
    gray_path.unlink()
