"""``prepare_data`` at MIMIC-CXR-JPG's full size: wall seconds and peak memory.

Writes synthetic label, metadata and split tables of MIMIC's size (377,110 images, 227,827 studies, 65,379
patients; ``.csv.gz`` like the real download, no image files) once, into ``--work`` (reused on later
runs; default ``$TMPDIR/cxr-bench/prepare_scale``),
then runs ``python -m jobs.prepare_data --check-images off`` on them in a child process and measures its wall
time and peak resident memory (``ru_maxrss`` of the child). Targets: under 60 s and under 4 GB.

    python -m bench.prepare_scale                         # full size
    python -m bench.prepare_scale --scale 0.05 --work /tmp/prep-small   # a quick look

The last line of the output is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.synthetic import LABEL_CSV_COLUMNS, METADATA_COLUMNS, MIMIC_LABEL_COLUMNS, SPLIT_COLUMNS

MIMIC_IMAGES, MIMIC_STUDIES, MIMIC_PATIENTS = 377_110, 227_827, 65_379
WORK = Path(tempfile.gettempdir()) / "cxr-bench" / "prepare_scale"

# Per-label (P(1.0), P(-1.0), P(0.0)) per study, roughly MIMIC-CXR's CheXpert-labeler figures.
_RATES = {
    "Atelectasis": (0.20, 0.05, 0.01), "Cardiomegaly": (0.19, 0.03, 0.08),
    "Consolidation": (0.05, 0.02, 0.13), "Edema": (0.12, 0.06, 0.11),
    "Enlarged Cardiomediastinum": (0.03, 0.04, 0.08), "Fracture": (0.02, 0.003, 0.004),
    "Lung Lesion": (0.03, 0.005, 0.004), "Lung Opacity": (0.22, 0.02, 0.02),
    "No Finding": (0.33, 0.0, 0.0), "Pleural Effusion": (0.24, 0.03, 0.15),
    "Pleural Other": (0.01, 0.004, 0.0005), "Pneumonia": (0.07, 0.08, 0.1),
    "Pneumothorax": (0.04, 0.005, 0.19), "Support Devices": (0.29, 0.003, 0.008),
}  # fmt: skip
# ViewPosition shares of MIMIC's images (blank and rare positions included).
_VIEWS = {"AP": 0.39, "PA": 0.255, "LATERAL": 0.218, "LL": 0.095, "": 0.04, "AP AXIAL": 0.001, "PA LLD": 0.001}


def _split_counts(rng: np.random.Generator, total: int, parts: int) -> np.ndarray:
    """``parts`` counts >= 1 summing to ``total``, skewed (a few patients have many studies)."""
    weights = rng.pareto(1.5, parts) + 0.05
    extra = rng.multinomial(total - parts, weights / weights.sum())
    return 1 + extra


def _unique(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    return np.sort(rng.choice(high - low, size=n, replace=False) + low)


def _gz(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False, compression={"method": "gzip", "compresslevel": 1, "mtime": 0})
    os.replace(tmp, path)


def write_tables(out: Path, *, scale: float = 1.0, seed: int = 0) -> dict:
    """Write chexpert, negbio, metadata and split ``.csv.gz`` tables of MIMIC's size times ``scale``."""
    rng = np.random.default_rng(seed)
    n_pat, n_st, n_img = (max(3, round(x * scale)) for x in (MIMIC_PATIENTS, MIMIC_STUDIES, MIMIC_IMAGES))
    n_st, n_img = max(n_st, n_pat), max(n_img, n_st)
    subjects = _unique(rng, n_pat, 10_000_000, 20_000_000)
    study_subject = np.repeat(subjects, _split_counts(rng, n_st, n_pat))
    studies = rng.permutation(_unique(rng, n_st, 50_000_000, 60_000_000))
    per_study = _split_counts(rng, n_img, n_st)
    labels = pd.DataFrame({"subject_id": study_subject, "study_id": studies})
    for name in MIMIC_LABEL_COLUMNS:
        pos, unc, neg = _RATES[name]
        u = rng.random(n_st)
        labels[name] = np.select([u < pos, u < pos + unc, u < pos + unc + neg], [1.0, -1.0, 0.0], np.nan)
    out.mkdir(parents=True, exist_ok=True)
    _gz(labels[list(LABEL_CSV_COLUMNS)], out / "mimic-cxr-2.0.0-chexpert.csv.gz")
    _gz(labels[list(LABEL_CSV_COLUMNS)], out / "mimic-cxr-2.0.0-negbio.csv.gz")
    words = rng.integers(0, 2**32, size=(n_img, 5), dtype=np.uint64)
    dicoms = ["-".join(f"{x:08x}" for x in row) for row in words.tolist()]
    img_subject, img_study = np.repeat(study_subject, per_study), np.repeat(studies, per_study)
    views = rng.choice(list(_VIEWS), size=n_img, p=np.array(list(_VIEWS.values())) / sum(_VIEWS.values()))
    days = np.repeat(rng.integers(0, 365 * 78, size=n_st), per_study)
    dates = (pd.Timestamp("2110-01-01") + pd.to_timedelta(days, unit="D")).strftime("%Y%m%d").astype(int)
    secs = rng.integers(0, 86_400, size=n_img)
    times = (secs // 3600) * 10000 + (secs % 3600) // 60 * 100 + secs % 60 + rng.integers(0, 1000, n_img) / 1000
    meta = pd.DataFrame(
        {
            "dicom_id": dicoms,
            "subject_id": img_subject,
            "study_id": img_study,
            "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
            "ViewPosition": views,
            "Rows": 3056,
            "Columns": 2544,
            "StudyDate": dates,
            "StudyTime": np.round(times, 3),
            "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
            "ViewCodeSequence_CodeMeaning": "postero-anterior",
            "PatientOrientationCodeSequence_CodeMeaning": "Erect",
        }
    )
    _gz(meta[list(METADATA_COLUMNS)], out / "mimic-cxr-2.0.0-metadata.csv.gz")
    split_of = dict(
        zip(subjects, rng.choice(["train", "validate", "test"], n_pat, p=[0.977, 0.008, 0.015]), strict=True)
    )
    meta["split"] = pd.Series(img_subject).map(split_of).to_numpy()
    _gz(meta[list(SPLIT_COLUMNS)], out / "mimic-cxr-2.0.0-split.csv.gz")
    return {"patients": n_pat, "studies": n_st, "images": n_img}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(WORK), help=f"folder for the tables and the output (default {WORK})")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of MIMIC's size (default 1: full size)")
    p.add_argument("--per-label", type=int, default=5000, help="quota per label, as prepare_data's default")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work)
    root, out = work / f"mimic-scale{args.scale:g}-seed{args.seed}", work / "out"
    if not (root / "mimic-cxr-2.0.0-split.csv.gz").is_file():
        start = time.perf_counter()
        sizes = write_tables(root, scale=args.scale, seed=args.seed)
        print(f"wrote synthetic tables {sizes} to {root} in {time.perf_counter() - start:.1f} s", flush=True)
    cmd = [sys.executable, "-m", "jobs.prepare_data", "--mimic-root", str(root), "--out", str(out),
           "--per-label", str(args.per_label), "--check-images", "off"]  # fmt: skip
    print("$ " + " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"prepare_data failed with exit code {proc.returncode}")
    manifest = json.loads((out / "manifest.json").read_text())
    result = {
        "benchmark": "prepare_scale",
        "images": manifest["counts"]["images_total"],
        "studies": int(pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", usecols=["study_id"]).shape[0]),
        "patients": manifest["counts"]["patients_total"],
        "sampled": manifest["counts"]["sampled"],
        "rows": manifest["rows"],
        "wall_seconds": round(wall, 2),
        "peak_rss_mb": round(peak_kib / 1024, 1),
        "target_wall_seconds": 60,
        "target_peak_mb": 4096,
        "cpus": len(os.sched_getaffinity(0)),
    }
    result["meets_targets"] = result["wall_seconds"] < 60 and result["peak_rss_mb"] < 4096
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
