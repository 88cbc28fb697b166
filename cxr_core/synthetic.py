"""A deterministic synthetic chest X-ray dataset in MIMIC-CXR-JPG's exact on-disk layout.

MIMIC-CXR-JPG is credentialed, so tests, CI and CPU smoke runs use this stand-in instead. It writes the four
official CSVs (gzipped, byte-for-byte reproducible) and grayscale JPEGs under
``files/p{NN}/p{subject_id}/s{study_id}/{dicom_id}.jpg``, so the real loader reads it unchanged.

The labels are drawn per study with MIMIC-like prevalence and co-occurrence (Edema with Cardiomegaly and
Pleural_Effusion, Pneumonia with Consolidation and Lung_Opacity, most labels blank), and every image is
rendered from its study's labels: each finding has a drawn sign (a wider heart for Cardiomegaly, a fluid
level for Pleural_Effusion, a tube line for Support_Devices, ...) sized in fractions of the image so that it
survives a resize to 64 px. A model can therefore learn the labels from pixels, which is what a training
smoke test needs to show that it learns something.

Public entry points: :func:`make_synthetic` (the whole dataset), :func:`render_image` (one image, also used at
full 2544 x 3056 size by the benchmarks), :func:`sample_labels` (one study's labels) and :func:`patient_look`.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_core.errors import CxrError
from cxr_core.labels import LABELS, SPACED_TO_LABEL

CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv.gz"
NEGBIO_CSV = "mimic-cxr-2.0.0-negbio.csv.gz"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv.gz"

# MIMIC's label columns: spaced names, alphabetical (so "No Finding" sits between "Lung Opacity" and
# "Pleural Effusion", unlike LABELS, which puts No_Finding last).
MIMIC_LABEL_COLUMNS: tuple[str, ...] = tuple(sorted(name.replace("_", " ") for name in LABELS))
LABEL_CSV_COLUMNS: tuple[str, ...] = ("subject_id", "study_id", *MIMIC_LABEL_COLUMNS)
METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")

FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LATERAL", "LL")
VIEWS = FRONTAL_VIEWS + LATERAL_VIEWS
_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}

PATHOLOGIES: tuple[str, ...] = tuple(name for name in LABELS if name not in ("No_Finding", "Support_Devices"))

# Study kinds: (procedure description, views, weight). Mean ~1.66 images and ~0.40 laterals per study,
# so about a quarter of the images are lateral, as in MIMIC.
_STUDY_KINDS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("CHEST (PORTABLE AP)", ("AP",), 0.39),
    ("CHEST (PORTABLE AP)", ("AP", "AP"), 0.14),
    ("CHEST (PORTABLE AP)", ("AP", "AP", "AP"), 0.03),
    ("CHEST (PA AND LAT)", ("PA", "LATERAL"), 0.30),
    ("CHEST (PA AND LAT)", ("PA", "PA", "LATERAL"), 0.06),
    ("CHEST (PRE-OP PA AND LAT)", ("PA", "LL"), 0.04),
    ("CHEST (PA)", ("PA",), 0.04),
)

# Per-label rates outside the positives. Uncertain: P(-1.0) for a non-positive label of an abnormal study;
# negative: P(0.0) for a label that is neither positive nor uncertain (reports state some absences often,
# e.g. "no pneumothorax", and most findings never).
_UNCERTAIN = {
    "Atelectasis": 0.10, "Cardiomegaly": 0.04, "Consolidation": 0.04, "Edema": 0.06,
    "Enlarged_Cardiomediastinum": 0.04, "Fracture": 0.01, "Lung_Lesion": 0.02, "Lung_Opacity": 0.02,
    "Pleural_Effusion": 0.05, "Pleural_Other": 0.01, "Pneumonia": 0.12, "Pneumothorax": 0.01,
    "Support_Devices": 0.0,
}  # fmt: skip
_NEGATIVE = {
    "Atelectasis": 0.03, "Cardiomegaly": 0.12, "Consolidation": 0.30, "Edema": 0.25,
    "Enlarged_Cardiomediastinum": 0.08, "Fracture": 0.03, "Lung_Lesion": 0.02, "Lung_Opacity": 0.03,
    "Pleural_Effusion": 0.30, "Pleural_Other": 0.01, "Pneumonia": 0.20, "Pneumothorax": 0.45,
    "Support_Devices": 0.01,
}  # fmt: skip
_P_NORMAL = 0.33  # studies with no finding at all; No_Finding is 1.0 in most of them
# Bumped whenever the same arguments would draw different pixels, so that a folder written by an earlier version
# is noticed (jobs.demo rewrites its data when the version it stamped differs). 2: distinct, larger signs for
# Consolidation (an upper lobe under the fissure), Lung_Lesion (a mass) and Pneumothorax (a collapsed lung).
RENDER_VERSION = 2
_INTERNAL_MAX_PX = 512  # anatomy is rendered at most this large, then resized (keeps 2544 x 3056 fast)


# ----------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------


def sample_labels(rng: np.random.Generator) -> dict[str, float]:
    """Draw the CheXpert labels of one study, with MIMIC-like prevalence and co-occurrence.

    About a third of studies are normal (No_Finding 1.0, a few explicit negatives, perhaps a device). The
    others draw their findings in a fixed causal order (Cardiomegaly -> Edema -> Pleural_Effusion ->
    Atelectasis; Pneumonia -> Consolidation, Lung_Opacity); an abnormal study with no positive finding gets
    an uncertain one instead, so No_Finding is 1.0 only when no pathology is positive.

    Args:
        rng: the random source.

    Returns:
        ``{label: value}`` for the 14 canonical labels; values are 1.0, 0.0, -1.0 or NaN (blank).
    """
    out = dict.fromkeys(LABELS, math.nan)
    if rng.random() < _P_NORMAL:
        for name in PATHOLOGIES:
            if rng.random() < _NEGATIVE[name] * 1.2:
                out[name] = 0.0
        out["Support_Devices"] = 1.0 if rng.random() < 0.12 else math.nan
        out["No_Finding"] = 1.0 if rng.random() < 0.92 else math.nan
        return out

    def draw(p: float) -> bool:
        return bool(rng.random() < p)

    pos = {}
    pos["Cardiomegaly"] = draw(0.27)
    pos["Edema"] = draw(0.35 if pos["Cardiomegaly"] else 0.12)
    pos["Pleural_Effusion"] = draw(0.26 + 0.25 * pos["Edema"] + 0.08 * pos["Cardiomegaly"])
    pos["Atelectasis"] = draw(0.22 + 0.15 * pos["Pleural_Effusion"])
    pos["Enlarged_Cardiomediastinum"] = draw(0.035 + 0.10 * pos["Cardiomegaly"])
    pos["Pneumonia"] = draw(0.105)
    pos["Consolidation"] = draw(0.03 + 0.38 * pos["Pneumonia"])
    pos["Lung_Opacity"] = draw(0.25 + 0.45 * pos["Pneumonia"])
    pos["Pneumothorax"] = draw(0.06)
    pos["Lung_Lesion"] = draw(0.045)
    pos["Fracture"] = draw(0.037)
    pos["Pleural_Other"] = draw(0.022)
    pos["Support_Devices"] = draw(0.31)
    for name in LABELS[:-1]:
        if pos[name]:
            out[name] = 1.0
        elif rng.random() < _UNCERTAIN[name]:
            out[name] = -1.0
        elif rng.random() < _NEGATIVE[name]:
            out[name] = 0.0
    if not any(out[name] == 1.0 for name in PATHOLOGIES) and not any(out[n] == -1.0 for n in PATHOLOGIES):
        out[PATHOLOGIES[int(rng.integers(len(PATHOLOGIES)))]] = -1.0
    return out


def _negbio_labels(chexpert: Mapping[str, float], rng: np.random.Generator) -> dict[str, float]:
    """NegBio's labelling of the same study: CheXpert's, with a few cells read differently."""
    out = dict(chexpert)
    for name in LABELS[:-1]:
        if rng.random() >= 0.05:
            continue
        value = out[name]
        if value == 1.0:
            out[name] = -1.0
        elif value == -1.0:
            out[name] = 1.0 if rng.random() < 0.5 else math.nan
        elif value == 0.0:
            out[name] = math.nan
        elif rng.random() < 0.2:
            out[name] = 0.0
    if any(out[name] == 1.0 for name in PATHOLOGIES):
        out["No_Finding"] = math.nan
    return out


def _strength(labels: Mapping[str, float], name: str) -> float:
    """How strongly to draw a finding: 1 for positive, 0.5 for uncertain (a fainter sign), 0 otherwise."""
    value = labels.get(name)
    if value is None:
        return 0.0
    value = float(value)
    return 1.0 if value == 1.0 else 0.5 if value == -1.0 else 0.0


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientLook:
    """What makes one patient's images look like that patient: body habitus, positioning, exposure, ribs.

    Positions and sizes are fractions of the image (x across, y down). ``texture`` is a small (16, 16)
    random field, upsampled into the lung markings.
    """

    scale: float
    dx: float
    dy: float
    brightness: float
    contrast: float
    gamma: float
    rib_period: float
    rib_phase: float
    noise: float
    texture: np.ndarray


def patient_look(rng: np.random.Generator) -> PatientLook:
    """Draw one patient's look (see :class:`PatientLook`)."""
    return PatientLook(
        scale=float(rng.uniform(0.92, 1.06)),
        dx=float(rng.uniform(-0.025, 0.025)),
        dy=float(rng.uniform(-0.02, 0.02)),
        brightness=float(rng.uniform(0.02, 0.09)),
        contrast=float(rng.uniform(0.85, 1.08)),
        gamma=float(rng.uniform(0.85, 1.15)),
        rib_period=float(rng.uniform(0.062, 0.078)),
        rib_phase=float(rng.uniform(0.0, 1.0)),
        noise=float(rng.uniform(0.012, 0.03)),
        texture=rng.standard_normal((16, 16)).astype(np.float32),
    )


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 0 for x << 0, 1 for x >> 0, linear over ``width`` (cheaper than a sigmoid at full size)."""
    return np.clip(x / width + 0.5, 0.0, 1.0)


def _ellipse(u, v, cx, cy, a, b, soft=0.06) -> np.ndarray:
    """Filled ellipse with a soft rim; ``soft`` is the rim width as a fraction of the radius."""
    d = np.sqrt(((u - cx) / a) ** 2 + ((v - cy) / b) ** 2)
    return _ramp(1.0 - d, soft)


def _blob(u, v, cx, cy, sx, sy) -> np.ndarray:
    """Gaussian blob, peak 1."""
    return np.exp(-0.5 * (((u - cx) / sx) ** 2 + ((v - cy) / sy) ** 2))


def _torso(u, v, cx, cy, a, b) -> np.ndarray:
    """Body outline: a squarish ellipse (|x/a|^4 + |y/b|^2 < 1), broad at the shoulders."""
    d = np.sqrt(((u - cx) / a) ** 4 + ((v - cy) / b) ** 2)
    return _ramp(1.0 - d, 0.05)


def _curve(u, v, x_of_v, v0, v1, width) -> np.ndarray:
    """Thin line x = x_of_v(v) between v0 and v1 (a tube, a wire), ``width`` wide, soft-edged."""
    return _ramp(width / 2 - np.abs(u - x_of_v(v)), width / 2) * _ramp(v - v0, 0.01) * _ramp(v1 - v, 0.01)


def _resize(field: np.ndarray, h: int, w: int) -> np.ndarray:
    """Smooth resize of a float32 field (PIL's 'F' mode), (h0, w0) -> (h, w)."""
    if field.shape == (h, w):
        return field
    img = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32))
    return np.array(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def _ribs(u, v, cx, look: PatientLook, fracture: tuple[float, float, float] | None) -> np.ndarray:
    """Posterior ribs: bright stripes curving down laterally; a fracture shifts a short stretch by half a rib."""
    phase = (v - 0.9 * (u - cx) ** 2) / look.rib_period + look.rib_phase
    if fracture is not None:
        fx, fy, side = fracture
        # Lateral of the break line, the rib continues half a period off: a visible step.
        window = _ramp(side * (u - fx), 0.004) * _ramp(0.05 - np.abs(v - fy), 0.01)
        phase = phase + 0.5 * window
    return (0.5 + 0.5 * np.cos(2 * np.pi * phase)) ** 6


def _frontal(labels, u, v, look: PatientLook, rng: np.random.Generator, ap: bool) -> np.ndarray:
    """Attenuation map (bright = dense) of a PA or AP chest: anatomy plus the drawn signs of the findings."""
    s, cx = look.scale, 0.5 + look.dx + rng.uniform(-0.006, 0.006)
    cy = look.dy + rng.uniform(-0.006, 0.006)
    mag = 1.04 if ap else 1.0  # AP projection magnifies the heart a little
    lift = 0.025 if ap else 0.0  # supine / portable films are taken at lower lung volumes
    st = {name: _strength(labels, name) for name in LABELS}

    body = _torso(u, v, cx, 0.6 + cy, 0.44 * s, 0.66)
    lungs, centres = {}, {}
    effusion_sides = ()
    if st["Pleural_Effusion"]:
        effusion_sides = ((-1,), (1,), (-1, 1))[int(rng.choice(3, p=(0.4, 0.25, 0.35)))]
    for side in (-1, 1):
        lcx, lcy = cx + side * 0.18 * s, 0.46 + cy + 0.005 * (side + 1)
        la, lb = 0.158 * s, 0.345
        base = 0.76 + cy - lift + (0.015 if side == 1 else 0.0)
        if side == -1 and st["Atelectasis"] and rng.random() < 0.5:
            base -= 0.02 * st["Atelectasis"]  # volume loss lifts the hemidiaphragm
        dome = base - 0.05 * (1 - np.clip(((u - lcx) / la) ** 2, 0, 1))
        lungs[side] = _ellipse(u, v, lcx, lcy, la, lb, soft=0.05) * _ramp(dome - v, 0.012)
        centres[side] = (lcx, lcy, la, lb, base)
        if side in effusion_sides:
            # Fluid fills the base up to a level; the meniscus rises a little towards the chest wall. It
            # replaces aerated (dark) lung with water density and blunts the costophrenic angle.
            height = (0.13 + rng.uniform(-0.02, 0.03)) * (0.55 + 0.45 * st["Pleural_Effusion"])
            top = base - height - 0.03 * np.clip(side * (u - lcx) / la, 0, 1) ** 2
            fluid = st["Pleural_Effusion"] * _ramp(v - top, 0.008)
            lungs[side] = lungs[side] * (1 - 0.92 * fluid)

    heart_a = (0.15 + 0.065 * st["Cardiomegaly"]) * s * mag
    heart_b = 0.12 + 0.02 * st["Cardiomegaly"]
    heart = _ellipse(u, v, cx + 0.035 * s, 0.63 + cy - lift, heart_a, heart_b, soft=0.08)
    medi_w = (0.055 + 0.075 * st["Enlarged_Cardiomediastinum"]) * s
    mediastinum = _ramp(medi_w - np.abs(u - cx - 0.005), 0.01) * _ramp(0.62 - v, 0.05)
    lung = np.maximum(lungs[-1], lungs[1]) * (1 - heart) * (1 - mediastinum)

    markings = _resize(look.texture, v.shape[0], u.shape[1])  # (H, W) smooth field, ~N(0, 1)
    hila = _blob(u, v, cx - 0.1 * s, 0.47 + cy, 0.07, 0.1) + _blob(u, v, cx + 0.1 * s, 0.48 + cy, 0.07, 0.1)

    fracture = None
    if st["Fracture"]:
        side = int(rng.choice((-1, 1)))
        fracture = (cx + side * rng.uniform(0.16, 0.22) * s, rng.uniform(0.3, 0.55) + cy, side)
    ribs = _ribs(u, v, cx, look, fracture) * _ellipse(u, v, cx, 0.45 + cy, 0.4 * s, 0.4, soft=0.1)
    spine = _ramp(0.03 * s - np.abs(u - cx), 0.006) * (0.8 + 0.2 * np.cos(2 * np.pi * v / 0.045))
    clav_y = 0.21 + cy - 0.2 * np.abs(u - cx)
    clavicles = _ramp(0.016 - np.abs(v - clav_y), 0.008) * _ramp(np.abs(u - cx) - 0.045, 0.01)
    clavicles *= _ramp(0.34 * s - np.abs(u - cx), 0.02)

    a = 0.56 * body - 0.4 * lung + 0.05 * markings * lung + 0.08 * hila * lung
    a += 0.07 * ribs + 0.1 * spine * body + 0.16 * clavicles + 0.04 * heart
    if fracture is not None:
        # Healing callus around the break: a bright knot about two pixels across at the model's 64 px.
        a += 0.45 * st["Fracture"] * _blob(u, v, fracture[0], fracture[1], 0.03, 0.035)

    def in_lung(side: int) -> np.ndarray:
        return lungs[side] * (1 - heart) * (1 - mediastinum)

    def spot(side: int, spread: float = 0.55) -> tuple[float, float]:
        lcx, lcy, la, lb, _ = centres[side]
        return lcx + rng.uniform(-spread, spread) * la * 0.8, lcy + rng.uniform(-spread, spread) * lb * 0.8

    if st["Edema"]:
        # Bilateral perihilar ("bat-wing") haze.
        haze = sum(_blob(u, v, cx + side * 0.13 * s, 0.5 + cy, 0.085, 0.13) for side in (-1, 1))
        a += 0.4 * st["Edema"] * haze * (0.8 + 0.2 * markings) * lung
    if st["Lung_Opacity"]:
        side = int(rng.choice((-1, 1)))
        ox, oy = spot(side)
        r = rng.uniform(0.065, 0.09)
        a += 0.45 * st["Lung_Opacity"] * _blob(u, v, ox, oy, r, r * 1.1) * in_lung(side)
    if st["Consolidation"]:
        # Upper-lobe consolidation: dense, homogeneous, filling the upper zone down to the horizontal fissure,
        # which gives it a sharp, straight lower border (nothing else is drawn dense in the upper zone).
        side = int(rng.choice((-1, 1)))
        lcx, lcy, la, lb, _ = centres[side]
        fissure = lcy + rng.uniform(-0.02, 0.03)
        lobe = _ramp(fissure - v, 0.006) * _ramp(v - (lcy - 0.2), 0.04)
        a += 0.75 * st["Consolidation"] * lobe * in_lung(side)
    if st["Pneumonia"]:
        side = int(rng.choice((-1, 1)))
        ox, oy = spot(side, 0.45)
        oy = max(oy, centres[side][1])  # lower and middle zones
        patches = sum(
            _blob(
                u,
                v,
                ox + rng.uniform(-0.06, 0.06),
                oy + rng.uniform(-0.06, 0.06),
                *rng.uniform(0.025, 0.045, 2),
            )
            for _ in range(int(rng.integers(4, 7)))
        )
        a += 0.32 * st["Pneumonia"] * np.minimum(patches, 1.6) * in_lung(side)
    if st["Atelectasis"]:
        side = int(rng.choice((-1, 1)))
        lcx, _, la, _, base = centres[side]
        x0, y0, t = lcx + rng.uniform(-0.3, 0.3) * la, base - rng.uniform(0.07, 0.11), rng.uniform(-0.25, 0.25)
        along = (u - x0) * math.cos(t) + (v - y0) * math.sin(t)
        across = -(u - x0) * math.sin(t) + (v - y0) * math.cos(t)
        band = _ramp(0.034 - np.abs(across), 0.008) * _ramp(0.11 - np.abs(along), 0.02)
        a += 0.6 * st["Atelectasis"] * band * in_lung(side)
    if st["Lung_Lesion"]:
        side = int(rng.choice((-1, 1)))
        ox, oy = spot(side, 0.6)
        # A mass rather than a small nodule: 8 to 9 px across at the model's 64 px, bright and sharp-edged (a
        # 5-6 px nodule was readable by a probe but not learnt by the demo's model; data/README.md).
        r = rng.uniform(0.06, 0.07)
        a += 0.9 * st["Lung_Lesion"] * _ellipse(u, v, ox, oy, r, r, soft=0.15) * lungs[side]
    if st["Pneumothorax"]:
        side = int(rng.choice((-1, 1)))
        lcx, lcy, la, lb, _ = centres[side]
        # The lung falls away from the chest wall: the pleural space (apex and lateral rim) is black, without
        # markings, and the collapsed lung, pressed towards the hilum, is denser than aerated lung.
        ccx, ccy, ca, cb = lcx - side * 0.05, lcy + 0.1, la * 0.6, lb * 0.7
        d = np.sqrt(((u - ccx) / ca) ** 2 + ((v - ccy) / cb) ** 2)
        upper = _ramp(lcy + 0.05 - v, 0.05)
        gap = lungs[side] * _ramp(d - 1.0, 0.05) * upper
        collapsed = in_lung(side) * _ramp(1.0 - d, 0.05)
        a -= st["Pneumothorax"] * gap * (0.45 + 0.05 * markings + 0.08 * hila)
        a += 0.25 * st["Pneumothorax"] * collapsed
        a += 0.18 * st["Pneumothorax"] * _ramp(0.016 - np.abs(d - 1.0), 0.008) * upper * lungs[side]
    if st["Pleural_Other"]:
        side = int(rng.choice((-1, 1)))
        lcx, lcy, la, lb, _ = centres[side]
        d = np.sqrt(((u - lcx) / la) ** 2 + ((v - lcy) / lb) ** 2)
        # Pleural thickening: a band along the lateral chest wall, thick enough to survive a 64 px resize.
        rim = _ramp(d - 0.74, 0.05) * _ramp(side * (u - lcx), 0.02) * _ramp(0.2 - np.abs(v - lcy - 0.03), 0.03)
        a += 0.6 * st["Pleural_Other"] * rim * lungs[side]
    if st["Support_Devices"]:
        a += st["Support_Devices"] * _devices(u, v, cx, cy, s, rng)
    return a


def _devices(u, v, cx, cy, s, rng: np.random.Generator) -> np.ndarray:
    """Tubes and lines (thin bright curves) and sometimes a pacemaker (a small bright box with a lead)."""
    kinds = rng.random(4) < (0.6, 0.4, 0.35, 0.25)
    if not kinds.any():
        kinds[0] = True
    out = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=np.float32)
    x0 = cx + rng.uniform(-0.01, 0.015)
    if kinds[0]:  # endotracheal tube, tip above the carina
        out += 0.5 * _curve(u, v, lambda y: x0 + 0.02 * y, -0.05, 0.32 + cy + rng.uniform(-0.03, 0.03), 0.012)
    if kinds[1]:  # enteric tube, down past the diaphragm, curving into the stomach
        out += 0.4 * _curve(
            u, v, lambda y: x0 - 0.01 + 0.12 * np.clip(y - 0.7, 0, None) ** 1.2 * 4, -0.05, 0.92, 0.01
        )
    if kinds[2]:  # central line from the right shoulder to the cavoatrial junction
        xs, xe = cx - 0.28 * s, cx - 0.02
        out += 0.45 * _curve(
            u, v, lambda y: xs + (xe - xs) * np.clip((y - 0.16) / 0.28, 0, 1) ** 0.6, 0.16, 0.45 + cy, 0.01
        )
    if kinds[3]:  # pacemaker generator below the left clavicle, lead to the heart
        bx, by = cx + 0.25 * s, 0.24 + cy
        box = _ramp(0.035 - np.abs(u - bx), 0.006) * _ramp(0.025 - np.abs(v - by), 0.006)
        lead = _curve(
            u, v, lambda y: bx + (cx + 0.06 - bx) * np.clip((y - by) / 0.38, 0, 1), by, by + 0.38, 0.009
        )
        out += 0.8 * box + 0.45 * lead
    return np.minimum(out, 0.9)


def _lateral(labels, u, v, look: PatientLook, rng: np.random.Generator) -> np.ndarray:
    """Attenuation map of a lateral chest (patient facing image-left): a side-view silhouette."""
    s, cx = look.scale, 0.5 + look.dx + rng.uniform(-0.01, 0.01)
    cy = look.dy + rng.uniform(-0.01, 0.01)
    st = {name: _strength(labels, name) for name in LABELS}
    arms = _ramp(0.05 - np.abs(u - (cx - 0.05 + 0.35 * v)), 0.02) * _ramp(0.3 - v, 0.05)
    base = 0.8 + cy
    dome = base - 0.09 * (1 - np.clip(((u - cx) / (0.3 * s)) ** 2, 0, 1))
    lung = _ellipse(u, v, cx + 0.02, 0.47 + cy, 0.29 * s, 0.36, soft=0.06) * _ramp(dome - v, 0.015)
    heart = _ellipse(
        u, v, cx - 0.11 * s, 0.62 + cy, (0.13 + 0.05 * st["Cardiomegaly"]) * s, 0.13 + 0.02 * st["Cardiomegaly"]
    )
    lung = lung * (1 - heart)
    if st["Pleural_Effusion"]:
        # Fluid gathers in the posterior costophrenic sulcus (image-right, behind the heart), meniscus up.
        level = base - 0.1 - 0.04 * st["Pleural_Effusion"]
        fluid = _ramp(v - (level - 0.04 * np.clip((u - cx) / 0.25, 0, 1)), 0.008) * _ramp(u - cx + 0.05, 0.03)
        lung = lung * (1 - 0.9 * st["Pleural_Effusion"] * fluid)
    spine_x = cx + 0.27 * s
    # Vertebral bodies: bright blocks separated by darker disc spaces.
    discs = _ramp(np.cos(2 * np.pi * v / 0.055) + 0.55, 0.4)
    vertebrae = _ramp(0.04 * s - np.abs(u - spine_x), 0.008) * (0.5 + 0.5 * discs)
    sternum = _ramp(0.012 - np.abs(u - (cx - 0.3 * s + 0.05 * v)), 0.006) * _ramp(v - 0.22, 0.02)
    sternum *= _ramp(0.62 - v, 0.02)
    trachea = _ramp(0.018 - np.abs(u - (cx + 0.04 - 0.1 * v)), 0.008) * _ramp(0.36 + cy - v, 0.03)
    markings = _resize(look.texture, v.shape[0], u.shape[1])
    a = 0.56 * _torso(u, v, cx, 0.62 + cy, 0.36 * s, 0.68) + 0.1 * arms - 0.3 * lung + 0.04 * markings * lung
    a += 0.18 * vertebrae + 0.14 * sternum - 0.12 * trachea + 0.03 * heart
    if st["Edema"]:
        a += 0.16 * st["Edema"] * _blob(u, v, cx + 0.03, 0.5 + cy, 0.1, 0.1) * lung
    for name, amp in (("Lung_Opacity", 0.22), ("Pneumonia", 0.2), ("Consolidation", 0.32)):
        if st[name]:
            ox, oy = cx + rng.uniform(-0.15, 0.2), 0.5 + cy + rng.uniform(-0.1, 0.15)
            a += amp * st[name] * _blob(u, v, ox, oy, 0.07, 0.07) * lung
    if st["Support_Devices"]:
        a += 0.45 * st["Support_Devices"] * _curve(u, v, lambda y: cx + 0.06 - 0.1 * y, -0.05, 0.35 + cy, 0.012)
    return a


def render_image(
    labels: Mapping[str, float],
    *,
    view: str,
    rng: np.random.Generator,
    size: tuple[int, int],
    look: PatientLook | None = None,
) -> np.ndarray:
    """Render one synthetic chest X-ray whose pixels show its labels.

    Smooth anatomy is computed at most 512 px on the long side and resized (PIL, bilinear); pixel noise is
    added at the output size. Everything is vectorised numpy, so a 3056 x 2544 image takes ~0.2 s.

    Args:
        labels: label name (canonical "No_Finding" or MIMIC's "No Finding") -> 1.0 / 0.0 / -1.0 / NaN. A
            positive finding is drawn at full strength, an uncertain one fainter, anything else not at all.
        view: "PA" or "AP" (frontal) or "LATERAL" or "LL" (a side-view silhouette).
        rng: the random source (finding placement, per-image jitter, noise; and the look when not given).
        size: (rows, columns) of the output.
        look: the patient's look, shared by every image of a patient; drawn from ``rng`` when None.

    Returns:
        A (rows, columns) uint8 grayscale image.

    Raises:
        CxrError: on an unknown view or a size below 8 px.
    """
    if view not in VIEWS:
        raise CxrError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    h, w = (int(x) for x in size)
    if h < 8 or w < 8:
        raise CxrError(f"size must be at least 8 x 8 pixels, got {h} x {w}")
    labels = {SPACED_TO_LABEL.get(str(k), str(k)): val for k, val in labels.items()}
    look = patient_look(rng) if look is None else look

    k = min(1.0, _INTERNAL_MAX_PX / max(h, w))
    hi, wi = max(8, round(h * k)), max(8, round(w * k))
    u = ((np.arange(wi, dtype=np.float32) + 0.5) / wi)[None, :]  # (1, W) across
    v = ((np.arange(hi, dtype=np.float32) + 0.5) / hi)[:, None]  # (H, 1) down
    if view in FRONTAL_VIEWS:
        a = _frontal(labels, u, v, look, rng, ap=view == "AP")
    else:
        a = _lateral(labels, u, v, look, rng)
    img = np.clip(look.brightness + look.contrast * a.astype(np.float32), 0.0, 1.0) ** look.gamma
    img = _resize(img.astype(np.float32), h, w)
    noise = rng.standard_normal((h, w), dtype=np.float32)
    noise *= np.float32(look.noise)
    img += noise
    np.clip(img, 0.0, 1.0, out=img)
    img *= np.float32(255.0)
    return img.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Image:
    dicom_id: str
    view: str
    patient: int  # index of the patient (0..n_patients-1): whose look renders it


@dataclass(frozen=True)
class _Study:
    subject_id: int
    study_id: int
    kind: str
    date: int  # YYYYMMDD
    time: float  # HHMMSS.fff
    chexpert: dict[str, float]
    negbio: dict[str, float]
    images: tuple[_Image, ...]


def _unique_ints(rng: np.random.Generator, n: int, low: int, high: int) -> list[int]:
    """n distinct integers in [low, high), in draw order."""
    seen: set[int] = set()
    out = []
    while len(out) < n:
        for x in rng.integers(low, high, size=n - len(out)).tolist():
            if x not in seen:
                seen.add(x)
                out.append(x)
    return out[:n]


def _dicom_id(rng: np.random.Generator) -> str:
    """Like MIMIC's '3e986d3c-f1e0c707-800b2096-20177169-72024be8': five groups of 8 lowercase hex digits."""
    return "-".join(f"{x:08x}" for x in rng.integers(0, 2**32, size=5, dtype=np.uint64).tolist())


def _study_time(rng: np.random.Generator) -> float:
    # MIMIC stores HHMMSS.fff as a float, so 08:30:15.5 reads 83015.5.
    hh, rest = divmod(int(rng.integers(0, 86_400)), 3600)
    mm, ss = divmod(rest, 60)
    return round(hh * 10000 + mm * 100 + ss + int(rng.integers(0, 1000)) / 1000, 3)


def _draw_studies(rng: np.random.Generator, n_patients: int) -> list[_Study]:
    """The dataset's structure and labels (no pixels): 1-4 studies per patient, 1-3 images per study."""
    subjects = sorted(_unique_ints(rng, n_patients, 10_000_000, 20_000_000))
    n_studies = rng.integers(1, 5, size=n_patients).tolist()
    study_ids = _unique_ints(rng, sum(n_studies), 50_000_000, 60_000_000)
    weights = np.array([k[2] for k in _STUDY_KINDS])
    studies, dicoms = [], set()
    for patient, (subject, count) in enumerate(zip(subjects, n_studies, strict=True)):
        # MIMIC shifts each patient's dates into 2110-2190, keeping the intervals between studies.
        day = dt.date(int(rng.integers(2110, 2186)), 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
        ids = sorted(study_ids[:count])
        del study_ids[:count]
        for study_id in ids:
            day += dt.timedelta(days=int(rng.integers(1, 400)))
            kind, views, _ = _STUDY_KINDS[int(rng.choice(len(_STUDY_KINDS), p=weights / weights.sum()))]
            chexpert = sample_labels(rng)
            images = []
            for view in views:
                dicom = _dicom_id(rng)
                while dicom in dicoms:
                    dicom = _dicom_id(rng)
                dicoms.add(dicom)
                images.append(_Image(dicom, view, patient))
            studies.append(
                _Study(
                    subject_id=subject,
                    study_id=study_id,
                    kind=kind,
                    date=day.year * 10000 + day.month * 100 + day.day,
                    time=_study_time(rng),
                    chexpert=chexpert,
                    negbio=_negbio_labels(chexpert, rng),
                    images=tuple(images),
                )
            )
    return studies


def _assign_splits(rng: np.random.Generator, subjects: list[int]) -> dict[int, str]:
    """Split by patient, ~80/10/10, with at least one patient in each of train, validate and test."""
    order = rng.permutation(len(subjects)).tolist()
    n_test = n_val = max(1, round(0.1 * len(subjects)))
    split = {}
    for rank, i in enumerate(order):
        split[subjects[i]] = "test" if rank < n_test else "validate" if rank < n_test + n_val else "train"
    return split


def _label_cell(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{float(value):.1f}"


def _write_csv_gz(path: Path, header: tuple[str, ...], rows: list[list]) -> None:
    """Write a .csv.gz whose bytes depend only on the rows (gzip mtime 0, no file name in the header)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(gzip.compress(buf.getvalue().encode("utf-8"), compresslevel=6, mtime=0))


def image_path(subject_id: int, study_id: int, dicom_id: str) -> Path:
    """MIMIC-CXR-JPG's relative image path: ``files/p{NN}/p{subject_id}/s{study_id}/{dicom_id}.jpg``."""
    subject = str(subject_id)
    return Path("files", f"p{subject[:2]}", f"p{subject}", f"s{study_id}", f"{dicom_id}.jpg")


def _write_tables(out: Path, studies: list[_Study], split: dict[int, str], image_size: int) -> None:
    def label_rows(which: str) -> list[list]:
        return [
            [st.subject_id, st.study_id]
            + [_label_cell(getattr(st, which)[name.replace(" ", "_")]) for name in MIMIC_LABEL_COLUMNS]
            for st in studies
        ]

    _write_csv_gz(out / CHEXPERT_CSV, LABEL_CSV_COLUMNS, label_rows("chexpert"))
    _write_csv_gz(out / NEGBIO_CSV, LABEL_CSV_COLUMNS, label_rows("negbio"))
    meta, splits = [], []
    for st in studies:
        for im in st.images:
            orientation = "Recumbent" if st.kind.startswith("CHEST (PORTABLE") else "Erect"
            meta.append(
                [im.dicom_id, st.subject_id, st.study_id, st.kind, im.view, image_size, image_size, st.date,
                 repr(st.time), st.kind, _VIEW_MEANING[im.view], orientation]
            )  # fmt: skip
            splits.append([im.dicom_id, st.study_id, st.subject_id, split[st.subject_id]])
    _write_csv_gz(out / METADATA_CSV, METADATA_COLUMNS, meta)
    _write_csv_gz(out / SPLIT_CSV, SPLIT_COLUMNS, splits)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def make_synthetic(out_dir: str | Path, *, n_patients: int = 600, seed: int = 0, image_size: int = 256) -> dict:
    """Write a synthetic MIMIC-CXR-JPG dataset; the same arguments always give the same bytes.

    Files written under ``out_dir`` (created if needed; files of the same names are overwritten, nothing is
    deleted): the chexpert, negbio, metadata and split ``.csv.gz`` files and one square JPEG per metadata
    row at :func:`image_path`. At the defaults: ~1,500 studies, ~2,500 images of which ~1,900 frontal, in
    well under a minute on one CPU core.

    Args:
        out_dir: the dataset root (what a loader gets as the MIMIC root).
        n_patients: patients to draw (at least 3, so that train, validate and test are all non-empty).
        seed: the random seed; everything, pixels included, follows from it.
        image_size: side of the square images in pixels (Rows = Columns in the metadata), at least 32.

    Returns:
        A summary: ``patients``, ``studies``, ``images``, ``frontal_images``, ``lateral_images``,
        ``split_images`` ({split: images}), ``positives`` ({label: studies with 1.0 in chexpert}) and
        ``frontal_positives`` ({label: frontal images whose study has 1.0}), labels in canonical order.

    Raises:
        CxrError: on a bad argument (the message names it and the accepted range).
    """
    if not _is_int(n_patients) or n_patients < 3:
        raise CxrError(
            f"n_patients must be an integer >= 3 (one patient per split at least), got {n_patients!r}"
        )
    if not _is_int(image_size) or image_size < 32:
        raise CxrError(f"image_size must be an integer >= 32 pixels, got {image_size!r}")
    if not _is_int(seed) or seed < 0:
        raise CxrError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CxrError(f"output path {out} exists and is not a directory; pass a directory path")
    out.mkdir(parents=True, exist_ok=True)

    n_patients, image_size, seed = int(n_patients), int(image_size), int(seed)
    rng = np.random.default_rng(seed)
    studies = _draw_studies(rng, n_patients)
    subjects = sorted({st.subject_id for st in studies})
    split = _assign_splits(rng, subjects)
    _write_tables(out, studies, split, image_size)

    # Every image gets its own seeded generator, so pixels do not depend on rendering order; one look per
    # patient keeps body habitus and exposure style shared across that patient's images.
    look, look_of = None, -1
    for n_image, (st, im) in enumerate((study, image) for study in studies for image in study.images):
        if im.patient != look_of:
            look, look_of = patient_look(np.random.default_rng([seed, 1, im.patient])), im.patient
        pixels = render_image(
            st.chexpert,
            view=im.view,
            rng=np.random.default_rng([seed, 2, n_image]),
            size=(image_size, image_size),
            look=look,
        )
        path = out / image_path(st.subject_id, st.study_id, im.dicom_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return _summary(studies, split)


def _summary(studies: list[_Study], split: dict[int, str]) -> dict:
    images = [(st, im) for st in studies for im in st.images]
    frontal = [(st, im) for st, im in images if im.view in FRONTAL_VIEWS]
    split_images = {name: 0 for name in ("train", "validate", "test")}
    for st, _ in images:
        split_images[split[st.subject_id]] += 1
    return {
        "patients": len(split),
        "studies": len(studies),
        "images": len(images),
        "frontal_images": len(frontal),
        "lateral_images": len(images) - len(frontal),
        "split_images": split_images,
        "positives": {name: sum(st.chexpert[name] == 1.0 for st in studies) for name in LABELS},
        "frontal_positives": {name: sum(st.chexpert[name] == 1.0 for st, _ in frontal) for name in LABELS},
    }
