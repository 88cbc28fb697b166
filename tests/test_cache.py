"""The image cache: same pixels as the processor, reuse, rebuild on change, concurrent first use."""

import fcntl
import json
import multiprocessing
import os

import numpy as np
import pytest
from PIL import Image

from cxr_core.cache import cache_key, forget_images_under, image_cache, pixel_spec, resolve_cache_dir
from cxr_core.synthetic import render_image


def clip(size=64, **kw):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **kw)


def make_images(folder, n=6, *, kinds=True) -> list[str]:
    """Grayscale JPEGs of several sizes and aspect ratios, plus (``kinds``) a colour JPEG and a 16-bit PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = (int(x) for x in rng.integers(40, 260, size=2))
        px = render_image({"Pleural_Effusion": 1.0}, view="AP", rng=np.random.default_rng(i), size=(h, w))
        paths.append(str(folder / f"g{i}.jpg"))
        Image.fromarray(px).save(paths[-1], quality=90)
    if kinds:
        rgb = rng.integers(0, 255, size=(150, 110, 3), dtype=np.uint8)
        paths.append(str(folder / "colour.jpg"))
        Image.fromarray(rgb).save(paths[-1], quality=95)
        deep = (rng.random((97, 131)) * 65535).astype(np.uint16)
        paths.append(str(folder / "deep.png"))
        Image.fromarray(deep).save(paths[-1])
    return paths


@pytest.mark.parametrize("size", [64, 224])
def test_cache_pixels_equal_the_processors(tmp_path, size):
    import torch

    from cxr_core.dataset import CachedPixels
    from cxr_core.images import read_image

    paths = make_images(tmp_path / "img")
    proc = clip(size)
    spec = pixel_spec(proc)
    cache = image_cache(paths, spec, cache_dir=tmp_path / "cache", workers=1)
    assert cache.pixels.shape == (len(paths), 3, size, size) and cache.pixels.dtype == np.uint8  # one colour
    got = CachedPixels(cache.path / "pixels.npy", np.arange(len(paths)), spec)[torch.arange(len(paths))]
    want = proc(images=[read_image(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5  # float rounding only


def test_grayscale_stays_one_channel_until_batch_time(tmp_path):
    paths = make_images(tmp_path / "img", n=3, kinds=False)
    cache = image_cache(paths, pixel_spec(clip()), cache_dir=tmp_path / "cache", workers=1)
    assert cache.pixels.shape == (3, 1, 64, 64)


def test_split_from_cache_equals_split_from_processor(tmp_path, small_data):
    """What a trial gets: load_split with the cache and without, on real prepared splits."""
    from cxr_core.dataset import CachedPixels, batches, load_split
    from cxr_core.tiny_git import build_processor

    root, splits = small_data
    processor = build_processor()
    kw = dict(image_root=root, processor=processor, limit=40)
    plain = load_split(splits, "train", cache_dir=None, **kw)
    cached = load_split(splits, "train", cache_dir=tmp_path / "cache", workers=1, **kw)
    assert isinstance(cached.pixel_values, CachedPixels) and len(cached) == len(plain) == 40
    assert cached.reports == plain.reports
    b1 = next(batches(plain, batch_size=16, pad_id=0))
    b2 = next(batches(cached, batch_size=16, pad_id=0, device="cpu"))
    assert b2["pixel_values"].shape == (16, 3, 64, 64)
    assert (b1["pixel_values"] - b2["pixel_values"]).abs().max().item() < 1e-5


def test_reuse_and_rebuild_on_change(tmp_path):
    paths = make_images(tmp_path / "img", n=4, kinds=False)
    cache_dir = tmp_path / "cache"
    first = image_cache(paths, pixel_spec(clip()), cache_dir=cache_dir, workers=1)
    assert first.built
    stamp = (first.path / "pixels.npy").stat().st_mtime_ns
    again = image_cache(paths, pixel_spec(clip()), cache_dir=cache_dir, workers=1)
    assert not again.built and again.path == first.path
    assert (again.path / "pixels.npy").stat().st_mtime_ns == stamp
    changes = {
        "image list": (paths[:3], clip()),
        "image order": (paths[::-1], clip()),
        "size": (paths, clip(48)),
        "resample": (paths, clip(resample=Image.Resampling.BILINEAR)),
        "normalisation": (paths, clip(image_mean=[0.5, 0.5, 0.5])),
    }
    keys = {first.key}
    for what, (p, proc) in changes.items():
        entry = image_cache(p, pixel_spec(proc), cache_dir=cache_dir, workers=1)
        assert entry.built and entry.key not in keys, what
        keys.add(entry.key)
    assert image_cache(paths[::-1], pixel_spec(clip()), cache_dir=cache_dir).pixels[0].tolist() == (
        first.pixels[3].tolist()
    )
    assert sorted(p.name for p in cache_dir.iterdir() if p.is_dir()) == sorted(keys)


def test_images_rewritten_in_place_are_forgotten_and_rebuilt_with_their_new_pixels(tmp_path):
    """The key hashes paths, not contents: jobs.demo rewrites its synthetic images under the same paths and then
    forgets their entries, so the next use decodes the new pixels; entries of other images stay."""
    ours, other = (
        make_images(tmp_path / "ours", n=2, kinds=False),
        make_images(tmp_path / "other", n=2, kinds=False),
    )
    cache_dir = tmp_path / "cache"
    old = image_cache(ours, pixel_spec(clip()), cache_dir=cache_dir, workers=1)
    kept = image_cache(other, pixel_spec(clip()), cache_dir=cache_dir, workers=1)
    before = np.array(old.pixels)
    for path in ours:  # same path, different picture
        Image.fromarray(np.full((80, 80), 200, dtype=np.uint8)).save(path, quality=90)
    stale = image_cache(ours, pixel_spec(clip()), cache_dir=cache_dir)  # same key: the old pixels
    assert stale.pixels.tolist() == before.tolist()
    assert forget_images_under(cache_dir, tmp_path / "ours") == [old.key]
    new = image_cache(ours, pixel_spec(clip()), cache_dir=cache_dir, workers=1)
    assert new.built and new.key == old.key and not np.array_equal(np.array(new.pixels), before)
    again = image_cache(other, pixel_spec(clip()), cache_dir=cache_dir, workers=1)
    assert not again.built and again.key == kept.key
    assert forget_images_under(tmp_path / "no-cache-here", tmp_path) == []


def test_failures_are_recorded_in_the_entry(tmp_path):
    paths = make_images(tmp_path / "img", n=3, kinds=False)
    with open(paths[1], "r+b") as fh:
        fh.truncate(200)
    paths.append(str(tmp_path / "img" / "nowhere.jpg"))
    entry = image_cache(paths, pixel_spec(clip()), cache_dir=tmp_path / "cache", workers=1)
    assert [(row, why.split(":")[0]) for row, _, why in entry.failures] == [
        (1, "unreadable"),
        (3, "missing file"),
    ]
    assert not entry.pixels[3].any()
    meta = json.loads((entry.path / "meta.json").read_text())
    assert meta["failures"][1][1] == paths[3]


def _worker(paths, cache_dir, ready, queue):
    """One 'trial' asking for the cache (runs in its own process)."""
    import logging

    from transformers import CLIPImageProcessor

    logging.basicConfig(level=logging.INFO)
    proc = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    ready.set()
    entry = image_cache(paths, pixel_spec(proc), cache_dir=cache_dir, workers=1)
    queue.put((os.getpid(), entry.built, entry.key, int(entry.pixels.astype(np.int64).sum())))


def test_concurrent_first_use_builds_once(tmp_path):
    """Two processes ask for the same new entry at once: one builds, the other waits and opens it; a
    half-written build left by a crashed process is never read."""
    paths = make_images(tmp_path / "img", n=8, kinds=False)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    key = cache_key(paths, pixel_spec(clip()))
    crashed = cache_dir / f".building-{key}-999999"
    crashed.mkdir()
    np.save(crashed / "gray.npy", np.full((8, 1, 64, 64), 7, dtype=np.uint8))  # garbage, no meta.json
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    events = [ctx.Event(), ctx.Event()]
    # Hold the build lock while both processes start, so both find the entry missing at the same moment.
    with open(cache_dir / f"{key}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = [ctx.Process(target=_worker, args=(paths, cache_dir, ev, queue)) for ev in events]
        for p in procs:
            p.start()
        for ev in events:
            assert ev.wait(120)
        assert not (cache_dir / key).exists()
        fcntl.flock(lock, fcntl.LOCK_UN)
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(built for _, built, _, _ in results) == [False, True]
    assert {k for _, _, k, _ in results} == {key}
    assert len({s for _, _, _, s in results}) == 1
    solo = image_cache(paths, pixel_spec(clip()), cache_dir=tmp_path / "solo", workers=1)
    assert int(solo.pixels.astype(np.int64).sum()) == results[0][3]  # not the crashed build's 7s
    assert not crashed.exists()
    assert [p.name for p in cache_dir.iterdir() if p.is_dir()] == [key]


def test_parallel_build_equals_serial(tmp_path):
    paths = make_images(tmp_path / "img", n=70, kinds=False)  # two worker tasks of 64
    serial = image_cache(paths, pixel_spec(clip()), cache_dir=tmp_path / "a", workers=1)
    parallel = image_cache(paths, pixel_spec(clip()), cache_dir=tmp_path / "b", workers=2)
    np.testing.assert_array_equal(serial.pixels, parallel.pixels)


def test_cache_dir_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir("auto") == tmp_path / "env"
    assert resolve_cache_dir("none") is None and resolve_cache_dir(None) is None
    assert resolve_cache_dir(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.delenv("CXR_CACHE_DIR")
    assert resolve_cache_dir("auto").is_absolute()


@pytest.mark.slow
def test_data_loading_bench_small(tmp_path, capsys):
    from bench.data_loading import main

    result = main(
        ["--n", "3", "--work", str(tmp_path), "--workers", "1", "--batch-size", "2", "--cache-epochs", "2"]
    )
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == result and result["images"] == 3 and result["b_cache"]["samples"] == 6
    assert result["b_cache"]["channels_stored"] == 1 and result["max_abs_pixel_difference"] < 1e-5
    assert result["ratio"] == pytest.approx(
        result["b_cache"]["samples_per_s"] / result["a_per_sample_processor"]["samples_per_s"], rel=0.01
    )
