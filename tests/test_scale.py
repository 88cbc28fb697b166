"""Across model scales: a sweep over two models (the embedded tiny and small GIT) is analysed per model, each
method's quality and cost as shares of the same model's best FFT configuration, and the change of the LoRA/FFT
ratio from the smaller model to the larger one is decided by a paired interval.

The frames are built by hand in the shape :func:`cxr_core.results_frame` returns (as in test_analysis), with known
ratios; the paired intervals are checked against an image bootstrap computed here from the resampler's weights.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from cxr_core import analysis, comparison, plots
from cxr_core.analysis import scale as scale_mod
from tests.test_analysis import METRIC, _nontrivial, _records, frame, tables, trial

TINY, SMALL = ("embedded", 935_526), ("embedded-small", 5_055_974)


def at(model, rows, *, trainable, sps, total=None):
    """Tidy rows of trials on ``model`` (name, parameters) with these trainable parameters and samples/s."""
    name, params = model
    df = frame(*rows)
    return df.assign(**{"config/model": name, "trainable_params": trainable, "total_params": total or params,
                        "train_samples_per_s": sps})  # fmt: skip


def fft(tid, lr, seed, f1, mem):
    return trial(tid, "fft", lr, seed, [f1 - 0.05, f1], mem=mem)


def lora(tid, lr, seed, f1, mem):
    return trial(tid, "lora", lr, seed, [f1 - 0.05, f1], r=8, targets="text", mem=mem)


@pytest.fixture
def two_models():
    return two_model_frame()


def two_model_frame():
    """FFT at two learning rates and LoRA at one on each model, three seeds each. Means of the best epochs:
    tiny FFT lr=0.001 0.50 (lr=0.0001: 0.30), LoRA 0.40 (80%); small FFT lr=0.0001 0.60 (lr=0.001: 0.55), LoRA 0.57
    (95%). peak memory: the given value + the seed (mean + 1)."""
    spread = (0.02, 0.0, -0.02)
    tiny = pd.concat([
        at(TINY, [fft(f"tf{s}", 1e-3, s, 0.50 + d, 900.0) for s, d in enumerate(spread)],
           trainable=TINY[1], sps=200.0),
        at(TINY, [fft(f"tg{s}", 1e-4, s, 0.30 + d, 900.0) for s, d in enumerate(spread)],
           trainable=TINY[1], sps=200.0),
        at(TINY, [lora(f"tl{s}", 1e-2, s, 0.40 + d, 450.0) for s, d in enumerate(spread)],
           trainable=20_000, sps=300.0, total=TINY[1] + 20_000),
    ])  # fmt: skip
    small = pd.concat([
        at(SMALL, [fft(f"sf{s}", 1e-3, s, 0.55 + d, 2000.0) for s, d in enumerate(spread)],
           trainable=SMALL[1], sps=50.0),
        at(SMALL, [fft(f"sg{s}", 1e-4, s, 0.60 + d, 2000.0) for s, d in enumerate(spread)],
           trainable=SMALL[1], sps=50.0),
        at(SMALL, [lora(f"sl{s}", 1e-2, s, 0.57 + d, 1200.0) for s, d in enumerate(spread)],
           trainable=60_000, sps=100.0, total=SMALL[1] + 60_000),
    ])  # fmt: skip
    return pd.concat([tiny, small], ignore_index=True)


def section(text: str) -> str:
    return text.split("## Across model scales\n")[1].split("\n## ")[0]


def test_best_configuration_and_learning_rate_are_chosen_per_model(two_models):
    _, configs = tables(two_models)
    assert scale_mod.models(configs) == ["embedded", "embedded-small"]  # smallest first, by parameters
    assert scale_mod.model_parameters(configs) == {"embedded": TINY[1], "embedded-small": SMALL[1]}
    best = scale_mod.best_per_model(configs, metric=METRIC, mode="max")
    chosen = {(r["model"], r["config/method"]): r["config/train/lr"] for _, r in best.iterrows()}
    assert chosen == {("embedded", "fft"): 1e-3, ("embedded", "lora"): 1e-2, ("embedded-small", "fft"): 1e-4,
                      ("embedded-small", "lora"): 1e-2}  # fmt: skip
    # Across both models FFT's best would be the small model's lr=0.0001: per model, the tiny one keeps lr=0.001.
    overall = analysis.best_config_per(configs, "config/method", metric=METRIC, mode="max")
    assert overall.set_index("config/method").loc["fft", "config/model"] == "embedded-small"


def test_ratios_costs_and_sentences_per_model_without_records(two_models):
    table, configs = tables(two_models)
    result = scale_mod.across_scales(configs, metric=METRIC, mode="max")
    rows = result.table.set_index(["model", "method"])
    lora_tiny, lora_small = rows.loc[("embedded", "lora")], rows.loc[("embedded-small", "lora")]
    assert lora_tiny["ratio"] == pytest.approx(0.40 / 0.50) and lora_small["ratio"] == pytest.approx(
        0.57 / 0.60
    )
    seeds = [0.02, 0.0, -0.02]
    expected = analysis.ratio_interval(analysis.mean_interval([0.40 + d for d in seeds]),
                                       analysis.mean_interval([0.50 + d for d in seeds]))  # fmt: skip
    assert (lora_tiny["ratio_lo"], lora_tiny["ratio_hi"]) == (
        pytest.approx(expected[1]),
        pytest.approx(expected[2]),
    )
    assert lora_tiny["ratio_interval"] == scale_mod.DELTA
    assert lora_tiny["trainable_params_ratio"] == pytest.approx(20_000 / TINY[1])
    assert lora_tiny["peak_mem_mb_ratio"] == pytest.approx(451 / 901)
    assert lora_small["peak_mem_mb_ratio"] == pytest.approx(1201 / 2001)
    assert lora_small["train_samples_per_s_ratio"] == pytest.approx(2.0)
    gap = result.gaps.iloc[0]
    assert (gap["small"], gap["large"], gap["verdict"]) == ("embedded", "embedded-small", "untested")
    assert gap["difference"] == pytest.approx(0.57 / 0.60 - 0.40 / 0.50)

    text = analysis.summary_markdown(table, configs=configs, metric=METRIC, mode="max", baseline=None, name="x")
    part = section(text)
    assert text.index("## Verdict") < text.index("## Across model scales") < text.index("## Protocol")
    assert (
        "- At embedded (935,526 parameters): the best LoRA configuration (text, r=8, alpha=16, lr=0.01; 3 seeds) "
        "reaches 80% of the best FFT configuration's (lr=0.001; 3 seeds) validation label_f1_micro (0.400 vs 0.500; "
        f"95% interval {analysis._pct(expected[1])} to {analysis._pct(expected[2])}, delta method over seeds), "
        "with 2.1% of FFT's trainable parameters, 50% of FFT's peak memory and 1.50x FFT's training throughput "
        "(samples/s)." in part
    )
    assert "- At embedded-small (5,055,974 parameters): the best LoRA configuration" in part
    assert "reaches 95% of the best FFT configuration's (lr=0.0001; 3 seeds)" in part
    assert "with 1.2% of FFT's trainable parameters, 60% of FFT's peak memory and 2.00x FFT's training" in part
    assert (
        "- Learning rate of each model's best configuration (tuned per model on validation): FFT 0.001 at "
        "embedded, 0.0001 at embedded-small; LoRA 0.01 at embedded, 0.01 at embedded-small." in part
    )
    assert (
        "- The gap (LoRA/FFT ratio of validation label_f1_micro) goes from 80% at embedded (935,526 parameters) to "
        "95% at embedded-small (5,055,974 parameters), a difference of +15.0 percentage points; without per-image "
        "records of these four configurations there is no paired interval, so whether the gap narrows or widens "
        "with scale is not decided." in part
    )
    assert "| embedded | 935,526 | LoRA | lora:text r=8 a=16 lr=0.01 model=embedded | 0.01 | 3 |" in part


def test_a_single_model_report_has_no_scale_section_and_is_unchanged(two_models):
    one = two_models[two_models["config/model"] == "embedded"]
    table, configs = tables(one.drop(columns="config/model"))
    plain = analysis.summary_markdown(
        table, configs=configs, metric=METRIC, mode="max", baseline=None, name="x"
    )
    table, configs = tables(one)  # the model named, but only one
    named = analysis.summary_markdown(
        table, configs=configs, metric=METRIC, mode="max", baseline=None, name="x"
    )
    assert named == plain and "Across model scales" not in plain
    assert scale_mod.across_scales(configs, metric=METRIC, mode="max") is None


def _paired(truth, flips: dict, *, seeds: dict | None = None, n_boot: int = 400):
    """One seed per configuration (FFT and LoRA on each model), whose records flip a share ``flips[trial]`` of
    the labels (drawn with ``seeds[trial]``); the frame's F1 is each record's own micro F1, so the table and the
    records agree."""
    seeds = seeds or {tid: i for i, tid in enumerate(flips)}
    recs = {tid: _records(truth, flip, seeds[tid]) for tid, flip in flips.items()}
    f1 = {tid: f1_score(truth == 1, r.pred == 1, average="micro") for tid, r in recs.items()}
    epochs = pd.concat([
        at(TINY, [fft("tf", 1e-3, 0, f1["tf"], 900.0)], trainable=TINY[1], sps=200.0),
        at(TINY, [lora("tl", 1e-2, 0, f1["tl"], 450.0)], trainable=20_000, sps=300.0, total=TINY[1] + 20_000),
        at(SMALL, [fft("sf", 1e-3, 0, f1["sf"], 2000.0)], trainable=SMALL[1], sps=50.0),
        at(SMALL, [lora("sl", 1e-2, 0, f1["sl"], 1200.0)], trainable=60_000, sps=100.0, total=SMALL[1] + 60_000),
    ], ignore_index=True)  # fmt: skip
    table, configs = tables(epochs)
    groups = {r["config_id"]: [recs[r["trial_ids"]]] for _, r in configs.iterrows()}
    split = comparison.Split("validation", truth, groups, uncertain="negative", n_boot=n_boot, seed=0)
    return table, configs, split, f1, recs


def _image_bootstrap_f1(truth, rec, weights):
    """Micro F1 on each resample, from the image weights: an independent image-only bootstrap (one seed)."""
    t, p = truth == 1, rec.pred == 1
    counts = np.stack([(p & t).sum(1), (p & ~t).sum(1), (~p & t).sum(1)], axis=1).astype(float)  # (N, 3)
    tp, fp, fn = (weights @ counts).T
    return 2 * tp / (2 * tp + fp + fn)


def test_paired_gap_narrows_and_matches_an_independent_image_bootstrap():
    truth = (np.random.default_rng(0).random((300, 14)) < 0.3).astype(float)
    flips = {"tf": 0.05, "tl": 0.25, "sf": 0.05, "sl": 0.08}
    table, configs, split, f1, recs = _paired(truth, flips)
    result = scale_mod.across_scales(configs, metric=METRIC, mode="max", split=split)
    rows = result.table.set_index(["model", "method"])
    w = split.resampler.weights.astype(float)
    boot = {tid: _image_bootstrap_f1(truth, rec, w) for tid, rec in recs.items()}
    small_r, large_r = boot["tl"] / boot["tf"], boot["sl"] / boot["sf"]
    lora_tiny = rows.loc[("embedded", "lora")]
    assert lora_tiny["ratio"] == pytest.approx(f1["tl"] / f1["tf"])
    assert lora_tiny["ratio_interval"] == scale_mod.PAIRED
    assert (lora_tiny["ratio_lo"], lora_tiny["ratio_hi"]) == tuple(
        pytest.approx(v, rel=1e-5) for v in np.percentile(small_r, [2.5, 97.5])
    )
    gap = result.gaps.iloc[0]
    assert gap["difference"] == pytest.approx(f1["sl"] / f1["sf"] - f1["tl"] / f1["tf"])
    lo, hi = np.percentile(large_r - small_r, [2.5, 97.5])
    assert (gap["lo"], gap["hi"]) == (pytest.approx(lo, rel=1e-5), pytest.approx(hi, rel=1e-5))
    assert gap["lo"] > 0 and gap["verdict"] == "narrows"
    assert result.n_images == 300
    text = analysis.summary_markdown(table, configs=configs, metric=METRIC, mode="max", baseline=None, name="x",
                                     scale=result)  # fmt: skip
    part = section(text)
    pp = lambda x: f"{100 * x:+.1f}"  # noqa: E731
    assert (
        f"- The gap (LoRA/FFT ratio of validation label_f1_micro) narrows with scale: from "
        f"{analysis._pct(gap['ratio_small'])} at embedded (935,526 parameters) to {analysis._pct(gap['ratio_large'])} "
        f"at embedded-small (5,055,974 parameters), a difference of {pp(gap['difference'])} percentage points (95% "
        f"paired bootstrap interval {pp(lo)} to {pp(hi)}, over the same 300 validation images and the seeds)."
        in part
    )
    assert "paired two-level bootstrap (400 resamples" in part


def test_the_same_predictions_at_both_scales_do_not_change_the_gap():
    """Both models predict exactly alike: resample by resample the two ratios are equal, so the paired difference
    is 0 on every resample (an unpaired bootstrap would not give exactly 0)."""
    truth = (np.random.default_rng(1).random((120, 14)) < 0.3).astype(float)
    flips, seeds = {"tf": 0.05, "tl": 0.2, "sf": 0.05, "sl": 0.2}, {"tf": 0, "tl": 1, "sf": 0, "sl": 1}
    table, configs, split, f1, recs = _paired(truth, flips, seeds=seeds)
    result = scale_mod.across_scales(configs, metric=METRIC, mode="max", split=split)
    gap = result.gaps.iloc[0]
    assert (gap["difference"], gap["lo"], gap["hi"]) == (0.0, 0.0, 0.0) and gap["verdict"] == "unchanged"
    part = section(analysis.summary_markdown(table, configs=configs, metric=METRIC, mode="max", baseline=None,
                                             name="x", scale=result))  # fmt: skip
    assert "The gap (LoRA/FFT ratio of validation label_f1_micro) does not change detectably with scale" in part


def test_a_reference_scoring_zero_gives_no_ratio_and_no_scale_verdict():
    """Tiny FFT reads every label wrong (F1 0): no ratio at that model, so no verdict across scales; the
    intervals are still said to be the paired bootstrap (the records are there)."""
    truth = (np.random.default_rng(2).random((100, 14)) < 0.3).astype(float)
    table, configs, split, f1, _ = _paired(truth, {"tf": 1.0, "tl": 0.2, "sf": 0.05, "sl": 0.1})
    assert f1["tf"] == 0
    result = scale_mod.across_scales(configs, metric=METRIC, mode="max", split=split)
    assert result.gaps.empty and (result.n_images, result.n_boot) == (100, 400)
    part = section(analysis.summary_markdown(table, configs=configs, metric=METRIC, mode="max", baseline=None,
                                             name="x", scale=result))  # fmt: skip
    assert "paired two-level bootstrap (400 resamples" in part
    assert "against 0.000 for the best FFT configuration (lr=0.001; 1 seed; no ratio)" in part
    assert "- No method has a ratio to FFT at both the smallest and the largest model: no verdict" in part


@pytest.mark.parametrize(
    ("small", "large", "lo", "hi", "verdict"),
    [
        (0.80, 0.95, 0.05, 0.25, "narrows"),
        (0.95, 0.80, -0.25, -0.05, "widens"),
        (1.20, 1.05, -0.25, -0.05, "narrows"),  # above FFT and coming down towards it
        (0.90, 1.20, 0.10, 0.50, "reverses"),
        (0.80, 0.85, -0.01, 0.11, "unchanged"),
        (0.80, 0.95, float("nan"), float("nan"), "untested"),
    ],
)
def test_gap_verdict(small, large, lo, hi, verdict):
    assert scale_mod._gap_verdict(small, large, lo, hi) == verdict


def test_model_scale_diagram(tmp_path, two_models):
    _, configs = tables(two_models)
    fig = plots.model_scale_figure(configs, metric=METRIC, mode="max")
    quality = fig.axes[0]
    lines = {line.get_label(): line for line in quality.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"FFT", "LoRA"} and quality.get_xscale() == "log"
    assert lines["LoRA"].get_xdata().tolist() == [TINY[1], SMALL[1]]
    assert lines["LoRA"].get_ydata() == pytest.approx([0.40, 0.57])
    assert lines["FFT"].get_ydata() == pytest.approx([0.50, 0.60])  # each model's own best FFT
    memory = fig.axes[2]
    mem = {line.get_label(): line for line in memory.get_lines() if not line.get_label().startswith("_")}
    assert mem["LoRA"].get_ydata() == pytest.approx([451.0, 1201.0])
    plots.plt.close(fig)
    epochs = analysis.with_config_ids(two_models, configs)
    drawn = plots.draw_all(epochs, configs, tmp_path, metric=METRIC, mode="max")
    assert drawn["model_scale.png"].startswith("validation label_f1_micro, trainable params")
    _nontrivial(tmp_path / "model_scale.png")  # (a one-model report lists no such diagram: test_analysis's set)


def test_the_headline_compares_methods_on_the_largest_model_only():
    """In a sweep over two models, the best configuration per method (verdict, comparisons, jobs.evaluate,
    jobs.export) is chosen among the largest model's configurations, even where the other model scores higher,
    so that LoRA is never compared with FFT on another model; a one-model sweep is untouched."""
    import pandas as pd

    from cxr_core.analysis.tables import best_config_per, headline_pool, largest_model

    configs = pd.DataFrame({
        "config_id": ["fft tiny", "lora tiny", "fft small", "lora small"],
        "config/method": ["fft", "lora", "fft", "lora"],
        "config/model": ["embedded", "embedded", "embedded-small", "embedded-small"],
        "best_label_f1_micro_mean": [0.50, 0.70, 0.45, 0.40],
        "n_seeds": [3, 3, 3, 3],
        "total_params_mean": [935_526, 1_009_254, 5_055_974, 5_277_158],
    })  # fmt: skip
    assert largest_model(configs) == "embedded-small"
    best = best_config_per(configs, "config/method", metric="label_f1_micro", mode="max")
    assert best["config_id"].tolist() == ["fft small", "lora small"]
    one = configs[configs["config/model"] == "embedded"]
    assert largest_model(one) is None and headline_pool(one) is one
    assert best_config_per(one, "config/method", metric="label_f1_micro", mode="max")["config_id"].tolist() == [
        "fft tiny", "lora tiny"
    ]  # fmt: skip


def test_the_printed_answer_of_a_multi_model_report_ends_with_the_gap_sentence(tmp_path):
    import json

    import pandas as pd

    from cxr_core.study_report import answer_lines

    gap = "The gap (LoRA/FFT ratio of validation label_f1_micro) narrows with scale: from 70% to 92%."
    (tmp_path / "objective.json").write_text(json.dumps({"metric": "label_f1_micro", "mode": "max"}))
    pd.DataFrame({"kind": ["lora_vs_fft"], "metric": ["label_f1_micro"], "split": ["val"],
                  "sentence": ["LoRA is worse than FFT."]}).to_csv(tmp_path / "comparisons.csv", index=False)  # fmt: skip
    summary = "# S\n\n## Verdict\n\n- x\n\n## Across model scales\n\nintro\n\n- At embedded: 70%.\n- {}\n\n## Protocol\n"
    (tmp_path / "summary.md").write_text(summary.format(gap))
    assert answer_lines(tmp_path) == ["LoRA is worse than FFT.", gap]
    (tmp_path / "summary.md").write_text("# S\n\n## Verdict\n\n- x\n\n## Protocol\n\n- The gap is not here.\n")
    assert answer_lines(tmp_path) == ["LoRA is worse than FFT."]
