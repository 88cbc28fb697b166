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
    path = two_arm_sweep(small_data, tmp_path_factory.mktemp("sweep"), name="e2e", max_train=48, max_val=24,
                         sweep_args=("--mlflow",))  # fmt: skip
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


def read_events(folder):
    """Every event of a trial folder's TensorBoard files (TFRecord framing: length, crc, data, crc), parsed
    with tensorboardX's own protobufs: (scalars {tag: [(step, value)]}, hparams {name: value})."""
    import struct

    from tensorboardX.proto import event_pb2, plugin_hparams_pb2

    scalars, hparams = {}, {}
    for file in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = file.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif value.tag == "_hparams_/session_start_info":
                    content = value.metadata.plugin_data.content
                    info = plugin_hparams_pb2.HParamsPluginData.FromString(content).session_start_info
                    for k, v in info.hparams.items():
                        hparams[k] = getattr(v, v.WhichOneof("kind"))
    return scalars, hparams


def test_tensorboard_has_every_epoch_of_every_trial_and_flat_hparams(sweep):
    path, _ = sweep
    epochs = pd.read_csv(path / "report" / "epochs.csv")
    folders = sorted(p for p in path.iterdir() if p.is_dir() and list(p.glob("events.out.tfevents.*")))
    assert len(folders) == 2
    for folder in folders:
        scalars, hp = read_events(folder)
        mine = epochs[epochs["trial_path"].astype(str).str.endswith(folder.name)].sort_values("epoch")
        for metric in ("val_loss", "label_f1_micro"):
            steps, values = zip(*scalars[f"ray/tune/{metric}"], strict=True)
            assert list(steps) == [1, 2]
            assert np.allclose(values, mine[metric], atol=1e-6)
        assert {"arm", "method", "lr", "seed", "epochs", "batch_size"} <= set(hp)
        assert not any("/" in k for k in hp)
        assert hp["lr"] == pytest.approx(1e-3 if hp["method"] == "fft" else 5e-3)
        if hp["method"] == "lora":
            assert hp["r"] == 4 and hp["target_modules"] == "all_linear"


def test_mlflow_has_a_run_per_trial_under_the_sweep_and_the_report(sweep):
    from mlflow.tracking import MlflowClient

    path, _ = sweep
    info = json.loads((path / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=info["uri"])
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.info.run_id == info["parent_run_id"]]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == info["parent_run_id"]]
    assert len(parent) == 1 and len(children) == 2 and len(runs) == 3
    for run in children:
        params = run.data.params
        assert params["config/method"] == params["method"] and float(params["config/train/lr"]) == float(
            params["lr"]
        )
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(info["parent_run_id"], "report")}
    assert "report/summary.md" in artifacts and "report/comparisons.csv" in artifacts
