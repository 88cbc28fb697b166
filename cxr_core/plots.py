"""Comparison diagrams (PNG, titled, axes labeled with units) from the tidy epoch rows, the trial table and the
configuration table of :mod:`cxr_core.analysis`.

Each figure function writes one file and returns its path, or raises :class:`NotDrawn` with the reason when
the results cannot support it (no LoRA trial, one learning rate, ...); :func:`draw_all` collects both.
Intervals are 95% t intervals over seeds (see :func:`cxr_core.analysis.mean_interval`); a configuration
with one seed is drawn without one.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxr_core import analysis  # noqa: E402
from cxr_core.analysis import LR, METHOD, RANK, TARGETS, best_config_per, stat, variant_label  # noqa: E402
from cxr_core.labels import LABELS  # noqa: E402

COLORS = {
    "fft": "tab:red",
    "lora:vision": "tab:blue",
    "lora:text": "tab:green",
    "lora:all_linear": "tab:purple",
    "lora:attention": "tab:orange",
    "lora:mlp": "tab:brown",
}
MARKERS = "osD^vP*X"
DPI = 120


class NotDrawn(Exception):
    """The results cannot support this figure; the message says why."""


def _color(variant: str) -> str:
    return COLORS.get(variant, "tab:gray")


def _unit(metric: str) -> str:
    return "nats" if "loss" in metric else "0-1"


def _yerr(frame: pd.DataFrame, col: str) -> np.ndarray:
    """(2, N) distances from the mean to the interval ends; 0 where there is no interval (one seed)."""
    mean, lo, hi = (
        frame.get(f"{col}_{k}", pd.Series(math.nan, index=frame.index)).astype(float)
        for k in ("mean", "lo", "hi")
    )
    return np.nan_to_num(np.vstack([mean - lo, hi - mean]), nan=0.0)


def _need(frame: pd.DataFrame, cols, what: str) -> pd.DataFrame:
    missing = [c for c in cols if c not in frame]
    if missing:
        raise NotDrawn(f"no {', '.join(missing)} in the results ({what})")
    done = frame.dropna(subset=list(cols))
    if done.empty:
        raise NotDrawn(f"no configuration has {', '.join(cols)} yet ({what})")
    return done


def _short_config(row) -> str:
    return row["config_id"].removeprefix(f"{row['variant']} ").strip() or row["variant"]


def val_loss_curves(epochs: pd.DataFrame, out: Path) -> Path:
    """Validation loss per epoch, one line per trial, coloured by method/preset."""
    if "val_loss" not in epochs or epochs["val_loss"].dropna().empty:
        raise NotDrawn("no trial has reported val_loss yet")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    seen = set()
    for _, group in epochs.dropna(subset=["val_loss"]).groupby("trial_id"):
        group = group.sort_values("epoch")
        variant = variant_label(group.iloc[0])
        ax.plot(
            group["epoch"],
            group["val_loss"],
            marker="o",
            color=_color(variant),
            label=variant if variant not in seen else None,
            alpha=0.8,
        )
        seen.add(variant)
    ax.set(
        title="Validation loss per epoch, every trial: FFT vs LoRA",
        xlabel="epoch",
        ylabel="validation loss (mean token cross-entropy, nats)",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out / "val_loss_curves.png")


def learning_curves(epochs: pd.DataFrame, configs: pd.DataFrame, out: Path, *, metric: str, mode: str) -> Path:
    """Validation loss and ``metric`` per epoch for the best configuration of each method/preset: the mean over
    seeds, with a band from the lowest to the highest seed."""
    best = best_config_per(configs, "variant", metric=metric, mode=mode)
    if best.empty or "config_id" not in epochs:
        raise NotDrawn("no configuration has reported yet")
    panels = [c for c in dict.fromkeys(("val_loss", metric)) if c in epochs]
    bands = analysis.epoch_bands(epochs[epochs["config_id"].isin(set(best["config_id"]))], panels)
    if bands.empty:
        raise NotDrawn("no per-epoch validation metrics")
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, col in zip(axes[0], panels, strict=True):
        for _, cfg in best.iterrows():
            b = bands[bands["config_id"] == cfg["config_id"]].sort_values("epoch")
            if b.empty:
                continue
            color = _color(cfg["variant"])
            n = int(b[f"{col}_count"].max())
            ax.plot(b["epoch"], b[f"{col}_mean"], marker="o", color=color, label=f"{cfg['config_id']} (n={n})")
            ax.fill_between(b["epoch"], b[f"{col}_min"], b[f"{col}_max"], color=color, alpha=0.18, linewidth=0)
        ylabel = (
            "validation loss (mean token cross-entropy, nats)"
            if col == "val_loss"
            else (f"validation {col} ({_unit(col)})")
        )
        ax.set(title=f"{col} per epoch", xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(
        "Learning curves of the best configuration per method/preset (line: mean over seeds; "
        "band: min-max over seeds)",
        fontsize=10,
    )
    return _save(fig, out / "learning_curves.png")


def metric_vs_lr(configs: pd.DataFrame, out: Path, *, metric: str) -> Path:
    """``metric`` against the learning rate (log x), one line per method/preset and LoRA shape, 95% seed
    intervals as error bars (points of one x are spread a little sideways to stay readable)."""
    col = f"best_{metric}"
    done = _need(configs, [f"{col}_mean", LR], "metric vs learning rate")
    keys = [c for c in analysis.config_columns(done) if c != LR]
    groups = list(done.groupby(keys, dropna=False, sort=False)) if keys else [((), done)]
    fig, ax = plt.subplots(figsize=(9.5, 5))
    spread = np.linspace(-0.05, 0.05, len(groups)) if len(groups) > 1 else [0.0]
    for i, (_, g) in enumerate(groups):
        g = g.sort_values(LR)
        first = g.iloc[0]
        label = _series_label(first)
        x = g[LR].astype(float) * 10 ** spread[i]
        ax.errorbar(
            x,
            g[f"{col}_mean"],
            yerr=_yerr(g, col),
            marker=MARKERS[i % len(MARKERS)],
            capsize=3,
            color=_color(first["variant"]),
            label=label,
            alpha=0.9,
        )
    ax.set_xscale("log")
    ax.set(
        title=f"Validation {metric} vs learning rate, per method (mean over seeds, 95% t interval)",
        xlabel="learning rate (log scale)",
        ylabel=f"validation {metric} ({_unit(metric)})",
    )
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(
        fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method / preset", title_fontsize=8
    )
    return _save(fig, out / "metric_vs_lr.png")


def _series_label(row) -> str:
    parts = [row["variant"]]
    if row.get(METHOD) == "lora":
        parts.append(f"r={analysis._short(row.get(RANK))} a={analysis._short(row.get('lora_alpha_effective'))}")
    return " ".join(parts)


def rank_alpha_heatmap(configs: pd.DataFrame, out: Path, *, metric: str, mode: str) -> Path:
    """LoRA rank x alpha (as trained, 2r when left to the default): the mean ``metric`` of the best
    configuration (over learning rates and other settings) in each cell, one panel per target preset."""
    col = f"best_{metric}_mean"
    lora = (
        configs[configs.get(METHOD, pd.Series(dtype=object)) == "lora"]
        if METHOD in configs
        else configs.iloc[0:0]
    )
    lora = lora.dropna(subset=[col, RANK]) if col in lora and RANK in lora else lora.iloc[0:0]
    if lora.empty:
        raise NotDrawn("no LoRA configuration has reported yet")
    presets = sorted(lora[TARGETS].astype(str).unique())
    ranks = sorted(lora[RANK].astype(float).unique())
    alphas = sorted(lora["lora_alpha_effective"].astype(float).unique())
    vmin, vmax = lora[col].min(), lora[col].max()
    fig, axes = plt.subplots(
        1,
        len(presets),
        figsize=(1.5 + (1.2 + 1.1 * len(alphas)) * len(presets), 1.8 + 0.9 * len(ranks)),
        squeeze=False,
        layout="constrained",
    )
    cmap = plt.get_cmap("viridis" if mode == "max" else "viridis_r").with_extremes(bad="0.9")
    image = None
    for k, (ax, preset) in enumerate(zip(axes[0], presets, strict=True)):
        grid = np.full((len(ranks), len(alphas)), np.nan)
        seeds = np.zeros_like(grid)
        for _, row in lora[lora[TARGETS].astype(str) == preset].iterrows():
            i, j = ranks.index(float(row[RANK])), alphas.index(float(row["lora_alpha_effective"]))
            better = np.isnan(grid[i, j]) or (row[col] > grid[i, j] if mode == "max" else row[col] < grid[i, j])
            if better:
                grid[i, j], seeds[i, j] = row[col], row["n_seeds"]
        image = ax.imshow(
            np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin="lower"
        )
        for i in range(len(ranks)):
            for j in range(len(alphas)):
                if np.isnan(grid[i, j]):
                    ax.text(j, i, "not run", ha="center", va="center", fontsize=8, color="0.4")
                    continue
                shade = cmap(image.norm(grid[i, j]))
                dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.55
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:.3f}\nn={int(seeds[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_yticks(range(len(ranks)), [f"{r:g}" for r in ranks])
        ax.set_title(f"preset {preset}", fontsize=9)
        ax.set_xlabel("LoRA alpha")
        if k == 0:
            ax.set_ylabel("LoRA rank r")
    fig.colorbar(image, ax=axes[0].tolist(), label=f"validation {metric} ({_unit(metric)})", shrink=0.9)
    fig.suptitle(
        f"LoRA rank x alpha: validation {metric}, mean over seeds (best over learning rates; "
        f"alpha = 2r when not set)",
        fontsize=10,
    )
    return _save(fig, out / "lora_rank_alpha_heatmap.png", tight=False)


def target_module_ablation(
    configs: pd.DataFrame, out: Path, *, metric: str, mode: str, baseline: float | None = None
) -> Path:
    """One bar per LoRA target preset (its best configuration) with 95% seed intervals; the best FFT
    configuration as a reference line with its interval as a band."""
    col = f"best_{metric}"
    best = best_config_per(configs, "variant", metric=metric, mode=mode)
    lora = best[best.get(METHOD, pd.Series(dtype=object)) == "lora"] if METHOD in best else best.iloc[0:0]
    if lora.empty:
        raise NotDrawn("no LoRA configuration has reported yet")
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(lora) + 3), 4.8))
    x = np.arange(len(lora))
    ax.bar(
        x,
        lora[f"{col}_mean"],
        yerr=_yerr(lora, col),
        capsize=5,
        color=[_color(v) for v in lora["variant"]],
        alpha=0.85,
    )
    ticks = [
        f"{row[TARGETS]}\n{_short_config(row)}\n{row[f'{col}_mean']:.3f} (n={int(row['n_seeds'])})"
        for _, row in lora.iterrows()
    ]
    ax.set_xticks(x, ticks, fontsize=8)
    fft = best[best[METHOD] == "fft"] if METHOD in best else best.iloc[0:0]
    if len(fft):
        f = stat(fft.iloc[0], col)
        ax.axhline(
            f["mean"],
            color=_color("fft"),
            linewidth=1.5,
            label=f"best FFT ({fft.iloc[0]['config_id']}, n={f['n']}): {f['mean']:.3f}",
        )
        if not math.isnan(f["lo"]):
            ax.axhspan(f["lo"], f["hi"], color=_color("fft"), alpha=0.12, label="FFT 95% interval")
    if baseline is not None:
        ax.axhline(
            baseline, color="black", linestyle="--", linewidth=1, label=f"constant baseline: {baseline:.3f}"
        )
    ax.set(
        title=f"Target-module ablation: validation {metric} per LoRA preset\n(best configuration of each, "
        f"mean over seeds, 95% t interval)",
        xlabel="LoRA target modules (preset)",
        ylabel=f"validation {metric} ({_unit(metric)})",
    )
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out / "target_module_ablation.png")


def _pareto(
    configs: pd.DataFrame,
    out: Path,
    *,
    cost: str,
    xlabel: str,
    name: str,
    metric: str,
    mode: str,
    baseline: float | None,
    logx: bool,
    title: str,
) -> Path:
    col = f"best_{metric}"
    done = _need(configs, [f"{col}_mean", f"{cost}_mean"], title)
    fig, ax = plt.subplots(figsize=(8, 5))
    for variant, group in done.groupby("variant", sort=True):
        ax.errorbar(
            group[f"{cost}_mean"],
            group[f"{col}_mean"],
            yerr=_yerr(group, col),
            fmt="o",
            capsize=3,
            color=_color(variant),
            label=variant,
            alpha=0.9,
        )
    front = done[analysis.pareto_front(done[f"{cost}_mean"], done[f"{col}_mean"], mode=mode)]
    front = front.sort_values(f"{cost}_mean")
    ax.step(front[f"{cost}_mean"], front[f"{col}_mean"], where="post", color="black", linewidth=1, alpha=0.7)
    ax.scatter(
        front[f"{cost}_mean"],
        front[f"{col}_mean"],
        s=160,
        facecolors="none",
        edgecolors="black",
        linewidths=1.2,
        label="Pareto front",
        zorder=3,
    )
    for _, row in front.iterrows():
        ax.annotate(
            row["config_id"],
            (row[f"{cost}_mean"], row[f"{col}_mean"]),
            xytext=(6, -10),
            textcoords="offset points",
            fontsize=7,
        )
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label="constant baseline")
    if logx:
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=f"validation {metric} ({_unit(metric)}), mean over seeds")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, out / name)


def quality_vs_params(
    configs: pd.DataFrame, out: Path, *, metric: str, mode: str = "max", baseline: float | None = None
) -> Path:
    """Pareto view: ``metric`` of every configuration against its trainable parameters (log x), front marked."""
    return _pareto(
        configs,
        out,
        cost="trainable_params",
        xlabel="trainable parameters (count, log scale)",
        name="quality_vs_trainable_params.png",
        metric=metric,
        mode=mode,
        baseline=baseline,
        logx=True,
        title=f"Quality vs trainable parameters: validation {metric}\n(mean over seeds, 95% t interval; "
        f"circled = Pareto front)",
    )


def quality_vs_memory(
    configs: pd.DataFrame,
    out: Path,
    *,
    metric: str,
    mode: str = "max",
    baseline: float | None = None,
    memory_kind: str = "",
) -> Path:
    """Pareto view: ``metric`` of every configuration against its peak memory, front marked."""
    kind = f" ({memory_kind})" if memory_kind else ""
    return _pareto(
        configs,
        out,
        cost="peak_mem_mb",
        xlabel=f"peak memory{kind}, MB (mean over seeds)",
        name="quality_vs_peak_memory.png",
        metric=metric,
        mode=mode,
        baseline=baseline,
        logx=False,
        title=f"Quality vs peak memory: validation {metric}\n(mean over seeds, 95% t interval; "
        f"circled = Pareto front)",
    )


def per_label_f1(configs: pd.DataFrame, out: Path, *, metric: str, mode: str) -> Path:
    """F1 of each of the 14 labels (validation, mean over seeds with 95% intervals) of the best FFT and the best
    LoRA configuration, side by side."""
    best = (
        best_config_per(configs, METHOD, metric=metric, mode=mode) if METHOD in configs else configs.iloc[0:0]
    )
    picks = {row[METHOD]: row for _, row in best.iterrows()}
    if not {"fft", "lora"} <= set(picks):
        raise NotDrawn(f"needs both methods; results have {', '.join(sorted(picks)) or 'none'}")
    cols = [f"best_f1/{label}" for label in LABELS]
    if not all(f"{c}_mean" in configs for c in cols):
        raise NotDrawn("the trials did not report per-label F1 (f1/<Label>)")
    fig, ax = plt.subplots(figsize=(12, 5))
    x = np.arange(len(LABELS))
    for offset, method in ((-0.2, "fft"), (0.2, "lora")):
        row = picks[method]
        means = [row[f"{c}_mean"] for c in cols]
        err = np.nan_to_num(
            np.array([[row[f"{c}_mean"] - row[f"{c}_lo"], row[f"{c}_hi"] - row[f"{c}_mean"]] for c in cols]).T,
            nan=0.0,
        )
        ax.bar(
            x + offset,
            means,
            width=0.4,
            yerr=err,
            capsize=2,
            color=_color(row["variant"]),
            alpha=0.85,
            label=f"best {method.upper()}: {row['config_id']} (n={int(row['n_seeds'])})",
        )
    ax.set_xticks(x, [label.replace("_", " ") for label in LABELS], rotation=35, ha="right", fontsize=8)
    ax.set(
        title="Per-label F1 on validation: best FFT vs best LoRA configuration "
        "(mean over seeds, 95% t interval)",
        xlabel="CheXpert label",
        ylabel="F1 (0-1)",
        ylim=(0, 1.05),
    )
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, out / "per_label_f1.png")


COST_PANELS = (
    ("trainable_params", "trainable parameters", "count, log scale", True),
    ("peak_mem_mb", "peak memory", "MB", False),
    ("train_samples_per_s", "training throughput", "samples/s", False),
    ("train_tokens_per_s", "training throughput", "text tokens/s", False),
    ("wall_seconds", "wall time per trial", "s", False),
    ("checkpoint_mb", "checkpoint size", "MB", False),
)


def cost_per_method(configs: pd.DataFrame, out: Path, *, metric: str, mode: str, memory_kind: str = "") -> Path:
    """The cost table as a figure: for the best configuration of each method/preset, trainable parameters, peak
    memory, throughput, wall time and checkpoint size (mean over seeds, 95% t interval whiskers)."""
    best = best_config_per(configs, "variant", metric=metric, mode=mode)
    panels = [p for p in COST_PANELS if f"{p[0]}_mean" in best]
    if best.empty or not panels:
        raise NotDrawn("no configuration has reported its cost yet")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    x = np.arange(len(best))
    for ax, (col, what, unit, log) in zip(axes.flat, panels, strict=False):
        means = best[f"{col}_mean"].astype(float)
        err = _yerr(best, col)
        ax.bar(x, means, yerr=err, capsize=4, color=[_color(v) for v in best["variant"]], alpha=0.85)
        for xi, v, top in zip(x, means, means + err[1], strict=True):
            if not math.isnan(v):
                text = f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
                ax.annotate(text, (xi, top), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7)
        ax.margins(y=0.12)
        if log:
            ax.set_yscale("log")
        ax.set_xticks(x, best["variant"], rotation=20, fontsize=8)
        ax.set(ylabel=f"{what} ({unit})", xlabel="method / LoRA preset")
        kind = f"\n({memory_kind})" if col == "peak_mem_mb" and memory_kind else ""
        ax.set_title(f"{what} ({unit}){kind}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle("Cost of the best configuration per method/preset (mean over seeds, whiskers 95% t interval)")
    return _save(fig, out / "cost_per_method.png")


def draw_all(
    epochs: pd.DataFrame,
    configs: pd.DataFrame,
    out: Path,
    *,
    metric: str,
    mode: str,
    baseline: float | None = None,
    memory_kind: str = "",
) -> dict[str, str]:
    """Every diagram into ``out``.

    Returns:
        ``{file name: what it shows}``, or ``"not drawn: <reason>"`` for a figure the results cannot support.
    """
    jobs = {
        "metric_vs_lr.png": (
            f"validation {metric} vs learning rate per method (log x), 95% seed intervals",
            lambda: metric_vs_lr(configs, out, metric=metric),
        ),
        "lora_rank_alpha_heatmap.png": (
            f"LoRA rank x alpha heatmap of validation {metric}, one panel per preset",
            lambda: rank_alpha_heatmap(configs, out, metric=metric, mode=mode),
        ),
        "target_module_ablation.png": (
            "one bar per LoRA target preset with 95% intervals, best FFT as reference line",
            lambda: target_module_ablation(configs, out, metric=metric, mode=mode, baseline=baseline),
        ),
        "quality_vs_trainable_params.png": (
            f"Pareto front of validation {metric} vs trainable parameters",
            lambda: quality_vs_params(configs, out, metric=metric, mode=mode, baseline=baseline),
        ),
        "quality_vs_peak_memory.png": (
            f"Pareto front of validation {metric} vs peak memory",
            lambda: quality_vs_memory(
                configs, out, metric=metric, mode=mode, baseline=baseline, memory_kind=memory_kind
            ),
        ),
        "learning_curves.png": (
            f"val loss and {metric} per epoch, best configuration per method/preset, band over seeds",
            lambda: learning_curves(epochs, configs, out, metric=metric, mode=mode),
        ),
        "val_loss_curves.png": ("val loss per epoch of every trial", lambda: val_loss_curves(epochs, out)),
        "per_label_f1.png": (
            "per-label F1 (14 labels) of the best FFT vs the best LoRA configuration",
            lambda: per_label_f1(configs, out, metric=metric, mode=mode),
        ),
        "cost_per_method.png": (
            "trainable params, peak memory, samples/s, tokens/s, wall time and checkpoint size "
            "of the best configuration per method/preset",
            lambda: cost_per_method(configs, out, metric=metric, mode=mode, memory_kind=memory_kind),
        ),
    }
    done = {}
    for name, (what, draw) in jobs.items():
        try:
            draw()
            done[name] = what
        except NotDrawn as exc:
            plt.close("all")
            done[name] = f"not drawn: {exc}"
    return done


def _save(fig, path: Path, *, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight" if not tight else None)
    plt.close(fig)
    tmp.replace(path)
    return path
