"""Images as they come (JPEG or PNG, 8 or 16 bit, grayscale or RGB, any size) -> one 8-bit model input.

Every image is decoded to 8-bit ``L`` (grayscale) or ``RGB``: a 16-bit value v becomes round(v * 255 / 65535),
so an 8-bit image stored as 16 bits (v = 257 x) gives back exactly x; alpha is dropped; palettes, CMYK and
YCbCr become RGB. Then :func:`model_pixels` does what the model's image processor does before rescaling
(resize with the processor's resample filter, center crop), in uint8, so that the image cache holds the
same numbers the processor would rescale and normalise. Grayscale stays one channel: the processor's RGB
conversion only copies it three times.

No torch here: cache-building worker processes import only numpy and PIL.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr_core.errors import CxrError

# What a failed decode raises: a missing file (OSError), a truncated or corrupt one (OSError, SyntaxError from
# some PIL plugins, ValueError), an unknown format (UnidentifiedImageError), a mode we cannot map (CxrError).
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    UnidentifiedImageError,
    CxrError,
    Image.DecompressionBombError,
)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_TO_RGB = ("RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA")


def safe_image_path(root: Path, rel: str) -> Path:
    """``root / rel``, refusing a path that would leave ``root``.

    The check is lexical (no file-system access, so it costs microseconds on 377,110 rows): an absolute path,
    a drive letter or a ``..`` component is refused. Symbolic links inside the root are followed as usual.

    Raises:
        CxrError: the path is empty, absolute or climbs out of the root.
    """
    text = str(rel) if rel is not None else ""
    parts = PurePosixPath(text).parts
    if (
        not text.strip()
        or text in ("nan", "None")
        or PurePosixPath(text).is_absolute()
        or PureWindowsPath(text).drive
        or PureWindowsPath(text).is_absolute()
        or ".." in parts
        or ".." in PureWindowsPath(text).parts
    ):
        raise CxrError(
            f"image path {text!r} leaves the image root {root}; paths in a split CSV must be relative to "
            "data.image_root and stay inside it (no '..', no absolute paths)"
        )
    return Path(root) / text


def read_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image (a truncated file fails here, not later) into 8-bit ``L`` or ``RGB``.

    An image of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (about 89 M; a MIMIC image has about 7.5 M) is
    refused before it is decoded: PIL's decompression-bomb guard, made an error instead of a warning.

    Raises:
        OSError, ValueError, SyntaxError, UnidentifiedImageError: a missing, truncated or corrupt file.
        DecompressionBombError: an oversized image.
        CxrError: a pixel format with no sensible 8-bit reading (floating point, 32-bit integers).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(path)
        except Image.DecompressionBombWarning as exc:
            raise Image.DecompressionBombError(str(exc)) from None
    with opened as img:
        img.load()
        mode = img.mode
        if mode in ("L", "RGB"):
            return img.copy()
        if mode == "1":
            return img.convert("L")
        if mode == "LA" or mode == "La":
            return img.getchannel("L").copy()
        if mode in _SIXTEEN_BIT:
            return Image.fromarray(_to_8bit(np.asarray(img), path, mode))
        if mode in _TO_RGB:
            return img.convert("RGB")
    raise CxrError(f"{path}: image mode {mode} is not supported; convert it to 8- or 16-bit grayscale or RGB")


def _to_8bit(arr: np.ndarray, path, mode: str) -> np.ndarray:
    """16-bit (H, W) -> uint8, value v -> round(v * 255 / 65535)."""
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise CxrError(f"{path}: {mode} pixel values outside 0..65535; only 8- and 16-bit images are supported")
    wide = arr.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


@dataclass(frozen=True)
class Geometry:
    """The processor's geometric steps: resize, then center crop.

    Attributes:
        shortest_edge: resize so the shorter side has this length (aspect kept), as CLIP's processor does;
            0 when ``height`` and ``width`` give a fixed size instead.
        height, width: fixed resize target (used when ``shortest_edge`` is 0); 0 = no resize at all.
        resample: PIL resampling filter (``PIL.Image.Resampling`` value).
        crop_height, crop_width: center-crop size; 0 = no crop.
    """

    shortest_edge: int = 0
    height: int = 0
    width: int = 0
    resample: int = int(Image.Resampling.BICUBIC)
    crop_height: int = 0
    crop_width: int = 0

    def output_size(self) -> tuple[int, int] | None:
        """(H, W) of every output, or None when it depends on the input (no crop and no fixed size)."""
        if self.crop_height and self.crop_width:
            return self.crop_height, self.crop_width
        if not self.shortest_edge and self.height and self.width:
            return self.height, self.width
        return None


def resize_size(height: int, width: int, geometry: Geometry) -> tuple[int, int]:
    """The (H, W) the processor resizes to (transformers' ``get_resize_output_image_size``, not square)."""
    g = geometry
    if g.shortest_edge:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = g.shortest_edge, int(g.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if g.height and g.width:
        return g.height, g.width
    return height, width


def center_crop(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) -> (C, height, width), zero-padded when smaller, as transformers' ``center_crop`` does."""
    c, h, w = arr.shape
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0 and top + height <= h and left + width <= w:
        return arr[:, top : top + height, left : left + width]
    nh, nw = max(height, h), max(width, w)
    top_pad, left_pad = -(-(nh - h) // 2), -(-(nw - w) // 2)
    canvas = np.zeros((c, nh, nw), dtype=arr.dtype)
    canvas[:, top_pad : top_pad + h, left_pad : left_pad + w] = arr
    top, left = top + top_pad, left + left_pad
    return canvas[:, max(0, top) : min(nh, top + height), max(0, left) : min(nw, left + width)]


def model_pixels(img: Image.Image, geometry: Geometry) -> np.ndarray:
    """An 8-bit ``L`` / ``RGB`` image -> (C, H, W) uint8 after the processor's resize and center crop.

    C is 1 for grayscale and for RGB whose three channels came out equal, else 3.
    """
    h, w = img.height, img.width
    nh, nw = resize_size(h, w, geometry)
    if (nh, nw) != (h, w):
        img = img.resize((nw, nh), resample=geometry.resample)
    arr = np.asarray(img)
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)  # (C, H, W)
    if geometry.crop_height and geometry.crop_width:
        arr = center_crop(arr, geometry.crop_height, geometry.crop_width)
    if arr.shape[0] == 3 and (arr[0] == arr[1]).all() and (arr[1] == arr[2]).all():
        arr = arr[:1]
    return np.ascontiguousarray(arr)


def load_model_pixels(path: str | Path, geometry: Geometry) -> np.ndarray:
    """Decode ``path`` and return its (C, H, W) uint8 model pixels (see :func:`model_pixels`)."""
    return model_pixels(read_image(path), geometry)


def describe_error(exc: BaseException) -> str:
    """One short line for the manifest: ``missing file`` or the decoder's complaint."""
    if isinstance(exc, FileNotFoundError):
        return "missing file"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, Image.DecompressionBombError):
        return f"unreadable: oversized image (decompression-bomb guard): {text[:200]}"
    return f"unreadable: {text[:200]}"


def fill_rows(array_path: str, start: int, paths: list[str], geometry: Geometry) -> tuple[list, dict]:
    """Decode ``paths`` into rows ``start...`` of the (N, 1, H, W) uint8 ``.npy`` at ``array_path``.

    Runs in cache-building worker processes (numpy and PIL only). Colour images cannot go into the one-channel
    array: their channel 0 is written and the whole (3, H, W) array is returned for the caller to place.

    Returns:
        ``(failures, colour)``: ``[(row, reason), ...]`` for missing or unreadable images (their rows stay
        zero) and ``{row: (3, H, W) uint8}``.
    """
    out = np.load(array_path, mmap_mode="r+")
    failures: list[tuple[int, str]] = []
    colour: dict[int, np.ndarray] = {}
    for offset, path in enumerate(paths):
        row = start + offset
        try:
            px = load_model_pixels(path, geometry)
        except DECODE_ERRORS as exc:
            failures.append((row, describe_error(exc)))
            continue
        if px.shape[1:] != out.shape[2:]:
            failures.append((row, f"unreadable: model input {px.shape[1:]} is not {out.shape[2:]}"))
            continue
        out[row, 0] = px[0]
        if px.shape[0] == 3:
            colour[row] = px
    out.flush()
    del out
    return failures, colour


def check_relative_paths(rels, root: Path) -> None:
    """Vectorised :func:`safe_image_path` over a pandas Series of relative paths (one regex pass).

    Raises:
        CxrError: naming the first path that is empty, absolute or climbs out of ``root``.
    """
    text = rels.astype("string").fillna("")
    bad = (
        (text.str.strip() == "")
        | text.str.startswith("/")
        | text.str.startswith("\\")
        | text.str.match(r"^[A-Za-z]:")
        | text.str.contains(r"(?:^|[/\\])\.\.(?:[/\\]|$)", regex=True)
    )
    if bad.any():
        safe_image_path(root, text[bad].iloc[0])  # raises with the message
        raise CxrError(f"image path {text[bad].iloc[0]!r} is not a valid path inside the image root {root}")
