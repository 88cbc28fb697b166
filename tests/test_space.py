"""Search-space loading and validation, without training."""

from pathlib import Path

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


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_spaces_load_and_validate(path, monkeypatch):
    monkeypatch.chdir(REPO)
    # Data folders are the user's (checked at run time); module names are checked against the model's
    # real layout: the embedded model, or git-base's architecture for spaces that name a hub model.
    overrides = ["model=arch:git-base"] if "model: microsoft/" in path.read_text() else []
    study = load_study(path, overrides=overrides, check_paths=False)
    assert study.arms and {a.spec["method"] for a in study.arms} <= {"fft", "lora"}
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
        (("method: fft", "method: sgd"), "`method` must be one of fft, lora, got 'sgd'"),
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
