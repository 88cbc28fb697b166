"""The report folder of a sweep: trials.csv, epochs.csv, summary.md and diagrams, written atomically
(into a temporary folder that replaces the previous report only when everything succeeded)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from cxr_core import analysis, plots
from cxr_core.errors import CxrError


def _baseline(epochs) -> dict | None:
    """The constant baseline on the sweep's own data (the split folder named in its config)."""
    from cxr_core.prepare import read_split

    if "config/data/split_dir" not in epochs:
        return None
    split_dir = epochs["config/data/split_dir"].dropna().iloc[0]
    uncertain = epochs.get("config/evaluation/uncertain")
    policy = uncertain.dropna().iloc[0] if uncertain is not None and uncertain.notna().any() else "negative"
    try:
        train = read_split(split_dir, "train")["mini_report"].fillna("").tolist()
        val = read_split(split_dir, "val")
    except CxrError:
        return None
    max_val = epochs.get("config/data/max_val")
    limit = int(max_val.dropna().iloc[0]) if max_val is not None and max_val.notna().any() else 0
    if limit:
        val = val.head(limit)
    return analysis.constant_baseline(train, val["mini_report"].fillna("").tolist(), uncertain=policy)


def write_report(results: str | Path, *, out: str | Path | None = None, metric: str = "label_f1_micro",
                 mode: str = "max") -> Path:  # fmt: skip
    """Analyse ``results`` (a sweep folder) and write its report folder; returns the folder."""
    from cxr_core.tune_runner import results_frame

    results = Path(results)
    out = Path(out) if out else results / "report"
    epochs = results_frame(results)
    table = analysis.trials_table(epochs, metric=metric, mode=mode)
    baseline = _baseline(epochs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out.parent))
    try:
        epochs.to_csv(tmp / "epochs.csv", index=False)
        table.to_csv(tmp / "trials.csv", index=False)
        (tmp / "summary.md").write_text(
            analysis.summary_markdown(table, metric=metric, mode=mode, baseline=baseline, name=results.name)
        )
        if baseline is not None:
            (tmp / "baseline.json").write_text(
                json.dumps({k: v for k, v in baseline.items() if k != "per_label"})
            )
        kinds = table.get("peak_mem_kind")
        kind = str(kinds.dropna().iloc[0]) if kinds is not None and kinds.notna().any() else ""
        if "val_loss" in epochs:
            plots.val_loss_curves(epochs, tmp)
        if f"best_{metric}" in table:
            plots.quality_vs_params(
                table, tmp, metric=metric, baseline=baseline.get(metric) if baseline else None
            )
        if "peak_mem_mb" in table:
            plots.cost_per_method(table, tmp, memory_kind=kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
    return out
