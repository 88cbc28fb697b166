"""Test evaluation: the best checkpoint of each method (chosen on validation) scored on a held-out split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr_core.cache import resolve_cache_dir
from cxr_core.config import trial_config
from cxr_core.dataset import load_split
from cxr_core.errors import CxrError
from cxr_core.model import load_processor
from cxr_core.prepare import atomic_write_csv
from cxr_core.records import save_records
from cxr_core.trial import device_for, evaluate_model, load_checkpoint_model


def evaluate_best(
    results: str | Path,
    *,
    split: str = "test",
    metric: str | None = None,
    mode: str | None = None,
    group_by: str = "method",
    out: str | Path,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate, on ``split``, the best checkpoint of every seed of each group's best configuration (all
    chosen on validation). Writes ``{split}_metrics.csv`` (one row per evaluated checkpoint: group,
    config_id, trial_id, seed, every metric) and ``{split}_per_label.csv`` (checkpoint x label: precision,
    recall, F1, support) into ``out``, and each checkpoint's per-image records as
    ``{split}_records/<trial_id>.npz`` (see :mod:`cxr_core.records`): the analysis compares the groups on
    them, paired over the same images."""
    from cxr_core.tune_runner import best_checkpoints, load_results, resolve_objective

    grid = load_results(results)
    metric, mode, _ = resolve_objective(grid, metric, mode)  # None: the sweep's own metric and mode
    picks = best_checkpoints(results, metric=metric, mode=mode, group_by=group_by, grid=grid)
    if not picks:
        raise CxrError(f"{results}: no trial has a checkpoint with metric {metric!r} yet; nothing to evaluate")
    rows, label_rows = [], []
    loaded: dict[tuple, tuple] = {}  # (model, split folder, image root) -> (processor, data): read once
    for pick in picks:
        cfg = trial_config(pick["config"])
        key = (cfg.model, cfg.data.split_dir, cfg.data.image_root)
        if key not in loaded:
            processor = load_processor(cfg.model)
            data = load_split(cfg.data.split_dir, split, image_root=cfg.data.image_root, processor=processor,
                              policy=cfg.data.image_policy, cache_dir=resolve_cache_dir(cfg.data.cache_dir))  # fmt: skip
            loaded[key] = (processor, data)
        processor, data = loaded[key]
        device = device_for(cfg)
        model = load_checkpoint_model(cfg, Path(pick["checkpoint_path"])).to(device)
        metrics, _, records = evaluate_model(
            model, processor, data, evaluation=cfg.evaluation, device=device, precision=cfg.train.precision
        )
        save_records(records, Path(out) / f"{split}_records" / f"{pick['trial_id']}.npz")
        per_label = metrics.pop("per_label")
        metrics[f"{split}_loss"] = metrics.pop("val_loss")
        ident = {k: pick[k] for k in ("group", "config_id", "trial_id", "seed")}
        rows.append({**ident, "checkpoint": pick["checkpoint_path"], f"val_{metric}": pick[f"val_{metric}"],
                     "n": len(data), **metrics})  # fmt: skip
        for label, values in per_label.items():
            label_rows.append({**ident, "label": label, **values})
    table, labels = pd.DataFrame(rows), pd.DataFrame(label_rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(table, out / f"{split}_metrics.csv")
    atomic_write_csv(labels, out / f"{split}_per_label.csv")
    return table, labels
