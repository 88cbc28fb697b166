"""The method registry (cxr_core.methods): every module asks it, so a method is chosen by name only, its settings
describe its own rows and labels, and the dry-run plan fills each method's columns on its own rows only."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from cxr_core import methods
from cxr_core.config import trial_config
from cxr_core.errors import CxrError
from cxr_core.plan import PLAN_COLUMNS, plan_table
from cxr_core.tune_runner import _trial_name

H, MLP = 768, 3072  # git-base: ViT-B/16 and BERT-base decoder share these widths
TOTAL = 176_619_066  # git-base, every parameter (tests/test_model.py)
# The vision tower (CLIP ViT-B/16 at 224 px): patch conv (no bias), class and 197 position embeddings, pre and post
# layer norms, 12 layers of 4 attention projections, MLP up and down and 2 layer norms.
VISION_LAYER = 4 * (H * H + H) + (H * MLP + MLP) + (MLP * H + H) + 2 * 2 * H
VISION_TOWER = 3 * 16 * 16 * H + H + 197 * H + 2 * 2 * H + 12 * VISION_LAYER


def test_a_plan_column_no_row_fills_is_blank():
    """A sweep of LoRA arms only: FFT's `freeze` is blank on every row (not NaN), LoRA's own columns are filled."""
    plan = plan_table([{"name": "l", "method": "lora", "lora": {"r": 2, "target_modules": "text"}}])
    row = plan.iloc[0]
    assert (row["freeze"], row["target_modules"], row["r"], row["lora_alpha"]) == ("", "text", 2, 4)


def lora(d_in, d_out, r):
    return r * (d_in + d_out)


def test_registry_order_reference_and_names():
    assert methods.names() == ("fft", "lora", "ia3")
    assert methods.reference().name == "fft" and methods.reference().adapter is False
    assert all(not m.reference and m.adapter for m in methods.compared())
    assert methods.get("lora").title == "LoRA"
    with pytest.raises(CxrError, match=r"unknown method 'sgd'; use one of fft, lora, ia3$"):
        methods.get("sgd")
    assert methods.find("sgd") is None and methods.find(float("nan")) is None


@pytest.mark.parametrize("name", ["cxr_core.methods.lora.Lora", "peft.LoraConfig", "LoRA"])
def test_a_method_is_chosen_by_its_registered_name_only(name):
    """The YAML stays closed: a class path or a differently spelled name is refused, never imported."""
    with pytest.raises(CxrError) as err:
        trial_config({"method": name})
    assert f"`method` must be one of {', '.join(methods.names())}, got {name!r}" == str(err.value)


def test_each_section_is_checked_only_for_its_own_method():
    with pytest.raises(CxrError, match=r"`lora.bias` must be one of none, all, lora_only, got 'some'"):
        trial_config({"method": "lora", "lora": {"bias": "some"}})
    with pytest.raises(CxrError, match=r"`fft.freeze` must be one of none, vision, text, got 'both'"):
        trial_config({"method": "fft", "fft": {"freeze": "both"}})
    # Another method's section is parsed (types) but not the trial's: an FFT trial ignores LoRA's settings.
    assert trial_config({"method": "fft", "lora": {"r": 0}}).method_settings.freeze == "none"


def test_rows_are_described_by_their_own_method():
    lora_row = pd.Series({"config/method": "lora", "config/lora/r": 16.0, "config/lora/alpha": math.nan,
                          "config/lora/target_modules": "text", "config/fft/freeze": "vision"})  # fmt: skip
    fft_row = pd.Series({"config/method": "fft", "config/lora/r": 16.0, "config/fft/freeze": math.nan})
    assert methods.variant_of_row(lora_row) == "lora:text" and methods.variant_of_row(fft_row) == "fft"
    lo = methods.get("lora")
    settings = lo.from_row(lora_row)
    assert settings["alpha"] is None and settings["bias"] == "none"  # NaN and missing keys: the defaults
    assert lo.label_parts(settings) == ["r=16", "a=32"]  # alpha as trained: 2r
    assert lo.describe_parts(settings) == ["text", "r=16", "alpha=32"]
    assert methods.get("fft").describe_parts(methods.get("fft").from_row(fft_row)) == []
    assert methods.display("lora:text r=16 a=32 lr=0.005") == "LoRA text r=16 a=32 lr=0.005"
    assert methods.display("fft lr=0.001") == "FFT lr=0.001" and methods.display("lora") == "LoRA"
    assert methods.color("lora:text") == "tab:green" and methods.color("fft") == "tab:red"
    assert methods.color("lora:query,value") == methods.get("lora").color  # a module list: the method's colour
    assert methods.kind(methods.get("lora"), methods.reference()) == "lora_vs_fft"
    assert [(a.name, b.name) for a, b in methods.pairs(["lora", "fft"])] == [("lora", "fft")]
    ia3_row = pd.Series({"config/method": "ia3", "config/ia3/target_modules": "text", "config/lora/r": 4.0})
    ia3 = methods.get("ia3")
    assert methods.variant_of_row(ia3_row) == "ia3:text"
    assert ia3.describe_parts(ia3.from_row(ia3_row)) == ["text"]
    assert ia3.label_parts(ia3.from_row(ia3_row)) == []  # no rank: LoRA's r on the row is not IA3's
    assert methods.display("ia3:text lr=0.03") == "IA3 text lr=0.03" and methods.color("ia3:text") == "tab:cyan"
    assert len({methods.color(v) for v in ("fft", "lora:text", "ia3:text", "ia3:all")}) == 4
    # Every method vs FFT, then IA3 (registered later) vs LoRA.
    pairs = [methods.kind(a, b) for a, b in methods.pairs(["ia3", "fft", "lora"])]
    assert pairs == ["lora_vs_fft", "ia3_vs_fft", "ia3_vs_lora"]
    assert [methods.kind(a, b) for a, b in methods.pairs(["ia3", "lora"])] == ["ia3_vs_lora"]


@pytest.mark.parametrize(
    ("arm", "folder"),
    [
        (
            {"name": "a", "method": "lora", "lora": {"target_modules": "text"}},
            "lora-text-r8-a16-lr0.0001-s0_t1",
        ),
        (
            {"name": "a", "method": "lora", "lora": {"target_modules": ["query", "value"]}},
            "lora-query_value-r8-a16-lr0.0001-s0_t1",
        ),  # fmt: skip
        (
            {"name": "a", "method": "lora"},
            "lora-all_linear-r8-a16-lr0.0001-s0_t1",
        ),  # the default preset trained
        ({"name": "b", "method": "fft", "lora": {"target_modules": "text"}}, "fft-lr0.0001-s0_t1"),
        (
            {"name": "c", "method": "ia3", "lora": {"target_modules": "text"}, "train": {"lr": 0.3, "seed": 2}},
            "ia3-all-lr0.3-s2_t1",
        ),  # fmt: skip
    ],
)
def test_trial_names_come_from_the_trials_method_settings_and_seed(arm, folder):
    """One name per trial (console, folder, TensorBoard, MLflow): configuration, seed, then Tune's id."""
    assert _trial_name(SimpleNamespace(config={"arm": arm}, trial_id="t1")) == folder


def test_plan_fills_each_methods_columns_on_its_own_rows_with_exact_counts():
    """FFT with the vision tower frozen and LoRA r=8 on the text decoder at git-base: FFT's `freeze` is blank on the
    LoRA row, LoRA's settings are blank on the FFT row, and the counts follow from the layer shapes."""
    configs = [
        {"name": "fft", "method": "fft", "fft": {"freeze": "vision"}, "lora": {"r": 4, "target_modules": "all_linear"}},
        {"name": "lora", "method": "lora", "fft": {"freeze": "vision"}, "lora": {"r": 8, "target_modules": "text"}},
    ]  # fmt: skip
    plan = plan_table(configs, model="arch:git-base")
    assert list(plan.columns) == list(PLAN_COLUMNS)
    fft, lo = plan.iloc[0], plan.iloc[1]
    assert (fft["freeze"], fft["target_modules"], math.isnan(fft["r"]), math.isnan(fft["lora_alpha"])) == (
        "vision", "", True, True,
    )  # fmt: skip
    assert (lo["freeze"], lo["target_modules"], lo["r"], lo["lora_alpha"]) == ("", "text", 8, 16)
    text_lora = 6 * (4 * lora(H, H, 8) + lora(H, MLP, 8) + lora(MLP, H, 8))
    assert (fft["trainable_params"], fft["total_params"]) == (TOTAL - VISION_TOWER, TOTAL)
    assert (lo["trainable_params"], lo["total_params"]) == (text_lora, TOTAL + text_lora)
    assert fft["trainable_params"] == 90_819_642 and lo["trainable_params"] == 663_552  # docs/benchmarks.md


def test_plan_rows_of_ia3_show_its_preset_only():
    configs = [
        {"name": "ia3", "method": "ia3", "ia3": {"target_modules": "vision"}, "fft": {"freeze": "text"}},
        {"name": "ia3l", "method": "ia3", "ia3": {"target_modules": ["key", "value"]}, "lora": {"r": 4}},
    ]
    plan = plan_table(configs, model="arch:git-base")
    vision, listed = plan.iloc[0], plan.iloc[1]
    assert (vision["target_modules"], vision["freeze"], vision["r"], vision["lora_alpha"]) == (
        "vision",
        *[""] * 3,
    )
    assert (listed["target_modules"], listed["freeze"], listed["r"]) == ("key,value", "", "")
    # per layer: key and value outputs (H each) and the feed-forward down projection's input (MLP)
    assert vision["trainable_params"] == 12 * (H + H + MLP) == 55_296
    assert listed["trainable_params"] == 6 * (H + H) and listed["total_params"] == TOTAL + 6 * 2 * H
