import gzip
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_core.errors import CxrError
from cxr_core.labels import LABELS
from cxr_core.mimic import SEED_COLUMNS, image_relpaths, mimic_frame, parse_views
from cxr_core.prepare import balanced_sample, prepare_splits, split_frame


def _write(frame: pd.DataFrame, path, gz: bool) -> None:
    if gz:
        with gzip.open(path, "wt") as fh:
            frame.to_csv(fh, index=False)
    else:
        frame.to_csv(path, index=False)


def mimic_from_seed(seed_rows: pd.DataFrame, root, *, gz=True, labeler="chexpert", spaced=True, laterals=False):
    """A MIMIC-layout root (label, metadata and split tables) holding the seed's rows.

    Args:
        labeler: the name of the label file written (``chexpert`` or ``negbio``).
        spaced: label columns with MIMIC's spaced names ("No Finding") or the seed's underscored ones.
        laterals: add one LATERAL image per study (dicom id + "-lat"), as real studies have.
    """
    root.mkdir(parents=True, exist_ok=True)
    labels = seed_rows.drop_duplicates("study_id")[["subject_id", "study_id", *sorted(LABELS)]]
    if spaced:
        labels = labels.rename(columns={n: n.replace("_", " ") for n in LABELS})
    dt = pd.to_datetime(seed_rows["study_datetime"].str.slice(0, 19))
    frac = seed_rows["study_datetime"].str.extract(r"(\.\d+)$")[0].fillna("")
    meta = pd.DataFrame(
        {
            "dicom_id": seed_rows["dicom_id"],
            "subject_id": seed_rows["subject_id"],
            "study_id": seed_rows["study_id"],
            "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
            "ViewPosition": seed_rows["ViewPosition"],
            "Rows": seed_rows["Rows"],
            "Columns": seed_rows["Columns"],
            "StudyDate": dt.dt.strftime("%Y%m%d").astype(int),
            "StudyTime": dt.dt.strftime("%H%M%S") + frac,
            "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
            "ViewCodeSequence_CodeMeaning": "postero-anterior",
            "PatientOrientationCodeSequence_CodeMeaning": "Erect",
        }
    )
    split = seed_rows[["dicom_id", "study_id", "subject_id", "split"]]
    if laterals:
        lat = meta.assign(dicom_id=meta["dicom_id"] + "-lat", ViewPosition="LATERAL")
        meta = pd.concat([meta, lat], ignore_index=True)
        split = pd.concat([split, split.assign(dicom_id=split["dicom_id"] + "-lat")], ignore_index=True)
    suffix = ".csv.gz" if gz else ".csv"
    for name, frame in ((labeler, labels), ("metadata", meta), ("split", split)):
        _write(frame, root / f"mimic-cxr-2.0.0-{name}{suffix}", gz)
    return root


def write_images(root, frame: pd.DataFrame, *, skip=(), truncate=()) -> None:
    """Tiny grayscale JPEGs at the MIMIC paths of ``frame``'s rows; ``skip`` dicom ids get no file and
    ``truncate`` ones get half a JPEG."""
    rng = np.random.default_rng(0)
    for dicom, rel in zip(frame["dicom_id"], image_relpaths(frame), strict=True):
        if dicom in skip:
            continue
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 32), dtype=np.uint8)).save(path, quality=90)
        if dicom in truncate:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_prepare_reproduces_seed_reports_for_every_row(seed_sample, tmp_path):
    root = mimic_from_seed(seed_sample, tmp_path / "mimic")
    summary = prepare_splits(root, tmp_path / "out", per_label=1000, seed=0, check_images=False)
    out = pd.concat([pd.read_csv(tmp_path / "out" / f"{s}_split.csv") for s in ("train", "val", "test")])
    assert list(out.columns) == list(SEED_COLUMNS) == list(seed_sample.columns)
    assert summary["counts"]["sampled"] == len(seed_sample) == len(out)
    merged = out.merge(seed_sample, on="dicom_id", suffixes=("", "_seed"))
    assert len(merged) == len(seed_sample)
    assert (merged["mini_report"] == merged["mini_report_seed"]).all()
    assert (merged["unique_id"] == merged["unique_id_seed"]).all()
    assert (merged["study_datetime"] == merged["study_datetime_seed"]).all()
    assert (merged["split"] == merged["split_seed"]).all()


def test_quota_walk_semantics_hand_checked():
    # Walk order is fixed by the permutation; check against the row-by-row loop on a small frame.
    rng = np.random.default_rng(3)
    values = rng.choice([1.0, 0.0, -1.0, np.nan], size=(60, len(LABELS)), p=[0.2, 0.2, 0.1, 0.5])
    frame = pd.DataFrame(values, columns=list(LABELS))
    frame["dicom_id"] = [f"d{i}" for i in range(60)]
    got = balanced_sample(frame, per_label=3, seed=7)
    order = np.random.default_rng(7).permutation(60)
    counts = dict.fromkeys(LABELS, 0)
    expect = []
    for i in order:
        for k, label in enumerate(LABELS):
            if values[i, k] in (1.0, -1.0) and counts[label] < 3:
                counts[label] += 1
                expect.append((f"d{i}", label))
                break
    assert list(zip(got["dicom_id"], got["sampled_label"], strict=True)) == expect


def test_quota_first_eligible_label_wins():
    nan = np.nan
    rows = [
        # Atelectasis, Cardiomegaly, rest blank
        [1.0, 1.0] + [nan] * 12,
        [1.0, -1.0] + [nan] * 12,
        [nan, 1.0] + [nan] * 12,
        [0.0, 0.0] + [nan] * 11 + [1.0],  # only No_Finding eligible
    ]
    frame = pd.DataFrame(rows, columns=list(LABELS))
    frame["dicom_id"] = ["a", "b", "c", "d"]
    # With identity-like order irrelevant: quota 1 -> one Atelectasis, one Cardiomegaly, one No_Finding.
    got = balanced_sample(frame, per_label=1, seed=0)
    assert sorted(got["sampled_label"]) == ["Atelectasis", "Cardiomegaly", "No_Finding"]
    assert "d" in set(got["dicom_id"])


def test_split_grouped_by_patient_and_stratified():
    rng = np.random.default_rng(0)
    n = 600
    frame = pd.DataFrame(rng.choice([1.0, np.nan], size=(n, len(LABELS)), p=[0.3, 0.7]), columns=list(LABELS))
    frame["subject_id"] = rng.integers(0, 150, size=n)
    frame["dicom_id"] = [f"d{i}" for i in range(n)]
    parts = split_frame(frame, seed=0)
    subjects = [set(p["subject_id"]) for p in parts.values()]
    assert (
        not (subjects[0] & subjects[1]) and not (subjects[0] & subjects[2]) and not (subjects[1] & subjects[2])
    )
    assert sum(len(p) for p in parts.values()) == n
    share = len(parts["train"]) / n
    assert 0.5 < share < 0.7
    by_image = split_frame(frame, seed=0, by="image")
    assert sum(len(p) for p in by_image.values()) == n


def test_missing_root_and_bad_label_values(tmp_path, seed_sample):
    with pytest.raises(CxrError, match="does not exist"):
        mimic_frame(tmp_path / "nope")
    root = mimic_from_seed(seed_sample.head(20), tmp_path / "m", gz=False)
    labels = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv")
    labels.loc[0, "Edema"] = 2.0
    labels.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    with pytest.raises(CxrError, match="label values must be 1.0, 0.0, -1.0 or blank"):
        mimic_frame(root, check_images=False)


def test_quota_walk_small_case_by_hand():
    nan = np.nan
    cols = {"Atelectasis": [1, 1, nan, -1, 1, nan], "Cardiomegaly": [1, nan, -1, 1, 0, 1]}
    frame = pd.DataFrame({label: cols.get(label, [nan] * 6) for label in LABELS}, dtype=float)
    frame["dicom_id"] = [f"r{i}" for i in range(6)]
    frame.loc[2, "No_Finding"] = 1.0
    # seed 0 walks rows 3, 2, 5, 4, 0, 1. Quota 2: r3 -> Atelectasis (uncertain counts), r2 -> Cardiomegaly
    # (its first eligible label), r5 -> Cardiomegaly (now full), r4 -> Atelectasis (now full); r0 and r1
    # have only full labels. r2's No_Finding is never reached: Cardiomegaly came first.
    assert list(np.random.default_rng(0).permutation(6)) == [3, 2, 5, 4, 0, 1]
    got = balanced_sample(frame, per_label=2, seed=0)
    assert list(zip(got["dicom_id"], got["sampled_label"], strict=True)) == [
        ("r3", "Atelectasis"), ("r2", "Cardiomegaly"), ("r5", "Cardiomegaly"), ("r4", "Atelectasis")
    ]  # fmt: skip
    # r5 unusable (its file is missing): the walk passes it by, so r0 fills Cardiomegaly's second place.
    usable = np.array([True, True, True, True, True, False])
    got = balanced_sample(frame, per_label=2, seed=0, usable=usable)
    assert list(zip(got["dicom_id"], got["sampled_label"], strict=True)) == [
        ("r3", "Atelectasis"), ("r2", "Cardiomegaly"), ("r4", "Atelectasis"), ("r0", "Cardiomegaly")
    ]  # fmt: skip


@pytest.mark.parametrize("labeler", ["chexpert", "negbio"])
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("spaced", [True, False])
def test_label_file_variants(seed_sample, tmp_path, labeler, gz, spaced):
    rows = seed_sample.head(30)
    root = mimic_from_seed(rows, tmp_path / "m", gz=gz, labeler=labeler, spaced=spaced)
    frame = mimic_frame(root, labeler=labeler, check_images=False).set_index("dicom_id")
    expect = rows.set_index("dicom_id")[list(LABELS)]
    pd.testing.assert_frame_equal(frame.loc[expect.index, list(LABELS)], expect.astype("float64"))
    other = "negbio" if labeler == "chexpert" else "chexpert"
    with pytest.raises(CxrError, match=f"no mimic-cxr-2.0.0-{other}.csv"):
        mimic_frame(root, labeler=other, check_images=False)


def test_negbio_labels_are_the_ones_read(seed_sample, tmp_path):
    rows = seed_sample.head(30)
    root = mimic_from_seed(rows, tmp_path / "m")
    negbio = rows.assign(Edema=0.0, Cardiomegaly=-1.0)
    mimic_from_seed(negbio, tmp_path / "n", labeler="negbio")
    (tmp_path / "n" / "mimic-cxr-2.0.0-negbio.csv.gz").rename(root / "mimic-cxr-2.0.0-negbio.csv.gz")
    chex = mimic_frame(root, check_images=False)
    neg = mimic_frame(root, labeler="negbio", check_images=False)
    assert (neg["Edema"] == 0.0).all() and (neg["Cardiomegaly"] == -1.0).all()
    assert chex["Edema"].isna().any()


def test_view_filter(seed_sample, tmp_path):
    rows = seed_sample.head(40)
    root = mimic_from_seed(rows, tmp_path / "m", laterals=True)
    frontal = mimic_frame(root, check_images=False)
    assert len(frontal) == 40 and set(frontal["ViewPosition"]) == {"PA", "AP"}
    assert frontal.attrs["images_total"] == 80 and frontal.attrs["images_view_dropped"] == 40
    pa = mimic_frame(root, views=parse_views("PA"), check_images=False)
    assert len(pa) == (rows["ViewPosition"] == "PA").sum() and set(pa["ViewPosition"]) == {"PA"}
    every = mimic_frame(root, views=parse_views("all"), check_images=False)
    assert len(every) == 80 and (every["ViewPosition"] == "LATERAL").sum() == 40
    manifest = prepare_splits(root, tmp_path / "out", per_label=100, check_images=False, views=("PA", "AP"))
    assert manifest["dropped"]["view_not_kept"] == 40 and manifest["settings"]["views"] == ["PA", "AP"]
    out = pd.concat(pd.read_csv(tmp_path / "out" / f"{s}_split.csv") for s in ("train", "val", "test"))
    assert not out["dicom_id"].str.endswith("-lat").any()
    with pytest.raises(CxrError, match="--views"):
        parse_views(" , ")


def test_manifest_records_inputs_settings_and_counts(seed_sample, tmp_path):
    root = mimic_from_seed(seed_sample, tmp_path / "m")
    out = tmp_path / "out"
    prepare_splits(root, out, per_label=12, seed=3, check_images=False, split_by="image")
    manifest = json.loads((out / "manifest.json").read_text())
    meta = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    assert manifest["inputs"]["metadata"]["sha256"] == hashlib.sha256(meta.read_bytes()).hexdigest()
    assert manifest["inputs"]["metadata"]["bytes"] == meta.stat().st_size
    assert manifest["inputs"]["labels"]["path"].endswith("mimic-cxr-2.0.0-chexpert.csv.gz")
    assert (
        manifest["settings"] | {"per_label": 12, "shuffle_seed": 3, "split_seed": 3, "split_by": "image"}
        == (manifest["settings"])
    )
    total = 0
    for name in ("train", "val", "test"):
        part = pd.read_csv(out / f"{name}_split.csv")
        total += len(part)
        assert manifest["rows"][name] == len(part)
        assert (
            manifest["outputs"][f"{name}_split.csv"]["sha256"]
            == hashlib.sha256((out / f"{name}_split.csv").read_bytes()).hexdigest()
        )
        for label in LABELS:
            assert manifest["rows_per_label"][name][label] == part[label].isin([1.0, -1.0]).sum()
    counts, dropped = manifest["counts"], manifest["dropped"]
    assert counts["sampled"] == total == sum(sum(q.values()) for q in manifest["quota_label"].values())
    assert max(sum(q[label] for q in manifest["quota_label"].values()) for label in LABELS) <= 12
    assert counts["eligible"] == counts["sampled"] + dropped["quota_full"]
    assert counts["images_total"] == 200 and dropped["missing_file"] == 0


def test_no_patient_in_two_splits(small_data):
    _, splits = small_data
    parts = {s: pd.read_csv(splits / f"{s}_split.csv") for s in ("train", "val", "test")}
    subjects = {s: set(p["subject_id"]) for s, p in parts.items()}
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"])
    assert not subjects["val"] & subjects["test"]
    assert sum(p["subject_id"].value_counts().max() > 1 for p in parts.values())  # patients with several images
    manifest = json.loads((splits / "manifest.json").read_text())
    assert manifest["patients"] == {s: len(v) for s, v in subjects.items()}


def test_missing_file_under_both_policies(seed_sample, tmp_path):
    rows = seed_sample.head(60)
    root = mimic_from_seed(rows, tmp_path / "m")
    frame = mimic_frame(root, check_images=False)
    first = balanced_sample(frame, per_label=3, seed=0)
    gone = set(first["dicom_id"].head(2))  # two images the walk takes
    write_images(root, rows, skip=gone)
    manifest = prepare_splits(root, tmp_path / "skip", per_label=3, seed=0)
    assert manifest["dropped"]["missing_file"] == 2
    assert {d["reason"] for d in manifest["dropped_images"]} == {"missing file"}
    assert {d["path"].rsplit("/", 1)[1].removesuffix(".jpg") for d in manifest["dropped_images"]} == gone
    out = pd.concat(pd.read_csv(tmp_path / "skip" / f"{s}_split.csv") for s in ("train", "val", "test"))
    # Exactly the sample the walk gives with those images left out: the next eligible images replace them.
    expect = balanced_sample(frame, per_label=3, seed=0, usable=~frame["dicom_id"].isin(gone).to_numpy())
    assert set(out["dicom_id"]) == set(expect["dicom_id"]) and not gone & set(out["dicom_id"])
    with pytest.raises(CxrError, match=r"2 sampled images are missing or unreadable.*--image-policy skip"):
        prepare_splits(root, tmp_path / "err", per_label=3, seed=0, image_policy="error")
    assert not (tmp_path / "err" / "train_split.csv").exists()


def test_truncated_jpeg_found_by_decode_check(seed_sample, tmp_path):
    rows = seed_sample.head(40)
    root = mimic_from_seed(rows, tmp_path / "m")
    frame = mimic_frame(root, check_images=False)
    bad = balanced_sample(frame, per_label=2, seed=0)["dicom_id"].iloc[0]
    write_images(root, rows, truncate={bad})
    exists = prepare_splits(root, tmp_path / "exists", per_label=2, seed=0)  # the file is there: passes
    assert exists["dropped"]["unreadable_file"] == 0
    decoded = prepare_splits(root, tmp_path / "decode", per_label=2, seed=0, check_images="decode", workers=1)
    assert decoded["dropped"]["unreadable_file"] == 1
    assert decoded["dropped_images"][0]["reason"].startswith("unreadable")
    with pytest.raises(CxrError, match="1 sampled images"):
        prepare_splits(
            root, tmp_path / "e", per_label=2, check_images="decode", image_policy="error", workers=1
        )


def test_prepare_data_cli(seed_sample, tmp_path, capsys):
    from jobs.prepare_data import main

    rows = seed_sample.head(60)
    root = mimic_from_seed(rows, tmp_path / "m", gz=False)
    gone = set(balanced_sample(mimic_frame(root, check_images=False), per_label=3)["dicom_id"].head(1))
    write_images(root, rows, skip=gone)
    main(["--mimic-root", str(root), "--out", str(tmp_path / "o"), "--per-label", "3"])
    text = capsys.readouterr().out
    assert "skipped 1 missing or unreadable images" in text and f"{next(iter(gone))}.jpg: missing file" in text
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--mimic-root",
                str(root),
                "--out",
                str(tmp_path / "o2"),
                "--per-label",
                "3",
                "--image-policy",
                "error",
            ]
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: 1 sampled images are missing")


def test_duplicate_study_in_label_file_refused(seed_sample, tmp_path):
    root = mimic_from_seed(seed_sample.head(10), tmp_path / "m", gz=False)
    path = root / "mimic-cxr-2.0.0-chexpert.csv"
    labels = pd.read_csv(path)
    pd.concat([labels, labels.head(1)]).to_csv(path, index=False)
    with pytest.raises(CxrError, match="one row per study"):
        mimic_frame(root, check_images=False)


def test_prepare_scale_bench_small(tmp_path, capsys):
    from bench.prepare_scale import main

    result = main(["--scale", "0.01", "--work", str(tmp_path), "--per-label", "50"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == result and result["images"] == round(377_110 * 0.01) and result["patients"] == 654
    assert result["studies"] == round(227_827 * 0.01)
    assert 0 < result["sampled"] <= 14 * 50 and result["wall_seconds"] > 0 and result["peak_rss_mb"] > 0
