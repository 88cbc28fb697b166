"""Frozen image encoder computed once: a feature cache for trials that do not train the vision tower.

When nothing in GIT's image encoder (``git.image_encoder``) can change during a trial - no trainable parameter
under it, no dropout active inside it (LoRA on the text decoder, FFT with ``fft.freeze: vision``) - its output
for an image is the same in every epoch and every evaluation. Such a trial computes that output once per split
and image (``last_hidden_state``, before ``visual_projection``, which may train), keeps it, and feeds it to the
rest of GIT instead of running the encoder again. Arms that train the encoder (FFT, LoRA on the vision or all
linear layers) never use it.

How the features reach GIT (:func:`serve`): the encoder module's ``forward`` is overridden on the instance, so
the module, its weights and their names stay as they are (``state_dict``, ``save_pretrained``, peft and the
optimizer see the same model: checkpoints do not change). The split's ``pixel_values`` become
:class:`ImageRows`: ``(B, 1, 1, 1)`` int64 image numbers instead of pixels. GIT hands ``pixel_values`` to
``self.image_encoder(...)`` and reads ``.last_hidden_state``; the served forward answers integer inputs from
the stored features and passes float pixels to the real encoder. This relies only on that call, which
``GitForCausalLM`` has made the same way from transformers 4.x to 5.x, in training, in teacher-forced
evaluation and in ``generate`` (which passes ``pixel_values`` to the first step only in 5.x, to every step in
4.x: a lookup either way). A probe at attach time compares the served path with the real one on a training
image and turns the cache off, with a warning, if they disagree.

Where the features live (``feature_cache`` in the trial's cost columns):

- ``device``: on the GPU, when the trial's splits take at most a quarter of its share of the free GPU memory;
- ``file``: otherwise, and always on a CPU, a memory-mapped ``.npy`` in the node-local cache
  (``data.cache_dir``, under ``features/``), shared by every trial on the node through the page cache and reused
  by later trials;
- ``memory``: in the trial's host memory, when there is no cache folder (``data.cache_dir: none``) and they take
  at most a quarter of the available RAM.

Features are stored in bfloat16 when the trial runs under bf16 autocast (``train.precision``: ``auto`` on a
GPU, ``bf16``), else in float32: under autocast the ``visual_projection`` Linear reads them in bf16 anyway, so
either way the rest of the model sees what the uncached path gives it, to float rounding.

File layout under ``{cache_dir}/features/`` (the patterns of :mod:`cxr_core.cache`)::

    {key}/features.npy      (N, T, D) float32, or the bfloat16 bits as uint16
    {key}/meta.json         shape, dtype, what the key hashes, build time
    {key}.lock              the build lock (flock)
    .building-{key}-PID/    a build in progress (renamed to {key}/ when complete)

The key hashes the encoder's weights (names, shapes, dtypes and bytes), the image list (the pixel cache's key,
which covers the image paths and the processor settings, and the rows the split keeps), the processor settings,
the stored dtype, autocast, the device type and the transformers version. Switch it off per trial with
``data.feature_cache: off``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn

from cxr_core.errors import CxrError

log = logging.getLogger(__name__)

FEATURE_VERSION = 1
SHARE = 0.25  # at most this share of the free GPU memory (or of the available RAM) holds features
_CHUNK = 64  # images per encoder call when building


# --------------------------------------------------------------------------------------------------------------
# Which module, and may it be cached


def image_encoder(model: nn.Module) -> nn.Module:
    """GIT's image encoder (``git.image_encoder``) inside ``model`` (a ``GitForCausalLM``, or a peft model
    around one): the module that has ``image_encoder`` and ``visual_projection`` beside each other.

    Raises:
        CxrError: the model holds no such module (not GIT).
    """
    for module in model.modules():
        if hasattr(module, "image_encoder") and hasattr(module, "visual_projection"):
            return module.image_encoder
    raise CxrError(f"{type(model).__name__} holds no GIT image encoder (git.image_encoder)")


def frozen_reason(model: nn.Module) -> str | None:
    """Why the image encoder of ``model`` may change during training, or None when it cannot (cacheable).

    It may change when a parameter under it is trainable (FFT, LoRA adapters on vision layers) or when dropout
    is active inside it (a ``Dropout`` module with p > 0, or a ``*dropout*`` rate > 0 that a layer applies in
    training mode, such as the vision attention's ``attention_dropout``).
    """
    encoder = image_encoder(model)
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    if trainable:
        return f"{len(trainable)} trainable parameter tensors in the image encoder (first: {trainable[0]})"
    for name, module in encoder.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return f"dropout p={module.p} in the image encoder ({name})"
        for attr, value in vars(module).items():
            if "dropout" in attr and isinstance(value, float) and value > 0:
                return f"{attr}={value} in the image encoder ({name or type(module).__name__})"
    return None


# --------------------------------------------------------------------------------------------------------------
# Stored features, and how GIT is fed them


class ImageRows:
    """Stands in for a split's ``pixel_values``: ``self[idx]`` -> (B, 1, 1, 1) int64 image numbers
    (``offset + idx``) that the served encoder turns into features (GIT wants 4-d ``pixel_values``)."""

    def __init__(self, offset: int, n: int):
        self.offset, self.n = int(offset), int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.int64).reshape(-1)
        return (idx + self.offset).view(-1, 1, 1, 1)


class Features:
    """The encoder outputs of one split, (N, T, D): a tensor (on a device or in host memory) or a memory-mapped
    ``.npy`` (bfloat16 stored as its uint16 bits)."""

    def __init__(self, data: torch.Tensor | np.ndarray, dtype: torch.dtype):
        self.data, self.dtype = data, dtype

    def __len__(self) -> int:
        return len(self.data)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.data.shape)) * torch.tensor([], dtype=self.dtype).element_size()

    def rows(self, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(B, T, D) features of rows ``idx`` (any order), on ``device``."""
        if isinstance(self.data, torch.Tensor):
            return self.data.index_select(0, idx.to(self.data.device)).to(device, non_blocking=True)
        rows = idx.cpu().numpy()
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.data.shape[1:]), dtype=self.data.dtype)
        out[order] = self.data[rows[order]]  # read the map in file order
        if self.dtype == torch.bfloat16:  # the bits, kept as uint16 (numpy has no bfloat16)
            return torch.from_numpy(out.view(np.int16)).view(torch.bfloat16).to(device, non_blocking=True)
        return torch.from_numpy(out).to(device, non_blocking=True)


class FeatureBank:
    """The features of several splits behind one numbering: split ``k`` answers the image numbers
    ``[offsets[k], offsets[k] + len(split k))`` (see :class:`ImageRows`).

    With ``whole`` (one tensor holding every split in order, the parts being views of it) a lookup is a single
    ``index_select`` on the tensor's device: no transfer of the numbers to the host, so no GPU sync per step.
    """

    def __init__(self, parts: list[Features], whole: torch.Tensor | None = None):
        self.parts, self.whole = parts, whole
        self.offsets = np.cumsum([0, *(len(p) for p in parts)])

    def rows_of(self, k: int) -> ImageRows:
        return ImageRows(int(self.offsets[k]), len(self.parts[k]))

    def __call__(self, numbers: torch.Tensor) -> torch.Tensor:
        """(B, T, D) features of image numbers ``numbers`` (any shape, flattened), on their device."""
        flat = numbers.reshape(-1)
        if self.whole is not None:
            return self.whole.index_select(0, flat.to(self.whole.device)).to(flat.device, non_blocking=True)
        host = flat.cpu()
        lo, hi = int(host.min()), int(host.max())
        k = int(np.searchsorted(self.offsets, lo, side="right")) - 1
        if k < 0 or hi >= self.offsets[-1]:
            raise CxrError(
                f"image numbers {lo}..{hi} are outside the cached features (0..{self.offsets[-1] - 1})"
            )
        if hi < self.offsets[k + 1]:  # one split: the batches of a trial never mix them
            return self.parts[k].rows(host - int(self.offsets[k]), flat.device)
        parts = np.searchsorted(self.offsets, host.numpy(), side="right") - 1
        out = [
            self.parts[p].rows(host[i : i + 1] - int(self.offsets[p]), flat.device) for i, p in enumerate(parts)
        ]
        return torch.cat(out)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)


class Served:
    """An installed override of the image encoder's ``forward`` (see :func:`serve`); ``close()`` restores the
    forward it replaced. Usable as a context manager."""

    def __init__(self, encoder: nn.Module, lookup: Callable[[torch.Tensor], torch.Tensor]):
        from transformers.modeling_outputs import BaseModelOutput

        self.encoder, self.lookup, self.calls = encoder, lookup, 0
        self._previous = encoder.__dict__.get("forward")
        previous = self._previous or (lambda *a, **k: type(encoder).forward(encoder, *a, **k))

        def forward(pixel_values=None, *args, **kwargs):
            if pixel_values is None or pixel_values.is_floating_point():
                return previous(pixel_values, *args, **kwargs)  # real pixels: the real encoder
            self.calls += 1
            features = self.lookup(pixel_values)
            if features.dtype != torch.float32 and not torch.is_autocast_enabled(features.device.type):
                features = features.float()  # stored in bf16 for autocast, read without it
            return BaseModelOutput(last_hidden_state=features)

        encoder.forward = forward

    def close(self) -> None:
        if self._previous is not None:
            self.encoder.forward = self._previous
        else:
            self.encoder.__dict__.pop("forward", None)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(model: nn.Module, lookup: Callable[[torch.Tensor], torch.Tensor]) -> Served:
    """Make GIT's image encoder answer integer ``pixel_values`` (image numbers) with ``lookup(numbers)`` ->
    (B, T, D) features; float pixels still run the real encoder. Returns the handle that undoes it."""
    return Served(image_encoder(model), lookup)


@contextmanager
def encoded_once(model: nn.Module, pixel_values: torch.Tensor) -> Iterator[torch.Tensor]:
    """Run the image encoder once on a batch and serve its output to every call inside the block (teacher-forced
    loss and ``generate``): yields the ``pixel_values`` to pass instead. Image numbers pass through as they are.
    """
    if not pixel_values.is_floating_point():
        yield pixel_values
        return
    features = image_encoder(model)(pixel_values).last_hidden_state
    with serve(model, lambda numbers: features.index_select(0, numbers.reshape(-1))):
        yield torch.arange(len(pixel_values), device=pixel_values.device).view(-1, 1, 1, 1)


# --------------------------------------------------------------------------------------------------------------
# Building and placing the features of a trial's splits


@dataclass
class FeatureCache:
    """What a trial's feature cache is: where (``device``, ``file`` or ``memory``), its size, how long it took
    to build or open (``built``: whether this trial computed it), the file entry's key and folder if any."""

    where: str
    mb: float
    seconds: float
    built: bool
    key: str | None = None
    path: Path | None = None


def cost_columns(cache: FeatureCache | None) -> dict:
    """The trial's cost columns of the feature cache: ``feature_cache`` (where, or ``off``) and its size."""
    if cache is None:
        return {"feature_cache": "off", "feature_cache_mb": 0.0}
    return {"feature_cache": cache.where, "feature_cache_mb": round(cache.mb, 3)}


def weights_hash(module: nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes and bytes of every tensor, in name order)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _images_id(data) -> dict | None:
    """What identifies a split's images and processor settings: the pixel cache entry and the rows kept;
    None when the pixels did not come from the pixel cache (no file entry is possible then)."""
    pixels = data.pixel_values
    if not hasattr(pixels, "array_path"):
        return None
    rows = hashlib.sha256(np.asarray(pixels.rows, dtype=np.int64).tobytes()).hexdigest()
    return {"pixel_cache": Path(pixels.array_path).parent.name, "rows": rows, "spec": pixels.spec.to_dict()}


def feature_key(encoder_hash: str, images: dict, *, dtype: torch.dtype, autocast: bool, device: str) -> str:
    """Hex key of a split's feature entry: encoder weights, images and processor settings, dtype, precision."""
    import transformers

    blob = json.dumps({"version": FEATURE_VERSION, "encoder": encoder_hash, "images": images,
                       "dtype": str(dtype), "autocast": autocast, "device": device,
                       "transformers": transformers.__version__}, sort_keys=True)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _encode(model: nn.Module, data, out, *, device: torch.device, autocast: bool, chunk: int) -> None:
    """Write the encoder output of every image of ``data`` (in row order) into ``out`` (tensor or array)."""
    from cxr_core.dataset import batches

    encoder = image_encoder(model)
    training = encoder.training
    encoder.eval()
    start = 0
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            for batch in batches(data, batch_size=chunk, pad_id=0, device=device):
                pixels = batch["pixel_values"].to(device, non_blocking=True)
                features = encoder(pixels).last_hidden_state
                stop = start + len(features)
                if isinstance(out, torch.Tensor):
                    out[start:stop] = features.to(out.dtype)
                else:
                    bits = out.dtype == np.uint16  # bfloat16, kept as its bits
                    f = features.to(torch.bfloat16 if bits else torch.float32).cpu()
                    out[start:stop] = f.view(torch.int16).numpy().view(np.uint16) if bits else f.numpy()
                start = stop
    finally:
        encoder.train(training)


def _lock(handle, what: Path) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        log.info("feature cache %s is being built by another process; waiting", what)
    except OSError as exc:
        raise CxrError(
            f"cannot lock {handle.name} ({exc}); put data.cache_dir on node-local storage that supports locks"
        ) from None
    fcntl.flock(handle, fcntl.LOCK_EX)


def _file_entry(model, data, folder: Path, key: str, meta: dict, shape: tuple[int, ...], *, dtype: torch.dtype,
                device: torch.device, autocast: bool, chunk: int) -> tuple[Features, bool]:  # fmt: skip
    """Open the file entry ``folder/key``, building it first (under its lock) when it does not exist."""
    final = folder / key
    np_dtype = np.uint16 if dtype == torch.bfloat16 else np.float32

    def opened() -> Features:
        return Features(np.load(final / "features.npy", mmap_mode="r"), dtype)

    if (final / "meta.json").is_file():
        return opened(), False
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{key}.lock", "a+") as lock:
        _lock(lock, final)
        try:
            if (final / "meta.json").is_file():
                return opened(), False
            for stale in [*folder.glob(f".building-{key}-*"), *([final] if final.exists() else [])]:
                shutil.rmtree(stale, ignore_errors=True)  # a build that died, or an entry missing its meta
            start = time.perf_counter()
            tmp = folder / f".building-{key}-{os.getpid()}"
            tmp.mkdir()
            out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np_dtype, shape=shape)
            _encode(model, data, out, device=device, autocast=autocast, chunk=chunk)
            out.flush()
            del out
            meta = {**meta, "key": key, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."),
                    "build_seconds": round(time.perf_counter() - start, 3)}  # fmt: skip
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            os.replace(tmp, final)
            return opened(), True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _placement(nbytes: int, device: torch.device, *, gpu_share: float, files: bool) -> str | None:
    """``device``, ``file``, ``memory`` or None (nowhere: the trial runs uncached)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        if 0 < gpu_share < 1:
            free = min(free, int(total * gpu_share))
        if nbytes <= SHARE * free:
            return "device"
    if files:
        return "file"
    if nbytes <= SHARE * psutil.virtual_memory().available:
        return "memory"
    return None


def _agrees(model, served: Served, pixels: torch.Tensor, numbers: torch.Tensor, input_ids: torch.Tensor, *,
            autocast: bool) -> str | None:  # fmt: skip
    """Compare the served path with the real one on a few images: None when they agree, else why not."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=autocast):
            calls = served.calls
            real = model(input_ids=input_ids, pixel_values=pixels).logits.float()
            cached = model(input_ids=input_ids, pixel_values=numbers).logits.float()
            if served.calls == calls:
                return "the model did not call its image encoder with the image numbers"
    except Exception as exc:  # a GIT whose forward no longer goes through image_encoder(pixel_values)
        return f"{type(exc).__name__}: {exc}"
    finally:
        model.train(training)
    tolerance = (2e-2 if autocast else 1e-4) * max(float(real.abs().max()), 1.0)
    diff = float((real - cached).abs().max())
    return None if diff <= tolerance else f"logits differ by {diff:.3g} (tolerance {tolerance:.3g})"


def attach(
    model: nn.Module,
    splits: list,
    *,
    device: torch.device,
    autocast: bool,
    cache_dir: Path | None,
    gpu_share: float = 0.0,
    chunk: int = _CHUNK,
    pad_id: int = 0,
) -> tuple[list, FeatureCache | None]:
    """Compute (or open) the image features of ``splits`` and serve them to ``model`` for the rest of its life.

    Call it with the model ready to train (method applied, on ``device``). When the encoder may change
    (:func:`frozen_reason`), or the features fit nowhere, nothing happens.

    Args:
        splits: :class:`cxr_core.dataset.SplitData` objects (train, val, ...).
        autocast: whether the trial runs under bf16 autocast (features are then computed so and kept in bf16).
        cache_dir: the node-local cache folder (``data.cache_dir`` resolved), or None for no file entries.
        gpu_share: the trial's share of its GPU (``resources.gpu``), for the device budget.

    Returns:
        (the splits with :class:`ImageRows` as ``pixel_values``, the cache's description), or
        (``splits`` unchanged, None) when the features are not used.
    """
    from cxr_core.dataset import text_batch

    reason = frozen_reason(model)
    if reason:
        log.info("feature cache off: the image encoder may change (%s)", reason)
        return splits, None
    start = time.perf_counter()
    encoder = image_encoder(model)
    first = splits[0]
    probe = first.pixel_values[torch.arange(min(2, len(first)))].to(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        _, tokens, width = encoder(probe[:1]).last_hidden_state.shape
    dtype = torch.bfloat16 if autocast else torch.float32
    itemsize = 2 if autocast else 4
    nbytes = sum(len(d) for d in splits) * tokens * width * itemsize
    ids = [_images_id(d) for d in splits]
    files = cache_dir is not None and all(i is not None for i in ids)
    if files and shutil.disk_usage(_existing_parent(Path(cache_dir))).free < 2 * nbytes:
        files = False
    where = _placement(nbytes, device, gpu_share=gpu_share, files=files)
    if where is None:
        log.warning("feature cache off: %.0f MB of features fit neither on the device nor in memory, and there "
                    "is no cache folder for them", nbytes / 2**20)  # fmt: skip
        return splits, None
    parts: list[Features] = []
    built, keys, folder = True, [], None
    if where == "file":
        folder = Path(cache_dir) / "features"
        encoder_hash = weights_hash(encoder)
        built = False
        for data, images in zip(splits, ids, strict=True):
            key = feature_key(encoder_hash, images, dtype=dtype, autocast=autocast, device=device.type)
            meta = {"version": FEATURE_VERSION, "encoder_sha256": encoder_hash, "images": images,
                    "autocast": autocast, "device": device.type}  # fmt: skip
            part, new = _file_entry(model, data, folder, key, meta, (len(data), tokens, width), dtype=dtype,
                                    device=device, autocast=autocast, chunk=chunk)  # fmt: skip
            parts.append(part)
            keys.append(key)
            built = built or new
        bank = FeatureBank(parts)
    else:
        target = device if where == "device" else torch.device("cpu")
        whole = torch.empty((sum(len(d) for d in splits), tokens, width), dtype=dtype, device=target)
        offset = 0
        for data in splits:
            part = whole[offset : offset + len(data)]
            _encode(model, data, part, device=device, autocast=autocast, chunk=chunk)
            parts.append(Features(part, dtype))
            offset += len(data)
        bank = FeatureBank(parts, whole)
    served = serve(model, bank)
    rows = bank.rows_of(0)[torch.arange(len(probe))].to(device)
    text = text_batch([first.input_ids[i] for i in range(len(probe))], pad_id)
    why = _agrees(model, served, probe, rows, text["input_ids"].to(device), autocast=autocast)
    if why:
        served.close()
        log.warning("feature cache off: the cached path does not match the model's own (%s); training uncached",
                    why)  # fmt: skip
        return splits, None
    out_splits = [replace(d, pixel_values=bank.rows_of(k)) for k, d in enumerate(splits)]
    cache = FeatureCache(where, bank.nbytes / 2**20, time.perf_counter() - start, built,
                         key=",".join(keys) or None, path=folder)  # fmt: skip
    how = "built" if built else "opened"
    log.info("feature cache: %d images, %.1f MB (%s) on %s, %s in %.1f s", sum(len(d) for d in splits),
             cache.mb, str(dtype).removeprefix("torch."), where, how, cache.seconds)  # fmt: skip
    return out_splits, cache


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
