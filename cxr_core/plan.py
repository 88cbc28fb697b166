"""Plan before spending: every trial's model built (as a skeleton on the meta device, exact parameter
counts, no weights in memory), nothing trained; parameter counts and estimated training memory.

Estimated training memory = weights + gradients + AdamW state (two moments), in MB (2**20 bytes):

- ``fp32``: 4 bytes per weight, 4 per trainable gradient, 8 per trainable parameter of AdamW state;
- ``bf16``: 2 bytes per weight, 2 per trainable gradient, 8 per trainable parameter (fp32 AdamW moments).

Activations are not included (they depend on batch size and sequence length; see bench.method_cost).
"""

from __future__ import annotations

import pandas as pd

from cxr_core import methods
from cxr_core.config import to_dict, trial_config
from cxr_core.model import model_skeleton, parameter_counts

# The method columns come from the registry: each method fills its own (FFT's freeze, LoRA's rank), the rest of a
# row leaves them empty.
PLAN_COLUMNS = ("trial", "arm", "model", "method", *methods.plan_columns(), "lr", "seed", "trainable_params",
                "total_params", "trainable_pct", "est_train_memory_mb", "est_train_memory_mb_bf16")  # fmt: skip


def estimated_memory_mb(trainable: int, total: int, *, dtype: str = "fp32") -> float:
    weight_bytes, grad_bytes = (4, 4) if dtype == "fp32" else (2, 2)
    return (total * weight_bytes + trainable * (grad_bytes + 8)) / 2**20


def plan_table(configs: list[dict], *, model: str | None = None) -> pd.DataFrame:
    """One row per resolved trial config (see :data:`PLAN_COLUMNS`); ``model`` overrides every trial's. Each row
    names its trial's model: a space with a model axis (``model: {grid_search: [...]}``) plans each model's rows
    with that model's own counts and memory.

    A method's columns (:attr:`cxr_core.methods.Method.plan_keys`) are filled on its own rows only: FFT's
    ``freeze`` is blank on a LoRA row, LoRA's rank on an FFT row.
    """
    rows = []
    for i, raw in enumerate(configs):
        cfg = trial_config({**raw, "model": model} if model else raw)
        method = cfg.adaptation
        built = method.wrap(model_skeleton(cfg.model), cfg.method_settings)  # a fresh skeleton: wrap changes it
        trainable, total = parameter_counts(built)
        rows.append(
            {
                "trial": i,
                "arm": cfg.name,
                "model": cfg.model,
                "method": cfg.method,
                **method.plan_row(method.from_arm(to_dict(cfg))),
                "lr": cfg.train.lr,
                "seed": cfg.train.seed,
                "trainable_params": trainable,
                "total_params": total,
                "trainable_pct": 100.0 * trainable / total,
                "est_train_memory_mb": estimated_memory_mb(trainable, total),
                "est_train_memory_mb_bf16": estimated_memory_mb(trainable, total, dtype="bf16"),
            }
        )
    table = pd.DataFrame(rows, columns=list(PLAN_COLUMNS))
    for col in methods.plan_columns():  # text columns (and a column no row fills): blank on the other rows
        if not pd.api.types.is_numeric_dtype(table[col]) or table[col].isna().all():
            table[col] = table[col].fillna("")
    return table
