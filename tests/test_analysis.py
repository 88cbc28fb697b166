"""The comparison analysis: seed aggregation, intervals, verdict sentences, partial results and the diagrams.

Fast tests build the tidy frame by hand (the shape :func:`cxr_core.results_frame` returns) and check the
numbers against values computed here independently with numpy/scipy. The slow test runs a real tiny sweep
(two configurations x two seeds) with Ray Tune, then jobs.analyze and jobs.evaluate, and checks the files.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from cxr_core import analysis, plots
from cxr_core.labels import LABELS
from tests.conftest import REPO, run_module

METRIC = "label_f1_micro"
PNGS = (
    "metric_vs_lr.png",
    "lora_rank_alpha_heatmap.png",
    "target_module_ablation.png",
    "quality_vs_trainable_params.png",
    "quality_vs_peak_memory.png",
    "learning_curves.png",
    "val_loss_curves.png",
    "per_label_f1.png",
    "cost_per_method.png",
    "forest_plot.png",
)


def trial(
    trial_id,
    method,
    lr,
    seed,
    f1s,
    *,
    r=None,
    targets=None,
    status="TERMINATED",
    error=None,
    params=1000,
    mem=500.0,
    macro=None,
):
    """Tidy rows of one trial: one per epoch with label_f1_micro = f1s[epoch - 1]."""
    base = {
        "trial_id": trial_id,
        "status": status,
        "error": error,
        "config/name": method,
        "config/method": method,
        "config/train/lr": lr,
        "config/train/seed": seed,
        "config/train/epochs": 2,
        "config/train/batch_size": 16,
        "config/data/max_train": 32,
        "config/lora/r": r,
        "config/lora/alpha": math.nan,
        "config/lora/dropout": 0.0 if method == "lora" else math.nan,  # LoRA-only: not a varying setting
        "config/lora/target_modules": targets if method != "ia3" else None,
        **({"config/ia3/target_modules": targets} if method == "ia3" else {}),
    }
    if not f1s:
        return [base]
    rows = []
    for epoch, f1 in enumerate(f1s, 1):
        row = {
            **base,
            "epoch": epoch,
            METRIC: f1,
            "val_loss": 3.0 - f1 - 0.1 * epoch,
            "bleu4": f1 / 3,
            "label_f1_macro": (macro if macro is not None else f1 / 2) + 0.01 * epoch,
            "trainable_params": params,
            "total_params": 10_000 + (params if method == "lora" else 0),
            "peak_mem_mb": mem + seed,
            "train_samples_per_s": 100.0 + seed,
            "train_tokens_per_s": 5000.0,
            "wall_seconds": 60.0 + epoch,
            "checkpoint_mb": params * 4 / 2**20,
            "peak_mem_kind": "cpu_rss",
        }
        row.update({f"f1/{label}": (f1 * (i + 1) / 14) for i, label in enumerate(LABELS)})
        rows.append(row)
    return rows


def frame(*trials) -> pd.DataFrame:
    return pd.DataFrame([row for t in trials for row in t])


@pytest.fixture
def full():
    """FFT at two learning rates and LoRA (two presets) at one, two seeds each."""
    return frame(
        trial("f1", "fft", 1e-3, 0, [0.40, 0.50], params=10_000, mem=900.0),
        trial("f2", "fft", 1e-3, 1, [0.55, 0.60], params=10_000, mem=900.0),
        trial("f3", "fft", 1e-4, 0, [0.20, 0.30], params=10_000, mem=900.0),
        trial("f4", "fft", 1e-4, 1, [0.25, 0.35], params=10_000, mem=900.0),
        trial("l1", "lora", 1e-2, 0, [0.30, 0.44], r=4, targets="all_linear", params=200, mem=450.0),
        trial("l2", "lora", 1e-2, 1, [0.44, 0.40], r=4, targets="all_linear", params=200, mem=450.0),
        trial("l3", "lora", 1e-2, 0, [0.10, 0.12], r=4, targets="vision", params=80, mem=400.0),
        trial("l4", "lora", 1e-2, 1, [0.11, 0.13], r=4, targets="vision", params=80, mem=400.0),
    )


def tables(epochs):
    table = analysis.trials_table(epochs, metric=METRIC, mode="max")
    configs = analysis.configs_table(table)
    return analysis.with_config_ids(table, configs), configs


def t_interval(values):
    """Independent reference: scipy's own t interval of the mean."""
    x = np.asarray(values, dtype=float)
    if np.ptp(x) == 0:  # no spread: a zero-width interval (scipy answers NaN)
        return x.mean(), x.mean()
    return stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))


# ---------------------------------------------------------------------------------------------- statistics


def test_mean_interval_matches_scipy():
    x = [0.31, 0.35, 0.29, 0.40]
    s = analysis.mean_interval(x)
    lo, hi = t_interval(x)
    assert (s["n"], s["mean"], s["std"]) == (4, pytest.approx(np.mean(x)), pytest.approx(np.std(x, ddof=1)))
    assert (s["lo"], s["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    one = analysis.mean_interval([0.5, math.nan])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["lo"]) and math.isnan(one["std"])


def test_difference_interval_matches_welch_t_test():
    a, b = [0.50, 0.55, 0.61], [0.40, 0.47]
    d, lo, hi = analysis.difference_interval(analysis.mean_interval(a), analysis.mean_interval(b))
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d == pytest.approx(np.mean(a) - np.mean(b))
    assert (lo, hi) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_ratio_interval_reduces_to_t_interval_when_the_reference_is_exact():
    a, b = [0.40, 0.46, 0.43], [0.5, 0.5]  # no spread in b: the ratio's interval is a's t interval / 0.5
    r, lo, hi = analysis.ratio_interval(analysis.mean_interval(a), analysis.mean_interval(b))
    ref_lo, ref_hi = t_interval(a)
    assert r == pytest.approx(np.mean(a) / 0.5)
    assert (lo, hi) == (pytest.approx(ref_lo / 0.5), pytest.approx(ref_hi / 0.5))


def test_pareto_front():
    cost = [10, 20, 30, 5, 20]
    quality = [0.5, 0.7, 0.6, 0.2, 0.65]
    assert analysis.pareto_front(cost, quality).tolist() == [True, True, False, True, False]
    assert analysis.pareto_front(cost, quality, mode="min").tolist() == [False, False, False, True, False]


# -------------------------------------------------------------------------------------------- aggregation


def test_configs_aggregate_seeds_only(full):
    table, configs = tables(full)
    assert len(table) == 8 and len(configs) == 4
    assert set(configs["config_id"]) == {
        "fft lr=0.001",
        "fft lr=0.0001",
        "lora:all_linear r=4 a=8 lr=0.01",
        "lora:vision r=4 a=8 lr=0.01",
    }
    assert (configs["n_seeds"] == 2).all() and set(configs["seeds"]) == {"0,1"}
    # Independently: each trial's best epoch on the metric, then mean / sd over the two seeds; with fewer than 3
    # seeds the row's interval is the min-max over seeds (a 2-seed t interval is 12.7 standard errors wide).
    for cfg_id, trials in (("fft lr=0.001", ("f1", "f2")), ("lora:all_linear r=4 a=8 lr=0.01", ("l1", "l2"))):
        rows = configs.set_index("config_id").loc[cfg_id]
        per_trial = full[full["trial_id"].isin(trials)].sort_values("epoch")
        best = per_trial.loc[per_trial.groupby("trial_id")[METRIC].idxmax()]
        lo, hi = best[METRIC].min(), best[METRIC].max()
        assert rows["interval"] == "min-max"
        assert rows[f"best_{METRIC}_mean"] == pytest.approx(best[METRIC].mean())
        assert rows[f"best_{METRIC}_std"] == pytest.approx(best[METRIC].std(ddof=1))
        assert rows[f"best_{METRIC}_n"] == 2
        assert (rows[f"best_{METRIC}_lo"], rows[f"best_{METRIC}_hi"]) == (pytest.approx(lo), pytest.approx(hi))
        # Other metrics are read at the same (best) epoch, not at their own best.
        assert rows["best_label_f1_macro_mean"] == pytest.approx(best["label_f1_macro"].mean())
        assert rows["best_f1/Edema_mean"] == pytest.approx(best["f1/Edema"].mean())
        assert rows["peak_mem_mb_mean"] == pytest.approx(
            per_trial.groupby("trial_id")["peak_mem_mb"].last().mean()
        )
    # l2's best epoch is its first (0.44 > 0.40): the macro F1 is taken there.
    lora = configs.set_index("config_id").loc["lora:all_linear r=4 a=8 lr=0.01"]
    assert lora["best_label_f1_macro_mean"] == pytest.approx(np.mean([0.44 / 2 + 0.02, 0.44 / 2 + 0.01]))


def test_best_configuration_per_method_is_chosen_on_the_seed_mean(full):
    # f2 alone (0.60) is the best FFT trial; the best FFT configuration is lr=1e-3 by mean (0.55 vs 0.325).
    _, configs = tables(full)
    best = analysis.best_config_per(configs, "config/method", metric=METRIC, mode="max").set_index(
        "config/method"
    )
    assert best.loc["fft", "config_id"] == "fft lr=0.001"
    assert best.loc["lora", "config_id"] == "lora:all_linear r=4 a=8 lr=0.01"
    by_variant = analysis.best_config_per(configs, "variant", metric=METRIC, mode="max")
    assert list(by_variant["variant"]) == ["fft", "lora:all_linear", "lora:vision"]


# ----------------------------------------------------------------------------------------------- verdict


def test_verdict_sentences_are_computed_from_the_data(full):
    table, configs = tables(full)
    text = analysis.summary_markdown(table, configs=configs, metric=METRIC, mode="max", baseline=None, name="x")
    fft, lora = np.mean([0.50, 0.60]), np.mean([0.44, 0.44])
    assert f"reaches {round(100 * lora / fft)}% of the best FFT configuration's" in text
    assert "validation label_f1_micro (2 seeds: no interval)" in text  # no 12.7-standard-error t interval
    assert "with 2% of its trainable parameters, 50% of its peak memory (cpu_rss)" in text
    # Two seeds and no per-image records: the seed ranges are shown, and no verdict is claimed.
    assert "LoRA 0.440 (seeds 0.440 to 0.440) vs FFT 0.550 (seeds 0.500 to 0.600) on label_f1_micro" in text
    assert "the data cannot say whether the difference exceeds seed noise" in text
    assert "lora ran at a single learning rate (0.01): its learning rate was not tuned" in text
    assert "fft's best learning rate is 0.001 (of 0.0001, 0.001: the largest tried" in text
    assert "all_linear's interval" not in text  # no invented wording
    assert "LoRA presets ranked by validation label_f1_micro" in text
    assert "all_linear 0.440 (seeds 0.440 to 0.440) vs vision" in text  # 2 seeds: ranges, no verdict
    assert "The test split has not been evaluated" in text and "python -m jobs.evaluate x" in text


def test_verdict_without_overlap_and_with_one_seed():
    epochs = frame(
        trial("f1", "fft", 1e-3, 0, [0.50, 0.51]),
        trial("f2", "fft", 1e-3, 1, [0.50, 0.52]),
        trial("f3", "fft", 1e-3, 2, [0.50, 0.53]),
        trial("l1", "lora", 1e-2, 0, [0.80, 0.81], r=8, targets="text"),
        trial("l2", "lora", 1e-2, 1, [0.80, 0.82], r=8, targets="text"),
        trial("l3", "lora", 1e-2, 2, [0.80, 0.83], r=8, targets="text"),
    )
    table, configs = tables(epochs)
    text = analysis.summary_markdown(table, configs=configs, metric=METRIC, mode="max", baseline=None, name="x")
    assert "do not overlap" in text and "LoRA is better than FFT on this metric, with 3 seeds" in text
    one = frame(
        trial("f1", "fft", 1e-3, 0, [0.5, 0.5]), trial("l1", "lora", 1e-2, 0, [0.6, 0.6], r=8, targets="text")
    )
    table, configs = tables(one)
    text = analysis.summary_markdown(table, configs=configs, metric=METRIC, mode="max", baseline=None, name="x")
    assert (
        "(one seed: no interval)" in text
        and "the data cannot say whether the difference exceeds seed noise" in text
    )
    assert "overlap" not in text.split("## Protocol")[0]


def test_baseline_line_says_beats_or_not(full):
    table, configs = tables(full)
    base = {"label_f1_micro": 0.45, "label_f1_macro": 0.1, "bleu4": 0.1, "report": "No evidence of edema."}
    text = analysis.summary_markdown(table, configs=configs, metric=METRIC, mode="max", baseline=base, name="x")
    assert (
        "- best fft: label_f1_micro 0.5500 beats the baseline's 0.4500 (its seed range (min-max) lies entirely above it)"
        in text
    )
    assert (
        "- best lora: label_f1_micro 0.4400 does NOT beat the baseline's 0.4500 (its seed range (min-max) lies "
        "entirely below it)" in text
    )


def test_summary_reports_test_numbers_when_evaluated(full):

    table, configs = tables(full)
    # jobs.evaluate's format: one row per evaluated checkpoint (every seed of each group's chosen config).
    rows = [("fft", "f1", 0, 0.52, 0.30), ("fft", "f2", 1, 0.56, 0.32), ("lora", "l1", 0, 0.39, 0.20)]
    test = pd.DataFrame(
        [
            {
                "group": g,
                "config_id": f"{g} cfg",
                "trial_id": t,
                "seed": seed,
                f"val_{METRIC}": 0.5,
                METRIC: m,
                "label_f1_macro": mac,
                "n": 40,
            }
            for g, t, seed, m, mac in rows
        ]  # fmt: skip
    )
    per_label = pd.DataFrame([{"group": g, "label": lab, "f1": 0.5} for g in ("fft", "lora") for lab in LABELS])
    text = analysis.summary_markdown(
        table,
        configs=configs,
        metric=METRIC,
        mode="max",
        baseline=None,
        name="x",
        test=test,
        test_per_label=per_label,
    )
    assert "These are **test-split** numbers" in text and "not been evaluated" not in text
    # Two seeds, no per-image test records: the row shows the min-max over the seeds, not a t interval.
    fft_ci = "0.540 [0.520, 0.560]"
    assert f"| fft | fft cfg | 2 | {fft_ci} |" in text
    assert "| lora | lora cfg | 1 | 0.390 |" in text
    verdict = text.split("## Protocol")[0]
    share = round(100 * 0.39 / 0.54)
    assert f"On the test split: LoRA {METRIC} 0.390 vs FFT {fft_ci} ({share}% of FFT's)" in verdict
    assert "one seed on a side there is no interval" in verdict


@pytest.fixture
def three(full):
    """``full`` plus IA3 on both towers at two learning rates, two seeds each (params: 82,944 at git-base)."""
    return pd.concat([full, frame(
        trial("i1", "ia3", 1e-1, 0, [0.30, 0.36], targets="all", params=80, mem=420.0),
        trial("i2", "ia3", 1e-1, 1, [0.34, 0.32], targets="all", params=80, mem=420.0),
        trial("i3", "ia3", 1e-2, 0, [0.05, 0.10], targets="all", params=80, mem=420.0),
        trial("i4", "ia3", 1e-2, 1, [0.06, 0.08], targets="all", params=80, mem=420.0),
    )], ignore_index=True)  # fmt: skip


def test_a_third_method_gets_its_own_best_configuration_and_verdicts(three):
    table, configs = tables(three)
    best = analysis.best_config_per(configs, "config/method", metric=METRIC, mode="max").set_index(
        "config/method"
    )
    assert best.loc["ia3", "config_id"] == "ia3:all lr=0.1" and best.loc["ia3", "variant"] == "ia3:all"
    text = analysis.summary_markdown(table, configs=configs, metric=METRIC, mode="max", baseline=None, name="x")
    assert text.startswith("# Sweep x: full fine-tuning vs LoRA vs IA3\n")
    verdict = text.split("## Verdict")[1].split("## Protocol")[0]
    fft, lora, ia3 = np.mean([0.50, 0.60]), np.mean([0.44, 0.44]), np.mean([0.36, 0.34])
    # Against FFT, then against LoRA (the method registered before it), with the numbers of this frame.
    vs_fft = (f"- The best IA3 configuration (all, lr=0.1; 2 seeds) reaches {round(100 * ia3 / fft)}% of the best FFT "
              "configuration's (lr=0.001; 2 seeds) validation label_f1_micro (2 seeds: no interval), with 0.8% of its "
              "trainable parameters, 47% of its peak memory (cpu_rss)")  # fmt: skip
    vs_lora = (f"- The best IA3 configuration (all, lr=0.1; 2 seeds) reaches {round(100 * ia3 / lora)}% of the best "
               "LoRA configuration's (all_linear, r=4, alpha=8, lr=0.01; 2 seeds) validation label_f1_micro")  # fmt: skip
    assert vs_fft in verdict and vs_lora in verdict
    assert verdict.index("- The best LoRA configuration") < verdict.index(vs_fft) < verdict.index(vs_lora)
    assert "IA3 0.350 (seeds 0.340 to 0.360) vs LoRA 0.440 (seeds 0.440 to 0.440) on label_f1_micro" in verdict
    assert (
        "The best IA3 learning rate is 100x the best FFT one (IA3 usually needs a higher one than LoRA)."
        in text
    )
    assert (
        "ia3's best learning rate is 0.1 (of 0.01, 0.1: the largest tried, a higher one may do better)." in text
    )
    assert "| label | FFT F1 [95% CI] | LoRA F1 [95% CI] | IA3 F1 [95% CI] | LoRA - FFT | IA3 - FFT |" in text
    assert "| ia3:all | ia3:all lr=0.1 | 80 (0.8% of FFT) |" in text  # the cost table, against FFT
    assert "None: every trial finished" in text


def _records(truth, flip: float, seed: int):
    """Per-image records of a model that reads every label right except a share ``flip`` of them, flipped."""
    from cxr_core.records import ImageRecords

    rng = np.random.default_rng(seed)
    pred = np.where(rng.random(truth.shape) < flip, 1.0 - truth, truth)
    n = len(truth)
    return ImageRecords(rows=np.arange(n, dtype=np.int32), pred=pred, loss_sum=np.ones(n, np.float32),
                        tokens=np.full(n, 10, np.int32), sentences=np.full(n, 14, np.int16),
                        unparsed=np.zeros(n, np.int16))  # fmt: skip


def test_paired_comparisons_of_three_methods_on_validation_and_test(three):
    """Each method's best vs FFT's and IA3's vs LoRA's, paired on the same images, with the differences an
    independent sklearn computation gives; then the verdict section says them in that order, and the test split
    compares the groups jobs.evaluate scored the same way."""
    from sklearn.metrics import f1_score

    from cxr_core import comparison

    table, configs = tables(three)
    truth = (np.random.default_rng(0).random((80, 14)) < 0.3).astype(float)
    flips = {"fft": 0.05, "lora": 0.15, "ia3": 0.25}
    groups = {row["config_id"]: [_records(truth, flips[row["config/method"]], 10 * i + s) for s in range(2)]
              for i, (_, row) in enumerate(configs.iterrows())}  # fmt: skip
    split = comparison.Split("validation", truth, groups, uncertain="negative", n_boot=200, seed=0)
    rows = pd.DataFrame(
        comparison.validation_comparisons(configs, split, metric=METRIC, mode="max", margin=0.02)
    )
    main = rows[rows["kind"].isin(["lora_vs_fft", "ia3_vs_fft", "ia3_vs_lora"])]
    best = {"fft": "fft lr=0.001", "lora": "lora:all_linear r=4 a=8 lr=0.01", "ia3": "ia3:all lr=0.1"}
    assert list(zip(main["kind"], main["a"], main["b"], strict=True)) == [
        ("lora_vs_fft", best["lora"], best["fft"]), ("ia3_vs_fft", best["ia3"], best["fft"]),
        ("ia3_vs_lora", best["ia3"], best["lora"]),
    ]  # fmt: skip

    def f1(config_id):  # mean over seeds of the micro F1 on all images
        return np.mean([f1_score(truth == 1, r.pred == 1, average="micro") for r in groups[config_id]])

    for _, r in main.iterrows():
        assert r["difference"] == pytest.approx(f1(r["a"]) - f1(r["b"]))
        assert r["verdict"] == "b_better" and r["a_variant"] == r["a"].split(" ")[0]
    # IA3 is one preset: no preset_vs_preset of its own; its two configurations are both in the forest.
    assert set(rows.loc[rows["kind"] == "config_vs_fft", "a"]) >= {"ia3:all lr=0.1", "ia3:all lr=0.01"}
    assert set(rows.loc[rows["kind"] == "preset_vs_fft", "a"]) == {best["lora"], "lora:vision r=4 a=8 lr=0.01",
                                                                   best["ia3"]}  # fmt: skip
    frame = comparison.comparisons_frame(rows.to_dict("records"))
    text = analysis.summary_markdown(table, configs=configs, metric=METRIC, mode="max", baseline=None, name="x",
                                     comparisons=frame)  # fmt: skip
    verdict = text.split("## Verdict")[1].split("## Protocol")[0]
    at = [verdict.index(s) for s in main["sentence"]]
    assert at == sorted(at) and verdict.index("- The best IA3 configuration") < at[2]
    assert main["sentence"].iloc[2].startswith("IA3 all lr=0.1 is worse than LoRA all_linear r=4 a=8 lr=0.01")

    test = pd.DataFrame(
        [
            {"group": g, "config_id": c}
            for g, c in (*best.items(), ("lora:vision", "lora:vision r=4 a=8 lr=0.01"))
        ]
    )
    on_test = comparison.Split("test", truth, {c: groups[c] for c in test["config_id"]}, uncertain="negative",
                               n_boot=200, seed=0)  # fmt: skip
    rows = comparison.test_comparisons(on_test, test, best=best, metric=METRIC, margin=0.02)
    assert [(r["kind"], r["a"], r["b"]) for r in rows] == [
        ("lora_vs_fft", best["lora"], best["fft"]), ("ia3_vs_fft", best["ia3"], best["fft"]),
        ("ia3_vs_lora", best["ia3"], best["lora"]),
        ("preset_vs_fft", "lora:vision r=4 a=8 lr=0.01", best["fft"]),
    ]  # fmt: skip
    assert rows[-1]["a_variant"] == "lora:vision" and rows[1]["sentence"].endswith("2 vs 2 seeds.")


# ------------------------------------------------------------------------------------- partial results


def test_errored_and_running_trials_are_named_not_fatal(full):
    epochs = pd.concat(
        [
            full[full["trial_id"] != "l2"],
            frame(
                trial(
                    "l2",
                    "lora",
                    1e-2,
                    1,
                    [],
                    r=4,
                    targets="all_linear",
                    status="ERROR",
                    error="RuntimeError: CUDA out of memory",
                )
            ),
            frame(trial("f9", "fft", 3e-3, 0, [0.1], status="RUNNING")),
            frame(trial("f8", "fft", 3e-3, 1, [], status="PENDING")),
        ],
        ignore_index=True,
    )
    table, configs = tables(epochs)
    row = configs.set_index("config_id").loc["lora:all_linear r=4 a=8 lr=0.01"]
    assert (row["n_seeds"], row["n_errored"], row["best_label_f1_micro_mean"]) == (1, 1, pytest.approx(0.44))
    assert math.isnan(row["best_label_f1_micro_lo"])  # one seed left: no interval
    running = configs.set_index("config_id").loc["fft lr=0.003"]
    assert (running["n_seeds"], running["n_unfinished"], running["n_unreported"]) == (1, 1, 1)
    text = analysis.summary_markdown(table, configs=configs, metric=METRIC, mode="max", baseline=None, name="x")
    missing = text.split("## Missing, failed or unfinished")[1]
    assert (
        "- l2 (lora:all_linear) errored: RuntimeError: CUDA out of memory; left out of the statistics"
        in missing
    )
    assert "- f9 (fft) is RUNNING after 1 epoch(s): its numbers are provisional" in missing
    assert "- f8 (fft) is PENDING and has reported nothing yet" in missing
    assert "- configuration lora:all_linear r=4 a=8 lr=0.01: 1 of 2 seeds have results" in missing


def test_single_method_sweep_says_the_comparison_is_missing(tmp_path, full):
    only_fft = full[full["config/method"] == "fft"]
    table, configs = tables(only_fft)
    text = analysis.summary_markdown(table, configs=configs, metric=METRIC, mode="max", baseline=None, name="x")
    assert "Only fft has results: no comparison between methods can be made from this sweep." in text
    assert "- no trial of another method in this sweep: the comparison with fft is one-sided" in text
    drawn = plots.draw_all(
        analysis.with_config_ids(only_fft, configs), configs, tmp_path, metric=METRIC, mode="max"
    )
    assert drawn["per_label_f1.png"] == "not drawn: needs FFT and another method; results have fft"
    assert drawn["lora_rank_alpha_heatmap.png"].startswith("not drawn: no LoRA configuration")
    assert (tmp_path / "metric_vs_lr.png").is_file() and not (tmp_path / "per_label_f1.png").exists()


def test_nothing_reported_yet_still_summarises():
    epochs = frame(
        trial("f1", "fft", 1e-3, 0, [], status="PENDING"),
        trial("l1", "lora", 1e-2, 0, [], r=4, targets="text", status="PENDING"),
    )
    table = analysis.trials_table(epochs, metric=METRIC, mode="max")
    text = analysis.summary_markdown(table, metric=METRIC, mode="max", baseline=None, name="x")
    assert "No trial has reported yet." in text and "- no fft trial has results yet" in text


# -------------------------------------------------------------------------------------------- diagrams


def _nontrivial(path):
    assert path.stat().st_size > 10_000, path.name
    pixels = np.asarray(Image.open(path).convert("L"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500, path.name
    assert (pixels < 128).mean() > 0.005 and len(np.unique(pixels)) > 20, path.name  # drawn on, not blank


def test_every_diagram_is_drawn(tmp_path, full):
    table, configs = tables(full)
    epochs = analysis.with_config_ids(full, configs)
    best_fft = (
        configs[configs["config/method"] == "fft"].sort_values(f"best_{METRIC}_mean").iloc[-1]["config_id"]
    )
    comparisons = pd.DataFrame(
        [
            {"kind": "config_vs_fft", "a": row["config_id"], "b": best_fft, "a_variant": row["variant"],
             "b_variant": "fft", "split": "val", "metric": METRIC, "difference": -0.1 * i, "lo": -0.1 * i - 0.05,
             "hi": -0.1 * i + 0.05, "p_a_better": 0.4, "verdict": "inconclusive", "margin": 0.02, "n_images": 100,
             "n_seeds_a": 2, "n_seeds_b": 2}
            for i, (_, row) in enumerate(configs[configs["config/method"] == "lora"].iterrows())
        ]
    )  # fmt: skip
    drawn = plots.draw_all(epochs, configs, tmp_path, metric=METRIC, mode="max", baseline=0.3, memory_kind="cpu",
                           comparisons=comparisons)  # fmt: skip
    assert set(drawn) == set(PNGS)
    assert not [d for d in drawn.values() if d.startswith("not drawn")]
    for name in PNGS:
        _nontrivial(tmp_path / name)


def test_analyze_cli_bad_path_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.analyze", str(tmp_path / "nope")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_results_frame_is_exposed_without_importing_ray():
    code = "import sys, cxr_core; f = cxr_core.results_frame; print('ray' in sys.modules, f.__module__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "cxr_core.tune_runner"], out.stderr


# ------------------------------------------------------------------------------ a real sweep, end to end


@pytest.fixture(scope="module")
def sweep(seeds_sweep):
    return seeds_sweep


def _records_point(trial_path, epoch, split_dir, metric):
    """``metric`` recomputed from a trial's per-image validation records at ``epoch``."""
    from cxr_core import bootstrap
    from cxr_core.records import load_records, reference_labels

    rec = load_records(f"{trial_path}/records/val_epoch{int(epoch):03d}.npz")
    truth = reference_labels(split_dir, "val")[rec.rows]
    seeds = bootstrap.SeedRecords(pred=rec.pred[None], loss_sum=rec.loss_sum[None], tokens=rec.tokens[None],
                                  unparsed=rec.unparsed[None], sentences=rec.sentences[None])  # fmt: skip
    return bootstrap.point(truth, seeds, metric=metric)


@pytest.mark.slow
def test_real_sweep_aggregates_two_seeds(sweep):
    report = sweep / "report"
    epochs = pd.read_csv(report / "epochs.csv")
    configs = pd.read_csv(report / "configs.csv").set_index("variant")
    assert sorted(configs.index) == ["fft", "lora:all_linear"]
    assert (configs["n_seeds"] == 2).all() and set(configs["seeds"].astype(str)) == {"0,1"}
    for variant, method in (("fft", "fft"), ("lora:all_linear", "lora")):
        mine = epochs[epochs["config/method"] == method].sort_values("epoch")
        assert mine["trial_id"].nunique() == 2 and sorted(mine["config/train/seed"].unique()) == [0, 1]
        best = mine.loc[mine.groupby("trial_id")[METRIC].idxmax()]  # each seed's best epoch
        row = configs.loc[variant]
        assert row[f"best_{METRIC}_mean"] == pytest.approx(best[METRIC].mean())
        assert row[f"best_{METRIC}_std"] == pytest.approx(best[METRIC].std(ddof=1), abs=1e-12)
        assert row["best_label_f1_macro_mean"] == pytest.approx(best["label_f1_macro"].mean())
        # Per-image records exist for every epoch: the interval is the two-level bootstrap, inside [0, 1].
        assert row["interval"] == "bootstrap"
        assert 0 <= row[f"best_{METRIC}_lo"] <= row[f"best_{METRIC}_mean"] <= row[f"best_{METRIC}_hi"] <= 1
        for _, b in best.iterrows():  # the records reproduce what the trial reported, exactly
            for m in (METRIC, "label_f1_macro", "val_loss", "unparsed_rate"):
                assert _records_point(b["trial_path"], b["epoch"], b["config/data/split_dir"], m) == (
                    pytest.approx(b[m], abs=1e-6)
                ), m
        last = mine.groupby("trial_id").last()
        assert row["peak_mem_mb_mean"] == pytest.approx(last["peak_mem_mb"].mean())
        assert row["trainable_params_mean"] == last["trainable_params"].iloc[0]
    summary = (report / "summary.md").read_text()
    fft, lora = configs.loc["fft"], configs.loc["lora:all_linear"]
    start = "The best LoRA configuration (all_linear, r=4, alpha=8, lr=0.005; 2 seeds)"
    if fft[f"best_{METRIC}_mean"] > 0:
        pct = analysis._pct(lora[f"best_{METRIC}_mean"] / fft[f"best_{METRIC}_mean"])
        assert f"{start} reaches {pct} of" in summary
    else:
        assert f"{start} is compared with" in summary
    params = analysis._pct(lora["trainable_params_mean"] / fft["trainable_params_mean"])
    assert f"LoRA uses {params} of FFT's trainable parameters" in summary
    assert "Planned at git-base (the study's target scale" in summary
    comparisons = pd.read_csv(report / "comparisons.csv")
    main = comparisons[(comparisons["kind"] == "lora_vs_fft") & (comparisons["metric"] == METRIC)].iloc[0]
    assert main["verdict"] in ("a_better", "b_better", "equivalent", "inconclusive")
    assert main["sentence"] in summary.split("## Protocol")[0]
    assert main["difference"] == pytest.approx(lora[f"best_{METRIC}_mean"] - fft[f"best_{METRIC}_mean"])
    assert main["lo"] <= main["difference"] <= main["hi"] and main["n_images"] == epochs["n_val"].iloc[0]
    assert "The test split has not been evaluated" in summary
    for name in ("trials.csv", "epochs.csv", "configs.csv", "summary.md", "comparisons.csv"):
        assert (report / name).is_file()
    for name in PNGS:
        _nontrivial(report / name)


@pytest.mark.slow
def test_real_sweep_paired_verdict_on_val_loss(sweep, tmp_path):
    """Selecting on val_loss (lower is better): the paired difference is the mean over seeds of each side's best
    validation loss, computed here from epochs.csv, and the verdict's direction follows its interval."""
    run_module(
        "jobs.analyze", str(sweep), "--metric", "val_loss", "--mode", "min", "--out", str(tmp_path / "loss")
    )
    epochs = pd.read_csv(tmp_path / "loss" / "epochs.csv")
    best = epochs.groupby(["config/method", "trial_id"])["val_loss"].min()
    d = best.loc["lora"].mean() - best.loc["fft"].mean()
    rows = pd.read_csv(tmp_path / "loss" / "comparisons.csv")
    row = rows[(rows["kind"] == "lora_vs_fft") & (rows["metric"] == "val_loss")].iloc[0]
    assert row["difference"] == pytest.approx(d, abs=1e-6)
    assert row["lo"] <= d <= row["hi"] and 0 <= row["p_a_better"] <= 1
    if row["hi"] < 0 and not (row["lo"] >= -0.02 and row["hi"] <= 0.02):
        assert row["verdict"] == "a_better"  # LoRA's loss lower on every resample side of 0
    if row["lo"] > 0 and not (row["lo"] >= -0.02 and row["hi"] <= 0.02):
        assert row["verdict"] == "b_better"
    assert row["sentence"] in (tmp_path / "loss" / "summary.md").read_text()


@pytest.mark.slow
def test_real_sweep_test_numbers_flow_into_the_summary(sweep, tmp_path):
    from cxr_core.records import load_records

    run_module("jobs.evaluate", str(sweep))
    test = pd.read_csv(sweep / "report" / "test_metrics.csv")
    # Every seed of each group's best configuration is evaluated: 2 seeds per group here.
    assert sorted(test["group"]) == ["fft", "fft", "lora", "lora"] and set(test["seed"]) == {0, 1}
    assert test.groupby("group")["config_id"].nunique().eq(1).all()
    for trial_id, n in zip(
        test["trial_id"], test["n"], strict=True
    ):  # per-image test records, one per checkpoint
        assert len(load_records(str(sweep / "report" / "test_records" / f"{trial_id}.npz"))) == n
    out = tmp_path / "elsewhere"
    run_module("jobs.analyze", str(sweep), "--out", str(out))  # finds the test tables in RESULTS/report
    run_module("jobs.analyze", str(sweep))  # re-analysing keeps jobs.evaluate's files
    assert (sweep / "report" / "test_metrics.csv").is_file() and (sweep / "report" / "test_records").is_dir()
    for folder in (out, sweep / "report"):
        summary = (folder / "summary.md").read_text()
        assert "These are **test-split** numbers" in summary and "not been evaluated" not in summary
        assert "two-level bootstrap interval over seeds and test images" in summary
        comparisons = pd.read_csv(folder / "comparisons.csv")
        on_test = comparisons[(comparisons["split"] == "test") & (comparisons["metric"] == METRIC)]
        config_of = dict(zip(test["group"], test["config_id"], strict=False))
        assert len(on_test) == 1 and on_test.iloc[0]["kind"] == "lora_vs_fft"
        assert (on_test.iloc[0]["a"], on_test.iloc[0]["b"]) == (config_of["lora"], config_of["fft"])
        means = test.groupby("group")[METRIC].mean()
        assert on_test.iloc[0]["difference"] == pytest.approx(means["lora"] - means["fft"], abs=1e-6)
        assert on_test.iloc[0]["sentence"] in summary.split("## Protocol")[0]
        for group, rows in test.groupby("group"):
            mean = rows[METRIC].mean()
            line = next(
                x
                for x in summary.splitlines()
                if x.startswith(f"| {group} | {rows['config_id'].iloc[0]} | 2 |")
            )
            cell = line.split(" | ")[3]
            lo, hi = (float(v) for v in cell.split("[")[1].rstrip("]").split(", "))
            assert cell.startswith(f"{mean:.3f} [") and 0 <= lo <= mean + 1e-3 and mean - 1e-3 <= hi <= 1


@pytest.mark.slow
def test_results_frame_reads_a_storage_uri(sweep):
    from cxr_core import results_frame

    local = results_frame(sweep)
    uri = results_frame(f"file://{sweep}")
    assert len(uri) == len(local) == 8  # 4 trials x 2 epochs
    cols = ["trial_id", "epoch", METRIC]
    pd.testing.assert_frame_equal(
        uri[cols].sort_values(cols[:2]).reset_index(drop=True),
        local[cols].sort_values(cols[:2]).reset_index(drop=True),
    )
