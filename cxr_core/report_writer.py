"""The report folder of a sweep: trials.csv, epochs.csv, configs.csv, summary.md and the diagrams, written
atomically (into a temporary folder that replaces the previous report only when everything succeeded).

jobs.evaluate's test tables (``test_metrics.csv``, ``test_per_label.csv``) found in the previous report or in
``RESULTS/report`` are carried into the new one and shown in summary.md as test numbers.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from cxr_core import analysis, plots
from cxr_core.errors import CxrError

EVALUATED = ("test_metrics.csv", "test_per_label.csv", "val_metrics.csv", "val_per_label.csv")


def _baseline(epochs) -> dict | None:
    """The constant baseline on the sweep's own data (the split folder named in its config)."""
    from cxr_core.prepare import read_split

    if "config/data/split_dir" not in epochs or epochs["config/data/split_dir"].dropna().empty:
        return None
    split_dir = epochs["config/data/split_dir"].dropna().iloc[0]
    uncertain = epochs.get("config/evaluation/uncertain")
    policy = uncertain.dropna().iloc[0] if uncertain is not None and uncertain.notna().any() else "negative"
    try:
        train = read_split(split_dir, "train")["mini_report"].fillna("").tolist()
        val = read_split(split_dir, "val")
    except (CxrError, OSError):
        return None
    max_val = epochs.get("config/data/max_val")
    limit = int(max_val.dropna().iloc[0]) if max_val is not None and max_val.notna().any() else 0
    if limit:
        val = val.head(limit)
    return analysis.constant_baseline(train, val["mini_report"].fillna("").tolist(), uncertain=policy)


def _is_uri(path: str) -> bool:
    return "://" in path


def default_out(results: str | Path) -> Path:
    """``RESULTS/report`` for a local folder; ``./NAME-report`` for a storage URI (``s3://bucket/NAME``)."""
    text = str(results)
    if _is_uri(text):
        return Path(f"{text.rstrip('/').rsplit('/', 1)[-1]}-report")
    return Path(text) / "report"


def _carry_evaluated(sources: list[Path], dest: Path) -> dict[str, pd.DataFrame]:
    """Copy jobs.evaluate's CSVs from the first source folder that has them; returns them read."""
    found = {}
    for name in EVALUATED:
        for folder in sources:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, dest / name)
                found[name] = pd.read_csv(dest / name)
                break
    return found


def write_report(
    results: str | Path, *, out: str | Path | None = None, metric: str = "label_f1_micro", mode: str = "max"
) -> Path:
    """Analyse ``results`` (a sweep folder or a storage URI) and write its report folder.

    Args:
        results: ``ray_results/NAME`` or a URI such as ``s3://bucket/ray_results/NAME``.
        out: report folder (default :func:`default_out`).
        metric, mode: the validation metric that picks each trial's best epoch and each method's best
            configuration.

    Returns:
        The report folder.

    Raises:
        CxrError: the results do not exist or hold no trial.
    """
    from cxr_core.tune_runner import results_frame

    text = str(results)
    name = text.rstrip("/").rsplit("/", 1)[-1]
    out = Path(out) if out else default_out(text)
    epochs = results_frame(text)
    if "epoch" in epochs and metric not in epochs:
        known = sorted(
            c
            for c in epochs.columns
            if not c.startswith("config/") and pd.api.types.is_numeric_dtype(epochs[c])
        )
        raise CxrError(
            f"metric {metric!r} is not in the results of {text}; pass --metric one of: {', '.join(known)}"
        )
    table = analysis.trials_table(epochs, metric=metric, mode=mode)
    configs = analysis.configs_table(table)
    table = analysis.with_config_ids(table, configs)
    epochs = analysis.with_config_ids(epochs, configs)
    baseline = _baseline(epochs)
    kinds = table.get("peak_mem_kind")
    kind = str(kinds.dropna().iloc[0]) if kinds is not None and kinds.notna().any() else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a report is for everyone who can read the results
    try:
        sources = [out] + ([Path(text) / "report"] if not _is_uri(text) else [])
        evaluated = _carry_evaluated(sources, tmp)
        epochs.to_csv(tmp / "epochs.csv", index=False)
        table.to_csv(tmp / "trials.csv", index=False)
        configs.to_csv(tmp / "configs.csv", index=False)
        if baseline is not None:
            (tmp / "baseline.json").write_text(
                json.dumps({k: v for k, v in baseline.items() if k != "per_label"})
            )
        diagrams = plots.draw_all(
            epochs,
            configs,
            tmp,
            metric=metric,
            mode=mode,
            memory_kind=kind,
            baseline=baseline.get(metric) if baseline else None,
        )
        summary = analysis.summary_markdown(
            table,
            metric=metric,
            mode=mode,
            baseline=baseline,
            name=name,
            configs=configs,
            test=evaluated.get("test_metrics.csv"),
            test_per_label=evaluated.get("test_per_label.csv"),
            results=text,
            diagrams=diagrams,
        )
        (tmp / "summary.md").write_text(summary)
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
