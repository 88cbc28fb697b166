"""Seed-level statistics of the analysis: the mean over seeds with its t interval, the Welch interval of a
difference, the delta-method interval of a ratio, interval overlap and the Pareto front. Pure numpy and scipy.
(The per-image, two-level bootstrap is :mod:`cxr_core.bootstrap`.)"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
MIN_SEEDS_FOR_T = 3  # fewer seeds: rows show the min-max over seeds, not a t interval


def _isnan(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def mean_interval(values, *, confidence: float = CONFIDENCE) -> dict:
    """Mean, sample standard deviation, count and two-sided t interval of the finite ``values``.

    With n values of mean m and sample standard deviation s (ddof = 1), the interval is
    ``m ± t_{(1 + confidence) / 2, n - 1} · s / √n`` (Student's t, the seeds taken as independent draws).
    One value says nothing about the spread: with n < 2, ``std``, ``lo`` and ``hi`` are NaN.

    Returns:
        ``{"mean", "std", "n", "lo", "hi", "min", "max"}``.
    """
    x = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype(float).to_numpy()
    x = x[np.isfinite(x)]
    n = len(x)
    out = {"mean": math.nan, "std": math.nan, "n": n, "lo": math.nan, "hi": math.nan, "min": math.nan,
           "max": math.nan}  # fmt: skip
    if n == 0:
        return out
    out.update(mean=float(x.mean()), min=float(x.min()), max=float(x.max()))
    if n < 2:
        return out
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    out.update(std=sd, lo=out["mean"] - half, hi=out["mean"] + half)
    return out


def _welch(c_a: float, n_a: int, c_b: float, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of two variance components."""
    den = c_a**2 / (n_a - 1) + c_b**2 / (n_b - 1)
    return (c_a + c_b) ** 2 / den if den > 0 else math.inf


def difference_interval(a: dict, b: dict, *, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``mean_a - mean_b`` and its Welch interval, from two :func:`mean_interval` results.

    ``d ± t_{(1 + confidence) / 2, df} · √(s_a²/n_a + s_b²/n_b)``, df by Welch-Satterthwaite. NaN bounds
    when either side has fewer than 2 values.
    """
    d = a["mean"] - b["mean"]
    if a["n"] < 2 or b["n"] < 2:
        return d, math.nan, math.nan
    c_a, c_b = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
    half = float(stats.t.ppf((1 + confidence) / 2, _welch(c_a, a["n"], c_b, b["n"]))) * math.sqrt(c_a + c_b)
    return d, d - half, d + half


def ratio_interval(a: dict, b: dict, *, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``R = mean_a / mean_b`` and its interval by the delta method, from two :func:`mean_interval` results.

    ``Var(R) ≈ (s_a²/n_a + R² · s_b²/n_b) / mean_b²``;
    interval ``R ± t_{(1 + confidence) / 2, df} · √Var(R)``, df by Welch-Satterthwaite on the two components.
    NaN bounds when either side has fewer than 2 values; NaN ratio when ``mean_b`` is 0.
    """
    if not b["mean"] or _isnan(b["mean"]) or _isnan(a["mean"]):
        return math.nan, math.nan, math.nan
    r = a["mean"] / b["mean"]
    if a["n"] < 2 or b["n"] < 2:
        return r, math.nan, math.nan
    c_a, c_b = a["std"] ** 2 / a["n"], r**2 * b["std"] ** 2 / b["n"]
    se = math.sqrt(c_a + c_b) / abs(b["mean"])
    half = float(stats.t.ppf((1 + confidence) / 2, _welch(c_a, a["n"], c_b, b["n"]))) * se
    return r, r - half, r + half


def intervals_overlap(a: dict, b: dict) -> bool | None:
    """Whether two intervals (``lo``/``hi``) overlap; None when either is missing."""
    if any(_isnan(x[k]) for x in (a, b) for k in ("lo", "hi")):
        return None
    return a["lo"] <= b["hi"] and b["lo"] <= a["hi"]


def pareto_front(cost: Sequence[float], quality: Sequence[float], *, mode: str = "max") -> np.ndarray:
    """Mask of the points no other point dominates (cost lower or equal and quality at least as good, one of
    the two strictly). ``mode`` says whether higher quality is better (``max``) or lower (``min``)."""
    c = np.asarray(cost, dtype=float)
    q = np.asarray(quality, dtype=float) * (1 if mode == "max" else -1)
    front = np.isfinite(c) & np.isfinite(q)
    for i in np.flatnonzero(front):
        others = np.isfinite(c) & np.isfinite(q)
        others[i] = False
        dominated = others & (c <= c[i]) & (q >= q[i]) & ((c < c[i]) | (q > q[i]))
        front[i] = not dominated.any()
    return front
