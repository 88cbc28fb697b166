"""Comparison diagrams (PNG, titled, axes labeled with units) from the tidy epoch rows and the trial table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cxr_core.analysis import variant_label  # noqa: E402

COLORS = {"fft": "tab:red", "lora:vision": "tab:blue", "lora:text": "tab:green", "lora:all_linear": "tab:purple",
          "lora:attention": "tab:orange", "lora:mlp": "tab:brown"}  # fmt: skip


def _color(variant: str) -> str:
    return COLORS.get(variant, "tab:gray")


def val_loss_curves(epochs: pd.DataFrame, out: Path) -> Path:
    """Validation loss per epoch, one line per trial, coloured by method/preset."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    seen = set()
    for _, group in epochs.dropna(subset=["val_loss"]).groupby("trial_id"):
        group = group.sort_values("epoch")
        variant = variant_label(group.iloc[0])
        ax.plot(group["epoch"], group["val_loss"], marker="o", color=_color(variant),
                label=variant if variant not in seen else None, alpha=0.8)  # fmt: skip
        seen.add(variant)
    ax.set(title="Validation loss per epoch: FFT vs LoRA", xlabel="epoch",
           ylabel="validation loss (mean token cross-entropy, nats)")  # fmt: skip
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out / "val_loss_curves.png")


def quality_vs_params(table: pd.DataFrame, out: Path, *, metric: str, baseline: float | None = None) -> Path:
    """Best ``metric`` of each trial against its trainable parameters (log x)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    col = f"best_{metric}"
    done = table.dropna(subset=[col, "trainable_params"])
    for variant, group in done.groupby("variant"):
        ax.scatter(group["trainable_params"], group[col], color=_color(variant), label=variant, s=40)
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label="constant baseline")
    ax.set_xscale("log")
    ax.set(title=f"Quality vs trainable parameters ({metric}, validation)",
           xlabel="trainable parameters (count, log scale)", ylabel=f"{metric} (0-1)")  # fmt: skip
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, out / "quality_vs_trainable_params.png")


def cost_per_method(table: pd.DataFrame, out: Path, *, memory_kind: str = "") -> Path:
    """Peak memory and wall time per method/preset (mean over trials, with min-max whiskers)."""
    done = table.dropna(subset=["peak_mem_mb", "wall_seconds"])
    stats = done.groupby("variant").agg(
        mem=("peak_mem_mb", "mean"), mem_min=("peak_mem_mb", "min"), mem_max=("peak_mem_mb", "max"),
        wall=("wall_seconds", "mean"), wall_min=("wall_seconds", "min"), wall_max=("wall_seconds", "max"),
    )  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    x = range(len(stats))
    colors = [_color(v) for v in stats.index]
    for ax, key, unit in ((axes[0], "mem", "peak memory (MB)"), (axes[1], "wall", "wall time per trial (s)")):
        err = [stats[key] - stats[f"{key}_min"], stats[f"{key}_max"] - stats[key]]
        ax.bar(x, stats[key], color=colors, yerr=err, capsize=4)
        ax.set_xticks(list(x), stats.index, rotation=20, fontsize=8)
        ax.set(ylabel=unit, xlabel="method / LoRA preset")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_title("Peak memory per method" + (f"\n({memory_kind})" if memory_kind else ""), fontsize=10)
    axes[1].set_title("Wall time per method", fontsize=10)
    fig.suptitle("Cost per method (mean over trials, whiskers min-max)")
    return _save(fig, out / "cost_per_method.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
