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


# ------------------------------------------------------------------ closed sets: one table validates and dispatches


@pytest.mark.parametrize(
    ("scheduler", "message"),
    [
        ("{type: median, max_t: 5}",
         "`scheduler.max_t` = 5: the median scheduler does not take this key; valid keys for median: type, "
         "grace_period"),
        ("{type: fifo, grace_period: 2}", "the fifo scheduler does not take this key; valid keys for fifo: type"),
        ("{type: hyperband}", "`scheduler.type` = 'hyperband': unknown scheduler; use one of fifo, asha, median"),
        ("{type: asha, reduction_factor: 1}", "`scheduler.reduction_factor` = 1.0: must be above 1"),
        ("{type: asha, grace_period: 4, max_t: 2}", "`scheduler.grace_period` = 4: must be at most max_t (2)"),
        ("{type: asha, max_t: 2.5}", "`scheduler.max_t` = 2.5: must be a whole number >= 1 (epochs)"),
        ("{type: median, grace_period: .inf}", "`scheduler.grace_period` = inf: must be a finite number >= 1"),
    ],
)  # fmt: skip
def test_scheduler_keys_are_those_of_the_chosen_type(tmp_path, scheduler, message):
    """A key the chosen scheduler does not take is refused (it used to validate and be ignored), and so are the
    values Tune's ASHA would assert on after Ray had started."""
    with pytest.raises(CxrError) as err:
        load_study(write(tmp_path, f"scheduler: {scheduler}\n" + BASE % {"data": tmp_path}))
    assert message in str(err.value) and "space.yaml" in str(err.value)


def test_the_scheduler_run_is_built_from_the_validated_settings_and_never_falls_back(tmp_path):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    from cxr_core.space import SCHEDULERS, build_scheduler

    def loaded(scheduler: str) -> dict:
        return load_study(write(tmp_path, f"scheduler: {scheduler}\n" + BASE % {"data": tmp_path})).scheduler

    asha = loaded("{type: asha, max_t: 5, grace_period: 2}")
    assert asha == {"type": "asha", "grace_period": 2, "reduction_factor": 4.0, "max_t": 5}  # defaults added
    built = build_scheduler(asha)
    assert isinstance(built, ASHAScheduler) and built._max_t == 5 and built._reduction_factor == 4.0
    assert [rung for rung, _ in built._brackets[0]._rungs] == [2]  # grace 2, factor 4, max_t 5: one rung at 2
    median = build_scheduler(loaded("{type: median, grace_period: 3}"))
    assert isinstance(median, MedianStoppingRule) and median._grace_period == 3.0
    assert loaded("{type: fifo}") == {"type": "fifo"}
    assert isinstance(build_scheduler({"type": "fifo"}), FIFOScheduler)
    assert set(SCHEDULERS) == {"fifo", "asha", "median"}
    with pytest.raises(CxrError, match=r"`scheduler.type` must be one of fifo, asha, median, got 'hyperband'"):
        build_scheduler({"type": "hyperband"})  # a type the table lacks is never run as FIFO


def test_lr_schedules_come_from_the_table_that_validates_them():
    from cxr_core.config import SCHEDULES, trial_config
    from cxr_core.trial import lr_lambda

    constant, cosine = lr_lambda(10, 0.2, "constant"), lr_lambda(10, 0.2, "cosine")
    assert [round(constant(s), 3) for s in (0, 1, 2, 6, 9)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert [round(cosine(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    assert set(SCHEDULES) == {"cosine", "constant"}
    with pytest.raises(CxrError, match=r"`train.schedule` must be one of cosine, constant, got 'linear'"):
        trial_config({"train": {"schedule": "linear"}})
    with pytest.raises(CxrError, match=r"`train.schedule` must be one of cosine, constant, got 'linear'"):
        lr_lambda(10, 0.1, "linear")  # it used to run as cosine


def test_fft_freeze_and_lora_bias_are_applied_from_the_tables_that_validate_them():
    from cxr_core import methods
    from cxr_core.methods.fft import FREEZE, FftConfigSection, tower_of
    from cxr_core.methods.lora import BIAS, LoraConfigSection
    from cxr_core.model import load_model

    fft = methods.get("fft")
    model = fft.wrap(load_model("embedded"), fft.section_from({"freeze": "vision"}))
    towers = {(tower_of(n), p.requires_grad) for n, p in model.named_parameters()}
    assert towers == {("vision", False), ("text", True), ("other", True)}
    assert set(FREEZE) == {"none", "vision", "text"} and set(BIAS) == {"none", "all", "lora_only"}
    with pytest.raises(CxrError, match=r"`fft.freeze` must be one of none, vision, text, got 'both'"):
        fft.wrap(load_model("embedded"), FftConfigSection(freeze="both"))  # it used to train every tower
    lora = methods.get("lora")
    with pytest.raises(CxrError, match=r"`lora.bias` must be one of none, all, lora_only, got 'some'"):
        lora.wrap(load_model("embedded"), LoraConfigSection(target_modules="text", bias="some"))
    wrapped = lora.wrap(load_model("embedded"), LoraConfigSection(target_modules="text", bias="all"))
    trainable_biases = [n for n, p in wrapped.named_parameters() if p.requires_grad and n.endswith(".bias")]
    assert trainable_biases and all("lora_" not in n for n in trainable_biases)


@pytest.mark.parametrize(
    ("kind", "args", "check"),
    [
        ("grid_search", (4, 8), lambda v: v in (4, 8)),
        ("choice", ("text", "vision"), lambda v: v in ("text", "vision")),
        ("uniform", (0.1, 0.2), lambda v: 0.1 <= v <= 0.2),
        ("quniform", (0.0, 1.0, 0.25), lambda v: v in (0.0, 0.25, 0.5, 0.75, 1.0)),
        ("loguniform", (1e-5, 1e-3), lambda v: 1e-5 <= v <= 1e-3),
        ("randint", (2, 4), lambda v: v in (2, 3) and isinstance(v, int)),
        ("lograndint", (2, 4), lambda v: v in (2, 3) and isinstance(v, int)),
    ],
)
def test_each_distribution_draws_within_its_bounds_in_tune_and_in_optuna(kind, args, check):
    """Tune's variant generator and Optuna draw each kind from the one table that parsing uses (Optuna used to read
    every kind it did not name as lograndint)."""
    import optuna
    from ray.tune.search.variant_generator import generate_variants

    from cxr_core.space import DISTRIBUTIONS, Dist
    from cxr_core.tune_runner import _suggest, _to_tune

    dist = Dist(kind, args)
    tune_values = [spec["x"] for _ in range(5) for _, spec in generate_variants({"x": _to_tune(dist)})]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    optuna_values = [_suggest(study.ask(), "x", dist) for _ in range(8)]
    assert all(check(v) for v in tune_values + optuna_values), (tune_values, optuna_values)
    if kind == "grid_search":
        assert sorted(tune_values) == [4] * 5 + [8] * 5  # a grid: every value, each a trial
    assert kind in DISTRIBUTIONS
    with pytest.raises(CxrError, match=r"must be one of grid_search, choice, uniform"):
        _suggest(study.ask(), "x", Dist("normal", (0.0, 1.0)))
    with pytest.raises(CxrError, match=r"must be one of grid_search, choice, uniform"):
        _to_tune(Dist("normal", (0.0, 1.0)))
