"""The model as an axis of a search space (``model: {grid_search: [embedded, embedded-small]}``): validated like every
other key before Ray starts (each entry, each method's settings against each model), planned per model with each
model's exact counts, trials named with their model, and results that carry ``config/model``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from cxr_core.errors import CxrError
from cxr_core.space import corner_configs, load_study, study_models
from tests.test_small_git import LORA_R8_ALL_LINEAR, SMALL_PARAMETERS, lora

TINY_PARAMETERS = 935_526
# LoRA r=8 on every Linear layer but the LM head, as tests/test_small_git.py derives it for the small model: the
# tiny one is 128 wide with an MLP of 512 and 2 + 2 layers; each layer has q, k, v, out + MLP up + down, plus the
# visual projection.
TINY_LORA_R8_ALL_LINEAR = 4 * (4 * lora(128, 128) + lora(128, 512) + lora(512, 128)) + lora(128, 128)

SPACE = """
name: scale
defaults:
  model: {{grid_search: [embedded, embedded-small]}}
  data: {{split_dir: {splits}, image_root: {root}, max_train: {max_train}, max_val: 4}}
  train: {{epochs: 1, batch_size: 8, num_threads: 1, lr: 1.0e-3}}
  evaluation: {{max_new_tokens: 8}}
  resources: {{cpu: 1}}
arms:
  - name: fft
    method: fft
{more_arms}"""
LORA_ARM = """  - name: lora
    method: lora
    lora: {r: 8, alpha: 16, target_modules: all_linear}
"""


def space_file(tmp_path: Path, small_data, *, more_arms: str = LORA_ARM, max_train: int = 8, edit=None) -> Path:
    root, splits = small_data
    text = SPACE.format(splits=splits, root=root, max_train=max_train, more_arms=more_arms)
    if edit is not None:
        assert edit[0] in text
        text = text.replace(*edit)
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_derived_counts_are_the_documented_ones():
    assert (TINY_LORA_R8_ALL_LINEAR, LORA_R8_ALL_LINEAR) == (75_776, 225_280)  # docs/tiny_git.md


def test_a_model_grid_validates_every_model_and_expands_into_each_arm(small_data, tmp_path):
    study = load_study(space_file(tmp_path, small_data))
    assert study_models(study) == ["embedded", "embedded-small"]
    for arm in study.arms:
        assert sorted(c["model"] for c in corner_configs(arm)) == ["embedded", "embedded-small"]
    from cxr_core.tune_runner import resolved_trials

    trials = resolved_trials(study)
    assert sorted((t["name"], t["model"]) for t in trials) == [
        ("fft", "embedded"), ("fft", "embedded-small"), ("lora", "embedded"), ("lora", "embedded-small"),
    ]  # fmt: skip
    # One model: one entry (the default when no arm names one).
    single = load_study(space_file(tmp_path, small_data, edit=("{grid_search: [embedded, embedded-small]}",
                                                               "embedded-small")))  # fmt: skip
    assert study_models(single) == ["embedded-small"]


def test_a_model_grid_per_arm_and_folder_entries_made_absolute(small_data, tmp_path, monkeypatch):
    from cxr_core.tiny_git import embedded_model_path

    monkeypatch.chdir(tmp_path)
    shutil.copytree(embedded_model_path("tiny"), tmp_path / "models" / "tiny")
    arm = "  - name: lora\n    method: lora\n    model: {grid_search: [embedded-small, ./models/tiny]}\n"
    study = load_study(space_file(tmp_path, small_data, more_arms=arm))
    folder = str((tmp_path / "models" / "tiny").resolve())
    fft, lora_arm = study.arms
    assert fft.spec["model"].args == ("embedded", "embedded-small")
    assert lora_arm.spec["model"].args == ("embedded-small", folder)
    assert study_models(study) == ["embedded", "embedded-small", folder]


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("embedded-large", "unknown embedded model 'embedded-large'; use one of embedded, embedded-small"),
        ("/no/such/model", "model folder /no/such/model holds no config.json"),
    ],
)
def test_an_unknown_model_inside_the_grid_is_refused_naming_the_entry(small_data, tmp_path, entry, problem):
    path = space_file(tmp_path, small_data, edit=("embedded-small]", f"{entry}]"))
    with pytest.raises(CxrError) as err:
        load_study(path)
    message = str(err.value)
    assert message.startswith(f"`model` grid_search entry {entry!r} of ['embedded', {entry!r}]: {problem}")
    assert message.endswith(f"(in {path})") and "\n" not in message


def test_each_models_target_modules_are_checked(small_data, tmp_path):
    """A module list is resolved against every model of the grid: a layer only the small model has (its third text
    layer; the tiny one has two) is refused, naming the model that lacks it."""
    layer = "git.encoder.layer.2.attention.self.query"
    arm = f"  - name: lora\n    method: lora\n    lora: {{target_modules: [{layer}]}}\n"
    with pytest.raises(CxrError) as err:
        load_study(space_file(tmp_path, small_data, more_arms=arm))
    assert str(err.value).startswith(
        f"arm lora on model embedded: `lora.target_modules`: target module '{layer}' matches no Linear layer"
    )
    small_only = space_file(
        tmp_path, small_data, more_arms=arm, edit=("[embedded, embedded-small]", "[embedded-small]")
    )
    assert study_models(load_study(small_only)) == ["embedded-small"]


def test_the_dry_run_plans_each_models_rows_with_its_exact_counts(small_data, tmp_path, capsys):
    from jobs.sweep import main

    out = tmp_path / "plan.csv"
    main([str(space_file(tmp_path, small_data)), "--dry-run", "--plan-out", str(out)])
    printed = capsys.readouterr().out
    plan = pd.read_csv(out, keep_default_na=False)
    counts = {(r.model, r.method): (r.trainable_params, r.total_params) for r in plan.itertuples()}
    assert counts == {
        ("embedded", "fft"): (TINY_PARAMETERS, TINY_PARAMETERS),
        ("embedded-small", "fft"): (SMALL_PARAMETERS, SMALL_PARAMETERS),
        ("embedded", "lora"): (TINY_LORA_R8_ALL_LINEAR, TINY_PARAMETERS + TINY_LORA_R8_ALL_LINEAR),
        ("embedded-small", "lora"): (LORA_R8_ALL_LINEAR, SMALL_PARAMETERS + LORA_R8_ALL_LINEAR),
    }
    fft_small = plan[(plan["model"] == "embedded-small") & (plan["method"] == "fft")].iloc[0]
    assert fft_small["est_train_memory_mb"] == pytest.approx(SMALL_PARAMETERS * 16 / 2**20)
    header = printed.splitlines()[0].split()
    assert header[:3] == ["trial", "model", "method"]
    assert "4 trials planned, nothing trained (2 on embedded, 2 on embedded-small); plan written to" in printed
    # --model plans every trial for one model instead (the grid is replaced), and the table names it once.
    main(
        [str(space_file(tmp_path, small_data)), "--dry-run", "--plan-out", str(out), "--model", "arch:git-base"]
    )
    printed = capsys.readouterr().out
    assert (
        set(pd.read_csv(out)["model"]) == {"arch:git-base"} and "model" not in printed.splitlines()[0].split()
    )
    assert "2 trials planned, nothing trained (2 on arch:git-base)" in printed


def test_trial_names_and_the_live_table_name_the_model_when_there_are_several():
    from cxr_core.console import model_label, render_table
    from cxr_core.tune_runner import _trial_name

    arm = {"name": "lora", "model": "embedded-small", "method": "lora", "lora": {"target_modules": "text"},
           "train": {"lr": 0.005, "seed": 1}}  # fmt: skip
    trial = SimpleNamespace(config={"arm": arm}, trial_id="t1", status="RUNNING", last_result={})
    assert _trial_name(trial) == "lora-text-r8-a16-lr0.005-s1_t1"
    assert _trial_name(trial, with_model=True) == "embedded-small-lora-text-r8-a16-lr0.005-s1_t1"
    assert [model_label(m) for m in ("embedded", "microsoft/git-large", "/models/git-base/", "arch:git-base")] == [
        "embedded", "git-large", "git-base", "arch_git-base"
    ]  # fmt: skip
    tiny = SimpleNamespace(config={"arm": {**arm, "model": "embedded"}}, trial_id="t2", status="PENDING",
                           last_result={})  # fmt: skip
    table = render_table([trial, tiny], metric="label_f1_micro", mode="max", began=0.0, best={}).splitlines()
    assert table[1].split()[:3] == ["arm", "model", "method"]
    assert [row.split()[1] for row in table[2:]] == ["embedded-small", "embedded"]
    assert all(len(line) <= 120 for line in table[1:])
    alone = render_table([tiny], metric="label_f1_micro", mode="max", began=0.0, best={}).splitlines()
    assert alone[1].split()[:2] == ["arm", "method"]


def test_a_sweep_over_two_models_names_each_trial_and_its_results_carry_the_model(small_data, tmp_path):
    """A real sweep (Ray, 2 trials of 1 epoch on 8 images): each trial trains its own model, its folder and row
    in the live table say which, and the results frame has ``config/model``."""
    from cxr_core.tune_runner import results_frame
    from tests.conftest import run_module

    space = space_file(tmp_path, small_data, more_arms="")
    proc = run_module("jobs.sweep", str(space), "--name", "scale", "--storage", str(tmp_path / "rr"),
                      "--num-cpus", "2")  # fmt: skip
    path = tmp_path / "rr" / "scale"
    frame = results_frame(path)
    assert sorted(frame["config/model"]) == ["embedded", "embedded-small"]
    assert set(frame["status"]) == {"TERMINATED"}
    trained = dict(zip(frame["config/model"], frame["trainable_params"], strict=True))
    assert trained == {"embedded": TINY_PARAMETERS, "embedded-small": SMALL_PARAMETERS}  # each its own model
    folders = sorted(p.name.rsplit("_", 2)[0] for p in path.iterdir() if (p / "result.json").is_file())
    assert folders == ["embedded-fft-lr0.001-s0", "embedded-small-fft-lr0.001-s0"]
    for folder in path.iterdir():
        if (folder / "params.json").is_file():  # each trial's folder names the model it trained
            model = json.loads((folder / "params.json").read_text())["arm"]["model"]
            assert folder.name.startswith(f"{model}-fft-")
    table = [line.split() for line in proc.stdout.splitlines() if line.startswith("fft ")]
    assert sorted(row[1] for row in table[-2:]) == ["embedded", "embedded-small"]
