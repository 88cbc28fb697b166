"""The analysis's tables: one row per trial (:func:`trials_table`), one per configuration (trials that differ
only by seed, :func:`configs_table`), the best configuration per method, preset or model, and the test split's
statistics per group. Pure pandas; the statistics come from :mod:`cxr_core.analysis.statistics`."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import pandas as pd

from cxr_core import methods as registry
from cxr_core.analysis.statistics import CONFIDENCE, MIN_SEEDS_FOR_T, _isnan, mean_interval
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
MODEL = "config/model"  # a sweep may grid over models (the report's "Across model scales")
NOT_IN_KEY = (SEED, "config/name")  # trials that differ only in these are repeats of one configuration


def variant_label(row) -> str:
    """``fft`` or ``lora:<preset>``: the group a trial belongs to in tables and plots (its method's variant)."""
    return registry.variant_of_row(row)


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


def _done(configs: pd.DataFrame) -> pd.DataFrame:
    """The configurations with results and a model."""
    if MODEL not in configs or "n_seeds" not in configs:
        return configs.iloc[0:0]
    return configs[(configs["n_seeds"] > 0) & configs[MODEL].notna()]


def model_parameters(configs: pd.DataFrame) -> dict[str, float]:
    """{model: its parameter count}: the smallest mean ``total_params`` among its configurations with results (a
    full fine-tuning counts the model; an adapter adds its own parameters). NaN where none reported it."""
    done = _done(configs)
    if done.empty:
        return {}
    out = {}
    for model, rows in done.groupby(done[MODEL].astype(str), sort=True):
        values = pd.to_numeric(rows.get("total_params_mean", pd.Series(dtype=float)), errors="coerce").dropna()
        out[str(model)] = float(values.min()) if len(values) else math.nan
    return out


def models(configs: pd.DataFrame) -> list[str]:
    """The models of the configurations that have results, smallest first (by parameter count; models without one
    last, by name)."""
    params = model_parameters(configs)
    return sorted(params, key=lambda m: (_isnan(params[m]), 0.0 if _isnan(params[m]) else params[m], m))


def largest_model(configs: pd.DataFrame) -> str | None:
    """In a sweep over two or more models (``config/model``), the one with the most parameters (the last of
    :func:`models`, the order of the report's "Across model scales" section); None for a sweep over one model."""
    present = models(configs)
    return present[-1] if len(present) > 1 else None


def headline_pool(configs: pd.DataFrame) -> pd.DataFrame:
    """The configurations the sweep's headline compares: all of them, or in a sweep over several models only the
    largest model's (:func:`largest_model`, the one nearest the study's target scale), so that methods are always
    compared on the same model; every model's own comparison is the report's "Across model scales" section."""
    model = largest_model(configs)
    return configs if model is None else configs[configs[MODEL].astype(str) == model]


def best_config_per(configs: pd.DataFrame, key: str, *, metric: str, mode: str) -> pd.DataFrame:
    """The best configuration of each value of ``key`` (``config/method`` or ``variant``) by the mean over
    seeds of ``best_<metric>`` (validation), among :func:`headline_pool` (in a sweep over several models, the
    largest model's). Ties go to the configuration with more seeds."""
    col = f"best_{metric}_mean"
    configs = headline_pool(configs) if key != MODEL else configs
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


def chosen_configs(
    epochs: pd.DataFrame,
    *,
    metric: str,
    mode: str,
    group_by: str = "method",
    config_id: str | None = None,
    where: str = "the results",
) -> pd.DataFrame:
    """The configurations whose checkpoints are evaluated or exported, chosen on validation only: for each group
    (``method``: ``config/method``; ``variant``: method and preset), the best configuration by the mean over its
    seeds of each seed's best validation ``metric``; with ``config_id`` (an id of :func:`configs_table`), that
    configuration instead.

    Args:
        epochs: tidy rows (trial x epoch) from :func:`cxr_core.results_frame`.
        where: the results' name in the error message.

    Returns:
        Rows of :func:`configs_table`, with ``group``: the row's value of the grouping column.

    Raises:
        CxrError: ``config_id`` names no configuration of the sweep.
    """
    table = trials_table(epochs, metric=metric, mode=mode)
    configs = configs_table(table)
    key = METHOD if group_by == "method" else "variant"
    best = best_config_per(configs, key, metric=metric, mode=mode)
    if config_id is not None:
        best = configs[configs["config_id"] == config_id]
        if best.empty:
            raise CxrError(f"{where}: no configuration {config_id!r}; its configurations: "
                           + ", ".join(repr(c) for c in configs["config_id"]))  # fmt: skip
    return best.assign(group=best[key] if key in best else None)
