"""Search-space loading and validation, without training."""

import re
from pathlib import Path

import pandas as pd
import pytest

from cxr_core.errors import CxrError
from cxr_core.space import corner_configs, load_study

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


BASE = """
name: t
defaults:
  data: {split_dir: %(data)s, image_root: %(data)s}
  train: {epochs: 1}
arms:
  - name: fft
    method: fft
    train: {lr: {loguniform: [1e-5, 1e-3]}}
  - name: lora
    method: lora
    lora: {r: {grid_search: [4, 8]}, target_modules: {grid_search: [vision, text]}}
    num_samples: 2
"""


def arch_overrides(path: Path) -> list[str]:
    """``--set model=...`` that plans a space naming hub models offline: each hub GIT by its architecture (random
    weights, the same module names and counts), a grid over several as a grid."""
    code = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
    hub = list(dict.fromkeys(re.findall(r"microsoft/(git-base|git-large)", code)))
    if not hub:
        return []
    if len(hub) == 1:
        return [f"model=arch:{hub[0]}"]
    return ["model={grid_search: [" + ", ".join(f"arch:{h}" for h in hub) + "]}"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_spaces_load_and_validate(path, monkeypatch):
    monkeypatch.chdir(REPO)
    # Data folders are the user's (checked at run time); module names are checked against the model's
    # real layout: the embedded model, or git-base's architecture for spaces that name a hub model.
    overrides = arch_overrides(path)
    study = load_study(path, overrides=overrides, check_paths=False)
    assert study.arms and {a.spec["method"] for a in study.arms} <= {"fft", "lora", "ia3"}
    text = path.read_text()
    assert (
        text.startswith("#") and "python -m jobs." in text and "--set" in text
    )  # header: purpose, command, override


def test_demo_design_three_seeds_three_learning_rates_per_method_ranks_and_presets(monkeypatch):
    """The demo's grid, as Tune resolves it: 27 trials = 9 configurations x seeds 0, 1, 2; three learning rates
    for FFT and for LoRA, LoRA's middle one about 5x FFT's; ranks 4 and 16; presets vision, text, all_linear."""
    from cxr_core.tune_runner import resolved_trials

    monkeypatch.chdir(REPO)
    trials = resolved_trials(load_study(REPO / "search_spaces/demo.yaml", check_paths=False))
    assert len(trials) == 27
    seeds = {}
    for t in trials:
        key = (
            t["method"],
            t["train"]["lr"],
            str(t.get("lora", {}).get("r")),
            str(t.get("lora", {}).get("target_modules")),
        )
        seeds.setdefault(key, []).append(t["train"]["seed"])
    assert len(seeds) == 9 and all(sorted(v) == [0, 1, 2] for v in seeds.values())
    fft_lrs = sorted({k[1] for k in seeds if k[0] == "fft"})
    lora_lrs = sorted({k[1] for k in seeds if k[0] == "lora"})
    assert len(fft_lrs) == 3 and len(lora_lrs) == 3 and lora_lrs[1] / fft_lrs[1] == pytest.approx(5)
    lora = [k for k in seeds if k[0] == "lora"]
    assert {k[3] for k in lora} == {"vision", "text", "all_linear"} and {k[2] for k in lora} == {"4", "16"}


def test_fft_lora_ia3_design_and_its_dry_run_plan(small_data, tmp_path, monkeypatch, capsys):
    """33 trials = 11 configurations x seeds 0, 1, 2: three learning rates per method, IA3's grid above LoRA's (its
    middle 60x LoRA's), IA3's three presets; the dry-run plan at git-base (one seed) shows IA3's preset and its
    exact trainable counts, with FFT's freeze and LoRA's rank left off its rows."""
    from cxr_core.tune_runner import resolved_trials
    from jobs.sweep import main

    monkeypatch.chdir(REPO)
    space = REPO / "search_spaces/fft_lora_ia3.yaml"
    trials = resolved_trials(load_study(space, check_paths=False))
    assert len(trials) == 33 and sorted({t["train"]["seed"] for t in trials}) == [0, 1, 2]
    lrs = {m: sorted({t["train"]["lr"] for t in trials if t["method"] == m}) for m in ("fft", "lora", "ia3")}
    assert lrs == {"fft": [3e-4, 1e-3, 3e-3], "lora": [1.5e-3, 5e-3, 1.5e-2], "ia3": [0.1, 0.3, 1.0]}
    assert lrs["ia3"][0] > lrs["lora"][-1] and lrs["ia3"][1] / lrs["lora"][1] == pytest.approx(60)
    assert {t["ia3"]["target_modules"] for t in trials if t["method"] == "ia3"} == {"all", "vision", "text"}

    out = tmp_path / "plan.csv"
    root, splits = small_data  # a dry run checks the data as a real sweep does: point it at data that exist
    main([str(space), "--dry-run", "--model", "arch:git-base", "--set", "train.seed=0", "--plan-out", str(out),
          "--set", f"data.split_dir={splits}", "--set", f"data.image_root={root}"])  # fmt: skip
    assert "11 trials planned, nothing trained" in capsys.readouterr().out
    plan = pd.read_csv(out, keep_default_na=False)
    ia3 = plan[plan["method"] == "ia3"]
    per_layer = 768 + 768 + 3072  # key and value outputs, the feed-forward down projection's input
    counts = ia3.groupby("target_modules")["trainable_params"].agg(set).to_dict()
    assert counts == {"all": {18 * per_layer}, "vision": {12 * per_layer}, "text": {6 * per_layer}}
    assert (ia3["total_params"] == 176_619_066 + ia3["trainable_params"]).all()
    assert set(ia3["freeze"]) == {""} and set(ia3["r"]) == {""} and set(ia3["lora_alpha"]) == {""}
    assert set(plan.loc[plan["method"] == "lora", "freeze"]) == {""}
    assert set(plan.loc[plan["method"] == "fft", "target_modules"]) == {""}


def test_model_scale_design_and_its_dry_run_plans_every_model(small_data, tmp_path, monkeypatch, capsys):
    """model_scale.yaml: both embedded sizes as an axis, FFT at four learning rates and LoRA (r=16, text) at three
    of its own, 3 seeds: 42 trials; its dry run plans each model's trials with that model's exact counts. The GPU
    variant plans git-base and git-large (offline, by their architectures) with theirs."""
    from cxr_core.space import study_models
    from cxr_core.tune_runner import resolved_trials
    from jobs.sweep import main
    from tests.test_small_git import SMALL_PARAMETERS, lora

    monkeypatch.chdir(REPO)
    space = REPO / "search_spaces/model_scale.yaml"
    study = load_study(space, check_paths=False)
    assert study_models(study) == ["embedded", "embedded-small"]
    trials = resolved_trials(study)
    assert len(trials) == 42 and sorted({t["train"]["seed"] for t in trials}) == [0, 1, 2]
    grid: dict = {}
    for t in trials:
        grid.setdefault((t["model"], t["method"]), set()).add(t["train"]["lr"])
    for model in ("embedded", "embedded-small"):
        assert sorted(grid[(model, "fft")]) == [1e-4, 3e-4, 1e-3, 3e-3]
        assert sorted(grid[(model, "lora")]) == [1.5e-3, 5e-3, 1.5e-2]
    assert {(t["lora"]["r"], t["lora"]["target_modules"]) for t in trials if t["method"] == "lora"} == {
        (16, "text")
    }

    root, splits = small_data  # a dry run checks the data as a real sweep does: point it at data that exist
    data = ["--set", f"data.split_dir={splits}", "--set", f"data.image_root={root}", "--set", "train.seed=0"]
    out = tmp_path / "plan.csv"
    main([str(space), "--dry-run", "--plan-out", str(out), *data])
    assert "14 trials planned, nothing trained (7 on embedded, 7 on embedded-small)" in capsys.readouterr().out
    plan = pd.read_csv(out, keep_default_na=False)
    counts = plan.groupby(["model", "method"])["trainable_params"].agg(set).to_dict()
    text_lora = {size: layers * (4 * lora(w, w, 16) + lora(w, 4 * w, 16) + lora(4 * w, w, 16))
                 for size, w, layers in (("embedded", 128, 2), ("embedded-small", 256, 3))}  # fmt: skip
    assert counts == {
        ("embedded", "fft"): {935_526}, ("embedded-small", "fft"): {SMALL_PARAMETERS},
        ("embedded", "lora"): {text_lora["embedded"]}, ("embedded-small", "lora"): {text_lora["embedded-small"]},
    }  # fmt: skip
    assert text_lora == {"embedded": 73_728, "embedded-small": 221_184}

    gpu = REPO / "search_spaces/model_scale_gpu.yaml"
    assert study_models(load_study(gpu, overrides=arch_overrides(gpu), check_paths=False)) == [
        "arch:git-base", "arch:git-large"
    ]  # fmt: skip
    main([str(gpu), "--dry-run", "--plan-out", str(out), *data, *(["--set", arch_overrides(gpu)[0]])])
    assert (
        "12 trials planned, nothing trained (6 on arch:git-base, 6 on arch:git-large)"
        in capsys.readouterr().out
    )
    plan = pd.read_csv(out, keep_default_na=False)
    fft = plan[plan["method"] == "fft"].groupby("model")["trainable_params"].agg(set).to_dict()
    assert fft == {"arch:git-base": {176_619_066}, "arch:git-large": {394_196_026}}  # docs/benchmarks.md
    lora_counts = plan[plan["method"] == "lora"].groupby("model")["trainable_params"].agg(set).to_dict()
    assert lora_counts == {
        "arch:git-base": {2 * 2_002_944},
        "arch:git-large": {2 * 4_216_832},
    }  # r=16: twice r=8's


def test_arms_expand_with_own_ranges(tmp_path):
    study = load_study(write(tmp_path, BASE % {"data": tmp_path}))
    fft, lora = study.arms
    assert fft.spec["train"]["lr"].kind == "loguniform" and lora.num_samples == 2
    assert len(corner_configs(lora)) == 4


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("r: {grid_search: [4, 8]}", "r: {grid_search: [0, 8]}"),
            "`lora.r` must be a positive integer, got 0",
        ),
        (("loguniform: [1e-5, 1e-3]", "loguniform: [-1, 1e-3]"), "a log scale needs low > 0"),
        (("{grid_search: [vision, text]}", "{grid_search: []}"), "the list is empty"),
        (("{grid_search: [vision, text]}", "{grid_search: [vision, textt]}"), "unknown target preset 'textt'"),
        (("epochs: 1", "epochs: one"), "`train.epochs` must be int, got 'one'"),
        (("epochs: 1", "epochz: 1"), "unknown key `train.epochz`"),
        (("method: fft", "method: sgd"), "`method` must be one of fft, lora, ia3, got 'sgd'"),
        (("num_samples: 2", "num_samples: 2\n    resources: {gpu: 1.5}"), "resources.gpu"),
        (("train: {lr: {loguniform", "train: {lr: {sample_from"), "code is never evaluated"),
    ],
)
def test_validation_errors_name_key_value_and_file(tmp_path, edit, message):
    text = (BASE % {"data": tmp_path}).replace(*edit)
    with pytest.raises(CxrError) as err:
        load_study(write(tmp_path, text))
    assert message in str(err.value)
    assert "space.yaml" in str(err.value)


def test_malformed_yaml_and_missing_data(tmp_path):
    with pytest.raises(CxrError, match=r"malformed YAML .* at line 3"):
        load_study(write(tmp_path, "arms:\n  - name: [unclosed\n"))
    with pytest.raises(CxrError, match="`data.split_dir` = .*nope.* does not exist"):
        load_study(write(tmp_path, BASE % {"data": tmp_path / "nope"}))


def test_overrides_reach_defaults_and_arms(tmp_path):
    study = load_study(write(tmp_path, BASE % {"data": tmp_path}), overrides=["train.epochs=3", "lora.r=2"])
    for arm in study.arms:
        assert arm.spec["train"]["epochs"] == 3
    assert study.arms[1].spec["lora"]["r"] == 2
    with pytest.raises(CxrError, match="KEY.PATH=VALUE"):
        load_study(write(tmp_path, BASE % {"data": tmp_path}), overrides=["train.epochs"])
