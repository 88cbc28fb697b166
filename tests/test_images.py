"""Images as they come (8/16-bit, grayscale/RGB, JPEG/PNG, any size), path escapes, missing and bad files."""

import numpy as np
import pytest
from PIL import Image

from cxr_core.errors import CxrError
from cxr_core.images import Geometry, model_pixels, read_image, safe_image_path
from cxr_core.labels import LABELS
from cxr_core.mimic import image_relpaths
from cxr_core.synthetic import render_image

CLIP64 = Geometry(shortest_edge=64, crop_height=64, crop_width=64, resample=int(Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def processor():
    from cxr_core.tiny_git import build_processor

    return build_processor()  # the embedded model's processor: CLIP at 64 px + the tiny tokenizer


def xray(h=90, w=70, seed=0) -> np.ndarray:
    return render_image({"Cardiomegaly": 1.0}, view="PA", rng=np.random.default_rng(seed), size=(h, w))


def seed_split(tmp_path, seed_sample, n, *, name="val", paths=None):
    """A split folder holding the seed's first ``n`` rows (seed format); ``paths`` adds a path column."""
    rows = seed_sample.head(n).copy()
    if paths is not None:
        rows["path"] = paths
    split_dir = tmp_path / "splits"
    split_dir.mkdir(exist_ok=True)
    rows.to_csv(split_dir / f"{name}_split.csv", index=False)
    return split_dir, rows


def put_images(root, rows, *, seed=0):
    for i, rel in enumerate(image_relpaths(rows)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(xray(seed=seed + i)).save(path, quality=90)


def test_16bit_png_reads_as_its_8bit_image(tmp_path):
    gray = xray()
    Image.fromarray(gray).save(tmp_path / "a8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "a16.png")  # full 16-bit range
    assert Image.open(tmp_path / "a16.png").mode == "I;16"
    img8, img16 = read_image(tmp_path / "a8.png"), read_image(tmp_path / "a16.png")
    assert img16.mode == "L"
    np.testing.assert_array_equal(np.asarray(img16), np.asarray(img8))
    # 12-bit data stored in 16 bits (values up to 4095) is scaled by the 16-bit range, not clipped at 255.
    Image.fromarray(np.full((8, 8), 4095, dtype=np.uint16)).save(tmp_path / "b16.png")
    assert np.asarray(read_image(tmp_path / "b16.png")).max() == round(4095 * 255 / 65535)


def test_rgb_and_gray_give_the_same_model_input(tmp_path):
    gray = xray(120, 100)
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "rgb.png")
    Image.fromarray(np.stack([gray, gray, gray, np.full_like(gray, 255)], axis=-1)).save(tmp_path / "rgba.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "p.png")
    ref = model_pixels(read_image(tmp_path / "g.png"), CLIP64)
    assert ref.shape == (1, 64, 64) and ref.dtype == np.uint8
    for name in ("rgb.png", "rgba.png", "p.png"):
        np.testing.assert_array_equal(model_pixels(read_image(tmp_path / name), CLIP64), ref, err_msg=name)


def test_colour_jpeg_keeps_three_channels(tmp_path):
    rng = np.random.default_rng(1)
    rgb = np.stack([xray(), xray(seed=1), rng.integers(0, 255, (90, 70), dtype=np.uint8)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    img = read_image(tmp_path / "c.jpg")
    assert img.mode == "RGB"
    px = model_pixels(img, CLIP64)
    assert px.shape == (3, 64, 64) and not (px[0] == px[2]).all()


def test_any_size_becomes_the_model_size(tmp_path):
    for h, w in ((3056 // 8, 2544 // 8), (40, 300), (30, 20)):
        assert model_pixels(Image.fromarray(xray(h, w)), CLIP64).shape == (1, 64, 64)


def test_path_escape_refused(tmp_path, seed_sample, processor):
    from cxr_core.dataset import load_split

    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.jpg").write_bytes(b"")
    for bad in ("../outside.jpg", "files/../../outside.jpg", "/etc/passwd", "C:/x.jpg", ""):
        with pytest.raises(CxrError, match="leaves the image root"):
            safe_image_path(root, bad)
    assert safe_image_path(root, "files/p10/a..b.jpg") == root / "files/p10/a..b.jpg"  # dots in a name are fine
    split_dir, _ = seed_split(tmp_path, seed_sample, 3, paths=["a.jpg", "../outside.jpg", "b.jpg"])
    with pytest.raises(CxrError, match=r"'\.\./outside\.jpg' leaves the image root"):
        load_split(split_dir, "val", image_root=root, processor=processor, cache_dir=None)
    split_dir, _ = seed_split(tmp_path, seed_sample, 2, paths=["a.jpg", str(tmp_path / "outside.jpg")])
    with pytest.raises(CxrError, match="leaves the image root"):
        load_split(split_dir, "val", image_root=root, processor=processor, cache_dir=tmp_path / "cache")
    # A dicom id that climbs out (no path column: the path is built from the ids) is refused the same way.
    rows = seed_sample.head(2).copy()
    rows.loc[1, "dicom_id"] = "../../../../../outside"
    rows.to_csv(tmp_path / "splits" / "val_split.csv", index=False)
    with pytest.raises(CxrError, match="leaves the image root"):
        load_split(tmp_path / "splits", "val", image_root=root, processor=processor, cache_dir=None)


@pytest.mark.parametrize("cached", [False, True])
def test_truncated_and_missing_under_both_policies(tmp_path, seed_sample, processor, cached, caplog):
    from cxr_core.dataset import load_split

    root = tmp_path / "root"
    split_dir, rows = seed_split(tmp_path, seed_sample, 6)
    put_images(root, rows)
    rels = image_relpaths(rows).tolist()
    truncated, missing = root / rels[1], root / rels[4]
    truncated.write_bytes(truncated.read_bytes()[:300])
    missing.unlink()
    cache = tmp_path / "cache" if cached else None
    data = load_split(split_dir, "val", image_root=root, processor=processor, cache_dir=cache, workers=1)
    assert len(data) == 4 == len(data.pixel_values[list(range(4))])
    assert [p.rsplit("/", 1)[1] for p in data.skipped] == [truncated.name, missing.name]
    assert data.skip_reasons[1] == "missing file" and data.skip_reasons[0].startswith("unreadable")
    kept = rows.drop(index=[1, 4])["mini_report"].tolist()
    assert data.reports == kept
    assert "skipped 2 missing or unreadable images" in caplog.text
    # The cache knows every failure at once; the processor path stops at the first one.
    count = "2" if cached else "1"
    with pytest.raises(CxrError, match=count + r" missing or unreadable images .*first: .*" + truncated.name):
        load_split(split_dir, "val", image_root=root, processor=processor, cache_dir=cache, policy="error")


def test_split_csv_with_spaced_labels_and_no_report(tmp_path, seed_sample, processor):
    """A seed-like CSV whose labels have MIMIC's spaced names and no mini_report gets the seed's reports."""
    from cxr_core.dataset import load_split

    root = tmp_path / "root"
    rows = seed_sample.head(4)
    put_images(root, rows)
    plain = rows.drop(columns=["mini_report"]).rename(
        columns=lambda c: c.replace("_", " ") if c[0].isupper() else c
    )
    (tmp_path / "s").mkdir()
    plain.to_csv(tmp_path / "s" / "train_split.csv", index=False)
    data = load_split(tmp_path / "s", "train", image_root=root, processor=processor, cache_dir=None)
    assert data.reports == rows["mini_report"].tolist()
    np.testing.assert_array_equal(data.labels, rows[list(LABELS)].to_numpy(dtype=float))
