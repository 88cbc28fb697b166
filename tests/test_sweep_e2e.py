"""The sweep and the analysis, end to end: real Ray Tune, two tiny trials, then the report is checked."""

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from cxr_core.labels import LABELS
from cxr_core.report import parse_report
from tests.conftest import two_arm_sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(small_data, tmp_path_factory):
    path = two_arm_sweep(small_data, tmp_path_factory.mktemp("sweep"), name="e2e", max_train=48, max_val=24)
    return path, small_data[1]


def test_report_files(sweep):
    path, _ = sweep
    report = path / "report"
    for name in ("trials.csv", "epochs.csv", "summary.md", "val_loss_curves.png",
                 "quality_vs_trainable_params.png", "cost_per_method.png"):  # fmt: skip
        assert (report / name).is_file(), name
    for png in report.glob("*.png"):
        assert png.stat().st_size > 10_000  # a real figure, not an empty canvas


def test_trials_table_numbers(sweep):
    path, _ = sweep
    trials = pd.read_csv(path / "report" / "trials.csv")
    epochs = pd.read_csv(path / "report" / "epochs.csv")
    assert sorted(trials["variant"]) == ["fft", "lora:all_linear"]
    assert (trials["status"] == "TERMINATED").all() and (trials["epochs_done"] == 2).all()
    for _, row in trials.iterrows():
        mine = epochs[epochs["trial_id"] == row["trial_id"]]
        assert row["best_label_f1_micro"] == pytest.approx(mine["label_f1_micro"].max())
        assert row["final_val_loss"] == pytest.approx(mine.sort_values("epoch")["val_loss"].iloc[-1])


def test_parameter_counts_match_the_model(sweep):
    from torch import nn

    from cxr_core.model import load_model

    path, _ = sweep
    trials = pd.read_csv(path / "report" / "trials.csv").set_index("variant")
    model = load_model("embedded")
    total = sum(p.numel() for p in model.parameters())
    lora = sum(4 * (m.in_features + m.out_features) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n != "output")  # fmt: skip
    assert trials.loc["fft", "trainable_params"] == total == trials.loc["fft", "total_params"]
    assert trials.loc["lora:all_linear", "trainable_params"] == lora
    assert trials.loc["lora:all_linear", "total_params"] == total + lora


def test_constant_baseline_computed_independently(sweep):
    path, splits = sweep
    baseline = json.loads((path / "report" / "baseline.json").read_text())
    train = pd.read_csv(splits / "train_split.csv")
    val = pd.read_csv(splits / "val_split.csv").head(24)
    report = Counter(train["mini_report"]).most_common(1)[0][0]
    pred = np.array([parse_report(report).values] * len(val)) == 1.0
    true = val[list(LABELS)].to_numpy() == 1.0
    assert baseline["label_f1_micro"] == pytest.approx(f1_score(true, pred, average="micro", zero_division=0))
    assert baseline["report"] == report


def test_checkpoints_reload(sweep):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from cxr_core.model import load_model

    path, _ = sweep
    lora_ckpts = sorted(path.glob("lora_*/checkpoint_*/model"))
    fft_ckpts = sorted(path.glob("fft_*/checkpoint_*/model"))
    assert lora_ckpts and fft_ckpts
    assert not list(lora_ckpts[0].glob("model.safetensors"))  # adapters only, never the base model
    PeftModel.from_pretrained(load_model("embedded"), lora_ckpts[-1])
    AutoModelForCausalLM.from_pretrained(fft_ckpts[-1])


def test_the_sweeps_own_metric_travels_with_its_results(small_data, tmp_path):
    """A sweep run with `metric: val_loss, mode: min` is analysed and evaluated by val_loss without flags; a
    --metric flag still overrides, and the summary says which metric chose."""
    from tests.conftest import run_module

    path = two_arm_sweep(
        small_data, tmp_path, name="byloss", max_train=16, max_val=8, objective=("val_loss", "min")
    )
    summary = (path / "report" / "summary.md").read_text()
    assert "best epoch on validation `val_loss` (min; the sweep's own metric)" in summary
    trials = pd.read_csv(path / "report" / "trials.csv")
    epochs = pd.read_csv(path / "report" / "epochs.csv")
    for _, row in trials.iterrows():  # each trial's best epoch is its lowest validation loss
        assert row["best_val_loss"] == pytest.approx(
            epochs[epochs["trial_id"] == row["trial_id"]]["val_loss"].min()
        )
    run_module("jobs.evaluate", str(path))
    assert "val_val_loss" in pd.read_csv(path / "report" / "test_metrics.csv")
    run_module("jobs.analyze", str(path), "--metric", "label_f1_micro", "--out", str(tmp_path / "byf1"))
    text = (tmp_path / "byf1" / "summary.md").read_text()
    assert "`label_f1_micro` (max; chosen with --metric, the sweep's own is val_loss)" in text
