"""Plan before spending: every trial's model built (as a skeleton on the meta device, exact parameter
counts, no weights in memory), nothing trained; parameter counts and estimated training memory.

Estimated training memory = weights + gradients + AdamW state (two moments), in MB (2**20 bytes):

- ``fp32``: 4 bytes per weight, 4 per trainable gradient, 8 per trainable parameter of AdamW state;
- ``bf16``: 2 bytes per weight, 2 per trainable gradient, 8 per trainable parameter (fp32 AdamW moments).

Activations are not included (they depend on batch size and sequence length; see bench.method_cost).
"""

from __future__ import annotations

import pandas as pd

from cxr_core.config import trial_config
from cxr_core.model import apply_method, method_spec, model_skeleton, parameter_counts

PLAN_COLUMNS = ("trial", "arm", "method", "target_modules", "r", "lora_alpha", "freeze", "lr", "seed",
                "trainable_params", "total_params", "trainable_pct", "est_train_memory_mb",
                "est_train_memory_mb_bf16")  # fmt: skip


def estimated_memory_mb(trainable: int, total: int, *, dtype: str = "fp32") -> float:
    weight_bytes, grad_bytes = (4, 4) if dtype == "fp32" else (2, 2)
    return (total * weight_bytes + trainable * (grad_bytes + 8)) / 2**20


def plan_table(configs: list[dict], *, model: str | None = None) -> pd.DataFrame:
    """One row per resolved trial config (see :data:`PLAN_COLUMNS`); ``model`` overrides every trial's."""
    rows = []
    for i, raw in enumerate(configs):
        cfg = trial_config({**raw, "model": model} if model else raw)
        skeleton = model_skeleton(cfg.model)
        if skeleton is None:
            from cxr_core.errors import CxrError

            raise CxrError(
                f"cannot build {cfg.model} offline for planning; pass --model arch:git-base or a folder"
            )
        built = apply_method(skeleton, method_spec(cfg))
        trainable, total = parameter_counts(built)
        lora = cfg.method == "lora"
        targets = cfg.lora.target_modules
        rows.append(
            {
                "trial": i,
                "arm": cfg.name,
                "method": cfg.method,
                "target_modules": (targets if isinstance(targets, str) else ",".join(targets)) if lora else "",
                "r": cfg.lora.r if lora else None,
                "lora_alpha": cfg.lora_alpha if lora else None,
                "freeze": cfg.fft.freeze if not lora else "",
                "lr": cfg.train.lr,
                "seed": cfg.train.seed,
                "trainable_params": trainable,
                "total_params": total,
                "trainable_pct": 100.0 * trainable / total,
                "est_train_memory_mb": estimated_memory_mb(trainable, total),
                "est_train_memory_mb_bf16": estimated_memory_mb(trainable, total, dtype="bf16"),
            }
        )
    return pd.DataFrame(rows, columns=list(PLAN_COLUMNS))
