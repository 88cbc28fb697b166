"""The report folder of a sweep: trials.csv, epochs.csv, configs.csv, summary.md and the diagrams, written
atomically (into a temporary folder that replaces the previous report only when everything succeeded).

jobs.evaluate's test tables (``test_metrics.csv``, ``test_per_label.csv``) found in the previous report or in
``RESULTS/report`` are carried into the new one and shown in summary.md as test numbers.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from cxr_core import analysis, comparison, methods, plots
from cxr_core.errors import CxrError

log = logging.getLogger(__name__)

EVALUATED = ("test_metrics.csv", "test_per_label.csv", "val_metrics.csv", "val_per_label.csv")
EVALUATED_DIRS = ("test_records", "val_records")  # jobs.evaluate's per-image records
TARGET_SCALE = "arch:git-base"  # the study's target model, for planned cost figures


def _setting(frame: pd.DataFrame, col: str, default):
    """The first value of a ``config/...`` column (equal for every arm, see the protocol check), or ``default``."""
    values = frame.get(col)
    return values.dropna().iloc[0] if values is not None and values.notna().any() else default


def _baseline(epochs) -> dict | None:
    """The constant baseline on the sweep's own data (the split folder named in its config)."""
    from cxr_core.prepare import read_split

    split_dir = _setting(epochs, "config/data/split_dir", None)
    if split_dir is None:
        return None
    try:
        train = read_split(split_dir, "train")["mini_report"].fillna("").tolist()
        val = read_split(split_dir, "val")
    except (CxrError, OSError):
        return None
    limit = int(_setting(epochs, "config/data/max_val", 0))
    if limit:
        val = val.head(limit)
    policy = _setting(epochs, "config/evaluation/uncertain", "negative")
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
    for name in EVALUATED_DIRS:
        for folder in sources:
            if (folder / name).is_dir():
                shutil.copytree(folder / name, dest / name)
                break
    return found


def _arm(row) -> dict:
    """A configuration row's ``config/...`` settings as the nested arm dict a trial was built from."""
    arm: dict = {}
    for col, value in row.items():
        if not str(col).startswith("config/") or analysis._isnan(value):
            continue
        keys = str(col).removeprefix("config/").split("/")
        node = arm
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if keys[-1] == "target_modules" and isinstance(value, str) and "," in value:
            value = value.split(",")
        value = value.item() if hasattr(value, "item") else value
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # CSV and pandas turn integer settings (r, epochs) into floats
        node[keys[-1]] = value
    return arm


def planned_cost(configs: pd.DataFrame, *, metric: str, mode: str, model: str = TARGET_SCALE) -> dict | None:
    """Trainable parameters and planned training memory of each method's best configuration at the study's target
    scale (:mod:`cxr_core.plan`): ``{"model", "methods": {method: {"trainable", "memory_mb"}}}``. None when the
    sweep has no reference (FFT) and other method to compare, already ran a large model, or a plan fails."""
    from cxr_core.plan import plan_table

    rows = analysis.best_config_per(configs, analysis.METHOD, metric=metric, mode=mode)
    best = {r[analysis.METHOD]: r for _, r in rows.iterrows()}
    order = [m.name for m in methods.registered() if m.name in best]
    ref = methods.reference().name
    if ref not in best or len(order) < 2:
        return None
    if str(best[ref].get("config/model", "embedded")) not in ("embedded", "nan"):
        return None  # the sweep's own model is the scale to read: its measured cost is the answer
    try:
        plan = plan_table([_arm(best[m]) for m in order], model=model)
    except (CxrError, ValueError, TypeError, KeyError):
        return None
    return {
        "model": model.removeprefix("arch:"),
        "methods": {
            m: {"trainable": int(row["trainable_params"]), "memory_mb": float(row["est_train_memory_mb"])}
            for m, (_, row) in zip(order, plan.iterrows(), strict=True)
        },
    }


def _paired(table, configs, test, folder: Path, *, epochs, metric, mode, margin, n_boot) -> dict:
    """Bootstrap intervals and paired comparisons from the per-image records (validation: each trial's best
    epoch; test: jobs.evaluate's records in ``folder``); empty when the sweep wrote no records."""
    split_dir = _setting(epochs, "config/data/split_dir", None)
    uncertain = _setting(epochs, "config/evaluation/uncertain", "negative")
    out = {
        "configs": configs,
        "comparisons": comparison.comparisons_frame([]),
        "test_intervals": None,
        "sparse": [],
        "split": None,
    }
    if split_dir is None:
        return out
    try:
        val = comparison.validation_split(configs, comparison.trial_records(table), split_dir=split_dir,
                                          uncertain=uncertain, n_boot=n_boot)  # fmt: skip
        tst = None
        if test is not None and not test.empty:
            tst = comparison.test_split(test, folder, split_dir=split_dir, uncertain=uncertain, n_boot=n_boot)
    except (CxrError, OSError) as exc:
        log.warning("paired statistics skipped: %s", exc)
        return out
    extra = [m for m in ("label_f1_macro",) if m != metric]
    rows = comparison.validation_comparisons(configs, val, metric=metric, mode=mode, margin=margin,
                                             extra_metrics=extra)  # fmt: skip
    best = analysis.best_config_per(configs, analysis.METHOD, metric=metric, mode=mode)
    best = dict(zip(best[analysis.METHOD], best["config_id"].astype(str), strict=True))
    rows += comparison.test_comparisons(tst, test, best=best, metric=metric, margin=margin,
                                        extra_metrics=extra)  # fmt: skip
    out["configs"] = comparison.with_bootstrap_intervals(configs, val)
    out["comparisons"] = comparison.comparisons_frame(rows)
    out["sparse"] = val.sparse() if val is not None else []
    out["split"] = val  # the across-model ratios are paired over its images
    if tst is not None:
        shown = (metric, "label_f1_macro", "label5_f1_macro", "unparsed_rate")
        pairs = dict.fromkeys(zip(test["group"].astype(str), test["config_id"].astype(str), strict=True))
        out["test_intervals"] = {g: {m: tst.interval(c, m) for m in shown} for g, c in pairs if c in tst.seeds}
    return out


def write_report(
    results: str | Path,
    *,
    out: str | Path | None = None,
    metric: str | None = None,
    mode: str | None = None,
    margin: float = 0.02,
    n_boot: int = 1000,
) -> Path:
    """Analyse ``results`` (a sweep folder or a storage URI) and write its report folder.

    Args:
        results: ``ray_results/NAME`` or a URI such as ``s3://bucket/ray_results/NAME``.
        out: report folder (default :func:`default_out`).
        metric, mode: the validation metric that picks each trial's best epoch and each method's best
            configuration; None = the sweep's own (see :func:`cxr_core.tune_runner.resolve_objective`).
        margin: the equivalence margin of the paired verdicts (absolute, on the metric).
        n_boot: bootstrap resamples for the intervals and comparisons.

    Returns:
        The report folder.

    Raises:
        CxrError: the results do not exist or hold no trial.
    """
    from cxr_core.tune_runner import results_frame

    text = str(results)
    name = text.rstrip("/").rsplit("/", 1)[-1]
    out = Path(out) if out else default_out(text)
    from cxr_core.tune_runner import fault_lines, gpu_fallback_line, load_results, resolve_objective

    grid = load_results(text)
    metric, mode, source = resolve_objective(grid, metric, mode)
    epochs = results_frame(text, grid=grid)
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
        paired = _paired(table, configs, evaluated.get("test_metrics.csv"), tmp, epochs=epochs, metric=metric,
                         mode=mode, margin=margin, n_boot=n_boot)  # fmt: skip
        configs = paired["configs"]
        scale = analysis.across_scales(configs, metric=metric, mode=mode, split=paired["split"])
        if scale is not None:  # a sweep over two or more models
            scale.table.to_csv(tmp / "scale.csv", index=False)
        epochs.to_csv(tmp / "epochs.csv", index=False)
        table.to_csv(tmp / "trials.csv", index=False)
        configs.to_csv(tmp / "configs.csv", index=False)
        paired["comparisons"].to_csv(tmp / "comparisons.csv", index=False)
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
            comparisons=paired["comparisons"],
            margin=margin,
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
            comparisons=paired["comparisons"],
            test_intervals=paired["test_intervals"],
            planned=planned_cost(configs, metric=metric, mode=mode),
            margin=margin,
            sparse=paired["sparse"],
            n_boot=n_boot,
            epochs=epochs,
            metric_source=source,
            scale=scale,
        )
        fallback = gpu_fallback_line(grid)  # given a GPU share, trained on the CPU: said before the verdicts
        if fallback:
            summary = summary.replace("\n## Verdict\n", f"\n**Devices:** {fallback}.\n\n## Verdict\n", 1)
        survived = fault_lines(grid)  # retries after a failure, damaged checkpoints skipped at a resume
        if survived:
            summary = (
                summary.rstrip("\n")
                + "\n\n## Faults survived\n\n"
                + "\n".join(f"- {x}" for x in survived)
                + "\n"
            )
        (tmp / "summary.md").write_text(summary)
        objective = {"metric": metric, "mode": mode, "source": source}
        (tmp / "objective.json").write_text(json.dumps(objective, indent=1) + "\n")
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


def answer_lines(report: Path, metric: str | None = None) -> list[str]:
    """The study's answer in a few lines, from a written report folder: the paired verdicts of each method's best
    against FFT's (test, then validation) on ``metric`` (default: the one the report chose by, objective.json),
    each method's share of FFT's quality and its cost (measured here and planned at git-base); in a sweep over
    several models, whether each method's gap to FFT changes with scale."""
    if metric is None:
        metric = json.loads((Path(report) / "objective.json").read_text())["metric"]
    lines = []
    comparisons = pd.read_csv(Path(report) / "comparisons.csv")
    main = comparisons[
        comparisons["kind"].isin(comparison.reference_kinds()) & (comparisons["metric"] == metric)
    ]
    for split in ("test", "val"):
        lines += main[main["split"] == split]["sentence"].tolist()
    summary = (Path(report) / "summary.md").read_text()

    def section(title: str) -> list[str]:
        """The lines of the summary's section ``title`` (none when it has no such section)."""
        head = f"\n## {title}\n"
        return summary.split(head, 1)[1].split("\n## ", 1)[0].splitlines() if head in summary else []

    starts = tuple(f"- The best {m.title} configuration" for m in methods.compared()) + ("- Planned at",)
    lines += [x[2:].split(" For what the methods cost")[0] for x in section("Verdict") if x.startswith(starts)]
    # A sweep over several models: whether each method's gap to FFT changes with scale (its last sentences).
    lines += [x[2:] for x in section("Across model scales") if x.startswith("- The gap ")]
    return lines


def report_files(report: Path) -> str:
    """Where to read on: the summary and the diagrams of a report folder, in one line."""
    pngs = sorted(p.name for p in Path(report).glob("*.png"))
    return f"summary: {Path(report) / 'summary.md'}; diagrams ({len(pngs)}) in {report}/: {', '.join(pngs)}"
