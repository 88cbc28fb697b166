"""Across model scales: a sweep whose trials use more than one model (``model: {grid_search: [embedded,
embedded-small]}``; the trial's ``model`` is the results column ``config/model``) is analysed per model too.

For each model, each method's best configuration is chosen on validation among that model's configurations (so
each method's learning rate is tuned per model); its quality is a share of the same model's best FFT
configuration's, with a paired interval, and its cost (trainable parameters, peak memory, samples/s) as shares of
FFT's. Across models, for each method compared with FFT, the difference of that ratio between the largest and the
smallest model (by parameter count) says whether the gap narrows, widens or does not change with scale.

Intervals: with per-image validation records (a :class:`cxr_core.comparison.Split`, used through its ``seeds``
and :meth:`~cxr_core.comparison.Split.resampled`), the ratio and the difference of ratios are taken resample by
resample of the split's two-level bootstrap (the same resampled images for every configuration, the seeds of each
drawn on its own stream), so both are paired over the images; without records, a ratio gets the delta-method
t interval over seeds (:func:`cxr_core.analysis.statistics.ratio_interval`, 3 or more seeds) and the change across
scale is not tested. Pure pandas and numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr_core import methods as registry
from cxr_core.analysis.sentences import cost_shares
from cxr_core.analysis.statistics import CONFIDENCE, MIN_SEEDS_FOR_T, _isnan, ratio_interval
from cxr_core.analysis.tables import (
    LR,
    METHOD,
    MODEL,
    _done,
    _short,
    best_config_per,
    model_parameters,
    models,
    stat,
)
from cxr_core.analysis.text import _ci, _count, _describe, _num, _pct
from cxr_core.bootstrap import percentile_interval

# The cost columns compared across scales: (column, words in a table header).
SCALE_COSTS = (
    ("trainable_params", "trainable params"),
    ("peak_mem_mb", "peak mem (MB)"),
    ("train_samples_per_s", "samples/s"),
)
PAIRED = "paired bootstrap"
DELTA = "delta method over seeds"
# The verdicts of the change of a method's ratio to FFT from the smallest to the largest model.
GAP_VERDICTS = ("narrows", "widens", "reverses", "unchanged", "untested")


@dataclass
class Scale:
    """The across-model analysis of a sweep with two or more models.

    Attributes:
        best: each model's best configuration of each method (rows of ``configs_table`` plus ``model`` and
            ``model_params``), smallest model first.
        table: one row per model and method (:func:`scale_table`), what ``scale.csv`` holds.
        gaps: one row per method compared with FFT (:func:`scale_gaps`).
        n_images, n_boot: the validation images and bootstrap resamples of the paired intervals (None without
            per-image records).
    """

    best: pd.DataFrame
    table: pd.DataFrame
    gaps: pd.DataFrame
    n_images: int | None = None
    n_boot: int | None = None


def best_per_model(configs: pd.DataFrame, *, metric: str, mode: str) -> pd.DataFrame:
    """Each model's best configuration of each method by the mean over seeds of ``best_<metric>`` (validation),
    chosen among that model's configurations only: rows of ``configs_table`` plus ``model`` and ``model_params``,
    smallest model first, methods in the registry's order (FFT first)."""
    done = _done(configs)
    if METHOD not in done or done.empty:
        return done.assign(model=pd.Series(dtype=object), model_params=pd.Series(dtype=float))
    params = model_parameters(done)
    parts = []
    for model in models(done):
        best = best_config_per(done[done[MODEL].astype(str) == model], METHOD, metric=metric, mode=mode)
        best = best.sort_values(METHOD, key=lambda c: c.map(registry.rank), kind="stable")
        parts.append(best.assign(model=model, model_params=params[model]))
    return pd.concat(parts, ignore_index=True) if parts else done.iloc[0:0]


class _Draws:
    """Each configuration's resampled statistic on the validation split, computed once."""

    def __init__(self, split, metric: str):
        self.split, self.metric, self.cache = split, metric, {}

    def __call__(self, config_id: str) -> np.ndarray | None:
        if self.split is None or config_id not in self.split.seeds:
            return None
        if config_id not in self.cache:
            self.cache[config_id] = np.asarray(self.split.resampled(config_id, self.metric), dtype=float)
        return self.cache[config_id]

    def ratio(self, a: str, b: str) -> np.ndarray | None:
        """(n_boot,) a / b resample by resample; None unless both have records."""
        x, y = self(a), self(b)
        if x is None or y is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            return x / y


def _quality_ratio(
    row, ref, *, metric: str, draws: _Draws, confidence: float
) -> tuple[float, float, float, str]:
    """(ratio, lo, hi, how) of a configuration's validation ``metric`` to the reference's."""
    a, b = stat(row, f"best_{metric}"), stat(ref, f"best_{metric}")
    if _isnan(a["mean"]) or _isnan(b["mean"]) or not b["mean"]:
        return math.nan, math.nan, math.nan, ""
    r = a["mean"] / b["mean"]
    paired = draws.ratio(row["config_id"], ref["config_id"])
    if paired is not None:
        return (r, *percentile_interval(paired, confidence=confidence), PAIRED)
    n = int(min(a["n"], b["n"]))
    if n >= MIN_SEEDS_FOR_T:
        _, lo, hi = ratio_interval(a, b, confidence=confidence)
        return r, lo, hi, DELTA
    return r, math.nan, math.nan, "one seed" if n < 2 else f"{n} seeds"


def scale_table(
    best: pd.DataFrame, *, metric: str, split=None, confidence: float = CONFIDENCE, draws: _Draws | None = None
) -> pd.DataFrame:
    """One row per model and method (``best``: :func:`best_per_model`): ``model``, ``model_params``, ``method``,
    ``config_id``, ``lr``, ``n_seeds``, the validation ``metric`` (mean over seeds) with ``<metric>_lo/_hi`` (the
    configuration's interval, of kind ``interval``), ``ratio`` to the same model's best FFT configuration with
    ``ratio_lo/_hi`` and ``ratio_interval`` (``paired bootstrap``, ``delta method over seeds``, or why there is
    none), and each cost of :data:`SCALE_COSTS` (mean over seeds) with ``<cost>_ratio`` to FFT's."""
    draws = draws or _Draws(split, metric)
    ref = registry.reference().name
    rows = []
    for _, row in best.iterrows():
        fft = best[(best["model"] == row["model"]) & (best[METHOD] == ref)]
        f = fft.iloc[0] if len(fft) and row[METHOD] != ref else None
        q = stat(row, f"best_{metric}")
        out = {"model": row["model"], "model_params": row["model_params"], "method": row[METHOD],
               "config_id": row["config_id"], "lr": row.get(LR, math.nan), "n_seeds": int(row["n_seeds"]),
               metric: q["mean"], f"{metric}_lo": q["lo"], f"{metric}_hi": q["hi"],
               "interval": row.get("interval", "")}  # fmt: skip
        none = (math.nan, math.nan, math.nan, "")
        r, lo, hi, how = (
            _quality_ratio(row, f, metric=metric, draws=draws, confidence=confidence) if f is not None else none
        )
        out.update(ratio=r, ratio_lo=lo, ratio_hi=hi, ratio_interval=how)
        for col, _ in SCALE_COSTS:
            mine = stat(row, col)["mean"]
            theirs = stat(f, col)["mean"] if f is not None else math.nan
            out[col] = mine
            out[f"{col}_ratio"] = (
                mine / theirs if not _isnan(theirs) and theirs and not _isnan(mine) else math.nan
            )
        rows.append(out)
    return pd.DataFrame(rows)


def _gap_verdict(small: float, large: float, lo: float, hi: float) -> str:
    """How the gap |1 - ratio| changed from the smallest model's ratio to the largest's, decided by the interval
    [lo, hi] of their difference: ``unchanged`` when it includes 0, ``untested`` without one."""
    if _isnan(lo) or _isnan(hi):
        return "untested"
    if lo <= 0 <= hi:
        return "unchanged"
    if (small - 1) * (large - 1) < 0:
        return "reverses"  # the method was below FFT and is above it, or the other way round
    return "narrows" if abs(large - 1) < abs(small - 1) else "widens"


def scale_gaps(
    best: pd.DataFrame,
    table: pd.DataFrame,
    *,
    metric: str,
    split=None,
    confidence: float = CONFIDENCE,
    draws: _Draws | None = None,
) -> pd.DataFrame:
    """For each method compared with FFT that has a ratio at both the smallest and the largest model (by
    parameters): ``small``/``large`` (models), their parameters, ``ratio_small``/``ratio_large``, ``difference``
    (large - small), its paired interval ``lo``/``hi`` (each resample's ratio at the large model minus the one at
    the small model, all four configurations on the same resampled images; NaN without records) and ``verdict``
    (one of :data:`GAP_VERDICTS`)."""
    columns = ["method", "small", "large", "small_params", "large_params", "ratio_small", "ratio_large",
               "difference", "lo", "hi", "verdict"]  # fmt: skip
    ordered = table.drop_duplicates("model")
    if len(ordered) < 2 or ordered["model_params"].isna().any():
        return pd.DataFrame(columns=columns)
    (small, small_params), (large, large_params) = (
        (str(r["model"]), float(r["model_params"])) for r in (ordered.iloc[0], ordered.iloc[-1])
    )
    draws = draws or _Draws(split, metric)
    ref = registry.reference().name
    of = {(r["model"], r[METHOD]): r["config_id"] for _, r in best.iterrows()}
    rows = []
    for method in registry.compared():
        cells = [table[(table["model"] == m) & (table["method"] == method.name)] for m in (small, large)]
        if any(c.empty or _isnan(c["ratio"].iloc[0]) for c in cells):
            continue
        rs, rl = (float(c["ratio"].iloc[0]) for c in cells)
        lo = hi = math.nan
        ratios = [draws.ratio(of[(m, method.name)], of[(m, ref)]) for m in (small, large)]
        if all(r is not None for r in ratios):
            lo, hi = percentile_interval(ratios[1] - ratios[0], confidence=confidence)
        rows.append({"method": method.name, "small": small, "large": large, "small_params": small_params,
                     "large_params": large_params, "ratio_small": rs, "ratio_large": rl, "difference": rl - rs,
                     "lo": lo, "hi": hi, "verdict": _gap_verdict(rs, rl, lo, hi)})  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def across_scales(
    configs: pd.DataFrame, *, metric: str, mode: str, split=None, confidence: float = CONFIDENCE
) -> Scale | None:
    """The across-model analysis (:class:`Scale`) of a sweep whose configurations with results use two or more
    models; None otherwise. ``split``: the validation :class:`cxr_core.comparison.Split` of the per-image records
    (None: seed-level intervals only)."""
    if len(models(configs)) < 2:
        return None
    best = best_per_model(configs, metric=metric, mode=mode)
    draws = _Draws(split, metric)
    table = scale_table(best, metric=metric, confidence=confidence, draws=draws)
    gaps = scale_gaps(best, table, metric=metric, confidence=confidence, draws=draws)
    if split is None or not any(c in split.seeds for c in best["config_id"]):  # no records: seed-level only
        return Scale(best=best, table=table, gaps=gaps)
    return Scale(
        best=best, table=table, gaps=gaps, n_images=split.resampler.n_images, n_boot=split.resampler.n_boot
    )


def _lr_words(best: pd.DataFrame) -> str:
    """``FFT 0.001 at embedded, 0.0005 at embedded-small; LoRA 0.005 at embedded, ...``."""
    parts = []
    for method in registry.registered():
        mine = best[best[METHOD] == method.name]
        at = [f"{_short(r[LR])} at {r['model']}" for _, r in mine.iterrows() if not _isnan(r.get(LR))]
        if at:
            parts.append(f"{method.title} {', '.join(at)}")
    return "; ".join(parts)


def params_words(model: str, params: float) -> str:
    """``embedded (935,526 parameters)``."""
    return f"{model} ({params:,.0f} parameters)" if not _isnan(params) else f"{model} (parameters not reported)"


def _pp(x: float) -> str:
    """A difference of two ratios in percentage points: ``+15.0``."""
    return f"{100 * x:+.1f}"


def _ratio_words(t) -> str:
    """The interval of a ``scale_table`` row's ratio, in words."""
    how, lo, hi = t["ratio_interval"], t["ratio_lo"], t["ratio_hi"]
    if how in (PAIRED, DELTA) and not _isnan(lo):
        tail = "" if how == PAIRED else ", delta method over seeds"
        return f"95% {'paired bootstrap ' if how == PAIRED else ''}interval {_pct(lo)} to {_pct(hi)}{tail}"
    if how == PAIRED:
        return f"no interval: {registry.reference().title}'s value is 0 on some resamples"
    return f"{how}: no interval" if how else "no interval"


def _gap_sentence(g, *, metric: str, n_images: int | None) -> str:
    method, ref = registry.get(g["method"]), registry.reference()
    what = f"The gap ({method.title}/{ref.title} ratio of validation {metric})"
    span = (
        f"from {_pct(g['ratio_small'])} at {params_words(g['small'], g['small_params'])} to "
        f"{_pct(g['ratio_large'])} at {params_words(g['large'], g['large_params'])}"
    )
    diff = f"a difference of {_pp(g['difference'])} percentage points"
    if g["verdict"] == "untested":
        return (
            f"{what} goes {span}, {diff}; without per-image records of these four configurations there is no "
            "paired interval, so whether the gap narrows or widens with scale is not decided."
        )
    interval = f"95% paired bootstrap interval {_pp(g['lo'])} to {_pp(g['hi'])}"
    if n_images:
        interval += f", over the same {n_images:,} validation images and the seeds"
    if g["verdict"] == "unchanged":
        return (
            f"{what} does not change detectably with scale: it goes {span}, {diff} ({interval}; it includes 0)."
        )
    if g["verdict"] == "reverses":
        was, now = ("below", "above") if g["ratio_small"] < 1 else ("above", "below")
        return (
            f"{what} reverses with scale ({method.title} goes from {was} {ref.title} to {now} it): {span}, {diff} "
            f"({interval})."
        )
    return f"{what} {g['verdict']} with scale: {span}, {diff} ({interval})."


def scale_lines(scale: Scale, *, metric: str) -> list[str]:
    """The sentences of the across-scale section: per model, each method's best configuration against the same
    model's best FFT one (quality share with its interval, cost shares); the learning rate each model's best
    configurations use; per method, whether the gap to FFT narrows, widens or does not change with scale."""
    ref = registry.reference()
    best, table = scale.best, scale.table
    lines = []
    for model in dict.fromkeys(table["model"]):
        rows = {r[METHOD]: r for _, r in best[best["model"] == model].iterrows()}
        for _, t in table[table["model"] == model].iterrows():
            method = registry.find(t["method"])
            if method is None or method.reference:
                continue
            row, where = rows[t["method"]], f"At {params_words(model, t['model_params'])}"
            if ref.name not in rows:
                lines.append(
                    f"{where}: no {ref.title} configuration has results, so {method.title} has no reference at "
                    "this scale."
                )
                continue
            f = rows[ref.name]
            q_a, q_f = t[metric], stat(f, f"best_{metric}")["mean"]
            if _isnan(t["ratio"]):
                quality = (
                    f"scores {_num(q_a)} on validation {metric} against {_num(q_f)} for the best {ref.title} "
                    f"configuration ({_describe(f)}; no ratio)"
                )
            else:
                quality = (
                    f"reaches {_pct(t['ratio'])} of the best {ref.title} configuration's ({_describe(f)}) validation "
                    f"{metric} ({_num(q_a)} vs {_num(q_f)}; {_ratio_words(t)})"
                )
            cost = cost_shares(f, row, whose=f"{ref.title}'s")
            joined = ", ".join(cost[:-1]) + (" and " if len(cost) > 1 else "") + cost[-1] if cost else ""
            lines.append(
                f"{where}: the best {method.title} configuration ({_describe(row)}) {quality}"
                + (f", with {joined}." if cost else ".")
            )
    lr = _lr_words(best)
    if lr:
        lines.append(f"Learning rate of each model's best configuration (tuned per model on validation): {lr}.")
    for _, g in scale.gaps.iterrows():
        lines.append(_gap_sentence(g, metric=metric, n_images=scale.n_images))
    if scale.gaps.empty:
        if table["model_params"].isna().any():
            lines.append(
                "Not every model reported its parameter count, so the models cannot be ordered by size: no verdict "
                "on how the gap changes with scale."
            )
        else:
            lines.append(
                f"No method has a ratio to {ref.title} at both the smallest and the largest model: no verdict on "
                "how the gap changes with scale."
            )
    return lines


def scale_rows(table: pd.DataFrame, *, metric: str) -> list[dict]:
    """The across-scale table of the summary: one row per model and method, formatted."""
    ref = registry.reference()
    rows = []
    for _, t in table.iterrows():
        method = registry.find(t["method"])
        if method is not None and method.reference:
            ratio = "reference"
        elif _isnan(t["ratio"]):
            ratio = "-"
        else:
            ratio = _pct(t["ratio"]) + (
                "" if _isnan(t["ratio_lo"]) else f" [{_pct(t['ratio_lo'])}, {_pct(t['ratio_hi'])}]"
            )
        row = {
            "model": t["model"],
            "parameters": _count(t["model_params"]),
            "method": method.title if method is not None else str(t["method"]),
            "best configuration (validation)": t["config_id"],
            "lr": "-" if _isnan(t["lr"]) else _short(t["lr"]),
            "seeds": int(t["n_seeds"]),
            f"{metric} [interval]": _ci({"mean": t[metric], "lo": t[f"{metric}_lo"], "hi": t[f"{metric}_hi"]}),
            f"/ {ref.title} [95%]": ratio,
        }
        for col, words in SCALE_COSTS:
            value, share = t[col], t[f"{col}_ratio"]
            cell = _count(value) if col == "trainable_params" else _num(value, 0 if col == "peak_mem_mb" else 1)
            row[words] = cell + ("" if _isnan(share) else f" ({_pct(share)} of {ref.title})")
        rows.append(row)
    return rows
