"""The embedded small GIT (``embedded-small``): loads offline in fp32 from its float16 file, has the documented
size, shares the tiny one's processor and tokenizer, takes every LoRA preset and the search-space checks, its
committed weights caption the pretraining task, it fine-tunes, and ``jobs.build_tiny_git --size small`` runs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safetensors import safe_open  # noqa: E402
from transformers import AutoModelForCausalLM, AutoProcessor, GitForCausalLM  # noqa: E402

from cxr_core import (
    methods,  # noqa: E402
    tiny_git,  # noqa: E402
)
from cxr_core.errors import CxrError  # noqa: E402
from cxr_core.model import (  # noqa: E402
    PRESETS,
    check_targets,
    load_model,
    load_processor,
    parameter_counts,
    resolve_model_name,
    resolve_targets,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = tiny_git.embedded_model_path("small")
TINY = tiny_git.embedded_model_path("tiny")

# By hand from the shapes (width 256, MLP 1024, 3 + 3 layers, 230 words, 256 text positions, 65 image tokens):
W, M, V = 256, 1024, 230
BLOCK = 4 * (W * W + W) + (W * M + M) + (M * W + W)  # attention q, k, v, out + MLP up + MLP down
# Vision: layers (2 LayerNorms each) + [CLS] + patch conv (3x8x8, no bias) + 65 positions + pre/post LayerNorm.
VISION = 3 * (BLOCK + 2 * 2 * W) + W + 3 * 8 * 8 * W + 65 * W + 2 * 2 * W
PROJECTION = W * W + W + 2 * W
TEXT = 3 * (BLOCK + 2 * 2 * W) + V * W + 256 * W + 2 * W  # layers + word/position embeddings + LayerNorm
HEAD = W * V + V
SMALL_PARAMETERS = VISION + PROJECTION + TEXT + HEAD


def lora(d_in: int, d_out: int, r: int = 8) -> int:
    return r * (d_in + d_out)


LORA_R8_ALL_LINEAR = 6 * (4 * lora(W, W) + lora(W, M) + lora(M, W)) + lora(W, W)  # 6 layers + projection


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def committed():
    return AutoModelForCausalLM.from_pretrained(SMALL).eval(), AutoProcessor.from_pretrained(SMALL)


def test_parameter_count_is_the_documented_one_and_about_five_times_the_tiny():
    assert SMALL_PARAMETERS == 5_055_974
    model = load_model("embedded-small")
    assert parameter_counts(model) == (SMALL_PARAMETERS, SMALL_PARAMETERS)
    tiny = sum(p.numel() for p in load_model("embedded").parameters())
    assert tiny == 935_526 and 4 < SMALL_PARAMETERS / tiny < 6
    record = json.loads((SMALL / "pretraining.json").read_text())
    assert record["parameters"] == SMALL_PARAMETERS
    assert (record["size"], record["stored_dtype"]) == ("small", "float16")
    doc = (REPO / "docs" / "tiny_git.md").read_text()
    assert "5,055,974" in doc and record["command"] in doc


def test_loads_offline_in_fp32_from_a_float16_file_under_15_mb(committed):
    model, _ = committed
    assert isinstance(model, GitForCausalLM)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert json.loads((SMALL / "config.json").read_text())["dtype"] == "float32"
    with safe_open(SMALL / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
        # The fp32 parameters hold exactly the stored float16 values.
        stored = f.get_tensor("output.weight")
    assert torch.equal(model.output.weight, stored.float())
    size = sum(p.stat().st_size for p in SMALL.iterdir())
    assert 9_000_000 < size < 15_000_000  # ~2 bytes a parameter, not 4


def test_config_is_wider_and_deeper_in_both_towers_with_git_module_names(committed):
    model, _ = committed
    cfg, vision = model.config, model.config.vision_config
    for c in (cfg, vision):
        shape = (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size)
        assert shape == (256, 3, 8, 1024)
    fresh = tiny_git.tiny_git_config(tiny_git.build_tokenizer(), "small")
    ignore = {"dtype", "transformers_version"}
    assert {k: v for k, v in fresh.vision_config.to_dict().items() if k not in ignore} == {
        k: v for k, v in vision.to_dict().items() if k not in ignore
    }
    assert fresh.initializer_range == cfg.initializer_range == 0.0625
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert "git.image_encoder.vision_model.encoder.layers.2.self_attn.q_proj" in linear
    assert "git.encoder.layer.2.attention.self.query" in linear


def test_processor_and_tokenizer_are_the_tiny_ones(committed):
    model, processor = committed
    tiny_processor = AutoProcessor.from_pretrained(TINY)
    assert processor.tokenizer.get_vocab() == tiny_processor.tokenizer.get_vocab()
    assert processor.image_processor.to_dict() == tiny_processor.image_processor.to_dict()
    for name in ("tokenizer.json", "vocab.txt", "preprocessor_config.json", "processor_config.json"):
        assert (SMALL / name).read_bytes() == (TINY / name).read_bytes(), name
    tiny_cfg = json.loads((TINY / "config.json").read_text())
    for key in ("vocab_size", "max_position_embeddings", "pad_token_id", "bos_token_id", "eos_token_id"):
        assert getattr(model.config, key) == tiny_cfg[key], key
    assert (model.config.vision_config.image_size, model.config.vision_config.patch_size) == (64, 8)
    assert load_processor("embedded-small").tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def test_model_name_resolves_and_every_lora_preset_applies():
    assert resolve_model_name("embedded-small") == str(SMALL)
    assert resolve_model_name("embedded") == str(TINY)
    skeleton = load_model("embedded-small")
    counts = {p: len(resolve_targets(skeleton, p)) for p in PRESETS}
    # 6 Linear layers in each of 3 + 3 layers; the visual projection counts only in all_linear.
    assert counts == {"vision": 18, "text": 18, "attention": 24, "mlp": 12, "all_linear": 37}
    for preset in PRESETS:
        check_targets("embedded-small", preset)
    model = methods.wrap(skeleton, "lora", {"r": 8, "alpha": 16, "target_modules": "all_linear"})
    assert parameter_counts(model) == (LORA_R8_ALL_LINEAR, SMALL_PARAMETERS + LORA_R8_ALL_LINEAR)


def test_search_space_and_dry_run_plan_accept_embedded_small(tmp_path):
    from cxr_core.plan import plan_table
    from cxr_core.space import load_study

    space = tmp_path / "space.yaml"
    space.write_text(
        "name: t\n"
        "defaults: {model: embedded-small, train: {epochs: 1}}\n"
        "arms:\n"
        "  - {name: fft, method: fft}\n"
        "  - {name: lora, method: lora, lora: {r: 8, target_modules: {grid_search: [vision, text, mlp]}}}\n"
    )
    study = load_study(space, check_paths=False)
    assert {a.spec["model"] for a in study.arms} == {"embedded-small"}
    space.write_text(space.read_text().replace("embedded-small", "embedded-smal"))
    with pytest.raises(CxrError, match="embedded-smal"):
        load_study(space, check_paths=False)

    plan = plan_table(
        [{"method": "fft"}, {"method": "lora", "lora": {"r": 8, "alpha": 16, "target_modules": "all_linear"}}],
        model="embedded-small",
    )
    assert plan["trainable_params"].tolist() == [SMALL_PARAMETERS, LORA_R8_ALL_LINEAR]
    assert plan["est_train_memory_mb"].iloc[0] == pytest.approx(SMALL_PARAMETERS * 16 / 2**20)


def test_committed_weights_caption_fresh_images_as_well_as_the_tiny_does(committed):
    model, processor = committed
    batch = [tiny_git.synthetic_batch(processor, 48, np.random.default_rng(12345))]  # neither training stream
    trained = tiny_git.caption_metrics(model, processor, batch)
    torch.manual_seed(0)
    untrained = tiny_git.caption_metrics(GitForCausalLM(model.config).eval(), processor, batch, generate=False)
    assert trained["loss"] < 0.1 < 4.0 < untrained["loss"]
    assert trained["token_accuracy"] > 0.95 > 0.05 > untrained["token_accuracy"]
    assert trained["exact_match"] >= 0.5
    small = json.loads((SMALL / "pretraining.json").read_text())["held_out"]["pretrained"]
    tiny = json.loads((TINY / "pretraining.json").read_text())["held_out"]["pretrained"]
    assert small["n_images"] == tiny["n_images"] == 256
    # "comparable held-out caption quality": no worse than the tiny one's on the same 256 held-out scenes.
    assert small["loss"] <= tiny["loss"] and small["token_accuracy"] >= tiny["token_accuracy"]
    assert small["exact_match"] >= tiny["exact_match"]


@pytest.mark.parametrize("method", ["fft", "lora"])
def test_fine_tunes_in_fp32_on_x_ray_data(method, small_data):
    from cxr_core.config import trial_config
    from cxr_core.trial import MemoryMeter, setup, train_epoch

    root, splits = small_data
    cfg = trial_config({
        "method": method, "model": "embedded-small",
        "data": {"split_dir": str(splits), "image_root": str(root), "max_train": 16, "max_val": 4,
                 "cache_dir": "none"},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "num_threads": 1, "precision": "fp32"},
        "lora": {"r": 4, "target_modules": "all_linear"},
    })  # fmt: skip
    s = setup(cfg, meter=MemoryMeter(torch.device("cpu")))
    before = {n: p.detach().clone() for n, p in s.model.named_parameters() if p.requires_grad}
    train_epoch(s, 0)
    trained = {n: p for n, p in s.model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trained.values()} == {torch.float32}
    assert any(not torch.equal(before[n], p) for n, p in trained.items())
    assert sum(p.numel() for p in trained.values()) == (SMALL_PARAMETERS if method == "fft" else 112_640)


def test_build_small_for_two_steps_writes_a_float16_folder_whose_figures_are_its_own(tmp_path):
    from jobs.build_tiny_git import main

    out = tmp_path / "small"
    argv = ["--size", "small", "--out", str(out), "--steps", "2", "--eval-size", "4", "--threads", "1"]
    assert main(argv) == 0
    record = json.loads((out / "pretraining.json").read_text())
    assert (record["size"], record["steps"], record["eval_size"]) == ("small", 2, 4)
    assert record["parameters"] == SMALL_PARAMETERS
    assert re.search(r"--size small .*--steps 2", record["command"])
    assert set(record["held_out"]) == {"random_init", "pretrained", "pretrained_fp32"}
    model = AutoModelForCausalLM.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.get_tensor("output.weight").dtype == torch.float16
    # The recorded "pretrained" figures are those of the weights as stored (rounded to float16).
    args = tiny_git.PretrainArgs(2, 0, "small", eval_size=4)
    again = tiny_git.caption_metrics(model, processor, tiny_git._held_out_batches(processor, args))
    assert again["loss"] == pytest.approx(record["held_out"]["pretrained"]["loss"], abs=2e-4)
    assert record["held_out"]["pretrained"]["loss"] < record["held_out"]["random_init"]["loss"]


def test_unknown_size_is_refused():
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        tiny_git.embedded_model_path("huge")
    from jobs.build_tiny_git import main

    with pytest.raises(SystemExit) as exc:
        main(["--size", "huge", "--out", "x"])
    assert exc.value.code == 2
