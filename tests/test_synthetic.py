"""The synthetic MIMIC-CXR-JPG stand-in: exact layout, byte-determinism, MIMIC-like structure and labels, and
pixels that carry the labels (a linear model learns them from 32 x 32 thumbnails)."""

from __future__ import annotations

import hashlib
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cxr_core.errors import CxrError
from cxr_core.labels import LABELS
from cxr_core.synthetic import (
    CHEXPERT_CSV,
    METADATA_CSV,
    NEGBIO_CSV,
    PATHOLOGIES,
    SPLIT_CSV,
    image_path,
    make_synthetic,
    patient_look,
    render_image,
    sample_labels,
)

REPO = Path(__file__).resolve().parents[1]

# Written out, not derived: MIMIC's spaced names in MIMIC's (alphabetical) column order.
MIMIC_LABEL_COLUMNS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
]  # fmt: skip
METADATA_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]  # fmt: skip
SPACED_PATHOLOGIES = [name.replace("_", " ") for name in PATHOLOGIES]


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    summary = make_synthetic(root, n_patients=40, seed=3, image_size=64)
    tables = {
        "chexpert": pd.read_csv(root / CHEXPERT_CSV),
        "negbio": pd.read_csv(root / NEGBIO_CSV),
        "metadata": pd.read_csv(root / METADATA_CSV),
        "split": pd.read_csv(root / SPLIT_CSV),
    }
    return root, summary, tables


def test_same_arguments_give_identical_bytes_and_another_seed_does_not(tmp_path):
    make_synthetic(tmp_path / "a", n_patients=5, seed=11, image_size=48)
    make_synthetic(tmp_path / "b", n_patients=5, seed=11, image_size=48)
    make_synthetic(tmp_path / "c", n_patients=5, seed=12, image_size=48)
    a, b, c = (_hashes(tmp_path / name) for name in "abc")
    assert len(a) > 4 + 5  # the four tables and at least one image per patient
    assert a == b
    assert a[CHEXPERT_CSV] != c[CHEXPERT_CSV]
    assert {k for k in a if k.endswith(".jpg")}.isdisjoint(k for k in c if k.endswith(".jpg"))
    # gzip header: no mtime (bytes 4-8) and no file name (FLG bit 3) that would tie bytes to the run
    raw = (tmp_path / "a" / METADATA_CSV).read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0" and not raw[3] & 0x08


def test_file_names_and_columns_are_mimics(small):
    root, _, t = small
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [CHEXPERT_CSV, NEGBIO_CSV, METADATA_CSV, SPLIT_CSV, "files"]
    )
    assert CHEXPERT_CSV == "mimic-cxr-2.0.0-chexpert.csv.gz" and SPLIT_CSV == "mimic-cxr-2.0.0-split.csv.gz"
    assert list(t["chexpert"].columns) == ["subject_id", "study_id", *MIMIC_LABEL_COLUMNS]
    assert list(t["negbio"].columns) == ["subject_id", "study_id", *MIMIC_LABEL_COLUMNS]
    assert list(t["metadata"].columns) == METADATA_COLUMNS
    assert list(t["split"].columns) == ["dicom_id", "study_id", "subject_id", "split"]


def test_ids_dates_and_splits_look_like_mimic(small):
    _, _, t = small
    meta, split, chexpert = t["metadata"], t["split"], t["chexpert"]
    assert meta.subject_id.astype(str).str.fullmatch(r"1\d{7}").all()
    assert meta.study_id.astype(str).str.fullmatch(r"5\d{7}").all()
    assert meta.dicom_id.str.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}").all() and meta.dicom_id.is_unique
    assert meta.StudyDate.between(2110_01_01, 2199_12_31).all()
    hhmmss = meta.StudyTime.astype(int)
    assert ((hhmmss // 10000 < 24) & (hhmmss // 100 % 100 < 60) & (hhmmss % 100 < 60)).all()
    assert (meta.Rows == 64).all() and (meta.Columns == 64).all()
    assert chexpert.study_id.is_unique
    assert set(zip(meta.subject_id, meta.study_id, strict=True)) == set(
        zip(chexpert.subject_id, chexpert.study_id, strict=True)
    )
    assert list(split.dicom_id) == list(meta.dicom_id)
    assert set(split.split) == {"train", "validate", "test"}
    assert (split.groupby("subject_id").split.nunique() == 1).all()  # split by patient


def test_every_metadata_row_resolves_to_its_grayscale_jpeg(small):
    root, _, t = small
    meta = t["metadata"]
    for row in meta.itertuples():
        rel = image_path(row.subject_id, row.study_id, row.dicom_id)
        assert (
            str(rel) == f"files/p{str(row.subject_id)[:2]}/p{row.subject_id}/s{row.study_id}/{row.dicom_id}.jpg"
        )
        with Image.open(root / rel) as img:
            assert img.format == "JPEG" and img.mode == "L" and img.size == (row.Columns, row.Rows)
    assert len(list(root.glob("files/p*/p*/s*/*.jpg"))) == len(meta)


def test_structure_has_laterals_and_repeats(small):
    _, summary, t = small
    meta = t["metadata"]
    views = meta.ViewPosition.value_counts()
    assert {"PA", "AP", "LATERAL", "LL"} <= set(views.index) <= {"PA", "AP", "LATERAL", "LL"}
    lateral = meta.ViewPosition.isin(["LATERAL", "LL"])
    assert 0.12 < lateral.mean() < 0.35
    per_study = meta.groupby("study_id").size()
    per_patient = t["chexpert"].groupby("subject_id").size()
    assert per_study.max() > 1 and per_study.between(1, 3).all()
    assert per_patient.max() > 1 and per_patient.between(1, 4).all()
    assert summary["patients"] == 40 == meta.subject_id.nunique()
    assert summary["studies"] == len(t["chexpert"])
    assert summary["images"] == len(meta)
    assert summary["frontal_images"] == (~lateral).sum() and summary["lateral_images"] == lateral.sum()
    positives = (t["chexpert"][MIMIC_LABEL_COLUMNS] == 1.0).sum()
    assert summary["positives"] == {name: positives[name.replace("_", " ")] for name in LABELS}


def test_label_values_include_uncertain_negative_and_blank(small):
    _, _, t = small
    for which in ("chexpert", "negbio"):
        values = t[which][MIMIC_LABEL_COLUMNS].to_numpy().ravel()
        blank = np.isnan(values)
        assert set(values[~blank]) == {1.0, 0.0, -1.0}
        assert blank.mean() > 0.5  # most labels of a study are not mentioned
        frame = t[which]
        assert not (frame["No Finding"].eq(1.0) & frame[SPACED_PATHOLOGIES].eq(1.0).any(axis=1)).any()
    a, b = (t[w][MIMIC_LABEL_COLUMNS].fillna(9).to_numpy() for w in ("chexpert", "negbio"))
    assert list(t["negbio"].study_id) == list(t["chexpert"].study_id)
    assert 0.9 < (a == b).mean() < 1.0  # the same studies, labelled slightly differently


def test_label_prevalence_and_co_occurrence_follow_mimic():
    rng = np.random.default_rng(0)
    draws = [sample_labels(rng) for _ in range(6000)]
    pos = {name: np.array([d[name] == 1.0 for d in draws]) for name in LABELS}
    target = {
        "No_Finding": 0.30, "Support_Devices": 0.25, "Pleural_Effusion": 0.22, "Lung_Opacity": 0.20,
        "Atelectasis": 0.18, "Cardiomegaly": 0.18, "Edema": 0.12, "Pneumonia": 0.07, "Consolidation": 0.05,
        "Pneumothorax": 0.04, "Enlarged_Cardiomediastinum": 0.04, "Lung_Lesion": 0.03, "Fracture": 0.025,
        "Pleural_Other": 0.015,
    }  # fmt: skip
    for name, rate in target.items():
        assert abs(pos[name].mean() - rate) < 0.025, (name, pos[name].mean())
    edema, cardio, pneumonia, consolidation = (
        pos["Edema"],
        pos["Cardiomegaly"],
        pos["Pneumonia"],
        pos["Consolidation"],
    )
    assert edema[cardio].mean() > 2.5 * edema[~cardio].mean()
    assert pos["Pleural_Effusion"][edema].mean() > 2 * pos["Pleural_Effusion"][~edema].mean()
    assert consolidation[pneumonia].mean() > 5 * consolidation[~pneumonia].mean()


def test_render_image_shape_determinism_and_faint_uncertain():
    look = patient_look(np.random.default_rng(1))

    def render(labels, view="PA", size=(120, 96)):
        return render_image(labels, view=view, rng=np.random.default_rng(5), size=size, look=look)

    img = render({"Cardiomegaly": 1.0})
    assert img.shape == (120, 96) and img.dtype == np.uint8
    assert np.array_equal(img, render({"Cardiomegaly": 1.0}))
    assert np.array_equal(render({"Pleural Effusion": 1.0}), render({"Pleural_Effusion": 1.0}))  # spaced names
    blank = render({"Cardiomegaly": math.nan}).astype(int)
    assert np.array_equal(blank, render({"Cardiomegaly": 0.0}))  # a negative draws nothing
    strong = np.abs(render({"Cardiomegaly": 1.0}).astype(int) - blank).mean()
    faint = np.abs(render({"Cardiomegaly": -1.0}).astype(int) - blank).mean()
    assert strong > faint > 0.5
    lateral = render({}, view="LATERAL")
    assert np.abs(lateral.astype(int) - blank).mean() > 10  # a different silhouette, not a relabelled PA
    with pytest.raises(CxrError, match="PA"):
        render({}, view="OBLIQUE")


def test_bad_arguments_raise_cxr_error(tmp_path):
    with pytest.raises(CxrError, match="n_patients"):
        make_synthetic(tmp_path, n_patients=2)
    with pytest.raises(CxrError, match="image_size"):
        make_synthetic(tmp_path, n_patients=5, image_size=16)


def test_pixels_carry_the_labels(tmp_path):
    """A linear model on 32 x 32 thumbnails of held-out patients' frontal images finds the labels."""
    make_synthetic(tmp_path, n_patients=150, seed=7, image_size=128)
    meta = pd.read_csv(tmp_path / METADATA_CSV)
    frame = meta[meta.ViewPosition.isin(["PA", "AP"])].merge(
        pd.read_csv(tmp_path / CHEXPERT_CSV), on=["subject_id", "study_id"]
    )
    x = np.stack(
        [
            np.asarray(
                Image.open(tmp_path / image_path(r.subject_id, r.study_id, r.dicom_id)).resize(
                    (32, 32), Image.Resampling.BILINEAR
                ),
                dtype=np.float32,
            ).ravel()
            for r in frame.itertuples()
        ]
    )
    held_out = (frame.subject_id % 10 < 3).to_numpy()  # by patient: no patient in both halves
    x = (x - x[~held_out].mean(0)) / (x[~held_out].std(0) + 1.0)
    assert len(frame) > 300
    for column in ("Cardiomegaly", "Pleural Effusion"):
        values = frame[column].to_numpy()
        known = values != -1.0  # uncertain images show a faint sign: neither class
        y = values == 1.0
        train, test = ~held_out & known, held_out & known
        assert y[test].sum() >= 15 and (~y[test]).sum() >= 15
        model = LogisticRegression(C=0.01, max_iter=2000).fit(x[train], y[train])
        auc = roc_auc_score(y[test], model.decision_function(x[test]))
        assert auc > 0.85, (column, auc)


def test_cli_writes_the_dataset_and_reports_bad_input_in_one_line(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run(
        [sys.executable, "-m", "jobs.make_synthetic", "--out", str(out), "--patients", "4", "--size", "48"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wrote 4 patients")
    n_images = int(re.search(r"(\d+) images", lines[0]).group(1))
    assert len(pd.read_csv(out / METADATA_CSV)) == n_images == len(list(out.rglob("*.jpg")))

    bad = subprocess.run(
        [sys.executable, "-m", "jobs.make_synthetic", "--out", str(out), "--patients", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "n_patients" in bad.stderr
    assert "Traceback" not in bad.stderr
