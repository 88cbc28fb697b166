"""Comparison diagrams (PNG, titled, axes labeled with units) from the tidy epoch rows, the configuration table
of :mod:`cxr_core.analysis` and its paired comparisons.

Each figure function writes one file and returns its path, or raises :class:`NotDrawn` with the reason when
the results cannot support it (no LoRA trial, one learning rate, ...); :func:`draw_all` collects both. Colours,
names and which settings a method's series show come from :mod:`cxr_core.methods`. The
``*_figure`` builders return the matplotlib figure before it is saved (the tests read its artists).

Whiskers of a quality metric are the interval the configuration table holds for that row (its ``interval``
column): a 95% bootstrap interval over seeds and images, a 95% t interval over seeds, or, with fewer than 3
seeds, the min-max over seeds (drawn dotted when a figure mixes kinds); each title says which kinds it shows.
Whiskers of a cost are the min-max over seeds. Every whisker is kept inside the range its value can take
(F1 and rates in [0, 1], losses and costs >= 0).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullLocator  # noqa: E402
from matplotlib.transforms import offset_copy  # noqa: E402

from cxr_core import analysis  # noqa: E402
from cxr_core import methods as registry  # noqa: E402
from cxr_core.analysis import LR, METHOD, best_config_per, variant_label  # noqa: E402
from cxr_core.analysis.scale import best_per_model  # noqa: E402
from cxr_core.analysis.tables import models  # noqa: E402
from cxr_core.comparison import CONFIG_VS_REFERENCE, PRESET_VS_REFERENCE, reference_kinds  # noqa: E402
from cxr_core.labels import LABELS  # noqa: E402

MARKERS = "osD^vP*X"
DPI = 120
MIN_MAX = "min-max"
# The configuration table's `interval` values, in the words a caption uses.
INTERVAL_WORDS = {
    "bootstrap": "95% bootstrap interval over seeds and images",
    "t": "95% t interval over seeds",
    MIN_MAX: "min-max over seeds (fewer than 3 seeds)",
}
FOREST_KIND = CONFIG_VS_REFERENCE
FOREST_TEST_KINDS = (*reference_kinds(), PRESET_VS_REFERENCE)
# A verdict's words ({a}: the row's method, {b}: the reference) and colour at the right of a forest row.
VERDICT_WORDS = {
    "a_better": ("{a} better", "tab:green"),
    "b_better": ("{b} better", "tab:red"),
    "equivalent": ("equivalent", "0.25"),
    "inconclusive": ("inconclusive", "0.45"),
}
EPOCH_TICKS = 12  # up to this many epochs, one tick per epoch


class NotDrawn(Exception):
    """The results cannot support this figure; the message says why."""


def _color(variant: str) -> str:
    """A variant's (or method's) colour, as its method declares it (:func:`cxr_core.methods.color`)."""
    return registry.color(variant)


def _titles(variants) -> list[str]:
    """The display names of the methods of some variants, in registry order (``["FFT", "LoRA"]``)."""
    found = {registry.method_of_label(v) for v in variants} - {None}
    return [m.title for m in registry.registered() if m in found]


def _unit(metric: str) -> str:
    return "nats" if "loss" in metric else "0-1"


def _lower_is_better(metric: str) -> bool:
    return "loss" in metric or metric.endswith("unparsed_rate")


def _range(col: str) -> tuple[float, float]:
    """The values a quality column can take: a loss is >= 0, F1, BLEU and rates lie in [0, 1]."""
    return (0.0, math.inf) if "loss" in col else (0.0, 1.0)


def _kinds(frame: pd.DataFrame) -> pd.Series:
    """Per row, which interval ``M_lo``/``M_hi`` of a quality metric are: the table's ``interval`` column, or
    for a table without one, min-max below 3 seeds and a t interval from 3."""
    n = pd.to_numeric(frame.get("n_seeds", pd.Series(math.nan, index=frame.index)), errors="coerce")
    inferred = pd.Series(np.where(n >= 3, "t", MIN_MAX), index=frame.index)
    if "interval" not in frame:
        return inferred
    return frame["interval"].where(frame["interval"].notna(), inferred).astype(str)


def _interval_text(kinds: Sequence[str]) -> str:
    """Caption words for the interval kinds a figure shows, e.g. '95% t interval over seeds; min-max over
    seeds (fewer than 3 seeds, dotted)'."""
    seen = set(map(str, kinds))
    present = [k for k in INTERVAL_WORDS if k in seen] + sorted(seen - set(INTERVAL_WORDS))
    words = []
    for kind in present:
        text = INTERVAL_WORDS.get(kind, f"{kind} interval")
        if kind == MIN_MAX and len(present) > 1:
            text = text.replace(")", ", dotted)")
        words.append(text)
    return "; ".join(words) or "no interval"


def _column(frame: pd.DataFrame, col: str) -> np.ndarray:
    """``frame[col]`` as floats; NaN where the column or a value is missing."""
    values = frame.get(col, pd.Series(math.nan, index=frame.index))
    return pd.to_numeric(values, errors="coerce").to_numpy(float)


def _bounds(frame: pd.DataFrame, col: str, *, cost: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Whisker ends of aggregated column ``col`` per row, inside the range the column can take.

    A cost's whiskers are its min-max over seeds; a quality metric's are ``M_lo``/``M_hi``, read from
    ``M_min``/``M_max`` on min-max rows (the same numbers under the table's contract). NaN: no whisker.
    """
    lo, hi = _column(frame, f"{col}_lo"), _column(frame, f"{col}_hi")
    if f"{col}_min" in frame and f"{col}_max" in frame:
        use = np.ones(len(frame), bool) if cost else (_kinds(frame) == MIN_MAX).to_numpy()
        lo = np.where(use, _column(frame, f"{col}_min"), lo)
        hi = np.where(use, _column(frame, f"{col}_max"), hi)
    floor, ceil = (0.0, math.inf) if cost else _range(col)
    return np.clip(lo, floor, ceil), np.clip(hi, floor, ceil)


def _whiskers(
    ax, x, mean, lo, hi, kinds: Sequence[str] | None = None, *, color="black", horizontal=False, capsize=3
) -> list:
    """Error bars from ``lo`` to ``hi`` around ``mean`` at positions ``x`` (none where a value is NaN);
    min-max ones dotted when ``kinds`` are given. Returns the ErrorbarContainers."""
    x, mean, lo, hi = (np.asarray(a, dtype=float) for a in (x, mean, lo, hi))
    kinds = np.asarray([""] * len(x) if kinds is None else list(kinds), dtype=object)
    ok = np.isfinite(x) & np.isfinite(mean) & np.isfinite(lo) & np.isfinite(hi)
    drawn = []
    for kind in dict.fromkeys(kinds[ok]):
        m = ok & (kinds == kind)
        err = np.vstack([np.maximum(mean[m] - lo[m], 0.0), np.maximum(hi[m] - mean[m], 0.0)])
        xy, key = ((mean[m], x[m]), "xerr") if horizontal else ((x[m], mean[m]), "yerr")
        bars = ax.errorbar(*xy, **{key: err}, fmt="none", ecolor=color, capsize=capsize, elinewidth=1.2)
        if kind == MIN_MAX:
            bars.lines[2][0].set_linestyle(":")
        drawn.append(bars)
    return drawn


def _artists(containers: list) -> list:
    return [a for c in containers for a in (*c.lines[1], *c.lines[2]) if a is not None]


def _wrap(text: str, *, width: int = 90) -> str:
    """Each line of a title folded at ``width`` characters (a title wider than its figure is cut off)."""
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


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


def _epoch_axis(ax, epochs) -> None:
    """Whole epochs only: a tick at every epoch run (up to EPOCH_TICKS of them), else integer ticks."""
    values = sorted({int(e) for e in pd.to_numeric(pd.Series(list(epochs)), errors="coerce").dropna()})
    if 0 < len(values) <= EPOCH_TICKS:
        ax.set_xticks(values)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_minor_locator(NullLocator())


def val_loss_curves_figure(epochs: pd.DataFrame) -> Figure:
    """The figure of :func:`val_loss_curves`, not yet saved."""
    if "val_loss" not in epochs or epochs["val_loss"].dropna().empty:
        raise NotDrawn("no trial has reported val_loss yet")
    reported = epochs.dropna(subset=["val_loss"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    seen = set()
    for _, group in reported.groupby("trial_id"):
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
    _epoch_axis(ax, reported["epoch"])
    ax.set(
        title=f"Validation loss per epoch, every trial: {' vs '.join(_titles(seen))}",
        xlabel="epoch",
        ylabel="validation loss (mean token cross-entropy, nats)",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def val_loss_curves(epochs: pd.DataFrame, out: Path) -> Path:
    """Validation loss per epoch, one line per trial, coloured by method/preset."""
    return _save(val_loss_curves_figure(epochs), out / "val_loss_curves.png")


def learning_curves_figure(epochs: pd.DataFrame, configs: pd.DataFrame, *, metric: str, mode: str) -> Figure:
    """The figure of :func:`learning_curves`, not yet saved."""
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
            b = (
                bands[bands["config_id"] == cfg["config_id"]]
                .dropna(subset=[f"{col}_mean"])
                .sort_values("epoch")
            )
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
        _epoch_axis(ax, bands["epoch"])
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(
        _wrap(
            "Learning curves of the best configuration per method/preset (line: mean over seeds; "
            "band: min-max over seeds)",
            width=int(11 * fig.get_figwidth()),
        ),
        fontsize=10,
    )
    return fig


def learning_curves(epochs: pd.DataFrame, configs: pd.DataFrame, out: Path, *, metric: str, mode: str) -> Path:
    """Validation loss and ``metric`` per epoch for the best configuration of each method/preset: the mean over
    seeds, with a band from the lowest to the highest seed."""
    return _save(learning_curves_figure(epochs, configs, metric=metric, mode=mode), out / "learning_curves.png")


def _variant_order(variant: str) -> tuple:
    """Panels and bars: the methods in registry order (FFT first), then the variant's name."""
    method = registry.method_of_label(variant)
    return (registry.rank(method.name if method else None), variant)


def _shades(color: str, n: int) -> list[tuple]:
    """``n`` shades of ``color``, darkest first (the series of one panel)."""
    base = np.array(to_rgb(color))
    out = []
    for f in np.linspace(-0.45, 0.4, n) if n > 1 else [0.0]:
        mixed = base * (1 + f) if f < 0 else base + (1 - base) * f
        out.append(tuple(np.clip(mixed, 0, 1)))
    return out


def _shape_label(group: pd.DataFrame) -> str:
    """A series' name within its method/preset panel: its configuration id without the variant and the
    learning rate (``r=16 a=32``, plus any other setting that varies), and its seed count."""
    first = group.iloc[0]
    words = [w for w in str(first["config_id"]).split() if w != first["variant"] and not w.startswith("lr=")]
    n = pd.to_numeric(group["n_seeds"], errors="coerce").dropna().astype(int) if "n_seeds" in group else []
    seeds = "" if len(n) == 0 else f"n={n.min()}" if n.min() == n.max() else f"n={n.min()}-{n.max()}"
    return " ".join([*(words or [first["variant"]]), f"({seeds})" if seeds else ""]).strip()


def _shape_key(group: pd.DataFrame) -> tuple:
    """Series order within a panel: by the method's shape settings (LoRA's rank, then alpha), then the label."""
    first = group.iloc[0]
    method = registry.of_row(first)
    shape = method.shape(method.from_row(first)) if method is not None else []
    values = pd.to_numeric(pd.Series([v for _, _, v in shape], dtype=object), errors="coerce").fillna(-1.0)
    return (*values, _shape_label(group))


def _lr_panel(fig: Figure, ax, done: pd.DataFrame, col: str) -> None:
    """One method/preset: one series per LoRA shape, every point at its exact learning rate."""
    keys = [c for c in analysis.config_columns(done) if c != LR]
    series = [g for _, g in done.groupby(keys, dropna=False, sort=False)] if keys else [done]
    series.sort(key=_shape_key)
    colors = _shades(_color(done.iloc[0]["variant"]), len(series))
    lrs = sorted(done[LR].astype(float).unique())
    ax.set_xscale("log")
    ax.set_xlim(lrs[0] / 1.6, lrs[-1] * 1.6)  # before the points: one rate alone is no range to autoscale
    for i, g in enumerate(series):
        g = g.sort_values(LR)
        x, y = g[LR].astype(float).to_numpy(), g[f"{col}_mean"].astype(float).to_numpy()
        (line,) = ax.plot(
            x, y, marker=MARKERS[i % len(MARKERS)], color=colors[i], label=_shape_label(g), alpha=0.9
        )
        bars = _whiskers(ax, x, y, *_bounds(g, col), _kinds(g), color=colors[i])
        if len(series) > 1:  # a few points apart on screen; the data (and the ticks) stay at the exact rates
            shift = offset_copy(ax.transData, fig=fig, x=(i - (len(series) - 1) / 2) * 5, y=0, units="points")
            for artist in (line, *_artists(bars)):
                artist.set_transform(shift)
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs], rotation=30 if len(lrs) > 3 else 0, fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_title(done.iloc[0]["variant"], fontsize=9, color=_color(done.iloc[0]["variant"]))
    ax.set_xlabel("learning rate (log scale)")
    ax.grid(alpha=0.3)
    method = registry.of_row(done.iloc[0])
    ax.legend(fontsize=7, title=method.legend_title if method else None, title_fontsize=7, loc="best")


def metric_vs_lr_figure(configs: pd.DataFrame, *, metric: str) -> Figure:
    """The figure of :func:`metric_vs_lr`, not yet saved."""
    col = f"best_{metric}"
    done = _need(configs, [f"{col}_mean", LR], "metric vs learning rate")
    variants = sorted(done["variant"].astype(str).unique(), key=_variant_order)
    ncols = min(3, len(variants))
    nrows = math.ceil(len(variants) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.4 * ncols + 0.6, 3.8 * nrows + 1.0), sharey=True, squeeze=False
    )
    for ax, variant in zip(axes.flat, variants, strict=False):
        _lr_panel(fig, ax, done[done["variant"].astype(str) == variant], col)
    for ax in list(axes.flat)[len(variants) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"validation {metric} ({_unit(metric)})")
    fig.suptitle(
        _wrap(
            f"Validation {metric} vs learning rate, one panel per method/preset, each point at its exact "
            f"learning rate\n(ticks: the rates tried; series sharing a rate are drawn a few points apart; "
            f"mean over seeds; whiskers: {_interval_text(_kinds(done))})",
            width=int(13 * fig.get_figwidth()),
        ),
        fontsize=9,
    )
    return fig


def metric_vs_lr(configs: pd.DataFrame, out: Path, *, metric: str) -> Path:
    """``metric`` against the learning rate (log x), one panel per method/preset with one series per LoRA
    shape (rank, alpha), each point at its exact learning rate with its seed interval as whiskers."""
    return _save(metric_vs_lr_figure(configs, metric=metric), out / "metric_vs_lr.png")


def rank_alpha_heatmap(configs: pd.DataFrame, out: Path, *, metric: str, mode: str) -> Path:
    """The heatmap of a method's two shape settings (:attr:`cxr_core.methods.Method.grid`: LoRA's rank x alpha,
    alpha as trained, 2r when left to the default): the mean ``metric`` of the best configuration (over learning
    rates and other settings) in each cell, one panel per preset."""
    col = f"best_{metric}_mean"
    method = next((m for m in registry.registered() if m.grid), None)
    if method is None:
        raise NotDrawn("no method has two shape settings to draw as a grid")
    title, (rows_col, rows_label), (cols_col, cols_label) = method.grid
    mine = configs[configs[METHOD] == method.name] if METHOD in configs else configs.iloc[0:0]
    have = [c for c in (col, rows_col, cols_col) if c in mine]
    mine = mine.dropna(subset=have) if len(have) == 3 else mine.iloc[0:0]
    if mine.empty:
        raise NotDrawn(f"no {method.title} configuration has reported yet")
    mine = mine.assign(_preset=[registry.variant_value_of_row(r) for _, r in mine.iterrows()])
    presets = sorted(mine["_preset"].unique())
    ranks = sorted(mine[rows_col].astype(float).unique())
    alphas = sorted(mine[cols_col].astype(float).unique())
    vmin, vmax = mine[col].min(), mine[col].max()
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
        for _, row in mine[mine["_preset"] == preset].iterrows():
            i, j = ranks.index(float(row[rows_col])), alphas.index(float(row[cols_col]))
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
        ax.set_xlabel(cols_label)
        if k == 0:
            ax.set_ylabel(rows_label)
    fig.colorbar(image, ax=axes[0].tolist(), label=f"validation {metric} ({_unit(metric)})", shrink=0.9)
    fig.suptitle(
        f"{title}: validation {metric}, mean over seeds (best over learning rates; alpha = 2r when not set)",
        fontsize=10,
    )
    return _save(fig, out / "lora_rank_alpha_heatmap.png", tight=False)


def target_module_ablation_figure(
    configs: pd.DataFrame, *, metric: str, mode: str, baseline: float | None = None
) -> Figure:
    """The figure of :func:`target_module_ablation`, not yet saved."""
    col = f"best_{metric}"
    best = best_config_per(configs, "variant", metric=metric, mode=mode)
    ref = registry.reference()
    with_presets = [m for m in registry.compared() if m.variant_key]
    names = [m.name for m in with_presets]
    mine = best[best[METHOD].isin(names)] if METHOD in best else best.iloc[0:0]
    if mine.empty:
        raise NotDrawn(f"no {' or '.join(m.title for m in with_presets)} configuration has reported yet")
    mine = mine.iloc[sorted(range(len(mine)), key=lambda i: _variant_order(mine["variant"].iloc[i]))]
    several = mine[METHOD].nunique() > 1
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(mine) + 3), 4.8))
    x = np.arange(len(mine))
    means = mine[f"{col}_mean"].astype(float).to_numpy()
    ax.bar(x, means, color=[_color(v) for v in mine["variant"]], alpha=0.85)
    _whiskers(ax, x, means, *_bounds(mine, col), _kinds(mine), capsize=5)
    preset = [
        registry.display(row["variant"]) if several else registry.variant_value_of_row(row)
        for _, row in mine.iterrows()
    ]
    ticks = [
        f"{p}\n{_short_config(row)}\n{row[f'{col}_mean']:.3f} (n={int(row['n_seeds'])})"
        for p, (_, row) in zip(preset, mine.iterrows(), strict=True)
    ]
    ax.set_xticks(x, ticks, fontsize=8)
    fft = best[best[METHOD] == ref.name].iloc[:1] if METHOD in best else best.iloc[0:0]
    shown = list(_kinds(mine))
    if len(fft):
        f = fft.iloc[0]
        ax.axhline(
            f[f"{col}_mean"],
            color=_color(ref.name),
            linewidth=1.5,
            label=f"best {ref.title} ({f['config_id']}, n={int(f['n_seeds'])}): {f[f'{col}_mean']:.3f}",
        )
        (lo,), (hi,) = _bounds(fft, col)
        if np.isfinite(lo) and np.isfinite(hi):
            kind = _kinds(fft).iloc[0]
            shown.append(kind)
            ax.axhspan(
                lo, hi, color=_color(ref.name), alpha=0.12, label=f"{ref.title} {_interval_text([kind])}"
            )
    if baseline is not None:
        ax.axhline(
            baseline, color="black", linestyle="--", linewidth=1, label=f"constant baseline: {baseline:.3f}"
        )
    ax.set(
        title=_wrap(
            f"Target-module ablation: validation {metric} per {' and '.join(_titles(mine['variant']))} preset\n"
            f"(best configuration of each, mean over seeds; whiskers: {_interval_text(shown)})",
            width=int(11 * fig.get_figwidth()),
        ),
        xlabel=f"{' / '.join(_titles(mine['variant']))} target modules (preset)",
        ylabel=f"validation {metric} ({_unit(metric)})",
    )
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def target_module_ablation(
    configs: pd.DataFrame, out: Path, *, metric: str, mode: str, baseline: float | None = None
) -> Path:
    """One bar per LoRA target preset (its best configuration) with its seed interval; the best FFT
    configuration as a reference line with its interval as a band."""
    fig = target_module_ablation_figure(configs, metric=metric, mode=mode, baseline=baseline)
    return _save(fig, out / "target_module_ablation.png")


def _pareto_figure(
    configs: pd.DataFrame,
    *,
    cost: str,
    xlabel: str,
    metric: str,
    mode: str,
    baseline: float | None,
    logx: bool,
    title: str,
) -> Figure:
    col = f"best_{metric}"
    done = _need(configs, [f"{col}_mean", f"{cost}_mean"], title)
    fig, ax = plt.subplots(figsize=(8, 5))
    for variant, group in done.groupby("variant", sort=True):
        x, y = group[f"{cost}_mean"].astype(float), group[f"{col}_mean"].astype(float)
        ax.plot(x, y, "o", color=_color(variant), label=variant, alpha=0.9)
        _whiskers(ax, x, y, *_bounds(group, col), _kinds(group), color=_color(variant))
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
    ax.set(
        title=_wrap(
            f"{title}\n(mean over seeds; whiskers: {_interval_text(_kinds(done))}; circled = Pareto front)"
        ),
        xlabel=xlabel,
        ylabel=f"validation {metric} ({_unit(metric)}), mean over seeds",
    )
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return fig


def quality_vs_params(
    configs: pd.DataFrame, out: Path, *, metric: str, mode: str = "max", baseline: float | None = None
) -> Path:
    """Pareto view: ``metric`` of every configuration against its trainable parameters (log x), front marked."""
    fig = _pareto_figure(
        configs,
        cost="trainable_params",
        xlabel="trainable parameters (count, log scale)",
        metric=metric,
        mode=mode,
        baseline=baseline,
        logx=True,
        title=f"Quality vs trainable parameters: validation {metric}",
    )
    return _save(fig, out / "quality_vs_trainable_params.png")


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
    fig = _pareto_figure(
        configs,
        cost="peak_mem_mb",
        xlabel=f"peak memory{kind}, MB (mean over seeds)",
        metric=metric,
        mode=mode,
        baseline=baseline,
        logx=False,
        title=f"Quality vs peak memory: validation {metric}",
    )
    return _save(fig, out / "quality_vs_peak_memory.png")


def per_label_f1_figure(configs: pd.DataFrame, *, metric: str, mode: str) -> Figure:
    """The figure of :func:`per_label_f1`, not yet saved."""
    best = (
        best_config_per(configs, METHOD, metric=metric, mode=mode) if METHOD in configs else configs.iloc[0:0]
    )
    picks = {row[METHOD]: best.loc[[i]] for i, row in best.iterrows()}
    shown = [m for m in registry.registered() if m.name in picks]  # the reference first
    ref = registry.reference()
    if ref not in shown or len(shown) < 2:
        have = ", ".join(m.name for m in shown) or "none"
        raise NotDrawn(f"needs {ref.title} and another method; results have {have}")
    cols = [f"best_f1/{label}" for label in LABELS]
    if not all(f"{c}_mean" in configs for c in cols):
        raise NotDrawn("the trials did not report per-label F1 (f1/<Label>)")
    fig, ax = plt.subplots(figsize=(12, 5))
    x = np.arange(len(LABELS))
    kinds = []
    width = 0.8 / len(shown)
    for i, method in enumerate(shown):
        offset = (i - (len(shown) - 1) / 2) * width  # two methods: -0.2 and +0.2
        pick = picks[method.name]
        row = pick.iloc[0]
        means = np.clip(np.array([float(row[f"{c}_mean"]) for c in cols]), 0.0, 1.0)
        kind = _kinds(pick).iloc[0]
        kinds.append(kind)
        ax.bar(
            x + offset,
            means,
            width=width,
            color=_color(row["variant"]),
            alpha=0.85,
            label=f"best {method.title}: {row['config_id']} (n={int(row['n_seeds'])})",
        )
        lo, hi = np.array([[end[0] for end in _bounds(pick, c)] for c in cols]).T  # (2, 14), inside [0, 1]
        _whiskers(ax, x + offset, means, lo, hi, [kind] * len(x), capsize=2)
    ax.set_xticks(x, [label.replace("_", " ") for label in LABELS], rotation=35, ha="right", fontsize=8)
    ax.set(
        title=f"Per-label F1 on validation: {' vs '.join(f'best {m.title}' for m in shown)} configuration\n(mean "
        f"over seeds; whiskers: {_interval_text(kinds)})",
        xlabel="CheXpert label",
        ylabel="F1 (0-1)",
        ylim=(0, 1.06),  # whiskers end inside [0, 1]: the axis shows them whole
    )
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def per_label_f1(configs: pd.DataFrame, out: Path, *, metric: str, mode: str) -> Path:
    """F1 of each of the 14 labels (validation, mean over seeds with its interval) of the best configuration of
    each method (FFT and every other one with results), side by side."""
    return _save(per_label_f1_figure(configs, metric=metric, mode=mode), out / "per_label_f1.png")


COST_PANELS = (
    ("trainable_params", "trainable parameters", "count, log scale", True),
    ("peak_mem_mb", "peak memory", "MB", False),
    ("train_samples_per_s", "training throughput", "samples/s", False),
    ("train_tokens_per_s", "training throughput", "text tokens/s", False),
    ("wall_seconds", "wall time per trial", "s", False),
    ("checkpoint_mb", "checkpoint size", "MB", False),
)


def cost_per_method_figure(configs: pd.DataFrame, *, metric: str, mode: str, memory_kind: str = "") -> Figure:
    """The figure of :func:`cost_per_method`, not yet saved."""
    best = best_config_per(configs, "variant", metric=metric, mode=mode)
    panels = [p for p in COST_PANELS if f"{p[0]}_mean" in best]
    if best.empty or not panels:
        raise NotDrawn("no configuration has reported its cost yet")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    x = np.arange(len(best))
    for ax, (col, what, unit, log) in zip(axes.flat, panels, strict=False):
        means = np.clip(best[f"{col}_mean"].astype(float).to_numpy(), 0.0, None)
        lo, hi = _bounds(best, col, cost=True)
        ax.bar(x, means, color=[_color(v) for v in best["variant"]], alpha=0.85)
        _whiskers(ax, x, means, lo, hi, capsize=4)
        for xi, v, top in zip(x, means, np.where(np.isfinite(hi), np.fmax(hi, means), means), strict=True):
            if not math.isnan(v):
                text = f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
                ax.annotate(text, (xi, top), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7)
        ax.margins(y=0.12)
        if log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xticks(x, best["variant"], rotation=20, fontsize=8)
        ax.set(ylabel=f"{what} ({unit})", xlabel="method / preset")
        kind = f"\n({memory_kind})" if col == "peak_mem_mb" and memory_kind else ""
        ax.set_title(f"{what} ({unit}){kind}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        "Cost of the best configuration per method/preset (bar: mean over seeds; whiskers: min-max over seeds)"
    )
    return fig


def cost_per_method(configs: pd.DataFrame, out: Path, *, metric: str, mode: str, memory_kind: str = "") -> Path:
    """The cost table as a figure: for the best configuration of each method/preset, trainable parameters, peak
    memory, throughput, wall time and checkpoint size (mean over seeds, min-max whiskers)."""
    fig = cost_per_method_figure(configs, metric=metric, mode=mode, memory_kind=memory_kind)
    return _save(fig, out / "cost_per_method.png")


SCALE_PANELS = (
    ("trainable_params", "trainable parameters", "count, log scale", True),
    ("peak_mem_mb", "peak memory", "MB", False),
    ("train_samples_per_s", "training throughput", "samples/s", False),
)


def model_scale_figure(configs: pd.DataFrame, *, metric: str, mode: str, memory_kind: str = "") -> Figure:
    """The figure of :func:`model_scale`, not yet saved."""
    best = best_per_model(configs, metric=metric, mode=mode)
    sizes = best.drop_duplicates("model")
    if len(sizes) < 2:
        raise NotDrawn(f"needs two or more models with results; results have {len(sizes)}")
    if sizes["model_params"].isna().any():
        raise NotDrawn("not every model reported its parameter count (total_params)")
    col = f"best_{metric}"
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    panels = [(col, f"validation {metric}", _unit(metric), False), *SCALE_PANELS]
    for ax, (column, what, unit, log) in zip(axes.flat, panels, strict=True):
        quality = column == col
        for i, method in enumerate(m for m in registry.registered() if m.name in set(best[METHOD])):
            mine = best[best[METHOD] == method.name].sort_values("model_params")
            x, y = mine["model_params"].astype(float).to_numpy(), _column(mine, f"{column}_mean")
            ax.plot(x, y, marker=MARKERS[i % len(MARKERS)], color=_color(method.name), label=method.title)
            lo, hi = _bounds(mine, column, cost=not quality)
            _whiskers(ax, x, y, lo, hi, _kinds(mine) if quality else None, color=_color(method.name))
        ax.set_xscale("log")
        ax.set_xticks(sizes["model_params"].astype(float), [f"{m}\n{p:,.0f}" for m, p in
                      zip(sizes["model"], sizes["model_params"], strict=True)], fontsize=8)  # fmt: skip
        ax.xaxis.set_minor_locator(NullLocator())
        ax.margins(x=0.15)
        if log:
            ax.set_yscale("log")
        elif not quality:
            ax.set_ylim(bottom=0)
        kind = f" ({memory_kind})" if column == "peak_mem_mb" and memory_kind else ""
        ax.set(xlabel="model parameters (count, log scale)", ylabel=f"{what}{kind} ({unit})")
        ax.set_title(f"{what}{kind} ({unit})", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(
        _wrap(
            "Across model scales: each method's best configuration per model, chosen on validation (line per "
            f"method; mean over seeds; quality whiskers: {_interval_text(_kinds(best))}; cost whiskers: min-max "
            "over seeds)",
            width=110,
        ),
        fontsize=10,
    )
    return fig


def model_scale(configs: pd.DataFrame, out: Path, *, metric: str, mode: str, memory_kind: str = "") -> Path:
    """Quality and cost against model size, for a sweep over two or more models: validation ``metric``, trainable
    parameters, peak memory and training samples/s of each method's best configuration per model (chosen on
    validation among that model's configurations) against the model's parameter count (log x), one line per
    method.

    Raises:
        NotDrawn: fewer than two models with results, or a model without its parameter count.
    """
    fig = model_scale_figure(configs, metric=metric, mode=mode, memory_kind=memory_kind)
    return _save(fig, out / "model_scale.png")


FOREST_COLUMNS = ("a", "b", "kind", "a_variant", "split", "metric", "difference", "lo", "hi", "verdict")


def _forest_rows(comparisons: pd.DataFrame | None, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The config_vs_fft rows of ``metric`` (validation ones when both splits are there: every configuration of
    every other method against the best FFT one), and the test-split rows of each method's best and the best
    presets against FFT."""
    if comparisons is None or comparisons.empty:
        raise NotDrawn("no paired comparisons (they need per-image records of the evaluated configurations)")
    missing = [c for c in FOREST_COLUMNS if c not in comparisons]
    if missing:
        raise NotDrawn(f"the comparisons lack {', '.join(missing)}")
    same = comparisons[comparisons["metric"] == metric]
    rows = same[same["kind"] == FOREST_KIND].dropna(subset=["difference"])
    if (rows["split"] == "val").any():
        rows = rows[rows["split"] == "val"]
    if rows.empty:
        kinds = ", ".join(sorted(map(str, comparisons["kind"].unique())))
        raise NotDrawn(f"no {FOREST_KIND} comparison of {metric} (comparisons: {kinds})")
    test = same[same["kind"].isin(FOREST_TEST_KINDS) & (same["split"] == "test")].dropna(subset=["difference"])
    return rows, test


def _forest_row(ax, row, y: float, *, test: bool) -> None:
    """One comparison: point (hollow diamond for the test split), 95% whisker and verdict at the right."""
    color = _color(str(row["a_variant"]))
    style = {"marker": "D", "markerfacecolor": "none", "markersize": 7} if test else {"marker": "o"}
    ax.plot([row["difference"]], [y], linestyle="none", color=color, zorder=3, **style)
    ends = [_column(row.to_frame().T, k) for k in ("lo", "hi")]
    _whiskers(ax, [y], [row["difference"]], *ends, color=color, horizontal=True, capsize=2 if test else 3)
    a, b = (registry.method_of_label(str(row[k])) for k in ("a_variant", "b_variant"))
    names = {"a": a.title if a else str(row["a"]), "b": b.title if b else str(row["b"])}
    words, tone = VERDICT_WORDS.get(str(row["verdict"]), (str(row["verdict"]), "0.3"))
    words = words.format(**names)
    p = row.get("p_a_better")
    chance = "" if analysis._isnan(p) else f", P({names['a']} better)={float(p):.2f}"
    ax.text(
        1.01,
        y,
        f"{'test: ' if test else ''}{words}{chance}",
        transform=ax.get_yaxis_transform(),  # x in axes fractions: right of the plot
        va="center",
        fontsize=7 if test else 8,
        color=tone,
    )


def forest_plot_figure(comparisons: pd.DataFrame, *, metric: str, margin: float) -> Figure:
    """The figure of :func:`forest_plot`, not yet saved."""
    rows, test = _forest_rows(comparisons, metric)
    lower = _lower_is_better(metric)
    rows = rows.sort_values("difference", ascending=not lower, kind="stable")  # the better configuration on top
    ys = {a: float(i) for i, a in enumerate(rows["a"])}
    extra = [a for a in dict.fromkeys(test["a"]) if a not in ys]  # test rows without a validation row
    ys.update({a: float(len(rows) + j) for j, a in enumerate(extra)})
    fig, ax = plt.subplots(figsize=(11, 1.9 + 0.36 * len(ys)))
    ax.axvspan(-margin, margin, color="0.85", zorder=0, label=f"equivalence band ±{margin:g}")
    ax.axvline(0, color="black", linewidth=1, zorder=1)
    for _, row in rows.iterrows():
        _forest_row(ax, row, ys[row["a"]], test=False)
    for _, row in test.iterrows():
        _forest_row(ax, row, ys[row["a"]] - (0.3 if row["a"] in set(rows["a"]) else 0.0), test=True)
    for variant in sorted(set(map(str, pd.concat([rows["a_variant"], test["a_variant"]])))):  # legend only
        ax.plot([], [], "o", color=_color(variant), label=variant)
    if len(test):
        ax.plot([], [], "D", markerfacecolor="none", color="0.3", label="test split (best per method / preset)")
    labels = [a if a not in extra else f"{a} (test only)" for a in ys]
    ax.set_yticks(list(ys.values()), labels, fontsize=8)
    ax.set_ylim(-0.8, len(ys) - 0.4)
    fft = ", ".join(dict.fromkeys(map(str, rows["b"])))
    ref = registry.reference().title
    others = " / ".join(_titles(rows["a_variant"].astype(str)))
    split = "/".join(dict.fromkeys(map(str, rows["split"])))
    images = pd.to_numeric(rows.get("n_images", pd.Series(dtype=float)), errors="coerce").dropna().unique()
    on = f" on {int(images[0])} {split} images" if len(images) == 1 else f" on the {split} split"
    ax.set(
        title=_wrap(
            f"{metric}: paired difference to the best {ref} configuration ({fft}), per {others} configuration{on}\n"
            f"(point: difference; whisker: 95% paired bootstrap interval; shaded: equivalence band ±{margin:g}; "
            "right: verdict)",
            width=130,
        ),
        xlabel=f"difference in {metric} ({others} - {ref})" + (", lower is better" if lower else ""),
    )
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, axis="x")
    # The legend goes under the x label: 0.6 inch below the axes, in axes heights.
    below = -0.6 / (fig.get_figheight() * (fig.subplotpars.top - fig.subplotpars.bottom))
    entries = len(ax.get_legend_handles_labels()[0])
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, below), ncol=min(entries, 6))
    return fig


def forest_plot(comparisons: pd.DataFrame, out: Path, *, metric: str, margin: float) -> Path:
    """Forest plot of the paired comparisons: for every configuration of a method other than FFT (LoRA, ...), its
    difference in ``metric`` to the best FFT configuration with the 95% paired bootstrap interval, the equivalence
    band ``±margin`` shaded and the verdict at the right; test-split comparisons of each method's best and the
    best presets as hollow diamonds.

    Args:
        comparisons: one row per paired comparison (``a``, ``b``, ``kind``, ``a_variant``, ``split``,
            ``metric``, ``difference``, ``lo``, ``hi``, ``p_a_better``, ``verdict``, ``n_images``, ...).
        out: the folder ``forest_plot.png`` is written to.
        metric: the metric whose ``config_vs_fft`` rows are drawn.
        margin: half-width of the equivalence band, in units of ``metric``.

    Raises:
        NotDrawn: no comparison, or none of kind ``config_vs_fft`` for ``metric``.
    """
    fig = forest_plot_figure(comparisons, metric=metric, margin=margin)
    return _save(fig, out / "forest_plot.png", tight=False)  # the verdicts and the legend lie outside the axes


def draw_all(
    epochs: pd.DataFrame,
    configs: pd.DataFrame,
    out: Path,
    *,
    metric: str,
    mode: str,
    baseline: float | None = None,
    memory_kind: str = "",
    comparisons: pd.DataFrame | None = None,
    margin: float = 0.02,
) -> dict[str, str]:
    """Every diagram into ``out``.

    Args:
        comparisons: the paired comparisons for :func:`forest_plot`; without them it is not drawn.
        margin: the equivalence margin of the forest plot, in units of ``metric``.

    Returns:
        ``{file name: what it shows}``, or ``"not drawn: <reason>"`` for a figure the results cannot support.
    """
    whiskers = _interval_text(_kinds(configs))
    ref = registry.reference().title
    present = _titles(configs["variant"].astype(str)) if "variant" in configs else []
    others = " / ".join(t for t in present if t != ref) or "other-method"
    grid = next((m for m in registry.registered() if m.grid), None)
    jobs = {
        "metric_vs_lr.png": (
            f"validation {metric} vs learning rate (log x), one panel per method/preset, points at the exact "
            f"rates; whiskers: {whiskers}",
            lambda: metric_vs_lr(configs, out, metric=metric),
        ),
        "lora_rank_alpha_heatmap.png": (
            f"{grid.grid[0] if grid else 'no'} heatmap of validation {metric}, one panel per preset",
            lambda: rank_alpha_heatmap(configs, out, metric=metric, mode=mode),
        ),
        "target_module_ablation.png": (
            f"one bar per {others} target preset (whiskers: {whiskers}), best {ref} as reference line",
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
            f"per-label F1 (14 labels) of the best configuration of each method ({' vs '.join(present) or '-'})",
            lambda: per_label_f1(configs, out, metric=metric, mode=mode),
        ),
        "cost_per_method.png": (
            "trainable params, peak memory, samples/s, tokens/s, wall time and checkpoint size "
            "of the best configuration per method/preset (whiskers: min-max over seeds)",
            lambda: cost_per_method(configs, out, metric=metric, mode=mode, memory_kind=memory_kind),
        ),
        "forest_plot.png": (
            f"paired difference in {metric} of every {others} configuration to the best {ref} configuration, 95% "
            f"paired bootstrap intervals, equivalence band ±{margin:g}, verdict per row",
            lambda: forest_plot(comparisons, out, metric=metric, margin=margin),
        ),
    }
    if len(models(configs)) > 1:  # a sweep over model sizes; a one-model report lists no such diagram
        jobs["model_scale.png"] = (
            f"validation {metric}, trainable params, peak memory and samples/s of each method's best configuration "
            "per model against the model's parameters (log x), one line per method",
            lambda: model_scale(configs, out, metric=metric, mode=mode, memory_kind=memory_kind),
        )
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
