"""Analysis of a sweep's tidy results (see :func:`cxr_core.results_frame`): one row per trial, trials that
differ only by seed aggregated into configurations (mean, standard deviation, count, 95% t interval), the
best configuration per method and per preset chosen on validation, verdict sentences computed from
those numbers, a constant baseline, and summary.md. Pure pandas, numpy and scipy, no Ray; the diagrams are
drawn by :mod:`cxr_core.plots`. What is particular to a method (its variants, labels, names) comes from
:mod:`cxr_core.methods`; FFT is the reference every other method is compared with.

Works on partial results: errored trials are left out of the statistics and named, unfinished ones are
counted and flagged, and a sweep with one method says that the comparison cannot be made.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from cxr_core import methods as registry
from cxr_core.comparison import PRESET_VS_PRESET, PRESET_VS_REFERENCE, ablation_kinds
from cxr_core.errors import CxrError
from cxr_core.labels import LABELS
from cxr_core.metrics import report_metrics

QUALITY = ("label_f1_micro", "label_f1_macro", "label5_f1_macro", "bleu4", "exact_match", "unparsed_rate")
COST = (
    "trainable_params",
    "total_params",
    "peak_mem_mb",
    "train_samples_per_s",
    "train_tokens_per_s",
    "wall_seconds",
    "checkpoint_mb",
    "eval_seconds_per_image",
    "feature_cache_mb",
)
LABEL_F1 = tuple(f"f1/{label}" for label in LABELS)
METHOD, LR = registry.METHOD_COLUMN, "config/train/lr"
SEED = "config/train/seed"
NOT_IN_KEY = (SEED, "config/name")  # trials that differ only in these are repeats of one configuration
CONFIDENCE = 0.95
MIN_SEEDS_FOR_T = 3  # fewer seeds: rows show the min-max over seeds, not a t interval
CONVERGED_GAIN = 0.01  # a best configuration still gaining this much over its last epoch has not converged
# Settings that must be equal across arms for "same data, same number of optimizer steps".
PROTOCOL = (
    "config/train/epochs",
    "config/train/batch_size",
    "config/data/max_train",
    "config/data/split_dir",
    "config/data/max_val",
    "config/evaluation/max_new_tokens",
    "config/evaluation/uncertain",
)


def variant_label(row) -> str:
    """``fft`` or ``lora:<preset>``: the group a trial belongs to in tables and plots (its method's variant)."""
    return registry.variant_of_row(row)


def _isnan(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


# --------------------------------------------------------------------------------------------- trials


def trials_table(epochs: pd.DataFrame, *, metric: str, mode: str) -> pd.DataFrame:
    """One row per trial: config, final and best metrics, cost, status.

    ``best_<col>`` is the value of ``col`` at the trial's best epoch on ``metric`` (chosen on validation),
    for every quality metric, ``val_loss`` and the per-label F1 ``f1/<Label>``.

    Args:
        epochs: tidy rows (trial x epoch) from :func:`cxr_core.results_frame`.
        metric: the validation metric that defines a trial's best epoch.
        mode: ``max`` or ``min``.

    Raises:
        CxrError: the frame holds no trial at all.
    """
    if epochs.empty or "trial_id" not in epochs:
        raise CxrError("the results hold no trial yet; wait for the sweep to report, or check its name")
    rows = []
    for trial_id, group in epochs.groupby("trial_id", sort=True):
        first = group.iloc[0]
        row = {"trial_id": trial_id, "status": first.get("status"), "error": first.get("error")}
        row["trial_path"] = first.get("trial_path")
        row.update({c: first[c] for c in group.columns if c.startswith("config/")})
        row["variant"] = variant_label(row)
        reported = group.dropna(subset=[metric]) if metric in group else group.iloc[0:0]
        row["epochs_done"] = len(reported)
        if not reported.empty:
            reported = reported.sort_values("epoch") if "epoch" in reported else reported
            last = reported.iloc[-1]
            best_pos = reported[metric].idxmax() if mode == "max" else reported[metric].idxmin()
            best = reported.loc[best_pos]
            for col in (*QUALITY, "val_loss", *LABEL_F1):
                if col in reported:
                    row[f"final_{col}"] = last[col]
                    row[f"best_{col}"] = best[col]
            row["best_epoch"] = best.get("epoch")
            row["first_val_loss"] = reported.iloc[0].get("val_loss")
            for col in COST:
                if col in reported:
                    row[col] = last[col]
            row["peak_mem_kind"] = last.get("peak_mem_kind")
        rows.append(row)
    return pd.DataFrame(rows)


def constant_baseline(train_reports: list[str], val_reports: list[str], *, uncertain: str = "negative") -> dict:
    """Emit the most frequent training report for every validation image; its metrics are the floor a
    trained model must beat."""
    if not train_reports:
        raise CxrError("the training split has no reports; the constant baseline needs them")
    report, _ = Counter(train_reports).most_common(1)[0]
    metrics = report_metrics([report] * len(val_reports), val_reports, uncertain=uncertain)
    metrics["report"] = report
    return metrics


def best_per(table: pd.DataFrame, key: str, *, metric: str, mode: str) -> pd.DataFrame:
    """The best trial (by ``best_<metric>``) of each value of ``key``."""
    col = f"best_{metric}"
    done = table.dropna(subset=[col]) if col in table else table.iloc[0:0]
    if done.empty:
        return done
    order = done.sort_values(col, ascending=(mode == "min"))
    return order.groupby(key, sort=True).head(1).sort_values(key)


# ------------------------------------------------------------------------------------------ statistics


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


# ------------------------------------------------------------------------------------- configurations


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The configuration key: every ``config/...`` column except the seed and the arm's name."""
    return [c for c in frame.columns if c.startswith("config/") and c not in NOT_IN_KEY]


_short = registry.short


def _settings(row) -> tuple[registry.Method | None, dict]:
    """The row's method and its settings (section over the defaults); (None, {}) for an unknown method."""
    method = registry.of_row(row)
    return method, (method.from_row(row) if method is not None else {})


def config_label(row, extra: Sequence[str] = ()) -> str:
    """A readable name of a configuration: ``fft lr=0.0005``, ``lora:all_linear r=16 a=32 lr=0.005``, plus
    ``key=value`` for every column in ``extra`` (other settings that vary within the sweep)."""
    method, settings = _settings(row)
    parts = [variant_label(row), *(method.label_parts(settings) if method is not None else [])]
    if not _isnan(row.get(LR)):
        parts.append(f"lr={_short(row[LR])}")
    for col in extra:
        if not _isnan(row.get(col)):
            parts.append(f"{col.removeprefix('config/')}={_short(row[col])}")
    return " ".join(parts)


def _varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Settings that take more than one value within one method (a LoRA-only key, NaN for FFT, is not one)."""
    shown = {METHOD, LR, *registry.shown_columns()}
    groups = [g for _, g in frame.groupby(METHOD, dropna=False)] if METHOD in frame else [frame]
    return [c for c in columns if c not in shown and any(g[c].astype(str).nunique() > 1 for g in groups)]


def _values(table: pd.DataFrame) -> list[str]:
    """Per-trial columns that are aggregated over seeds."""
    best = [c for c in table.columns if c.startswith("best_")]
    return [*best, *(c for c in ("final_val_loss", *COST) if c in table)]


def configs_table(table: pd.DataFrame, *, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per configuration (trials that differ only by seed): for every per-trial metric ``M`` of
    :func:`trials_table`, ``M_mean``, ``M_std``, ``M_n`` and the t interval ``M_lo``/``M_hi`` over the
    configuration's trials (see :func:`mean_interval`).

    Errored trials and trials that reported nothing are left out of the statistics and counted in
    ``n_errored`` / ``n_unreported``; ``n_unfinished`` counts trials still running (their numbers may
    change). ``config_id`` is a readable unique name (see :func:`config_label`).
    """
    key = config_columns(table)
    extra = _varying(table, key)
    values = _values(table)
    rows = []
    for _, group in table.groupby(key, dropna=False, sort=False) if key else [((), table)]:
        first = group.iloc[0]
        usable = group[(group["status"] != "ERROR") & (group["epochs_done"] > 0)]
        row = {c: first[c] for c in key}
        row["config_id"] = config_label(first, extra)
        row["variant"] = first["variant"]
        row.update({k: math.nan for m in registry.registered() for k in m.derived_keys})
        method, settings = _settings(first)
        row.update(method.derived(settings) if method is not None else {})
        row["n_trials"] = len(group)
        row["n_seeds"] = len(usable)
        row["n_errored"] = int((group["status"] == "ERROR").sum())
        row["n_unreported"] = int(((group["status"] != "ERROR") & (group["epochs_done"] == 0)).sum())
        row["n_unfinished"] = int((usable["status"] != "TERMINATED").sum())
        row["seeds"] = ",".join(_short(s) for s in usable[SEED]) if SEED in usable else ""
        row["trial_ids"] = ",".join(map(str, group["trial_id"]))
        for col in values:
            s = honest_interval(col, mean_interval(usable[col], confidence=confidence))
            row.update({f"{col}_{k}": v for k, v in s.items()})
        row["interval"] = "t" if row["n_seeds"] >= MIN_SEEDS_FOR_T else "min-max"
        rows.append(row)
    configs = pd.DataFrame(rows)
    dup = configs["config_id"].duplicated(keep=False)
    if dup.any():  # two settings printed alike (e.g. floats equal to 6 digits): number them
        configs.loc[dup, "config_id"] += " #" + (configs[dup].groupby("config_id").cumcount() + 1).astype(str)
    by = [c for c in (METHOD, "variant", *registry.order_columns(), LR) if c in configs]
    order = lambda col: col.map(registry.rank) if col.name == METHOD else col  # noqa: E731 (the registry's order)
    return configs.sort_values(by, key=order, na_position="first", kind="stable").reset_index(drop=True)


def metric_bounds(col: str) -> tuple[float, float]:
    """The range a per-trial column can take: [0, 1] for rates and scores, [0, inf) for losses and costs."""
    name = col.removeprefix("best_").removeprefix("final_")
    if name in QUALITY or name.startswith(("label", "f1/", "bleu")):
        return 0.0, 1.0
    return 0.0, math.inf


def honest_interval(col: str, s: dict) -> dict:
    """The interval a configuration's row shows for ``col`` (a :func:`mean_interval` dict, adjusted):

    - cost columns (parameters, memory, throughput, time, size): the min-max over seeds, what was measured;
    - with fewer than :data:`MIN_SEEDS_FOR_T` seeds: the min-max over seeds (a t interval on two values is
      12.7 standard errors wide and says little);
    - otherwise the t interval, cut to the column's range (:func:`metric_bounds`).

    Quality metrics with per-image records get a two-level bootstrap interval instead
    (:mod:`cxr_core.comparison`), which lies inside the range by construction.
    """
    s = dict(s)
    if s["n"] < 2:
        return s  # one value: no interval of any kind
    if col in COST or s["n"] < MIN_SEEDS_FOR_T:
        s["lo"], s["hi"] = s["min"], s["max"]
        return s
    low, high = metric_bounds(col)
    if not _isnan(s["lo"]):
        s["lo"], s["hi"] = max(s["lo"], low), min(s["hi"], high)
    return s


def with_config_ids(frame: pd.DataFrame, configs: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (trials or epochs, with ``trial_id``) plus the ``config_id`` of each row's configuration."""
    owner = {t: row["config_id"] for _, row in configs.iterrows() for t in str(row["trial_ids"]).split(",")}
    return frame.assign(config_id=frame["trial_id"].astype(str).map(owner))


def stat(row, col: str) -> dict:
    """The :func:`mean_interval` dict of metric ``col`` stored in a :func:`configs_table` row."""
    return {k: row.get(f"{col}_{k}", math.nan) for k in ("mean", "std", "n", "lo", "hi", "min", "max")}


def best_config_per(configs: pd.DataFrame, key: str, *, metric: str, mode: str) -> pd.DataFrame:
    """The best configuration of each value of ``key`` (``config/method`` or ``variant``) by the mean over
    seeds of ``best_<metric>`` (validation). Ties go to the configuration with more seeds."""
    col = f"best_{metric}_mean"
    done = configs.dropna(subset=[col]) if col in configs else configs.iloc[0:0]
    if done.empty:
        return done
    order = done.sort_values([col, "n_seeds"], ascending=[mode == "min", False], kind="stable")
    return order.groupby(key, sort=True).head(1).sort_values(key)


def epoch_bands(epochs: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Per configuration and epoch, the mean, min and max over seeds of ``columns`` (errored trials left out).

    ``epochs`` must carry ``config_id`` (see :func:`with_config_ids`).
    """
    cols = [c for c in columns if c in epochs]
    if not cols or "epoch" not in epochs:
        return pd.DataFrame()
    ok = epochs[(epochs["status"] != "ERROR") & epochs["config_id"].notna()].dropna(subset=["epoch"])
    agg = {f"{c}_{f}": (c, f) for c in cols for f in ("mean", "min", "max", "count")}
    return ok.groupby(["config_id", "epoch"]).agg(**agg).reset_index()


# ------------------------------------------------------------------------------------------- summary


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def markdown_table(frame: pd.DataFrame, columns: list[str]) -> str:
    cols = [c for c in columns if c in frame]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _md(rows: list[dict]) -> str:
    """A Markdown table from dicts of already formatted cells (the first dict's keys are the header)."""
    if not rows:
        return "(none)"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r.get(h, "-")) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def _num(x: float, digits: int = 3) -> str:
    return "-" if _isnan(x) else f"{x:.{digits}f}"


def _ci(s: dict, digits: int = 3) -> str:
    """``0.412 [0.380, 0.444]``, or the mean alone when there is no interval."""
    if _isnan(s["mean"]):
        return "-"
    if _isnan(s["lo"]):
        return _num(s["mean"], digits)
    return f"{_num(s['mean'], digits)} [{_num(s['lo'], digits)}, {_num(s['hi'], digits)}]"


def _pct(x: float) -> str:
    return "-" if _isnan(x) else f"{100 * x:.0f}%" if abs(x) >= 0.1 else f"{100 * x:.2g}%"


def _count(x: float) -> str:
    return "-" if _isnan(x) else f"{x:,.0f}"


def _describe(row) -> str:
    """``all_linear, r=16, alpha=32, lr=0.005; 2 seeds``: a configuration for a sentence."""
    method, settings = _settings(row)
    bits = method.describe_parts(settings) if method is not None else []
    if not _isnan(row.get(LR)):
        bits.append(f"lr={_short(row[LR])}")
    n = int(row["n_seeds"])
    return f"{', '.join(bits)}; {n} seed{'s' if n != 1 else ''}"


def _seed_note(a: dict, b: dict) -> str:
    n = min(a["n"], b["n"])
    return f"with {n} seed{'s' if n != 1 else ''}" if n >= 2 else "with one seed"


def _title(row) -> str:
    """The display name of a configuration row's method (``LoRA``), or its raw method value."""
    method = registry.of_row(row)
    return method.title if method is not None else str(row.get(METHOD, "?"))


def cost_shares(ref, row, *, memory_kind: str = "", whose: str = "its") -> list[str]:
    """A configuration's cost as shares of a reference configuration's (means over seeds): ``16% of its trainable
    parameters``, ``137% of its peak memory (kind)``, ``0.64x its training throughput (samples/s)``; what is
    missing is left out."""
    out = []
    for col, word in (("trainable_params", "trainable parameters"), ("peak_mem_mb", "peak memory")):
        a, b = stat(row, col)["mean"], stat(ref, col)["mean"]
        if not _isnan(a) and b and not _isnan(b):
            kind = f" ({memory_kind})" if col == "peak_mem_mb" and memory_kind else ""
            out.append(f"{_pct(a / b)} of {whose} {word}{kind}")
    a, b = stat(row, "train_samples_per_s")["mean"], stat(ref, "train_samples_per_s")["mean"]
    if not _isnan(a) and b and not _isnan(b):
        out.append(f"{a / b:.2f}x {whose} training throughput (samples/s)")
    return out


def comparison_lines(
    ref,
    row,
    *,
    metric: str,
    mode: str,
    extra_metrics: Sequence[str] = (),
    memory_kind: str = "",
    what: str | None = None,
) -> list[str]:
    """Verdict sentences comparing one configuration row with a reference one (rows of :func:`configs_table`;
    usually the best FFT configuration): quality ratio with its interval, cost ratios, and whether the two
    intervals overlap. ``what`` names the row (default: ``<its method> configuration``)."""
    name, ref_name = _title(row), _title(ref)
    what = what or f"{name} configuration"
    lines = []
    q_l, q_f = stat(row, f"best_{metric}"), stat(ref, f"best_{metric}")
    r, lo, hi = ratio_interval(q_l, q_f)
    if _isnan(r):
        quality = (
            f"scores {_num(q_l['mean'])} on validation {metric} against {_num(q_f['mean'])} for the best "
            f"{ref_name} configuration ({_describe(ref)}; no ratio: {ref_name}'s is 0)"
        )
    else:
        interval = f" (95% interval {_pct(lo)} to {_pct(hi)})" if not _isnan(lo) else ""
        if min(q_l["n"], q_f["n"]) < 2:
            interval = " (one seed: no interval)"
        elif min(q_l["n"], q_f["n"]) < MIN_SEEDS_FOR_T:
            interval = f" ({int(min(q_l['n'], q_f['n']))} seeds: no interval)"
        quality = f"reaches {_pct(r)} of the best {ref_name} configuration's ({_describe(ref)}) validation "
        quality += f"{metric}{interval}"
    cost = cost_shares(ref, row, memory_kind=memory_kind)
    joined = ", ".join(cost[:-1]) + (" and " if len(cost) > 1 else "") + cost[-1] if cost else ""
    lines.append(f"The best {what} ({_describe(row)}) {quality}" + (f", with {joined}." if cost else "."))
    for m in extra_metrics:
        a, b = stat(row, f"best_{m}"), stat(ref, f"best_{m}")
        if _isnan(a["mean"]) or _isnan(b["mean"]):
            continue
        r2, lo2, hi2 = ratio_interval(a, b)
        few = min(a["n"], b["n"]) < MIN_SEEDS_FOR_T
        iv = f" (95% interval {_pct(lo2)} to {_pct(hi2)})" if not _isnan(lo2) and not few else ""
        if _isnan(r2):
            lines.append(
                f"On {m} (at the same checkpoints): {name} {_num(a['mean'])}, {ref_name} {_num(b['mean'])}."
            )
        else:
            lines.append(f"On {m} (at the same checkpoints) it reaches {_pct(r2)} of {ref_name}'s{iv}.")
    lines.append(_overlap_sentence(q_l, q_f, name, ref_name, metric=metric, mode=mode))
    return lines


def _overlap_sentence(a: dict, b: dict, name_a: str, name_b: str, *, metric: str, mode: str) -> str:
    if _isnan(a["mean"]) or _isnan(b["mean"]):
        return f"{name_a} or {name_b} has no {metric} yet: nothing to compare."
    if a["n"] < 2 or b["n"] < 2:
        return (
            f"{name_a} {_num(a['mean'])} vs {name_b} {_num(b['mean'])} on {metric}: with one seed on at least "
            f"one side there is no interval, so the data cannot say whether the difference exceeds seed noise."
        )
    if min(a["n"], b["n"]) < MIN_SEEDS_FOR_T:
        n = int(min(a["n"], b["n"]))
        return (
            f"{name_a} {_num(a['mean'])} (seeds {_num(a['min'])} to {_num(a['max'])}) vs {name_b} "
            f"{_num(b['mean'])} (seeds {_num(b['min'])} to {_num(b['max'])}) on {metric}: with {n} seeds and no "
            "per-image records there is no trustworthy interval, so the data cannot say whether the difference "
            "exceeds seed noise; run 3 or more seeds (sweeps made by this version also keep per-image records, "
            "which give paired verdicts)."
        )
    if a["std"] == 0 and b["std"] == 0 and a["mean"] == b["mean"]:
        return (
            f"{name_a} and {name_b} score the same {metric}, {_num(a['mean'])}, on every seed: no difference."
        )
    overlap = intervals_overlap(a, b)
    d, dlo, dhi = difference_interval(a, b)
    diff = f"difference {name_a} - {name_b} {d:+.3f}, Welch 95% interval {dlo:+.3f} to {dhi:+.3f}"
    if overlap:
        return (
            f"Their 95% intervals on {metric} overlap ({name_a} {_ci(a)}, {name_b} {_ci(b)}; {diff}): "
            f"{_seed_note(a, b)} the data do not separate the two."
        )
    better = (a["mean"] > b["mean"]) == (mode == "max")
    return (
        f"Their 95% intervals on {metric} do not overlap ({name_a} {_ci(a)}, {name_b} {_ci(b)}; {diff}): "
        f"{name_a} is {'better' if better else 'worse'} than {name_b} on this metric, {_seed_note(a, b)}."
    )


def preset_lines(configs: pd.DataFrame, *, metric: str, mode: str) -> list[str]:
    """Verdict sentences on each method's presets (its variants: LoRA's target modules), best configuration of
    each: the ranking and whether the top two are separated."""
    lines = []
    for method in registry.registered():
        mine = configs[configs.get(METHOD, pd.Series(dtype=object)) == method.name]
        best = (
            best_config_per(mine, "variant", metric=metric, mode=mode) if method.variant_key else mine.iloc[0:0]
        )
        if len(best) < 2:
            continue
        best = best.sort_values(f"best_{metric}_mean", ascending=(mode == "min"))
        preset = {i: registry.variant_value_of_row(r) for i, r in best.iterrows()}
        ranking = ", ".join(f"{preset[i]} {_ci(stat(r, f'best_{metric}'))}" for i, r in best.iterrows())
        lines.append(
            f"{method.title} presets ranked by validation {metric} (best configuration of each, mean [95% "
            f"interval]): {ranking}."
        )
        (i, top), (j, second) = list(best.iterrows())[:2]
        lines.append(
            _overlap_sentence(
                stat(top, f"best_{metric}"),
                stat(second, f"best_{metric}"),
                preset[i],
                preset[j],
                metric=metric,
                mode=mode,
            )  # fmt: skip
        )
    return lines


def lr_lines(configs: pd.DataFrame, *, metric: str, mode: str) -> list[str]:
    """Sentences on each method's learning rates: which is best, whether it lies at the edge of the grid."""
    if LR not in configs or f"best_{metric}_mean" not in configs:
        return []
    lines = []
    for method, group in configs.dropna(subset=[f"best_{metric}_mean"]).groupby(METHOD, sort=True):
        lrs = sorted(group[LR].dropna().unique())
        best = best_config_per(group, METHOD, metric=metric, mode=mode).iloc[0]
        tried = ", ".join(_short(x) for x in lrs)
        if len(lrs) < 2:
            lines.append(
                f"{method} ran at a single learning rate ({tried}): its learning rate was not tuned, so the "
                f"comparison may understate {method}."
            )
            continue
        where = ""
        if best[LR] == lrs[0]:
            where = ": the smallest tried, a lower one may do better"
        elif best[LR] == lrs[-1]:
            where = ": the largest tried, a higher one may do better"
        lines.append(f"{method}'s best learning rate is {_short(best[LR])} (of {tried}{where}).")
    by_method = best_config_per(configs, METHOD, metric=metric, mode=mode).set_index(METHOD)
    tuned = configs.groupby(METHOD)[LR].nunique()
    ref = registry.reference()
    for method in registry.compared():
        pair = [method.name, ref.name]
        if set(pair) <= set(by_method.index) and (tuned.reindex(pair) > 1).all():
            ratio = by_method.loc[method.name, LR] / by_method.loc[ref.name, LR]
            lines.append(
                f"The best {method.title} learning rate is {ratio:.3g}x the best {ref.title} one{method.lr_note}."
            )
    return lines


def protocol_lines(table: pd.DataFrame, configs: pd.DataFrame, *, metric: str) -> list[str]:
    """How fair the comparison is: seeds per configuration, learning rates per method, equal data and steps,
    selection on validation."""
    lines = []
    seeds = configs["n_seeds"]
    reported = configs[seeds > 0]
    if not reported.empty:
        lo, hi = int(reported["n_seeds"].min()), int(reported["n_seeds"].max())
        span = str(lo) if lo == hi else f"{lo} to {hi}"
        note = ""
        if lo < MIN_SEEDS_FOR_T:
            note = (
                f" With fewer than {MIN_SEEDS_FOR_T} seeds a seed-level t interval says little (with 2 seeds its "
                "half-width is 12.7 standard errors), so such configurations show the min-max over seeds."
            )
        lines.append(f"Seeds per configuration: {span} ({len(reported)} configurations with results).{note}")
    if LR in configs:
        for method, group in configs.groupby(METHOD, sort=True):
            lrs = ", ".join(_short(x) for x in sorted(group[LR].dropna().unique()))
            lines.append(f"Learning rates tried for {method}: {lrs}.")
    same, differ = [], []
    for col in PROTOCOL:
        if col in table:
            values = [str(v) for v in table[col].unique()]  # NaN too (pandas 3 keeps it missing in astype(str))
            (same if len(values) == 1 else differ).append((col.removeprefix("config/"), values))
    if same:
        lines.append("Equal for every arm: " + ", ".join(f"{c}={v[0]}" for c, v in same) + ".")
    for col, values in differ:
        lines.append(
            f"NOT equal across arms: {col} takes {', '.join(values)}: the arms did not see the same "
            f"data or number of optimizer steps."
        )
    n = configs.groupby(METHOD)["config_id"].count() if METHOD in configs else pd.Series(dtype=int)
    counts = ", ".join(f"{m} {k}" for m, k in n.items())
    lines.append(
        f"Each trial's value is its best epoch on validation {metric}; the best configuration of each method "
        f"is the one with the best mean over seeds, chosen on the same validation numbers, so those are "
        f"optimistic (more so for the method with more configurations: {counts}). "
        "The test split is the unbiased check."
    )
    return lines


def missing_lines(table: pd.DataFrame, configs: pd.DataFrame) -> list[str]:
    """What the analysis lacks: errored, unfinished or silent trials, incomplete seed sets, a missing method."""
    lines = []
    for _, row in table.iterrows():
        status = row.get("status")
        if status == "ERROR":
            lines.append(
                f"- {row['trial_id']} ({row['variant']}) errored: {row.get('error')}; "
                "left out of the statistics"
            )
        elif row.get("epochs_done", 0) == 0:
            lines.append(f"- {row['trial_id']} ({row['variant']}) is {status} and has reported nothing yet")
        elif status != "TERMINATED":
            lines.append(
                f"- {row['trial_id']} ({row['variant']}) is {status} after {row['epochs_done']} epoch(s): "
                f"its numbers are provisional"
            )
    most = int(configs["n_trials"].max()) if len(configs) else 0
    for _, row in configs.iterrows():
        if row["n_seeds"] < most:
            lines.append(f"- configuration {row['config_id']}: {row['n_seeds']} of {most} seeds have results")
    present = set(table.get(METHOD, pd.Series(dtype=object)).dropna())
    reported = set(configs.loc[configs["n_seeds"] > 0, METHOD]) if METHOD in configs else set()
    ref = registry.reference()
    if ref.name not in present:
        lines.append(
            f"- no {ref.name} trial in this sweep: the other methods have no reference to be compared with"
        )
    if not present & {m.name for m in registry.compared()}:
        lines.append(f"- no trial of another method in this sweep: the comparison with {ref.name} is one-sided")
    for method in registry.registered():
        if method.name in present and method.name not in reported:
            lines.append(f"- no {method.name} trial has results yet: the comparison cannot be made")
    return lines


def _config_rows(frame: pd.DataFrame, *, metric: str) -> list[dict]:
    rows = []
    for _, r in frame.iterrows():
        row = {"configuration": r["config_id"], "seeds": int(r["n_seeds"])}
        row[f"{metric} [interval]"] = _ci(stat(r, f"best_{metric}"))
        row["seed sd"] = _num(r.get(f"best_{metric}_std", math.nan))
        if metric != "label_f1_macro":
            row["label_f1_macro [interval]"] = _ci(stat(r, "best_label_f1_macro"))
        row["unparsed"] = _num(r.get("best_unparsed_rate_mean", math.nan), 2)
        row["bleu4 [interval]"] = _ci(stat(r, "best_bleu4"))
        row["interval"] = str(r.get("interval", "-"))
        row["val loss (final)"] = _num(r.get("final_val_loss_mean", math.nan))
        row["trainable params"] = _count(r.get("trainable_params_mean", math.nan))
        row["peak mem (MB)"] = _num(r.get("peak_mem_mb_mean", math.nan), 0)
        rows.append(row)
    return rows


def _cost_rows(best: pd.DataFrame) -> list[dict]:
    reference = registry.reference()
    mine = best[best[METHOD] == reference.name]
    ref = mine.iloc[0] if len(mine) else None
    rows = []
    for _, r in best.iterrows():
        row = {"method / preset": r["variant"], "configuration": r["config_id"]}
        for col, name, digits in (
            ("trainable_params", "trainable params", None),
            ("peak_mem_mb", "peak mem (MB)", 0),
            ("train_samples_per_s", "samples/s", 1),
            ("wall_seconds", "wall time (s)", 0),
            ("checkpoint_mb", "checkpoint (MB)", 2),
        ):
            mean = r.get(f"{col}_mean", math.nan)
            cell = _count(mean) if digits is None else _num(mean, digits)
            if (
                ref is not None
                and r["config_id"] != ref["config_id"]
                and not _isnan(mean)
                and ref.get(f"{col}_mean")
            ):
                cell += f" ({_pct(mean / ref[f'{col}_mean'])} of {reference.title})"
            row[name] = cell
        rows.append(row)
    return rows


def _lr_rows(configs: pd.DataFrame, *, metric: str, mode: str) -> list[dict]:
    if LR not in configs or f"best_{metric}_mean" not in configs:
        return []
    rows = []
    for (method, lr), group in configs.dropna(subset=[f"best_{metric}_mean"]).groupby([METHOD, LR], sort=True):
        best = best_config_per(group, METHOD, metric=metric, mode=mode).iloc[0]
        rows.append(
            {
                "method": method,
                "learning rate": _short(lr),
                "best configuration at this lr": best["config_id"],
                f"{metric} [95% CI]": _ci(stat(best, f"best_{metric}")),
                "seeds": int(best["n_seeds"]),
            }
        )
    return rows


def _per_label_rows(best: Sequence) -> list[dict]:
    """Per-label F1 of the best configuration of each method (reference first), and each one's difference to
    the reference."""
    ref = best[0]
    names = [_title(row) for row in best]
    rows = []
    for label in LABELS:
        values = [stat(row, f"best_f1/{label}") for row in best]
        if all(_isnan(v["mean"]) for v in values):
            continue
        row = {"label": label, **{f"{n} F1 [95% CI]": _ci(v) for n, v in zip(names, values, strict=True)}}
        for name, v in zip(names[1:], values[1:], strict=True):
            a = stat(ref, f"best_f1/{label}")["mean"]
            row[f"{name} - {names[0]}"] = "-" if _isnan(a) or _isnan(v["mean"]) else f"{v['mean'] - a:+.3f}"
        rows.append(row)
    return rows


def test_stats(test: pd.DataFrame, metrics: Sequence[str]) -> dict[str, dict]:
    """{group: {"config_id", "n", metric: mean_interval dict}} over the evaluated seeds of each group."""
    out = {}
    for group, rows in test.groupby("group", sort=True):
        entry = {"config_id": rows["config_id"].iloc[0] if "config_id" in rows else "?", "n": len(rows)}
        for m in metrics:
            if m in rows:
                entry[m] = honest_interval(m, mean_interval(rows[m]))
        out[group] = entry
    return out


def test_lines(
    test: pd.DataFrame | None,
    test_per_label: pd.DataFrame | None,
    table: pd.DataFrame,
    chosen: dict[str, str],
    *,
    metric: str,
    results: str,
    intervals: dict | None = None,
) -> list[str]:
    """The test section: jobs.evaluate's numbers (mean [interval] over the seeds of each group's chosen
    configuration) if it ran, otherwise how to run it. ``intervals`` (``{group: {metric: dict}}``, two-level
    bootstrap on the per-image test records) replaces the seed-level interval where given.

    ``chosen`` maps a group (``fft``, ``lora``, ``lora:<preset>``) to its best configuration by mean over seeds.
    """
    if test is None or test.empty:
        return [
            "The test split has not been evaluated for this sweep (no test_metrics.csv). Evaluate the "
            "checkpoints chosen on validation once, then re-run the analysis:",
            "",
            "```bash",
            f"python -m jobs.evaluate {results}",
            f"python -m jobs.analyze {results}",
            "```",
        ]
    shown = tuple(
        dict.fromkeys((metric, "label_f1_macro", "label5_f1_macro", "unparsed_rate", "bleu4", "test_loss"))
    )
    stats = test_stats(test, shown)
    for group, entry in stats.items():
        for m, iv in ((intervals or {}).get(group) or {}).items():
            if m in entry:
                entry[m] = {**entry[m], "lo": iv["lo"], "hi": iv["hi"]}
    kind = "95% two-level bootstrap interval over seeds and test images" if intervals else "seed-level interval"
    rows = []
    for group, entry in stats.items():
        rows.append(
            {
                "group": group,
                "configuration": entry["config_id"],
                "seeds": _count(entry["n"]),
                **{
                    ("test loss" if m == "test_loss" else f"test {m}"): _ci(entry[m])
                    for m in shown
                    if m in entry
                },
                "test images": _count(test[test["group"] == group]["n"].iloc[0]) if "n" in test else "-",
            }
        )
    lines = [
        "These are **test-split** numbers: jobs.evaluate scored, once, the best checkpoint (on validation) of "
        f"every seed of each group's best configuration (on validation); mean over seeds [{kind}; with fewer than "
        f"{MIN_SEEDS_FOR_T} seeds and no records, min-max]. BLEU's interval is over seeds only.",
        "",
        _md(rows),
    ]
    if not intervals:  # with per-image records the paired verdicts (in the Verdict section) say it instead
        lines += [""] + test_verdict(test, metric=metric) if test_verdict(test, metric=metric) else []
    for group, entry in stats.items():
        if group in chosen and entry["config_id"] != chosen[group]:
            lines += ["", f"Note: for {group}, the evaluated configuration ({entry['config_id']}) differs from the "
                      f"best by mean over seeds in this analysis ({chosen[group]}); re-run jobs.evaluate."]  # fmt: skip
    if test_per_label is not None and not test_per_label.empty and "f1" in test_per_label:
        pivot = test_per_label.pivot_table(index="label", columns="group", values="f1", aggfunc="mean").reindex(
            [x for x in LABELS if x in set(test_per_label["label"])]
        )
        lines += ["", "Per-label F1 on test (mean over the evaluated seeds):", ""]
        lines.append(
            _md([{"label": lab, **{g: _num(v) for g, v in row.items()}} for lab, row in pivot.iterrows()])
        )
    return lines


def test_verdict(test: pd.DataFrame | None, *, metric: str) -> list[str]:
    """The test split's answer in one sentence per group compared with the reference (FFT), if jobs.evaluate has
    run."""
    ref = registry.reference()
    if test is None or test.empty or metric not in test or ref.name not in set(test["group"]):
        return []
    stats = test_stats(test, (metric,))
    fft = stats[ref.name][metric]
    lines = []
    for group, entry in stats.items():
        if group == ref.name:
            continue
        value = entry[metric]
        share = f" ({_pct(value['mean'] / fft['mean'])} of {ref.title}'s)" if fft["mean"] else ""
        method = registry.find(group)
        name = method.title if method is not None else group
        overlap = intervals_overlap(value, fft)
        tail = (
            "; with one seed on a side there is no interval"
            if overlap is None
            else (
                "; the 95% intervals overlap, so the test split does not separate them"
                if overlap
                else "; the 95% intervals do not overlap"
            )  # fmt: skip
        )
        lines.append(f"On the test split: {name} {metric} {_ci(value)} vs {ref.title} {_ci(fft)}{share}{tail}.")
    return lines


def baseline_lines(methods: dict, baseline: dict | None, *, metric: str, mode: str) -> list[str]:
    """A verdict sentence when a method's best configuration does not beat the constant baseline."""
    if baseline is None or metric not in baseline or not methods:
        return []
    base = baseline[metric]
    below = [
        m
        for m, row in methods.items()
        if not (row[f"best_{metric}_mean"] > base if mode == "max" else row[f"best_{metric}_mean"] < base)
    ]
    if not below:
        return []
    if len(below) == len(methods):
        return [
            f"No method's best configuration beats the constant baseline on {metric} ({base:.3f}): the "
            f"models have not learned the task beyond its most frequent report, so this comparison says little "
            f"about how well each method adapts."
        ]
    return [
        f"The best {', '.join(below)} configuration does not beat the constant baseline on {metric} "
        f"({base:.3f})."
    ]


def _against(s: dict, value: float, mode: str, *, what: str = "95% interval") -> str:
    """Where an interval (or seed range) lies relative to ``value``: wholly better, wholly worse, or across it."""
    if _isnan(s["lo"]) or s["n"] < 2:
        return " (one seed: no interval)"
    if s["lo"] <= value <= s["hi"]:
        better = (s["mean"] > value) == (mode == "max")
        return f" (but its {what} includes it)" if better else f" (its {what} includes it)"
    above = s["lo"] > value
    return f" (its {what} lies entirely {'above' if above else 'below'} it)"


def _interval_words(row) -> str:
    kind = row.get("interval") if hasattr(row, "get") else None
    return {"min-max": "seed range (min-max)", "bootstrap": "95% bootstrap interval"}.get(kind, "95% interval")


def convergence_lines(epochs: pd.DataFrame, configs: pd.DataFrame, *, metric: str, mode: str) -> list[str]:
    """Whether the best configuration of each method had stopped improving: the mean over seeds of its
    validation ``metric`` at the last epoch minus the one before (a gain of 0.01 or more is flagged)."""
    if "config_id" not in epochs or "epoch" not in epochs or metric not in epochs or METHOD not in configs:
        return []
    lines = []
    sign = 1 if mode == "max" else -1
    for _, row in best_config_per(configs, METHOD, metric=metric, mode=mode).iterrows():
        mine = epochs[(epochs["config_id"] == row["config_id"]) & (epochs["status"] != "ERROR")]
        per_epoch = mine.dropna(subset=[metric]).groupby("epoch")[metric].mean().sort_index()
        if len(per_epoch) < 2:
            continue
        gain = sign * (per_epoch.iloc[-1] - per_epoch.iloc[-2])
        last = int(per_epoch.index[-1])
        verdict = (
            f"converged (gain below {CONVERGED_GAIN:g})"
            if gain < CONVERGED_GAIN
            else "still improving: train longer before trusting the comparison"
        )
        lines.append(
            f"Convergence, best {row[METHOD]} configuration ({row['config_id']}): validation {metric} changed by "
            f"{sign * gain:+.3f} from epoch {last - 1} to {last} (mean over seeds): {verdict}."
        )
    return lines


def paired_lines(comparisons: pd.DataFrame | None, *, kinds: Sequence[str], split: str) -> list[str]:
    """The verdict sentences of the paired comparisons of the given kinds on one split, in table order."""
    if comparisons is None or comparisons.empty:
        return []
    rows = comparisons[comparisons["kind"].isin(kinds) & (comparisons["split"] == split)]
    return [str(x) for x in rows["sentence"]]


def _unparsed_note(ref, row) -> str:
    a, b = row.get("best_unparsed_rate_mean", math.nan), ref.get("best_unparsed_rate_mean", math.nan)
    if _isnan(a) or _isnan(b):
        return ""
    return (
        f" Unparsed sentences (read as all-negative): {_title(row)} {a:.2f}, {_title(ref)} {b:.2f} of their "
        "generated sentences."
    )


def quality_cost_lines(
    ref, row, *, metric: str, memory_kind: str, planned: dict | None, explain: bool = True
) -> list[str]:
    """A method's best configuration (``row``) against the reference's (``ref``, FFT): its share of the reference's
    quality (point value; the paired comparison carries the uncertainty) and its cost, as measured on this sweep's
    model and as planned at the study's target scale (``planned``: :func:`cxr_core.report_writer.planned_cost`);
    ``explain`` adds which of the two to trust for what."""
    name, ref_name = _title(row), _title(ref)
    q_l, q_f = stat(row, f"best_{metric}")["mean"], stat(ref, f"best_{metric}")["mean"]
    share = f"reaches {_pct(q_l / q_f)} of" if q_f and not _isnan(q_l) else "is compared with"
    lines = [
        f"The best {name} configuration ({_describe(row)}) {share} the best {ref_name} configuration's "
        f"({_describe(ref)}) validation {metric} ({_num(q_l)} vs {_num(q_f)})." + _unparsed_note(ref, row)
    ]
    measured = cost_shares(ref, row, whose=f"{ref_name}'s")
    if measured:
        total = stat(ref, "total_params")["mean"]
        size = f"{total / 1e6:.2f}M-parameter " if not _isnan(total) else ""
        where = f"; peak memory is {memory_kind}" if memory_kind else ""
        lines.append(f"Measured on this sweep's {size}model{where}: {name} uses {', '.join(measured)}.")
    plan = (planned or {}).get("methods", {})
    mine, theirs = plan.get(row.get(METHOD)), plan.get(ref.get(METHOD))
    if mine and theirs:
        lines.append(
            f"Planned at {planned['model']} (the study's target scale; dry-run plan: weights, gradients and AdamW "
            f"state, no activations): {name} trains {_pct(mine['trainable'] / theirs['trainable'])} of "
            f"{ref_name}'s parameters ({_count(mine['trainable'])} vs {_count(theirs['trainable'])}) and "
            f"needs {_pct(mine['memory_mb'] / theirs['memory_mb'])} of its training memory "
            f"({mine['memory_mb']:,.0f} vs {theirs['memory_mb']:,.0f} MB, fp32)."
            + (
                " For what the methods cost at scale trust these planned figures (bench.method_cost measures "
                "git-base steps); the measured memory and throughput above describe only this small model, where "
                "activations and allocator noise dominate."
                if explain
                else ""
            )
        )
    return lines


def interval_note(
    configs: pd.DataFrame, comparisons: pd.DataFrame | None, *, margin: float, n_boot: int
) -> str:
    """One paragraph on what the intervals in this report are."""
    kinds = set(configs.get("interval", pd.Series(dtype=object)).dropna())
    parts = []
    if "bootstrap" in kinds:
        parts.append(
            f"Quality intervals are 95% percentile intervals of a two-level bootstrap ({n_boot:,} resamples: the "
            "seeds, then the images of the split), so they stay inside the metric's range"
        )
    if "t" in kinds:
        parts.append(
            "configurations without per-image records show a 95% t interval over seeds, cut to the range"
        )
    if "min-max" in kinds:
        parts.append(
            "configurations with fewer than 3 seeds show the min-max over their seeds, not an interval"
        )
    text = "; ".join(parts) + "." if parts else ""
    text = text[:1].upper() + text[1:]
    if comparisons is not None and not comparisons.empty:
        text += (
            " Comparisons are paired over the same images; each verdict is one of better, worse, equivalent "
            f"within ±{margin:g} (two one-sided tests) or inconclusive (see docs/statistics.md)."
        )
    return text + " Cost columns show the mean over seeds (whiskers and ranges: min-max)."


def _comparison_rows(comparisons: pd.DataFrame) -> list[dict]:
    rows = []
    for _, r in comparisons.iterrows():
        rows.append(
            {
                "split": r["split"],
                "kind": r["kind"],
                "A": r["a"],
                "B": r["b"],
                "metric": r["metric"],
                "A - B [95%]": f"{r['difference']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]",
                "P(A better)": f"{r['p_a_better']:.2f}",
                "verdict": str(r["verdict"]).replace("_", " "),
                "images": _count(r["n_images"]),
                "seeds A/B": f"{int(r['n_seeds_a'])}/{int(r['n_seeds_b'])}",
            }
        )
    return rows


def summary_markdown(
    table: pd.DataFrame,
    *,
    metric: str,
    mode: str,
    baseline: dict | None,
    name: str,
    configs: pd.DataFrame | None = None,
    test: pd.DataFrame | None = None,
    test_per_label: pd.DataFrame | None = None,
    results: str | None = None,
    diagrams: dict[str, str] | None = None,
    comparisons: pd.DataFrame | None = None,
    test_intervals: dict | None = None,
    planned: dict | None = None,
    margin: float = 0.02,
    sparse: Sequence[str] = (),
    n_boot: int = 0,
    epochs: pd.DataFrame | None = None,
    metric_source: str = "",
) -> str:
    """summary.md: verdict sentences computed from the data, the protocol, best configuration per method and per
    preset with 95% intervals over seeds, the constant baseline, cost, learning rates, per-label F1, the
    test split (if evaluated), every configuration, what is missing, and the diagrams.

    Args:
        table: :func:`trials_table`. configs: :func:`configs_table` (computed when None).
        baseline: :func:`constant_baseline` or None. test, test_per_label: jobs.evaluate's CSVs, or None.
        results: the results path shown in commands. diagrams: ``{file: description}`` of the figures.
        comparisons: :mod:`cxr_core.comparison`'s paired comparisons (None: seed-level sentences only).
        test_intervals: ``{group: {metric: interval dict}}`` on test from per-image records.
        planned: cost of each method's best configuration at the study's target scale (dry-run plan;
            :func:`cxr_core.report_writer.planned_cost`).
        margin: the equivalence margin of the verdicts. sparse: labels with few positives on validation.
        n_boot: bootstrap resamples behind the intervals. epochs: the tidy per-epoch rows with ``config_id``
            (for the convergence check of the best configurations).
        metric_source: where ``metric`` came from (``the sweep's own``, ``--metric``), said in the summary.
    """
    configs = configs_table(table) if configs is None else configs
    if "config_id" not in table:
        table = with_config_ids(table, configs)
    kinds = table.get("peak_mem_kind", pd.Series(dtype=object)).dropna().unique()
    kind = ", ".join(map(str, kinds))
    status = table["status"].value_counts()
    by_method = (
        best_config_per(configs, METHOD, metric=metric, mode=mode) if METHOD in configs else configs.iloc[0:0]
    )
    by_variant = best_config_per(configs, "variant", metric=metric, mode=mode)
    best_of = {r[METHOD]: r for _, r in by_method.iterrows()}  # method -> its best configuration
    ref = registry.reference()
    pairs = registry.pairs(list(best_of))  # each method vs FFT, then the others among themselves
    in_sweep = set(table.get(METHOD, pd.Series(dtype=object)).dropna())
    titles = [m.long_title for m in registry.registered() if m.name in in_sweep]

    lines = [f"# Sweep {name}" + (f": {' vs '.join(titles)}" if titles else ""), ""]
    lines.append(
        f"{len(table)} trials ({', '.join(f'{v} {k}' for k, v in status.items())}) in {len(configs)} "
        f"configurations (trials that differ only by seed). A trial's value is its best epoch on validation "
        f"`{metric}` ({mode}{'; ' + metric_source if metric_source else ''}); a configuration's is "
        "the mean over its seeds. "
        + interval_note(configs, comparisons, margin=margin, n_boot=n_boot)
        + (f" Peak memory is {kind} (MB)." if kind else "")
    )
    lines += ["", "## Verdict", ""]
    verdict = []
    paired = comparisons is not None and not comparisons.empty
    if pairs and paired:
        for i, (a, b) in enumerate(pairs):
            verdict += paired_lines(comparisons, kinds=(registry.kind(a, b),), split="test")
            verdict += paired_lines(comparisons, kinds=(registry.kind(a, b),), split="val")
            if b.reference:
                verdict += quality_cost_lines(best_of[b.name], best_of[a.name], metric=metric, memory_kind=kind,
                                              planned=planned, explain=i == 0)  # fmt: skip
        bests = {r["config_id"] for r in best_of.values()}  # said above already
        others = comparisons[~((comparisons["kind"] == PRESET_VS_REFERENCE) & comparisons["a"].isin(bests))]
        verdict += paired_lines(others, kinds=(PRESET_VS_REFERENCE,), split="test")
        verdict += paired_lines(others, kinds=(PRESET_VS_REFERENCE, PRESET_VS_PRESET, *ablation_kinds()),
                                split="val")  # fmt: skip
    elif pairs:
        extra = [m for m in ("label_f1_macro",) if m != metric]
        for a, b in pairs:
            verdict += comparison_lines(
                best_of[b.name],
                best_of[a.name],
                metric=metric,
                mode=mode,
                extra_metrics=extra,
                memory_kind=kind,
            )
        for _, row in by_variant.iterrows() if ref.name in best_of else ():  # every other preset vs FFT
            method = registry.of_row(row)
            if method is None or method.reference or row["config_id"] == best_of[method.name]["config_id"]:
                continue
            what = f"{method.title} {registry.variant_value_of_row(row)} configuration"
            line, *_ = comparison_lines(
                best_of[ref.name], row, metric=metric, mode=mode, memory_kind=kind, what=what
            )
            verdict.append(line)
        verdict += test_verdict(test, metric=metric)
    else:
        have = ", ".join(sorted(best_of, key=registry.rank))
        verdict.append(
            (f"Only {have} has results" if best_of else "No method has results yet")
            + ": no comparison between methods can be made from this sweep."
        )
    if sparse and "macro" in " ".join([metric, "label_f1_macro"]):
        verdict.append(
            f"Macro averages include labels with fewer than 10 positive validation images ({', '.join(sparse)}): "
            "their F1 is noisy and weighs as much as any other label's."
        )
    verdict += baseline_lines(best_of, baseline, metric=metric, mode=mode)
    if not paired:
        verdict += preset_lines(configs, metric=metric, mode=mode) if METHOD in configs else []
    verdict += lr_lines(configs, metric=metric, mode=mode) if METHOD in configs else []
    lines += [f"- {v}" for v in verdict]

    protocol = protocol_lines(table, configs, metric=metric)
    if epochs is not None:
        protocol += convergence_lines(epochs, configs, metric=metric, mode=mode)
    lines += ["", "## Protocol", ""] + [f"- {v}" for v in protocol]
    lines += ["", "## Best configuration per method (validation)", ""]
    lines.append(
        _md(_config_rows(by_method, metric=metric)) if len(by_method) else "No trial has reported yet."
    )
    lines += ["", "## Best configuration per method and preset (validation)", ""]
    lines.append(
        _md(_config_rows(by_variant, metric=metric)) if len(by_variant) else "No trial has reported yet."
    )

    if baseline is not None:
        lines += ["", "## Constant baseline", ""]
        lines.append(
            f"Emitting the most frequent training report for every validation image gives "
            f"label_f1_micro {baseline['label_f1_micro']:.4f}, "
            f"label_f1_macro {baseline['label_f1_macro']:.4f}, "
            f'bleu4 {baseline["bleu4"]:.4f}. The report: "{baseline["report"]}"'
        )
        if metric in baseline and len(by_method):
            lines.append("")
            for _, row in by_method.iterrows():
                s, base = stat(row, f"best_{metric}"), baseline[metric]
                beat = s["mean"] > base if mode == "max" else s["mean"] < base
                lines.append(
                    f"- best {row[METHOD]}: {metric} {s['mean']:.4f} {'beats' if beat else 'does NOT beat'} "
                    f"the baseline's {base:.4f}{_against(s, base, mode, what=_interval_words(row))}"
                )

    lines += ["", "## Cost (best configuration per method and preset)", ""]
    lines.append(_md(_cost_rows(by_variant)) if len(by_variant) else "No trial has reported yet.")
    lines += [
        "",
        "Means over seeds. Peak memory" + (f": {kind}." if kind else ".") + " Wall time is per trial, "
        "evaluation included; concurrent trials on shared CPUs make throughput and wall time noisy.",
    ]
    lr_rows = _lr_rows(configs, metric=metric, mode=mode) if METHOD in configs else []
    if lr_rows:
        lines += ["", "## Learning rate (best configuration at each learning rate)", "", _md(lr_rows)]
    shown = [m for m in registry.registered() if m.name in best_of]
    if len(shown) > 1 and shown[0].reference:
        rows = _per_label_rows([best_of[m.name] for m in shown])
        if rows:
            versus = " vs ".join(f"best {m.title}" for m in shown)
            lines += ["", f"## Per-label F1 (validation): {versus} configuration", "", _md(rows)]
    lines += ["", "## Test split", ""]
    chosen = {r["variant"]: r["config_id"] for _, r in by_variant.iterrows()}
    chosen.update({r[METHOD]: r["config_id"] for _, r in by_method.iterrows()})
    lines += test_lines(test, test_per_label, table, chosen, metric=metric, results=results or name,
                        intervals=test_intervals)  # fmt: skip
    if paired:
        lines += ["", "## Paired comparisons", ""]
        lines.append(
            f"Every comparison in `comparisons.csv`: difference A - B with its 95% paired bootstrap interval "
            f"(the same resampled images for both sides, seeds resampled within each), P(A better), and the "
            f"verdict (equivalent when the 90% interval lies within ±{margin:g})."
        )
        lines += ["", _md(_comparison_rows(comparisons))]
    lines += ["", "## All configurations (validation, mean over seeds [interval])", ""]
    lines.append(_md(_config_rows(configs[configs["n_seeds"] > 0], metric=metric)))
    lines += ["", "## Missing, failed or unfinished", ""]
    missing = missing_lines(table, configs)
    lines += missing or ["None: every trial finished and every configuration has all its seeds."]
    if diagrams:
        lines += ["", "## Diagrams", ""] + [f"- `{f}`: {d}" for f, d in diagrams.items()]
    return "\n".join(lines) + "\n"
