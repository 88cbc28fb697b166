"""Analysis of a sweep's tidy results (see :func:`cxr_core.tune_runner.results_frame`): per-trial table,
a constant baseline, summary.md and the comparison diagrams. Pure pandas and matplotlib, no Ray.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd

from cxr_core.errors import CxrError
from cxr_core.metrics import report_metrics

QUALITY = ("label_f1_micro", "label_f1_macro", "label5_f1_macro", "bleu4", "exact_match", "unparsed_rate")
COST = (
    "trainable_params",
    "total_params",
    "peak_mem_mb",
    "train_samples_per_s",
    "wall_seconds",
    "checkpoint_mb",
)
CONFIG_SHOWN = (
    "config/method",
    "config/train/lr",
    "config/lora/r",
    "config/lora/alpha",
    "config/lora/target_modules",
)


def variant_label(row) -> str:
    """'fft' or 'lora:<preset>' (the group a trial belongs to in tables and plots)."""
    method = row.get("config/method", "?")
    if method == "lora":
        return f"lora:{row.get('config/lora/target_modules', '?')}"
    return str(method)


def trials_table(epochs: pd.DataFrame, *, metric: str, mode: str) -> pd.DataFrame:
    """One row per trial: config, final and best metrics, cost, status.

    Args:
        epochs: tidy rows (trial x epoch); ``metric``/``mode`` define "best".
    """
    if epochs.empty:
        raise CxrError("the results hold no trial yet; wait for the sweep to report, or check its name")
    rows = []
    for trial_id, group in epochs.groupby("trial_id", sort=True):
        first = group.iloc[0]
        row = {"trial_id": trial_id, "status": first.get("status"), "error": first.get("error")}
        row.update({c: first[c] for c in group.columns if c.startswith("config/")})
        row["variant"] = variant_label(row)
        reported = group.dropna(subset=[metric]) if metric in group else group.iloc[0:0]
        row["epochs_done"] = len(reported)
        if not reported.empty:
            last = reported.sort_values("epoch").iloc[-1]
            best_pos = reported[metric].idxmax() if mode == "max" else reported[metric].idxmin()
            best = reported.loc[best_pos]
            for col in (*QUALITY, "val_loss"):
                if col in reported:
                    row[f"final_{col}"] = last[col]
                    row[f"best_{col}"] = best[col]
            row["best_epoch"] = best["epoch"]
            first_loss = reported.sort_values("epoch").iloc[0].get("val_loss")
            row["first_val_loss"] = first_loss
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


def summary_markdown(table: pd.DataFrame, *, metric: str, mode: str, baseline: dict | None, name: str) -> str:
    """summary.md: best trial per method and per LoRA preset, quality beside cost, the constant baseline,
    failed trials and what is missing."""
    cols = ["variant", "trial_id", "config/train/lr", "config/lora/r", "config/lora/alpha",
            f"best_{metric}", "best_label_f1_macro", "best_bleu4", "final_val_loss", "trainable_params",
            "peak_mem_mb", "train_samples_per_s", "wall_seconds", "checkpoint_mb"]  # fmt: skip
    lines = [f"# Sweep {name}", ""]
    lines.append(f"{len(table)} trials; best = {mode} of `{metric}` over epochs (validation split).")
    kinds = table.get("peak_mem_kind", pd.Series(dtype=object)).dropna().unique()
    if len(kinds):
        lines.append(f"Peak memory is {', '.join(map(str, kinds))} (MB).")
    lines += ["", "## Best trial per method", ""]
    by_method = best_per(table, "config/method", metric=metric, mode=mode)
    lines.append(markdown_table(by_method, cols) if not by_method.empty else "No trial has reported yet.")
    lines += ["", "## Best trial per variant (LoRA target-module preset)", ""]
    by_variant = best_per(table, "variant", metric=metric, mode=mode)
    lines.append(markdown_table(by_variant, cols) if not by_variant.empty else "No trial has reported yet.")
    if baseline is not None:
        lines += ["", "## Constant baseline", ""]
        lines.append(
            f"Emitting the most frequent training report for every validation image gives "
            f"label_f1_micro {baseline['label_f1_micro']:.4f}, label_f1_macro {baseline['label_f1_macro']:.4f}, "
            f'bleu4 {baseline["bleu4"]:.4f}. The report: "{baseline["report"]}"'
        )
        if f"best_{metric}" in table and metric in baseline and not by_method.empty:
            lines.append("")
            for _, row in by_method.iterrows():
                beat = (
                    row[f"best_{metric}"] > baseline[metric]
                    if mode == "max"
                    else row[f"best_{metric}"] < baseline[metric]
                )
                lines.append(
                    f"- best {row['config/method']}: {metric} {row[f'best_{metric}']:.4f} "
                    f"{'beats' if beat else 'does NOT beat'} the baseline's {baseline[metric]:.4f}"
                )
    failed = table[table["status"] == "ERROR"] if "status" in table else table.iloc[0:0]
    lines += ["", "## Failed or unfinished trials", ""]
    unfinished = table[table["status"] != "TERMINATED"] if "status" in table else table.iloc[0:0]
    if unfinished.empty:
        lines.append("None: every trial finished.")
    for _, row in unfinished.iterrows():
        lines.append(
            f"- {row['trial_id']} ({row['variant']}): {row['status']}"
            + (f": {row['error']}" if row["trial_id"] in set(failed["trial_id"]) else "")
        )
    methods = set(table.get("config/method", pd.Series(dtype=object)).dropna())
    for method in ("fft", "lora"):
        if method not in methods:
            lines.append(f"- no {method} trial in this sweep: the comparison is one-sided")
    return "\n".join(lines) + "\n"
