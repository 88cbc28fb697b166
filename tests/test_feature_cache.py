"""The frozen-encoder feature cache: same losses, generations and checkpoints as the uncached path; only arms
whose image encoder cannot change use it; the hook works with GitForCausalLM as installed."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from cxr_core import feature_cache, methods
from cxr_core.config import trial_config
from cxr_core.dataset import batches
from cxr_core.model import load_model
from cxr_core.trial import MemoryMeter, evaluate, evaluate_model, run_trial, save_checkpoint, setup, train_epoch


def _config(small_data, tmp_path, *, feature: str, precision: str, cache: bool = True, **arm) -> dict:
    root, splits = small_data
    return {"model": "embedded", **arm,
            "data": {"split_dir": str(splits), "image_root": str(root), "max_train": 24, "max_val": 8,
                     "cache_dir": str(tmp_path / "cache") if cache else "none", "feature_cache": feature},
            "train": {"epochs": 2, "batch_size": 8, "lr": 5e-3, "num_threads": 1, "precision": precision},
            "evaluation": {"max_new_tokens": 24, "batch_size": 8}}  # fmt: skip


def _encoder_runs(model) -> list:
    """Counts real runs of the image encoder: calls of its first child, which only the real forward makes."""
    runs: list = []
    next(feature_cache.image_encoder(model).children()).register_forward_hook(lambda *a: runs.append(1))
    return runs


def _weights(folder):
    return {
        k: v for f in sorted((folder / "model").glob("*.safetensors")) for k, v in load_file(str(f)).items()
    }


@pytest.mark.parametrize(
    ("arm", "where"),
    [({"method": "lora", "lora": {"r": 4, "target_modules": "text", "dropout": 0.1}, "precision": "fp32"}, "file"),
     ({"method": "fft", "fft": {"freeze": "vision"}, "precision": "bf16", "cache": False}, "memory")],
    ids=["lora-text-fp32-file", "fft-freeze-vision-bf16-memory"],
)  # fmt: skip
def test_cached_trial_matches_the_uncached_one(arm, where, small_data, tmp_path):
    """Text LoRA (with dropout in the decoder) from a file entry, frozen-vision FFT under bf16 autocast from
    memory (no pixel cache, so no file): the same losses, generations and checkpoints as without the cache."""
    runs = {}
    for mode in ("auto", "off"):
        cfg = trial_config(_config(small_data, tmp_path, feature=mode, **dict(arm)))
        s = setup(cfg, meter=MemoryMeter(torch.device("cpu")))
        calls = _encoder_runs(s.model)
        losses = [train_epoch(s, epoch)["train_loss"] for epoch in range(2)]
        metrics, generated, records = evaluate(s, s.val)
        save_checkpoint(s, tmp_path / mode, epoch=2)
        runs[mode] = dict(
            s=s, calls=len(calls), losses=losses, metrics=metrics, generated=generated, records=records
        )
    cached, plain = runs["auto"], runs["off"]
    assert cached["s"].features is not None and cached["s"].features.where == where
    assert plain["s"].features is None
    # The cached trial never ran the encoder after set-up; the uncached one ran it in every step and evaluation.
    assert cached["calls"] == 0 and plain["calls"] == 2 * 3 + 1
    assert cached["losses"] == pytest.approx(plain["losses"], rel=1e-5)
    assert cached["metrics"]["val_loss"] == pytest.approx(plain["metrics"]["val_loss"], rel=1e-5)
    torch.testing.assert_close(
        torch.from_numpy(cached["records"].loss_sum), torch.from_numpy(plain["records"].loss_sum)
    )
    assert cached["generated"] == plain["generated"]
    # Same checkpoints: the same tensors under the same names (the encoder is served, never replaced).
    a, b = _weights(tmp_path / "auto"), _weights(tmp_path / "off")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)


@pytest.mark.parametrize(
    ("spec", "why"),
    [(("fft", {}), "trainable"), (("fft", {"freeze": "text"}), "trainable"),
     (("lora", {"target_modules": "vision"}), "trainable"),
     (("lora", {"target_modules": "all_linear"}), "trainable"),
     (("lora", {"target_modules": ["q_proj"]}), "trainable")],
)  # fmt: skip
def test_arms_that_can_change_the_encoder_are_not_cacheable(spec, why):
    assert why in feature_cache.frozen_reason(methods.wrap(load_model("embedded"), *spec))


def test_dropout_inside_the_encoder_makes_it_uncacheable():
    model = methods.wrap(load_model("embedded"), "lora", {"target_modules": "text"})
    assert feature_cache.frozen_reason(model) is None
    model.config.vision_config.attention_dropout = 0.1  # read by nothing built: the layers hold their own rate
    for module in feature_cache.image_encoder(model).modules():
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = 0.1  # GitVisionAttention applies it in training mode
    assert "dropout=0.1" in feature_cache.frozen_reason(model)


def test_a_vision_training_trial_runs_the_encoder_and_reports_no_cache(small_data, tmp_path):
    arm = {"method": "lora", "lora": {"r": 4, "target_modules": "all_linear"}, "precision": "fp32"}
    cfg = _config(small_data, tmp_path, feature="auto", **arm)
    cfg["train"]["epochs"] = 1
    reports = []
    metrics = run_trial(cfg, report=lambda m, folder: reports.append(dict(m)))
    assert metrics["feature_cache"] == "off" and metrics["feature_cache_mb"] == 0
    assert metrics["eval_seconds_per_image"] == pytest.approx(metrics["eval_seconds"] / metrics["n_val"])
    assert not (tmp_path / "cache" / "features").exists()


def test_text_lora_trial_reports_the_cache_and_reuses_its_file(small_data, tmp_path):
    arm = {"method": "lora", "lora": {"r": 4, "target_modules": "text"}, "precision": "fp32"}
    cfg = trial_config(_config(small_data, tmp_path, feature="auto", **arm))
    first = setup(cfg, meter=MemoryMeter(torch.device("cpu")))
    again = setup(cfg, meter=MemoryMeter(torch.device("cpu")))
    # 24 + 8 images x 65 tokens x 128 floats of the tiny GIT's encoder
    assert first.features.mb == pytest.approx((24 + 8) * 65 * 128 * 4 / 2**20)
    assert first.features.built and not again.features.built and first.features.key == again.features.key
    entries = sorted(p.name for p in (tmp_path / "cache" / "features").iterdir() if p.is_dir())
    assert entries == sorted(first.features.key.split(","))
    columns = feature_cache.cost_columns(first.features)
    assert columns == {"feature_cache": "file", "feature_cache_mb": round(first.features.mb, 3)}
    # Other encoder weights (say, a checkpoint whose vision tower was trained) get other entries.
    with torch.no_grad():
        next(feature_cache.image_encoder(again.model).parameters()).add_(0.01)
    changed = feature_cache.weights_hash(feature_cache.image_encoder(again.model))
    assert changed != feature_cache.weights_hash(feature_cache.image_encoder(first.model))


def test_served_encoder_feeds_forward_and_generate_of_the_released_git(small_data, tmp_path):
    """The hook point is GitForCausalLM's own call of ``git.image_encoder``: with image numbers, neither the
    training forward, the teacher-forced pass nor ``generate`` runs the encoder, and all give what the pixels
    give; the module and its weights' names stay as they are."""
    arm = {"method": "lora", "lora": {"r": 4, "target_modules": "text"}, "precision": "fp32"}
    plain_cfg = trial_config(_config(small_data, tmp_path, feature="off", **arm))
    plain = setup(plain_cfg, meter=MemoryMeter(torch.device("cpu")))
    model = plain.model.eval()
    names = list(model.state_dict())
    pixels = next(batches(plain.val, batch_size=8, pad_id=plain.pad_id))
    encoder = feature_cache.image_encoder(model)
    with torch.no_grad():
        features = encoder(pixels["pixel_values"]).last_hidden_state
    calls = _encoder_runs(model)
    with feature_cache.serve(
        model, feature_cache.FeatureBank([feature_cache.Features(features, torch.float32)])
    ) as served:
        numbers = feature_cache.ImageRows(0, len(features))[torch.arange(len(features))]
        inputs = {k: v for k, v in pixels.items() if k not in ("pixel_values", "labels")}
        with torch.no_grad():
            cached_logits = model(**inputs, pixel_values=numbers).logits
            cached_gen = model.generate(pixel_values=numbers, max_new_tokens=16)
        assert (
            served.calls == 2 and calls == []
        )  # looked up for the forward and generate's first step, never run
    assert "forward" not in vars(encoder)  # closing it restores the real forward
    with torch.no_grad():
        plain_logits = model(**inputs, pixel_values=pixels["pixel_values"]).logits
        plain_gen = model.generate(pixel_values=pixels["pixel_values"], max_new_tokens=16)
    torch.testing.assert_close(cached_logits, plain_logits)
    assert torch.equal(cached_gen, plain_gen)
    assert list(model.state_dict()) == names


def test_evaluation_runs_the_encoder_once_per_batch_and_stops_when_all_reports_end(small_data, tmp_path):
    arm = {"method": "fft", "precision": "fp32"}
    cfg = trial_config(_config(small_data, tmp_path, feature="auto", **arm))
    s = setup(cfg, meter=MemoryMeter(torch.device("cpu")))
    assert s.features is None  # FFT trains the encoder
    calls, steps = _encoder_runs(s.model), []
    s.model.register_forward_hook(lambda *a: steps.append(1))
    cfg_eval = dataclasses.replace(cfg.evaluation, max_new_tokens=200, batch_size=4)
    metrics, generated, _ = evaluate_model(s.model, s.processor, s.val, evaluation=cfg_eval, device=s.device)
    assert len(calls) == 2  # 8 images in 2 batches: once per batch, for the loss and for generation
    longest = max(len(s.processor.tokenizer(g)["input_ids"]) for g in generated)  # [CLS] words [SEP]
    # The tiny GIT ends its reports well before 200 tokens: generation stops with the last one (each batch: one
    # teacher-forced pass, then one step per new token), not after max_new_tokens.
    assert longest < 100 and len(steps) <= 2 * (1 + longest + 2)
    assert metrics["eval_seconds_per_image"] == pytest.approx(metrics["eval_seconds"] / 8)


def test_a_served_path_that_disagrees_is_refused(small_data, tmp_path):
    arm = {"method": "lora", "lora": {"r": 4, "target_modules": "text"}, "precision": "fp32"}
    s = setup(
        trial_config(_config(small_data, tmp_path, feature="off", **arm)),
        meter=MemoryMeter(torch.device("cpu")),
    )
    pixels = next(batches(s.val, batch_size=2, pad_id=s.pad_id))
    encoder = feature_cache.image_encoder(s.model)
    with torch.no_grad():
        features = encoder(pixels["pixel_values"]).last_hidden_state
    numbers = torch.arange(2).view(-1, 1, 1, 1)
    ids = pixels["input_ids"]
    right = feature_cache.FeatureBank([feature_cache.Features(features, torch.float32)])
    wrong = feature_cache.FeatureBank(
        [feature_cache.Features(features.flip(0), torch.float32)]
    )  # swapped images
    with feature_cache.serve(s.model, right) as served:
        assert (
            feature_cache._agrees(s.model, served, pixels["pixel_values"], numbers, ids, autocast=False) is None
        )
    with feature_cache.serve(s.model, wrong) as served:
        why = feature_cache._agrees(s.model, served, pixels["pixel_values"], numbers, ids, autocast=False)
    assert why is not None and "logits differ" in why


def test_feature_cache_setting_is_checked():
    from cxr_core.errors import CxrError

    assert trial_config({"data": {"feature_cache": "off"}}).data.feature_cache == "off"
    with pytest.raises(CxrError, match="`data.feature_cache` must be auto or off, got 'on'"):
        trial_config({"data": {"feature_cache": "on"}})
