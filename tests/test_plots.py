"""The diagrams: points at their true coordinates, whole-epoch ticks, whiskers inside the range of their value,
captions that name the interval drawn, and the forest plot of paired comparisons.

The configuration table is built here by hand in the shape of :func:`cxr_core.analysis.configs_table` (every
aggregated column ``M`` with ``M_mean, M_std, M_n, M_lo, M_hi, M_min, M_max`` and an ``interval`` column), so
each test knows the number every artist must show. Figures are rendered for real (Agg) and read back through
their matplotlib artists before they are saved.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.patches import Rectangle
from PIL import Image

from cxr_core import plots
from cxr_core.labels import LABELS

pytestmark = pytest.mark.filterwarnings("error::UserWarning")  # e.g. a singular axis range while drawing
METRIC = "label_f1_micro"
COSTS = {  # column: value per seed index (grows with the seed, so min-max is known)
    "trainable_params": lambda method, s: 200_000_000 if method == "fft" else 1_000_000,
    "peak_mem_mb": lambda method, s: (9000.0 if method == "fft" else 5000.0) + 10 * s,
    "train_samples_per_s": lambda method, s: (30.0 if method == "fft" else 55.0) + 5 * s,
    "train_tokens_per_s": lambda method, s: 4000.0 + 100 * s,
    "wall_seconds": lambda method, s: 600.0 + 40 * s,
    "checkpoint_mb": lambda method, s: 700.0 if method == "fft" else 4.0,
}


def aggregate(name: str, values, *, kind: str, cost: bool = False) -> dict:
    """``M_*`` columns of one configuration; the interval per the table's contract (bootstrap: a made-up
    interval a little wider than the seeds, as a percentile bootstrap over images would be)."""
    x = np.asarray(values, dtype=float)
    lo, hi = x.min(), x.max()
    if not cost and kind == "bootstrap":
        lo, hi = max(0.0, lo - 0.01), min(1.0, hi + 0.01)
    elif not cost and kind == "t":
        half = 2.0 * x.std(ddof=1) if len(x) > 1 else math.nan
        lo, hi = max(0.0, x.mean() - half), min(1.0, x.mean() + half)
    std = x.std(ddof=1) if len(x) > 1 else math.nan
    stats = {"mean": x.mean(), "std": std, "n": len(x), "lo": lo, "hi": hi, "min": x.min(), "max": x.max()}
    return {f"{name}_{k}": v for k, v in stats.items()}


def config(variant: str, lr: float, f1s, *, r=None, kind=None) -> dict:
    """One configuration row: seeds' ``best_label_f1_micro`` in ``f1s``; per-label F1 and costs follow."""
    method = "fft" if variant == "fft" else "lora"
    kind = kind or ("min-max" if len(f1s) < 3 else "t")
    alpha = 2.0 * r if r else math.nan
    config_id = f"{variant} r={r:g} a={alpha:g} lr={lr:g}" if r else f"{variant} lr={lr:g}"
    row = {
        "config/method": method,
        "config/train/lr": lr,
        "config/lora/r": float(r) if r else math.nan,
        "config/lora/target_modules": variant.removeprefix("lora:") if method == "lora" else math.nan,
        "config_id": config_id,
        "variant": variant,
        "lora_alpha_effective": alpha,
        "n_seeds": len(f1s),
        "interval": kind,
        **aggregate(f"best_{METRIC}", f1s, kind=kind),
        **aggregate("best_val_loss", [2.0 - f for f in f1s], kind=kind),
    }
    for i, label in enumerate(LABELS):
        row.update(aggregate(f"best_f1/{label}", [f * (i + 1) / 14 for f in f1s], kind=kind))
    for col, value in COSTS.items():
        row.update(aggregate(col, [value(method, s) for s in range(len(f1s))], kind=kind, cost=True))
    return row


@pytest.fixture
def configs() -> pd.DataFrame:
    """FFT at two rates (3 seeds), LoRA all_linear with two shapes at two rates (2 seeds), vision at one rate."""
    return pd.DataFrame(
        [
            config("fft", 5e-4, [0.50, 0.52, 0.55]),
            config("fft", 2e-3, [0.56, 0.58, 0.60]),
            config("lora:all_linear", 5e-3, [0.50, 0.54], r=4),
            config("lora:all_linear", 1e-2, [0.52, 0.55], r=4),
            config("lora:all_linear", 5e-3, [0.53, 0.57], r=16),
            config("lora:all_linear", 1e-2, [0.40, 0.44], r=16),
            config("lora:vision", 1e-2, [0.30, 0.32], r=16),
        ]
    )


def epochs_frame(configs: pd.DataFrame, n_epochs: int) -> pd.DataFrame:
    """Tidy epoch rows (with config_id) for every configuration: one trial per seed."""
    rows = []
    for _, cfg in configs.iterrows():
        for seed in range(int(cfg["n_seeds"])):
            for epoch in range(1, n_epochs + 1):
                f1 = cfg[f"best_{METRIC}_mean"] * epoch / n_epochs + 0.01 * seed
                rows.append(
                    {
                        "trial_id": f"{cfg['config_id']}/{seed}",
                        "status": "TERMINATED",
                        "epoch": epoch,
                        "config_id": cfg["config_id"],
                        **{c: cfg[c] for c in cfg.index if c.startswith("config/")},
                        METRIC: f1,
                        "val_loss": 3.0 - f1 - 0.05 * epoch,
                    }
                )
    return pd.DataFrame(rows)


def flat(text: str) -> str:
    """A title with its line folds undone (titles are folded to fit their figure)."""
    return " ".join(text.split())


def whisker_ends(ax, *, horizontal: bool = False) -> list[tuple[float, float, float]]:
    """(position, low end, high end) of every error bar drawn on ``ax``."""
    pos, val = (1, 0) if horizontal else (0, 1)
    ends = []
    for container in ax.containers:
        bars = container if isinstance(container, ErrorbarContainer) else getattr(container, "errorbar", None)
        if bars is None:
            continue
        for seg in bars.lines[2][0].get_segments():
            ends.append((seg[0, pos], min(seg[:, val]), max(seg[:, val])))
    return ends


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------------------------- metric vs lr


def test_metric_vs_lr_draws_every_point_at_its_exact_learning_rate(configs):
    fig = plots.metric_vs_lr_figure(configs, metric=METRIC)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert list(panels) == ["fft", "lora:all_linear", "lora:vision"]
    means = {(r["variant"], r["config_id"]): r[f"best_{METRIC}_mean"] for _, r in configs.iterrows()}
    for variant, ax in panels.items():
        tried = sorted(configs.loc[configs["variant"] == variant, "config/train/lr"])
        assert list(ax.get_xticks()) == sorted(set(tried))  # ticks at the learning rates tried, nowhere else
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"{lr:g}" for lr in sorted(set(tried))]
        lines, labels = ax.get_legend_handles_labels()
        drawn = sorted(x for line in lines for x in line.get_xdata())
        assert drawn == tried  # exact rates: no sideways shift in data coordinates
        for line, label in zip(lines, labels, strict=True):
            for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True):
                shape = label.split(" (n=")[0]
                cid = f"{variant} lr={x:g}" if variant == "fft" else f"{variant} {shape} lr={x:g}"
                assert y == pytest.approx(means[(variant, cid)])
    assert panels["lora:all_linear"].get_legend_handles_labels()[1] == ["r=4 a=8 (n=2)", "r=16 a=32 (n=2)"]
    title = flat(fig._suptitle.get_text())
    assert "one panel per method/preset, each point at its exact learning rate" in title
    # FFT has 3 seeds (t interval), LoRA fewer (min-max): both named, the min-max ones dotted.
    assert "95% t interval over seeds" in title and "min-max over seeds (fewer than 3 seeds, dotted)" in title
    assert "95% t interval" not in title.replace("95% t interval over seeds", "")


def test_metric_vs_lr_whiskers_of_two_seeds_are_min_max_and_dotted(configs):
    fig = plots.metric_vs_lr_figure(configs, metric=METRIC)
    ax = next(ax for ax in fig.axes if ax.get_title() == "lora:all_linear")
    lora = configs[configs["variant"] == "lora:all_linear"]
    expected = sorted(
        zip(lora["config/train/lr"], lora[f"best_{METRIC}_min"], lora[f"best_{METRIC}_max"], strict=True)
    )
    np.testing.assert_allclose(sorted(whisker_ends(ax)), expected)
    for container in ax.containers:
        (_, dashes) = container.lines[2][0].get_linestyle()[0]
        assert dashes is not None  # dotted, not solid


# ------------------------------------------------------------------------------------------- epochs


@pytest.mark.parametrize("n_epochs", [2, 3, 20])
def test_epoch_axes_show_whole_epochs_only(configs, n_epochs):
    epochs = epochs_frame(configs, n_epochs)
    figures = [
        plots.val_loss_curves_figure(epochs),
        plots.learning_curves_figure(epochs, configs, metric=METRIC, mode="max"),
    ]
    axes = [ax for fig in figures for ax in fig.axes]
    assert len(axes) == 3
    for ax in axes:
        ticks = np.asarray(ax.get_xticks())
        assert np.array_equal(ticks, np.round(ticks)), ticks
        if n_epochs <= plots.EPOCH_TICKS:
            assert ticks.tolist() == list(range(1, n_epochs + 1))


# ---------------------------------------------------------------------------------------- per label


def test_per_label_f1_whiskers_stay_inside_zero_one(configs):
    # A t interval that ran off the range (the reviewer's case), on the best LoRA configuration.
    best_lora = configs.index[configs["config_id"] == "lora:all_linear r=16 a=32 lr=0.005"][0]
    configs.loc[best_lora, "interval"] = "t"
    configs.loc[best_lora, [f"best_f1/{LABELS[-1]}_lo", f"best_f1/{LABELS[-1]}_hi"]] = [0.2, 1.3]
    configs.loc[best_lora, [f"best_f1/{LABELS[0]}_lo", f"best_f1/{LABELS[0]}_hi"]] = [-0.25, 0.1]
    ax = plots.per_label_f1_figure(configs, metric=METRIC, mode="max").axes[0]
    ends = whisker_ends(ax)
    assert len(ends) == 2 * len(LABELS)
    assert all(0.0 <= lo <= hi <= 1.0 for _, lo, hi in ends)
    assert max(hi for *_, hi in ends) == 1.0 and min(lo for _, lo, _ in ends) == 0.0  # clipped, not dropped
    bottom, top = ax.get_ylim()
    assert bottom <= 0.0 and top >= 1.0  # the axis shows every whisker whole
    assert "95% t interval over seeds" in flat(ax.get_title())


def test_per_label_f1_with_two_seeds_shows_min_max_and_says_so(configs):
    fft = configs["variant"] == "fft"
    configs.loc[fft, "interval"] = "bootstrap"
    ax = plots.per_label_f1_figure(configs, metric=METRIC, mode="max").axes[0]
    lora = configs.set_index("config_id").loc["lora:all_linear r=16 a=32 lr=0.005"]
    ends = sorted(whisker_ends(ax))
    lora_ends = [(lo, hi) for x, lo, hi in ends if x > np.round(x)]  # LoRA bars sit at +0.2
    np.testing.assert_allclose(
        lora_ends, [(lora[f"best_f1/{c}_min"], lora[f"best_f1/{c}_max"]) for c in LABELS]
    )
    title = flat(ax.get_title())
    assert "95% bootstrap interval over seeds and images" in title
    assert "min-max over seeds (fewer than 3 seeds, dotted)" in title


# --------------------------------------------------------------------------------------------- cost


def test_cost_whiskers_are_min_max_over_seeds_and_never_negative(configs):
    # An old-style t interval on a cost (2 seeds: t = 12.7) reaches far below 0; the figure must not use it.
    configs["train_samples_per_s_lo"] = configs["train_samples_per_s_mean"] - 250.0
    configs["wall_seconds_lo"] = -250.0
    fig = plots.cost_per_method_figure(configs, metric=METRIC, mode="max")
    assert "whiskers: min-max over seeds" in flat(fig._suptitle.get_text())
    best = plots.best_config_per(configs, "variant", metric=METRIC, mode="max")
    titles = {ax.get_title().split(" (")[0] + ax.get_ylabel(): ax for ax in fig.axes if ax.get_title()}
    ax = next(ax for key, ax in titles.items() if "samples/s" in key)
    expected = zip(
        range(len(best)), best["train_samples_per_s_min"], best["train_samples_per_s_max"], strict=True
    )
    np.testing.assert_allclose(sorted(whisker_ends(ax)), list(expected))
    for ax in fig.axes:
        assert all(lo >= 0 for _, lo, _ in whisker_ends(ax)), ax.get_title()


def test_cost_whiskers_are_clipped_at_zero_without_min_max_columns(configs):
    old = configs.drop(columns=[c for c in configs if c.endswith(("_min", "_max"))])
    old["wall_seconds_lo"] = -250.0
    fig = plots.cost_per_method_figure(old, metric=METRIC, mode="max")
    ax = next(ax for ax in fig.axes if ax.get_title().startswith("wall time"))
    ends = whisker_ends(ax)
    assert ends and all(lo == 0.0 for _, lo, _ in ends)
    assert ax.get_ylim()[0] == 0.0


# ------------------------------------------------------------------------------------------ captions


def test_captions_name_the_interval_kinds_present(configs):
    three = configs[configs["n_seeds"] >= 3]
    lora = configs[configs["variant"] == "lora:all_linear"].assign(
        n_seeds=3, interval="bootstrap", **{f"best_{METRIC}_n": 3}
    )
    ax = plots.target_module_ablation_figure(pd.concat([three, lora]), metric=METRIC, mode="max").axes[0]
    title = flat(ax.get_title())
    assert "95% bootstrap interval over seeds and images" in title and "95% t interval over seeds" in title
    assert "min-max" not in title and "dotted" not in title
    assert "FFT 95% t interval over seeds" in ax.get_legend_handles_labels()[1]
    # A table without the interval column: min-max below 3 seeds, named as such.
    ax = plots._pareto_figure(
        configs.drop(columns="interval"),
        cost="trainable_params",
        xlabel="x",
        metric=METRIC,
        mode="max",
        baseline=None,
        logx=True,
        title="t",
    ).axes[0]
    assert "min-max over seeds (fewer than 3 seeds, dotted)" in flat(ax.get_title())


# --------------------------------------------------------------------------------------------- forest


def comparison(a, variant, difference, lo, hi, verdict, *, kind="config_vs_fft", split="val", metric=METRIC):
    return {
        "a": a,
        "b": "fft lr=0.002",
        "kind": kind,
        "a_variant": variant,
        "b_variant": "fft",
        "split": split,
        "metric": metric,
        "difference": difference,
        "lo": lo,
        "hi": hi,
        "p_a_better": 0.5 + difference * 5,
        "verdict": verdict,
        "margin": 0.02,
        "n_images": 500,
        "n_seeds_a": 2,
        "n_seeds_b": 3,
    }


@pytest.fixture
def comparisons() -> pd.DataFrame:
    return pd.DataFrame(
        [
            comparison("lora:all_linear r=4 a=8 lr=0.005", "lora:all_linear", -0.03, -0.05, -0.01, "b_better"),
            comparison(
                "lora:all_linear r=16 a=32 lr=0.005", "lora:all_linear", 0.01, -0.005, 0.018, "equivalent"
            ),
            comparison("lora:vision r=16 a=32 lr=0.01", "lora:vision", -0.08, -0.11, -0.05, "b_better"),
            comparison(
                "lora:all_linear r=4 a=8 lr=0.01", "lora:all_linear", 0.002, -0.03, 0.035, "inconclusive"
            ),
            # Not in the forest: another kind, another metric.
            comparison(
                "lora:all_linear r=16 a=32 lr=0.005",
                "lora:all_linear",
                0.3,
                0.2,
                0.4,
                "a_better",
                kind="preset_vs_preset",
            ),
            comparison(
                "lora:all_linear r=4 a=8 lr=0.005",
                "lora:all_linear",
                0.5,
                0.4,
                0.6,
                "b_better",
                metric="val_loss",
            ),
            # The best LoRA on the test split: a hollow diamond under its validation row.
            comparison(
                "lora:all_linear r=16 a=32 lr=0.005",
                "lora:all_linear",
                0.004,
                -0.012,
                0.02,
                "equivalent",
                kind="lora_vs_fft",
                split="test",
            ),
        ]
    )


def test_forest_plot_rows_band_and_verdicts(comparisons):
    ax = plots.forest_plot_figure(comparisons, metric=METRIC, margin=0.02).axes[0]
    rows = comparisons[(comparisons["kind"] == "config_vs_fft") & (comparisons["metric"] == METRIC)]
    rows = rows.sort_values("difference")
    ticks = dict(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels()), strict=True))
    assert [ticks[y] for y in sorted(ticks)] == list(rows["a"])  # bottom to top: sorted by difference
    where = {label: y for y, label in ticks.items()}
    points = {
        (x, y)
        for line in ax.get_lines()
        if line.get_marker() == "o"
        for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)
    }
    assert points == {(d, where[a]) for a, d in zip(rows["a"], rows["difference"], strict=True)}
    ends = {round(y, 6): (lo, hi) for y, lo, hi in whisker_ends(ax, horizontal=True)}
    for _, row in rows.iterrows():
        assert ends[where[row["a"]]] == pytest.approx((row["lo"], row["hi"]))
    (band,) = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_label().startswith("equivalence")]
    assert (band.get_x(), band.get_x() + band.get_width()) == pytest.approx((-0.02, 0.02))
    assert any(
        line.get_xdata()[0] == 0 and line.get_linestyle() == "-"
        for line in ax.get_lines()
        if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
    )
    texts = {t.get_text().split(",")[0]: t.get_position()[1] for t in ax.texts}
    assert texts["FFT better"] in (where[rows["a"].iloc[0]], where[rows["a"].iloc[1]])
    assert texts["equivalent"] == where["lora:all_linear r=16 a=32 lr=0.005"]
    assert texts["inconclusive"] == where["lora:all_linear r=4 a=8 lr=0.01"]
    (diamond,) = [line for line in ax.get_lines() if line.get_marker() == "D" and len(line.get_xdata())]
    assert diamond.get_markerfacecolor() == "none" and diamond.get_xdata()[0] == 0.004
    assert diamond.get_ydata()[0] == pytest.approx(where["lora:all_linear r=16 a=32 lr=0.005"] - 0.3)
    assert texts["test: equivalent"] == pytest.approx(diamond.get_ydata()[0])
    assert "paired difference to the best FFT configuration (fft lr=0.002)" in flat(ax.get_title())
    assert ax.get_xlabel() == f"difference in {METRIC} (LoRA - FFT)"


def test_forest_plot_of_a_loss_puts_the_lowest_on_top_and_says_lower_is_better(comparisons):
    loss = comparisons[comparisons["metric"] == METRIC].assign(metric="val_loss")
    ax = plots.forest_plot_figure(loss, metric="val_loss", margin=0.05).axes[0]
    labels = [t.get_text() for t in sorted(ax.get_yticklabels(), key=lambda t: t.get_position()[1])]
    rows = loss[loss["kind"] == "config_vs_fft"].sort_values("difference", ascending=False)
    assert labels == list(rows["a"]) and ax.get_xlabel().endswith("(LoRA - FFT), lower is better")


def test_forest_plot_writes_a_png(tmp_path, comparisons):
    path = plots.forest_plot(comparisons, tmp_path, metric=METRIC, margin=0.02)
    assert path == tmp_path / "forest_plot.png"
    width, height = Image.open(path).size
    assert width > 800 and height > 300
    with pytest.raises(plots.NotDrawn, match="no config_vs_fft comparison of bleu4"):
        plots.forest_plot(comparisons, tmp_path, metric="bleu4", margin=0.02)


def test_draw_all_registers_the_forest_plot(tmp_path, configs, comparisons):
    epochs = epochs_frame(configs, 2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    without = plots.draw_all(epochs, configs, tmp_path / "a", metric=METRIC, mode="max")
    assert without["forest_plot.png"].startswith("not drawn: no paired comparisons")
    assert [name for name, what in without.items() if what.startswith("not drawn")] == ["forest_plot.png"]
    assert not (tmp_path / "a" / "forest_plot.png").exists()
    with pytest.raises(plots.NotDrawn, match="no paired comparisons"):
        plots.forest_plot_figure(comparisons.iloc[0:0], metric=METRIC, margin=0.02)
    drawn = plots.draw_all(
        epochs, configs, tmp_path / "b", metric=METRIC, mode="max", comparisons=comparisons, margin=0.03
    )
    assert "±0.03" in drawn["forest_plot.png"] and (tmp_path / "b" / "forest_plot.png").is_file()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(drawn)
