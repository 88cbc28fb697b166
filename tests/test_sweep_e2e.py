"""The sweep and the analysis, end to end: real Ray Tune, three tiny trials (FFT, LoRA and IA3), then the report is
checked: numbers, parameter counts, checkpoints, and IA3 in the verdicts and on every diagram."""

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from sklearn.metrics import f1_score

from cxr_core import analysis, plots
from cxr_core.labels import LABELS
from cxr_core.mini_report import parse_report
from tests.conftest import two_arm_sweep

pytestmark = pytest.mark.slow
METRIC = "label_f1_micro"
IA3_LR = 0.3  # IA3 needs far larger steps than LoRA (search_spaces/fft_lora_ia3.yaml)
IA3_ARM = f"""  - name: ia3
    method: ia3
    ia3: {{target_modules: all}}
    train: {{lr: {IA3_LR}}}
"""


@pytest.fixture(scope="module")
def sweep(small_data, tmp_path_factory):
    path = two_arm_sweep(small_data, tmp_path_factory.mktemp("sweep"), name="e2e", max_train=48, max_val=24,
                         extra_arms=IA3_ARM, sweep_args=("--mlflow",))  # fmt: skip
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
    assert sorted(trials["variant"]) == ["fft", "ia3:all", "lora:all_linear"]
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
    # IA3 (all): one vector per key and value projection (its output width) and per feed-forward down projection
    # (its input width), in both towers.
    ia3 = sum(m.out_features if n.endswith(("k_proj", "v_proj", "self.key", "self.value")) else m.in_features
              for n, m in model.named_modules()
              if n.endswith(("k_proj", "v_proj", "self.key", "self.value", "fc2"))
              or (n.endswith("output.dense") and "attention" not in n))  # fmt: skip
    assert trials.loc["fft", "trainable_params"] == total == trials.loc["fft", "total_params"]
    assert trials.loc["lora:all_linear", "trainable_params"] == lora
    assert trials.loc["lora:all_linear", "total_params"] == total + lora
    assert trials.loc["ia3:all", "trainable_params"] == ia3 == 2 * (128 + 128 + 512) * 2  # 2 layers per tower
    assert trials.loc["ia3:all", "total_params"] == total + ia3


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
    lora_ckpts = sorted(path.glob("lora-all_linear-*/checkpoint_*/model"))
    ia3_ckpts = sorted(path.glob("ia3-all-*/checkpoint_*/model"))
    fft_ckpts = sorted(path.glob("fft-*/checkpoint_*/model"))
    assert lora_ckpts and fft_ckpts and ia3_ckpts
    for adapter in (lora_ckpts[0], ia3_ckpts[0]):  # adapters only, never the base model
        assert not list(adapter.glob("model.safetensors")) and (adapter / "adapter_model.safetensors").is_file()
    PeftModel.from_pretrained(load_model("embedded"), lora_ckpts[-1])
    reloaded = PeftModel.from_pretrained(load_model("embedded"), ia3_ckpts[-1])
    assert reloaded.peft_config["default"].peft_type == "IA3"
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
    assert len(folders) == 3  # FFT, LoRA, IA3
    for folder in folders:
        scalars, hp = read_events(folder)
        mine = epochs[epochs["trial_path"].astype(str).str.endswith(folder.name)].sort_values("epoch")
        for metric in ("val_loss", "label_f1_micro"):
            steps, values = zip(*scalars[f"ray/tune/{metric}"], strict=True)
            assert list(steps) == [1, 2]
            assert np.allclose(values, mine[metric], atol=1e-6)
        assert {"arm", "method", "lr", "seed", "epochs", "batch_size"} <= set(hp)
        assert not any("/" in k for k in hp)
        assert hp["lr"] == pytest.approx({"fft": 1e-3, "lora": 5e-3, "ia3": IA3_LR}[hp["method"]])
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
    assert len(parent) == 1 and len(children) == 3 and len(runs) == 4
    for run in children:
        params = run.data.params
        assert params["config/method"] == params["method"] and float(params["config/train/lr"]) == float(
            params["lr"]
        )
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(info["parent_run_id"], "report")}
    assert "report/summary.md" in artifacts and "report/comparisons.csv" in artifacts


def test_ia3_has_its_best_configuration_and_verdicts_against_fft_and_lora(sweep):
    path, _ = sweep
    report = path / "report"
    summary = (report / "summary.md").read_text()
    verdict = summary.split("## Verdict")[1].split("## Protocol")[0]
    configs = pd.read_csv(report / "configs.csv").set_index("variant")
    ia3, fft = configs.loc["ia3:all"], configs.loc["fft"]
    assert ia3["config_id"] == f"ia3:all lr={IA3_LR:g}" and ia3["interval"] == "bootstrap"
    best = summary.split("## Best configuration per method (validation)")[1].split("##")[0]
    assert f"| ia3:all lr={IA3_LR:g} | 1 |" in best
    comparisons = pd.read_csv(report / "comparisons.csv")
    main = comparisons[(comparisons["split"] == "val") & (comparisons["metric"] == METRIC)]
    kinds = main.set_index("kind")
    assert {"lora_vs_fft", "ia3_vs_fft", "ia3_vs_lora"} <= set(kinds.index)
    assert (kinds.loc["ia3_vs_fft", "a"], kinds.loc["ia3_vs_fft", "b"]) == (ia3["config_id"], fft["config_id"])
    assert kinds.loc["ia3_vs_lora", "b"] == configs.loc["lora:all_linear", "config_id"]
    assert kinds.loc["ia3_vs_fft", "difference"] == pytest.approx(
        ia3[f"best_{METRIC}_mean"] - fft[f"best_{METRIC}_mean"], abs=1e-6
    )
    for kind in ("lora_vs_fft", "ia3_vs_fft", "ia3_vs_lora"):
        sentence = kinds.loc[kind, "sentence"]
        assert sentence in verdict, kind
    assert kinds.loc["ia3_vs_lora", "sentence"].startswith(f"IA3 all lr={IA3_LR:g} ")
    assert f"- The best IA3 configuration (all, lr={IA3_LR:g}; 1 seed)" in verdict
    share = analysis._pct(82_944 / 176_619_066)  # IA3 on all of git-base: 18 layers x (768 + 768 + 3072)
    assert f"IA3 trains {share} of FFT's parameters (82,944 vs 176,619,066)" in verdict
    header = "| label | FFT F1 [95% CI] | LoRA F1 [95% CI] | IA3 F1 [95% CI] | LoRA - FFT | IA3 - FFT |"
    assert header in summary


def test_ia3_is_on_every_diagram(sweep):
    """Each figure, rebuilt from the report's own tables, draws IA3: its panel, bar, points, curves and forest row
    (the rank x alpha heatmap is LoRA's: IA3 has neither)."""
    path, _ = sweep
    report = path / "report"
    configs = pd.read_csv(report / "configs.csv")
    epochs = pd.read_csv(report / "epochs.csv")
    comparisons = pd.read_csv(report / "comparisons.csv")
    ia3 = configs.set_index("variant").loc["ia3:all"]
    mean, params = ia3[f"best_{METRIC}_mean"], ia3["trainable_params_mean"]

    panels = {ax.get_title(): ax for ax in plots.metric_vs_lr_figure(configs, metric=METRIC).axes}
    (line,), _ = panels["ia3:all"].get_legend_handles_labels()  # one series: one configuration
    ((x, y),) = zip(*line.get_data(), strict=True)
    assert (x, y) == (pytest.approx(IA3_LR), pytest.approx(mean))

    ax = plots.target_module_ablation_figure(configs, metric=METRIC, mode="max").axes[0]
    ticks = [t.get_text().split("\n")[0] for t in ax.get_xticklabels()]
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    heights = dict(zip(ticks, (bar.get_height() for bar in bars), strict=True))
    assert set(ticks) == {"LoRA all_linear", "IA3 all"} and heights["IA3 all"] == pytest.approx(mean)

    for figure in (plots._pareto_figure(configs, cost="trainable_params", xlabel="x", metric=METRIC, mode="max",
                                        baseline=None, logx=True, title="t"),):  # fmt: skip
        ax = figure.axes[0]
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "ia3:all"]
        assert (line.get_xdata()[0], line.get_ydata()[0]) == (pytest.approx(params), pytest.approx(mean))

    labels = plots.val_loss_curves_figure(epochs).axes[0].get_legend_handles_labels()[1]
    assert "ia3:all" in labels
    curves = plots.learning_curves_figure(epochs, configs, metric=METRIC, mode="max")
    assert any(label.startswith(ia3["config_id"]) for label in curves.axes[-1].get_legend_handles_labels()[1])

    ax = plots.per_label_f1_figure(configs, metric=METRIC, mode="max").axes[0]
    legend = ax.get_legend_handles_labels()[1]
    assert [label.split(":")[0] for label in legend] == ["best FFT", "best LoRA", "best IA3"]
    assert [len(c) for c in ax.containers if isinstance(c, BarContainer)] == [len(LABELS)] * 3

    cost = plots.cost_per_method_figure(configs, metric=METRIC, mode="max")
    assert all("ia3:all" in [t.get_text() for t in ax.get_xticklabels()] for ax in cost.axes if ax.get_title())

    ax = plots.forest_plot_figure(comparisons, metric=METRIC, margin=0.02).axes[0]
    assert ia3["config_id"] in [t.get_text() for t in ax.get_yticklabels()]
    assert ax.get_xlabel() == f"difference in {METRIC} (LoRA / IA3 - FFT)"
    drawn = (report / "summary.md").read_text().split("## Diagrams")[1]
    assert "every LoRA / IA3 configuration to the best FFT configuration" in drawn


def test_the_console_is_a_calm_table_with_one_name_per_trial(sweep):
    """What jobs.sweep printed: the live table (flat columns, every trial, the study's metric), its progress line,
    no library warnings (they are in driver.log), and trial folders named as the table names them."""
    path, _ = sweep
    console = (path.parents[1] / "sweep_console.txt").read_text()
    lines = console.splitlines()
    assert len(lines) < 60
    noisy = [x for x in lines if "WARNING" in x or "Warning" in x or "Traceback" in x or " INFO " in x]
    assert not noisy, console  # the whole console, so that a rare failure says what printed it
    tables = [i for i, x in enumerate(lines) if x.startswith("arm ")]
    assert all(
        len(x) <= 120 for x in lines if x.startswith(("[sweep] 3 trials", "arm ", "fft ", "lora ", "ia3 "))
    )
    header = lines[tables[-1]].split()
    assert header == ["arm", "method", "preset", "r", "alpha", "lr", "seed", "status", "epoch", "val_loss",
                      "f1_micro", "best"]  # fmt: skip
    final = lines[tables[-1] + 1 : tables[-1] + 4]
    assert sorted(row.split()[1] for row in final) == ["fft", "ia3", "lora"]
    assert all(" terminated  2 " in row for row in final)
    assert lines[tables[-1] - 1].startswith("[sweep] 3 trials: 3 done, 0 running, 0 pending, 0 errored")
    log = path / "driver.log"
    assert log.is_file() and "Started a local Ray instance" in log.read_text()
    assert "Creating initial MLflow database tables" in log.read_text()  # --mlflow: its set-up lines are here
    folders = sorted(p.name.rsplit("_", 2)[0] for p in path.iterdir() if (p / "result.json").is_file())
    assert folders == sorted(["fft-lr0.001-s0", f"ia3-all-lr{IA3_LR:g}-s0", "lora-all_linear-r4-a8-lr0.005-s0"])


def test_analyze_ends_with_the_answer_and_where_to_read_on(sweep):
    path, _ = sweep
    lines = (path.parents[1] / "analyze_console.txt").read_text().splitlines()
    comparisons = pd.read_csv(path / "report" / "comparisons.csv")
    main = comparisons[(comparisons["split"] == "val") & (comparisons["metric"] == METRIC)]
    assert lines[1].startswith(f"summary: {path / 'report' / 'summary.md'}; diagrams (")
    answer = lines[lines.index("the answer:") + 1 :]
    for kind in ("lora_vs_fft", "ia3_vs_fft"):
        sentence = main.set_index("kind").loc[kind, "sentence"]
        assert f"  - {sentence}" in answer, kind
    assert json.loads((path / "report" / "objective.json").read_text())["metric"] == METRIC
